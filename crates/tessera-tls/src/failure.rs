//! Why a TLS handshake failed, read from an error of any layer above it
//! (tonic, hyper, an I/O error wrapping rustls's), in one place for both
//! ends: a client names the cause to its operator, a server labels and
//! audits what it refused.
//!
//! A refused certificate reaches the other end as an alert
//! (`UnknownCA`, `CertificateRevoked`...): [`Handshake::by_peer`] says
//! whether the peer refused ours (an alert received) or this end refused
//! the peer's (its own verification).

use std::error::Error;

use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError};

/// What went wrong in a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The certificate was not issued by the CA the other end trusts.
    UnknownCa,
    /// The certificate was revoked (the CA's revocation list names it).
    Revoked,
    /// The certificate expired, or is not valid yet.
    Expired,
    /// Any other refusal of the certificate (bad encoding, wrong name,
    /// wrong usage, unknown to the other end).
    BadCertificate(String),
    /// The client presented no certificate.
    NoCertificate,
    /// The other end does not speak TLS (plain text where a TLS record was
    /// expected).
    NotTls,
}

impl Rejection {
    /// A short label for metrics (`unknown_ca`, `revoked`, `expired`,
    /// `bad_certificate`, `no_certificate`, `not_tls`).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::UnknownCa => "unknown_ca",
            Rejection::Revoked => "revoked",
            Rejection::Expired => "expired",
            Rejection::BadCertificate(_) => "bad_certificate",
            Rejection::NoCertificate => "no_certificate",
            Rejection::NotTls => "not_tls",
        }
    }
}

/// A failed handshake: what went wrong, whether the peer said so (an alert
/// received: it refused our certificate) or this end found it (it refused
/// the peer's), and rustls's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// What went wrong.
    pub rejection: Rejection,
    /// True when the peer refused this end (an alert received).
    pub by_peer: bool,
    /// rustls's description of the error.
    pub detail: String,
}

/// The handshake failure somewhere in `error`'s chain of causes (looking
/// inside I/O errors, which hide what they wrap from `source()`), if any.
pub fn handshake_failure(error: &(dyn Error + 'static)) -> Option<Handshake> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = rustls_error(e).and_then(classify) {
            return Some(found);
        }
        // An alert read on an open connection reaches hyper as an I/O
        // error that kept only rustls's words.
        if let Some(found) = alert_in_words(&e.to_string()) {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The alert named in rustls's words for it ("received fatal alert: X").
fn alert_in_words(text: &str) -> Option<Handshake> {
    const RECEIVED: &str = "received fatal alert: ";
    let name = text.split(RECEIVED).nth(1)?;
    let name: String = name
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let alert = [
        AlertDescription::UnknownCA,
        AlertDescription::DecryptError,
        AlertDescription::CertificateRevoked,
        AlertDescription::CertificateExpired,
        AlertDescription::CertificateRequired,
        AlertDescription::BadCertificate,
        AlertDescription::CertificateUnknown,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::AccessDenied,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)?;
    classify(&rustls::Error::AlertReceived(alert))
}

/// The rustls error `e` is, or that the I/O error `e` wraps.
fn rustls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    e.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn classify(error: &rustls::Error) -> Option<Handshake> {
    let detail = error.to_string();
    let (rejection, by_peer) = match error {
        rustls::Error::AlertReceived(alert) => (
            match alert {
                // A certificate that names the CA's subject but was not
                // signed by its key (another CA of the same name) fails
                // its signature: the peer answers DecryptError.
                AlertDescription::UnknownCA | AlertDescription::DecryptError => {
                    Rejection::UnknownCa
                }
                AlertDescription::CertificateRevoked => Rejection::Revoked,
                AlertDescription::CertificateExpired => Rejection::Expired,
                AlertDescription::CertificateRequired => Rejection::NoCertificate,
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied => Rejection::BadCertificate(detail.clone()),
                _ => return None,
            },
            true,
        ),
        rustls::Error::InvalidCertificate(certificate) => (
            match certificate {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Rejection::UnknownCa
                }
                CertificateError::Revoked => Rejection::Revoked,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Rejection::Expired,
                _ => Rejection::BadCertificate(detail.clone()),
            },
            false,
        ),
        rustls::Error::NoCertificatesPresented => (Rejection::NoCertificate, false),
        // What came was not a TLS record: the other end speaks plain text.
        rustls::Error::InvalidMessage(_) => (Rejection::NotTls, false),
        _ => return None,
    };
    Some(Handshake {
        rejection,
        by_peer,
        detail,
    })
}

/// Who a certificate names, for a log or an audit: the site its subject
/// alternative name encodes, else its subject's common name, else its DNS
/// names; `None` when it cannot be read. Read, not verified: a refused
/// certificate says who it claims to be.
pub fn certificate_subject(der: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let names: Vec<&str> = cert.valid_dns_names().collect();
    if let Some(site) = names.iter().find_map(|n| site_of_dns_name(n)) {
        return Some(site);
    }
    if let Some(cn) = common_name(cert.subject()) {
        return Some(cn);
    }
    (!names.is_empty()).then(|| names.join(", "))
}

/// The site a `s-<hex>.sites.tessera.invalid` name stands for.
fn site_of_dns_name(name: &str) -> Option<String> {
    let hex = name
        .strip_prefix("s-")?
        .strip_suffix(".sites.tessera.invalid")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The common name in a DER subject (the contents of its SEQUENCE): a
/// sequence of SETs of (OID, value) SEQUENCEs.
fn common_name(mut subject: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    while !subject.is_empty() {
        let (_, set, rest) = tlv(subject)?;
        subject = rest;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (_, attribute, rest) = tlv(attributes)?;
            attributes = rest;
            let (oid_tag, oid, value) = tlv(attribute)?;
            if oid_tag == 0x06 && oid == COMMON_NAME {
                let (_, text, _) = tlv(value)?;
                return std::str::from_utf8(text).ok().map(str::to_string);
            }
        }
    }
    None
}

/// One DER tag-length-value: the tag, the value, what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    if rest.len() < length {
        return None;
    }
    let (value, after) = rest.split_at(length);
    Some((tag, value, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(error: rustls::Error) -> crate::TlsError {
        crate::TlsError::Io {
            path: "http://127.0.0.1:1/".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        }
    }

    #[test]
    fn alerts_received_are_the_peer_refusing_our_certificate() {
        for (alert, rejection) in [
            (AlertDescription::UnknownCA, Rejection::UnknownCa),
            (AlertDescription::DecryptError, Rejection::UnknownCa),
            (AlertDescription::CertificateRevoked, Rejection::Revoked),
            (AlertDescription::CertificateExpired, Rejection::Expired),
            (
                AlertDescription::CertificateRequired,
                Rejection::NoCertificate,
            ),
        ] {
            let error = wrapped(rustls::Error::AlertReceived(alert));
            let found = handshake_failure(&error).unwrap();
            assert_eq!(found.rejection, rejection, "{alert:?}");
            assert!(found.by_peer);
        }
        let error = wrapped(rustls::Error::AlertReceived(
            AlertDescription::BadCertificate,
        ));
        let found = handshake_failure(&error).unwrap();
        assert!(matches!(found.rejection, Rejection::BadCertificate(_)));
        // As hyper passes it on: an I/O error with rustls's words only.
        let words = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRevoked",
        );
        let found = handshake_failure(&words).unwrap();
        assert_eq!(found.rejection, Rejection::Revoked);
        assert!(found.by_peer);
        let words = std::io::Error::other("received fatal alert: CloseNotify");
        assert_eq!(handshake_failure(&words), None);
    }

    #[test]
    fn our_own_verification_refuses_the_peer() {
        for (error, rejection) in [
            (CertificateError::UnknownIssuer, Rejection::UnknownCa),
            (CertificateError::BadSignature, Rejection::UnknownCa),
            (CertificateError::Revoked, Rejection::Revoked),
            (CertificateError::Expired, Rejection::Expired),
            (CertificateError::NotValidYet, Rejection::Expired),
        ] {
            let error = wrapped(rustls::Error::InvalidCertificate(error));
            let found = handshake_failure(&error).unwrap();
            assert_eq!(found.rejection, rejection);
            assert!(!found.by_peer);
        }
        let plain = wrapped(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(
            handshake_failure(&plain).unwrap().rejection,
            Rejection::NotTls
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(handshake_failure(&io), None);
        let other = wrapped(rustls::Error::DecryptError);
        assert_eq!(handshake_failure(&other), None);
    }

    #[test]
    fn a_certificate_names_its_site_or_its_common_name() {
        let dir = std::env::temp_dir().join(format!("tessera-subject-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ca = crate::CaDir::init(&dir, "test", 30).unwrap();
        let site = ca.issue_site("Hôpital 3", 30).unwrap();
        let server = ca
            .issue_coordinator(&["127.0.0.1".to_string()], 30)
            .unwrap();
        let first = |dir: &std::path::Path| {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(dir.join("cert.pem")).unwrap();
            CertificateDer::pem_slice_iter(&pem)
                .next()
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            certificate_subject(&first(&site)).as_deref(),
            Some("Hôpital 3")
        );
        assert_eq!(
            certificate_subject(&first(&server)).as_deref(),
            Some("coordinator")
        );
        assert_eq!(
            certificate_subject(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
