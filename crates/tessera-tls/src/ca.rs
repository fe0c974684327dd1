//! A certificate authority kept in a folder.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{TlsError, read, site_dns_name, write};

mod record;

pub use record::{CertStatus, Issuance, utc};
use record::{kind_name, party_name};

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuedKind {
    /// A participant's client certificate.
    Site,
    /// The coordinator's server certificate.
    Coordinator,
    /// An aggregator's server certificate (toward its members), one per
    /// aggregator, beside the coordinator's.
    Aggregator,
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Site or aggregator name, or `coordinator`.
    pub name: String,
    /// Site, coordinator or aggregator.
    pub kind: IssuedKind,
    /// Serial number.
    pub serial: u64,
    /// The CA generation that signed it.
    pub generation: u32,
    /// Validity in days.
    pub days: u32,
    /// Start of validity, Unix seconds (0: recorded before it was kept).
    #[serde(default)]
    pub not_before_unix: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
    /// Whether it is revoked.
    pub revoked: bool,
    /// Coordinator or aggregator: the host names and addresses it serves.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaState {
    name: String,
    generation: u32,
    ca_days: u32,
    next_serial: u64,
    crl_number: u64,
    issued: Vec<Issued>,
}

/// A certificate authority in a folder:
///
/// ```text
/// ca.json  ca.pem  ca-key.pem  crl.pem
/// coordinator/{cert,key,ca,crl}.pem
/// aggregators/<aggregator>/{cert,key,ca,crl}.pem
/// sites/<site>/{cert,key,ca,crl}.pem
/// ```
///
/// A certificate is known by its kind and name: issuing one while a live
/// (unexpired, unrevoked) certificate of the same kind and name exists is
/// refused unless the request says to replace it, which revokes it.
pub struct CaDir {
    dir: PathBuf,
    state: CaState,
}

fn ca_params(name: &str, generation: u32) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera federation");
    dn.push(
        DnType::CommonName,
        format!("{name} (generation {generation})"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// The last instant an X.509 certificate can name, 9999-12-31T23:59:59Z:
/// the end of GeneralizedTime's four-digit years (RFC 5280, 4.1.2.5).
const LATEST_UNIX: i64 = 253_402_300_799;

/// `now` moved by `by`; refused rather than a panic past the dates `time`
/// can hold (a clock set absurdly far ahead).
fn shifted(now: OffsetDateTime, by: Duration) -> Result<OffsetDateTime, TlsError> {
    now.checked_add(by).ok_or_else(|| {
        TlsError::Invalid(format!(
            "the clock reads {now}: {by} from then is past the dates a certificate can name"
        ))
    })
}

/// The end of `what`'s validity of `days` days from `now`: at least one
/// day, and no later than 9999-12-31T23:59:59Z.
fn expiry(now: OffsetDateTime, days: u32, what: &str) -> Result<OffsetDateTime, TlsError> {
    if days == 0 {
        return Err(TlsError::Invalid(format!(
            "--days 0: {what} must be valid for at least 1 day"
        )));
    }
    let latest = OffsetDateTime::from_unix_timestamp(LATEST_UNIX)
        .map_err(|e| TlsError::Invalid(format!("the last date of X.509: {e}")))?;
    now.checked_add(Duration::days(i64::from(days)))
        .filter(|end| *end <= latest)
        .ok_or_else(|| {
            TlsError::Invalid(format!(
                "--days {days} is too far: {what} must expire by 9999-12-31 \
                 (X.509 GeneralizedTime), at most {} days from now",
                (latest - now).whole_days().max(0)
            ))
        })
}

/// `host` quoted for a message: escaped, and cut to 64 characters (saying
/// how long it was) when longer.
fn quoted(host: &str) -> String {
    let length = host.chars().count();
    if length <= 64 {
        format!("'{}'", host.escape_debug())
    } else {
        let head: String = host.chars().take(64).collect();
        format!("'{}…' ({length} characters)", head.escape_debug())
    }
}

/// Refuses a server's (`role`: coordinator, aggregator) host that is
/// neither an IP address nor a DNS name (RFC 1123: dot-separated labels of 1
/// to 63 letters, digits or '-', none starting or ending with '-', 253
/// characters in all).
fn check_host(role: &str, host: &str) -> Result<(), TlsError> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(TlsError::Invalid(format!(
            "{role} host {} is neither an IP address nor a DNS name: {why}",
            quoted(host)
        )))
    };
    if host.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{role} host '' is empty: give a DNS name or an IP address"
        )));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return refuse(format!(
            "'{}' is not allowed (letters, digits, '-' and '.' only; an \
             international name in its xn-- form)",
            c.escape_debug()
        ));
    }
    if host.len() > 253 {
        return refuse("longer than the 253 characters a DNS name may have".into());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return refuse("an empty label (a leading, trailing or doubled '.')".into());
        }
        if label.len() > 63 {
            return refuse(format!(
                "a label of {} characters, more than 63",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse(format!("label '{label}' starts or ends with '-'"));
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return refuse("its last label is all digits".into());
    }
    Ok(())
}

impl CaDir {
    /// Creates a new CA in `dir` (which must not hold one yet), valid `days`
    /// days: at least one, and no later than 9999-12-31.
    pub fn init(dir: &Path, name: &str, days: u32) -> Result<CaDir, TlsError> {
        if dir.join("ca.json").exists() {
            return Err(TlsError::Invalid(format!(
                "{} already holds a CA",
                dir.display()
            )));
        }
        expiry(OffsetDateTime::now_utc(), days, "the CA certificate")?;
        let mut ca = CaDir {
            dir: dir.to_path_buf(),
            state: CaState {
                name: name.to_string(),
                generation: 0,
                ca_days: days,
                next_serial: 1,
                crl_number: 0,
                issued: Vec::new(),
            },
        };
        ca.new_generation()?;
        ca.save()?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<CaDir, TlsError> {
        let text = read(&dir.join("ca.json"))?;
        let state: CaState = serde_json::from_str(&text)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", dir.join("ca.json").display())))?;
        Ok(CaDir {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// Every certificate issued.
    pub fn issued(&self) -> &[Issued] {
        &self.state.issued
    }

    /// The folder of a site's files.
    pub fn site_dir(&self, site: &str) -> PathBuf {
        self.dir.join("sites").join(site)
    }

    /// The folder of the coordinator's files.
    pub fn coordinator_dir(&self) -> PathBuf {
        self.dir.join("coordinator")
    }

    /// The folder of an aggregator's server files.
    pub fn aggregator_dir(&self, aggregator: &str) -> PathBuf {
        self.dir.join("aggregators").join(aggregator)
    }

    fn save(&self) -> Result<(), TlsError> {
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        write(&self.dir.join("ca.json"), &text, false)
    }

    /// A new CA key and self-signed certificate (generation + 1).
    fn new_generation(&mut self) -> Result<(), TlsError> {
        let now = OffsetDateTime::now_utc();
        let not_before = shifted(now, -Duration::hours(1))?;
        let not_after = expiry(now, self.state.ca_days, "the CA certificate")?;
        self.state.generation += 1;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&self.state.name, self.state.generation)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        write(&self.dir.join("ca-key.pem"), &key.serialize_pem(), true)?;
        write(&self.dir.join("ca.pem"), &cert.pem(), false)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&read(&self.dir.join("ca-key.pem"))?)?;
        Ok(Issuer::new(
            ca_params(&self.state.name, self.state.generation)?,
            key,
        ))
    }

    /// Issues a site's certificate (client and server authentication, named
    /// by [`site_dns_name`]), valid `days` days: at least one, and no later
    /// than 9999-12-31. Refused while the site has a live certificate (see
    /// [`CaDir::issue_site_replacing`]).
    pub fn issue_site(&mut self, site: &str, days: u32) -> Result<PathBuf, TlsError> {
        Ok(self.issue_site_replacing(site, days, false)?.dir)
    }

    /// [`CaDir::issue_site`]; with `replace`, a live certificate of the site
    /// is revoked (and named in the answer) instead of refusing.
    pub fn issue_site_replacing(
        &mut self,
        site: &str,
        days: u32,
        replace: bool,
    ) -> Result<Issuance, TlsError> {
        let dns = party_name("site", site)?;
        let not_after = expiry(OffsetDateTime::now_utc(), days, "a certificate")?;
        self.issue(site, IssuedKind::Site, vec![dns], days, not_after, replace)
    }

    /// Issues the coordinator's server certificate for `hosts`, valid `days`
    /// days (at least one, and no later than 9999-12-31). Each host is an IP
    /// address or a DNS name (RFC 1123 labels); anything else is refused,
    /// named. Refused while the coordinator has a live certificate (see
    /// [`CaDir::issue_coordinator_replacing`]).
    pub fn issue_coordinator(&mut self, hosts: &[String], days: u32) -> Result<PathBuf, TlsError> {
        Ok(self.issue_coordinator_replacing(hosts, days, false)?.dir)
    }

    /// [`CaDir::issue_coordinator`]; with `replace`, the coordinator's live
    /// certificate is revoked (and named in the answer) instead of refusing.
    pub fn issue_coordinator_replacing(
        &mut self,
        hosts: &[String],
        days: u32,
        replace: bool,
    ) -> Result<Issuance, TlsError> {
        self.issue_server("coordinator", IssuedKind::Coordinator, hosts, days, replace)
    }

    /// Issues aggregator `name`'s server certificate (what its members
    /// call) for `hosts`, into its own folder: the coordinator's and other
    /// aggregators' certificates stay live. Hosts and days as for
    /// [`CaDir::issue_coordinator`]; with `replace`, this aggregator's live
    /// server certificate is revoked instead of refusing. (Toward its parent
    /// an aggregator uses a site certificate of its name.)
    pub fn issue_aggregator(
        &mut self,
        name: &str,
        hosts: &[String],
        days: u32,
        replace: bool,
    ) -> Result<Issuance, TlsError> {
        party_name("aggregator", name)?;
        self.issue_server(name, IssuedKind::Aggregator, hosts, days, replace)
    }

    fn issue_server(
        &mut self,
        name: &str,
        kind: IssuedKind,
        hosts: &[String],
        days: u32,
        replace: bool,
    ) -> Result<Issuance, TlsError> {
        let role = kind_name(kind);
        if hosts.is_empty() {
            return Err(TlsError::Invalid(format!(
                "the {role} needs at least one host name or address"
            )));
        }
        for host in hosts {
            check_host(role, host)?;
        }
        let not_after = expiry(OffsetDateTime::now_utc(), days, "a certificate")?;
        self.issue(name, kind, hosts.to_vec(), days, not_after, replace)
    }

    fn issue(
        &mut self,
        name: &str,
        kind: IssuedKind,
        names: Vec<String>,
        days: u32,
        not_after: OffsetDateTime,
        replace: bool,
    ) -> Result<Issuance, TlsError> {
        let now = OffsetDateTime::now_utc();
        if !replace
            && let Some(live) = self.state.issued.iter().find(|i| {
                i.kind == kind
                    && i.name == name
                    && i.status(now.unix_timestamp()) == CertStatus::Live
            })
        {
            return Err(TlsError::Invalid(format!(
                "{} is live: issuing another would not add one but replace it (revoking it \
                 cuts off whoever uses it); give --replace to revoke it and issue a new one",
                live.describe()
            )));
        }
        let not_before = shifted(now, -Duration::hours(1))?;
        let issuer = self.issuer()?;
        let serial = self.state.next_serial;
        let mut params = CertificateParams::new(names.clone())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tessera federation");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A site's certificate also serves: gossip peers (and aggregators'
        // members) verify the peer they call by its site name.
        params.extended_key_usages = match kind {
            IssuedKind::Site => vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            IssuedKind::Coordinator | IssuedKind::Aggregator => {
                vec![ExtendedKeyUsagePurpose::ServerAuth]
            }
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &issuer)?;
        let dir = self.party_dir(kind, name);
        write(&dir.join("key.pem"), &key.serialize_pem(), true)?;
        write(&dir.join("cert.pem"), &cert.pem(), false)?;
        write(&dir.join("ca.pem"), &read(&self.dir.join("ca.pem"))?, false)?;
        // The new certificate takes the place of the previous ones of the
        // same kind and name (live ones only when asked to): they are revoked.
        let mut replaced = Vec::new();
        for old in self
            .state
            .issued
            .iter_mut()
            .filter(|i| i.kind == kind && i.name == name && !i.revoked)
        {
            old.revoked = true;
            replaced.push(old.clone());
        }
        let issued = Issued {
            name: name.to_string(),
            kind,
            serial,
            generation: self.state.generation,
            days,
            not_before_unix: not_before.unix_timestamp(),
            not_after_unix: not_after.unix_timestamp(),
            revoked: false,
            hosts: if kind == IssuedKind::Site {
                Vec::new()
            } else {
                names
            },
        };
        self.state.issued.push(issued.clone());
        self.state.next_serial += 1;
        self.save()?;
        self.write_crl()?;
        Ok(Issuance {
            dir,
            issued,
            replaced,
        })
    }

    /// The folder of a party's files.
    fn party_dir(&self, kind: IssuedKind, name: &str) -> PathBuf {
        match kind {
            IssuedKind::Site => self.site_dir(name),
            IssuedKind::Coordinator => self.coordinator_dir(),
            IssuedKind::Aggregator => self.aggregator_dir(name),
        }
    }

    /// Revokes every live certificate of `name` (a site's, an aggregator's
    /// or the coordinator's).
    pub fn revoke(&mut self, name: &str) -> Result<u32, TlsError> {
        let mut count = 0;
        for issued in self
            .state
            .issued
            .iter_mut()
            .filter(|i| i.name == name && !i.revoked)
        {
            issued.revoked = true;
            count += 1;
        }
        if count == 0 {
            return Err(TlsError::Invalid(format!(
                "no live certificate named '{name}'"
            )));
        }
        self.save()?;
        self.write_crl()?;
        Ok(count)
    }

    /// A new CA key; every live certificate is re-issued under it with a new
    /// key. The old CA is no longer trusted: parties need their new files.
    /// Every validity and coordinator host is checked first, so that refusing
    /// one of them changes nothing.
    pub fn rotate(&mut self) -> Result<Vec<String>, TlsError> {
        let live: Vec<Issued> = self
            .state
            .issued
            .iter()
            .filter(|i| !i.revoked)
            .cloned()
            .collect();
        let now = OffsetDateTime::now_utc();
        expiry(now, self.state.ca_days, "the CA certificate")?;
        for issued in &live {
            expiry(now, issued.days, "a certificate")?;
            for host in &issued.hosts {
                check_host(kind_name(issued.kind), host)?;
            }
        }
        self.new_generation()?;
        let mut renewed = Vec::new();
        for issued in live {
            match issued.kind {
                IssuedKind::Site => self.issue_site_replacing(&issued.name, issued.days, true)?,
                kind => self.issue_server(&issued.name, kind, &issued.hosts, issued.days, true)?,
            };
            renewed.push(issued.name);
        }
        self.save()?;
        self.write_crl()?;
        Ok(renewed)
    }

    /// Writes the revocation list of the current CA generation.
    fn write_crl(&mut self) -> Result<(), TlsError> {
        self.state.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let revoked = self
            .state
            .issued
            .iter()
            .filter(|i| i.revoked && i.generation == self.state.generation)
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from(i.serial),
                revocation_time: now,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            })
            .collect();
        let crl = CertificateRevocationListParams {
            this_update: shifted(now, -Duration::minutes(5))?,
            next_update: shifted(now, Duration::days(30))?,
            crl_number: SerialNumber::from(self.state.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer()?)?;
        let pem = crl.pem()?;
        write(&self.dir.join("crl.pem"), &pem, false)?;
        // Every party checks the list: the coordinator and the aggregators
        // their members, sites their coordinator, gossip peers each other.
        let mut parties: Vec<PathBuf> = vec![self.coordinator_dir()];
        let mut named: Vec<(IssuedKind, &str)> = self
            .state
            .issued
            .iter()
            .filter(|i| i.kind != IssuedKind::Coordinator)
            .map(|i| (i.kind, i.name.as_str()))
            .collect();
        named.sort_unstable_by_key(|&(kind, name)| (kind_name(kind), name));
        named.dedup();
        parties.extend(
            named
                .into_iter()
                .map(|(kind, name)| self.party_dir(kind, name)),
        );
        for dir in parties.into_iter().filter(|dir| dir.exists()) {
            write(&dir.join("crl.pem"), &pem, false)?;
        }
        self.save()
    }

    /// Test support: a site certificate that expired yesterday.
    #[doc(hidden)]
    pub fn issue_expired_site(&mut self, site: &str) -> Result<PathBuf, TlsError> {
        let dns = site_dns_name(site)?;
        let yesterday = shifted(OffsetDateTime::now_utc(), -Duration::days(1))?;
        Ok(self
            .issue(site, IssuedKind::Site, vec![dns], 1, yesterday, true)?
            .dir)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    use super::*;
    use crate::certificate_names_site;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-ca-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Verifies `site`'s certificate as the coordinator would.
    fn verify(ca: &CaDir, site: &str) -> Result<(), String> {
        let cert = CertificateDer::from_pem_slice(
            read(&ca.site_dir(site).join("cert.pem"))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_slice(read(&ca.dir.join("ca.pem")).unwrap().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let crl = CertificateRevocationListDer::from_pem_slice(
            read(&ca.dir.join("crl.pem")).unwrap().as_bytes(),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(vec![crl])
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())?;
        if certificate_names_site(&cert, site) {
            Ok(())
        } else {
            Err("names another site".into())
        }
    }

    #[test]
    fn issue_revoke_expire_rotate() {
        let dir = scratch("lifecycle");
        let mut ca = CaDir::init(&dir, "test federation", 30).unwrap();
        assert!(CaDir::init(&dir, "again", 30).is_err());
        ca.issue_site("cleveland", 30).unwrap();
        ca.issue_site("va", 30).unwrap();
        ca.issue_coordinator(&["127.0.0.1".into(), "localhost".into()], 30)
            .unwrap();
        verify(&ca, "cleveland").unwrap();
        let va = CertificateDer::from_pem_slice(
            read(&ca.site_dir("va").join("cert.pem"))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(
            !certificate_names_site(&va, "cleveland"),
            "a certificate names one site only"
        );

        ca.revoke("va").unwrap();
        let err = verify(&ca, "va").unwrap_err();
        assert!(err.contains("Revoked"), "{err}");
        verify(&ca, "cleveland").unwrap();
        assert!(ca.revoke("va").is_err(), "nothing left to revoke");

        ca.issue_expired_site("old").unwrap();
        let err = verify(&ca, "old").unwrap_err();
        assert!(err.contains("Expired"), "{err}");

        let old_ca = read(&dir.join("ca.pem")).unwrap();
        let renewed = ca.rotate().unwrap();
        assert!(
            renewed.contains(&"cleveland".to_string())
                && renewed.contains(&"coordinator".to_string())
        );
        assert!(
            !renewed.contains(&"va".to_string()),
            "revoked stays revoked"
        );
        assert_ne!(old_ca, read(&dir.join("ca.pem")).unwrap());
        verify(&ca, "cleveland").unwrap();
        let reopened = CaDir::open(&dir).unwrap();
        assert_eq!(reopened.issued().len(), ca.issued().len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
