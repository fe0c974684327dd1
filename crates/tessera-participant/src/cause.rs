//! Why a client cannot take part, in one line an operator can act on, with
//! the process exit code it documents (README, "Exit codes").
//!
//! Every failure to reach the federation is classified here, in one place:
//! [`classify_error`] walks an error's chain of causes (a connection's
//! error, or the `Status` of the first call on it, which is where a TLS 1.3
//! server's refusal of the client's certificate arrives) and finds a cause
//! that retrying cannot fix: a certificate refused, from the wrong CA,
//! revoked or expired; TLS against plain text or plain text against TLS.
//! Anything else (connection refused, a coordinator restarting,
//! `Unavailable`) is left to the supervisor to retry.

use std::error::Error;

use tessera_tls::{Handshake, Rejection};

/// What stopped a client for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The server does not trust this site's certificate: it is not from
    /// the federation's CA.
    SiteCertificateUnknownCa {
        /// The server, as the operator knows it (its URL).
        server: String,
        /// rustls's words (the alert received).
        detail: String,
    },
    /// This site does not trust the server's certificate: it is not from
    /// the CA in this site's `ca.pem`.
    ServerCertificateUnknownCa {
        /// The server.
        server: String,
        /// rustls's words.
        detail: String,
    },
    /// A certificate was revoked: this site's (`ours`) or the server's.
    Revoked {
        /// The server.
        server: String,
        /// This site's certificate (else the server's).
        ours: bool,
    },
    /// A certificate expired or is not valid yet: this site's or the server's.
    Expired {
        /// The server.
        server: String,
        /// This site's certificate (else the server's).
        ours: bool,
    },
    /// The server refused this site's certificate for another reason (or
    /// this site refused the server's: a wrong name, a bad certificate).
    CertificateRefused {
        /// The server.
        server: String,
        /// This site's certificate (else the server's).
        ours: bool,
        /// What was wrong.
        detail: String,
    },
    /// This site speaks plain text to a server that speaks TLS.
    PlainTextToTls {
        /// The server.
        server: String,
    },
    /// This site speaks TLS to a server that speaks plain text.
    TlsToPlainText {
        /// The server.
        server: String,
    },
    /// The two sides speak different protocol versions.
    Version(String),
    /// This site refused the coordinator's plan.
    PlanRefused(String),
}

impl Cause {
    /// The process exit code of this cause (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            Cause::CertificateRefused { .. } => 11,
            Cause::SiteCertificateUnknownCa { .. } | Cause::ServerCertificateUnknownCa { .. } => 12,
            Cause::Revoked { .. } => 13,
            Cause::Expired { .. } => 14,
            Cause::PlainTextToTls { .. } | Cause::TlsToPlainText { .. } => 15,
            Cause::Version(_) => 16,
            Cause::PlanRefused(_) => 17,
        }
    }
}

fn whose(ours: bool, server: &str) -> String {
    if ours {
        "this site's certificate".to_string()
    } else {
        format!("the certificate of {server}")
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::SiteCertificateUnknownCa { server, detail } => write!(
                f,
                "wrong CA: {server} does not trust this site's certificate ({detail}): it was \
                 not issued by the federation's CA; use the certificate the federation's CA \
                 issued for this site (`tessera ca issue --site NAME`)"
            ),
            Cause::ServerCertificateUnknownCa { server, detail } => write!(
                f,
                "wrong CA: this site does not trust the certificate of {server} ({detail}): it \
                 was not issued by the CA in this site's ca.pem; check that --tls holds the \
                 federation's ca.pem and that the URL is the federation's coordinator"
            ),
            Cause::Revoked { server, ours } => write!(
                f,
                "certificate revoked: {} was revoked by the federation's CA ({}); ask the \
                 federation's operator for a new one",
                whose(*ours, server),
                if *ours {
                    "TLS alert CertificateRevoked from the coordinator"
                } else {
                    "invalid peer certificate: Revoked, by this site's crl.pem"
                }
            ),
            Cause::Expired { server, ours } => write!(
                f,
                "certificate expired: {} is outside its validity period ({}); check the \
                 clocks, and ask the federation's operator for a new certificate",
                whose(*ours, server),
                if *ours {
                    "TLS alert CertificateExpired from the coordinator"
                } else {
                    "invalid peer certificate: Expired"
                }
            ),
            Cause::CertificateRefused {
                server,
                ours,
                detail,
            } => write!(
                f,
                "certificate refused: {} was refused ({detail})",
                whose(*ours, server)
            ),
            Cause::PlainTextToTls { server } => write!(
                f,
                "TLS mismatch: {server} speaks TLS but this site connected in plain text; give \
                 --tls DIR and an https:// URL"
            ),
            Cause::TlsToPlainText { server } => write!(
                f,
                "TLS mismatch: this site connected with TLS but {server} speaks plain text (it \
                 runs with --insecure); use its TLS address, or --insecure and an http:// URL \
                 for a local experiment"
            ),
            Cause::Version(detail) => write!(f, "protocol version mismatch: {detail}"),
            Cause::PlanRefused(detail) => write!(f, "plan refused: {detail}"),
        }
    }
}

/// The cause, retrying cannot fix, somewhere in `error`'s chain, when this
/// client connected to `server` with TLS (`tls`) or in plain text.
pub fn classify_error(error: &(dyn Error + 'static), server: &str, tls: bool) -> Option<Cause> {
    let server = server.to_string();
    if let Some(handshake) = tessera_tls::handshake_failure(error) {
        return Some(from_handshake(handshake, server, tls));
    }
    // Plain text to a TLS server: its alert, read as an HTTP/2 frame, is
    // far too long; or it answers as no HTTP at all.
    if !tls && chain_says(error, PLAIN_TO_TLS) {
        return Some(Cause::PlainTextToTls { server });
    }
    None
}

/// What the HTTP/2 layer says when the bytes that came back were a TLS
/// record, not HTTP/2.
const PLAIN_TO_TLS: &[&str] = &[
    "frame with invalid size",
    "invalid HTTP version",
    "FRAME_SIZE_ERROR",
    "frame size",
];

fn chain_says(error: &(dyn Error + 'static), needles: &[&str]) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if needles.iter().any(|n| text.contains(n)) {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner.to_string())
            && needles.iter().any(|n| inner.contains(n))
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn from_handshake(handshake: Handshake, server: String, tls: bool) -> Cause {
    let ours = handshake.by_peer;
    match handshake.rejection {
        Rejection::UnknownCa if ours => Cause::SiteCertificateUnknownCa {
            server,
            detail: handshake.detail,
        },
        Rejection::UnknownCa => Cause::ServerCertificateUnknownCa {
            server,
            detail: handshake.detail,
        },
        Rejection::Revoked => Cause::Revoked { server, ours },
        Rejection::Expired => Cause::Expired { server, ours },
        Rejection::NotTls if tls => Cause::TlsToPlainText { server },
        Rejection::NotTls => Cause::PlainTextToTls { server },
        Rejection::NoCertificate | Rejection::BadCertificate(_) => Cause::CertificateRefused {
            server,
            ours,
            detail: handshake.detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError};

    /// A rustls error as the connector returns it: inside an I/O error,
    /// inside the TLS crate's error.
    fn connector_error(error: rustls::Error) -> tessera_tls::TlsError {
        tessera_tls::TlsError::Io {
            path: "http://127.0.0.1:7000/".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        }
    }

    /// An error that wraps another, as hyper and tonic do.
    #[derive(Debug)]
    struct Wrapping(&'static str, Box<dyn Error + Send + Sync>);

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapping {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.1)
        }
    }

    fn classify(error: impl Error + Send + Sync + 'static, tls: bool) -> Option<Cause> {
        // As a tonic status of the first call carries it: "transport
        // error", its source the connection's error.
        let status =
            tonic::Status::from_error(Box::new(Wrapping("transport error", Box::new(error))));
        classify_error(&status, "the coordinator", tls)
    }

    #[test]
    fn alerts_from_the_coordinator_name_this_sites_certificate() {
        let alert = |a| classify(connector_error(rustls::Error::AlertReceived(a)), true);
        let server = "the coordinator".to_string();
        for a in [AlertDescription::UnknownCA, AlertDescription::DecryptError] {
            assert!(
                matches!(alert(a), Some(Cause::SiteCertificateUnknownCa { .. })),
                "{a:?}"
            );
        }
        assert_eq!(
            alert(AlertDescription::CertificateRevoked),
            Some(Cause::Revoked {
                server: server.clone(),
                ours: true
            })
        );
        assert_eq!(
            alert(AlertDescription::CertificateExpired),
            Some(Cause::Expired {
                server: server.clone(),
                ours: true
            })
        );
        assert!(matches!(
            alert(AlertDescription::BadCertificate),
            Some(Cause::CertificateRefused { ours: true, .. })
        ));
        // Unrelated alerts are not a certificate's fault.
        assert_eq!(alert(AlertDescription::InternalError), None);
    }

    #[test]
    fn this_sites_own_checks_name_the_coordinators_certificate() {
        let invalid = |e| classify(connector_error(rustls::Error::InvalidCertificate(e)), true);
        let cause = invalid(CertificateError::UnknownIssuer).unwrap();
        assert!(
            matches!(&cause, Cause::ServerCertificateUnknownCa { .. }),
            "{cause:?}"
        );
        assert!(
            cause
                .to_string()
                .starts_with("wrong CA: this site does not trust")
        );
        let cause = invalid(CertificateError::Revoked).unwrap();
        assert_eq!(cause.exit_code(), 13);
        assert!(cause.to_string().contains("Revoked"), "{cause}");
        assert!(matches!(
            invalid(CertificateError::Expired),
            Some(Cause::Expired { ours: false, .. })
        ));
    }

    #[test]
    fn tls_and_plain_text_mismatches_are_named() {
        // With TLS, an answer that is no TLS record: the server is plain.
        let garbage = connector_error(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        let cause = classify(garbage, true).unwrap();
        assert!(matches!(cause, Cause::TlsToPlainText { .. }), "{cause:?}");
        // Plain text, and HTTP/2 cannot read what came back (a TLS alert).
        let frame = Wrapping(
            "http2 error",
            Box::new(std::io::Error::other("frame with invalid size")),
        );
        let cause = classify(frame, false).unwrap();
        assert!(matches!(cause, Cause::PlainTextToTls { .. }), "{cause:?}");
        assert_eq!(cause.exit_code(), 15);
    }

    #[test]
    fn network_failures_are_left_to_retry() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(refused, true), None);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify(reset, false), None);
        // A frame-size complaint with TLS is no plain-text mismatch.
        let frame = std::io::Error::other("frame with invalid size");
        assert_eq!(classify(frame, true), None);
    }

    #[test]
    fn every_cause_has_its_own_exit_code_and_one_line() {
        let server = || "https://127.0.0.1:7000".to_string();
        let causes = [
            Cause::CertificateRefused {
                server: server(),
                ours: true,
                detail: "x".into(),
            },
            Cause::SiteCertificateUnknownCa {
                server: server(),
                detail: "received fatal alert: UnknownCA".into(),
            },
            Cause::Revoked {
                server: server(),
                ours: true,
            },
            Cause::Expired {
                server: server(),
                ours: false,
            },
            Cause::PlainTextToTls { server: server() },
            Cause::Version("1.0 against 1.7".into()),
            Cause::PlanRefused("differs".into()),
        ];
        let codes: Vec<u8> = causes.iter().map(Cause::exit_code).collect();
        assert_eq!(codes, [11, 12, 13, 14, 15, 16, 17]);
        for cause in &causes {
            assert!(!cause.to_string().contains('\n'), "{cause}");
        }
    }
}
