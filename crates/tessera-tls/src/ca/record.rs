//! What the CA says about the certificates it issued: their status at a
//! moment, their dates in UTC, one line naming each.

use std::path::PathBuf;

use super::{Issued, IssuedKind};
use crate::{TlsError, site_dns_name};

/// Where a certificate stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Unrevoked and not expired.
    Live,
    /// Revoked (by `revoke`, a replacement or a rotation).
    Revoked,
    /// Past its end of validity, never revoked.
    Expired,
}

impl std::fmt::Display for CertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertStatus::Live => "live",
            CertStatus::Revoked => "revoked",
            CertStatus::Expired => "expired",
        })
    }
}

/// What issuing did: the new certificate's folder and record, and the
/// certificates of the same kind and name it revoked.
#[derive(Debug, Clone)]
pub struct Issuance {
    /// The folder of the new files (cert.pem, key.pem, ca.pem, crl.pem).
    pub dir: PathBuf,
    /// The new certificate.
    pub issued: Issued,
    /// The previous certificates of the same kind and name, now revoked.
    pub replaced: Vec<Issued>,
}

/// Unix seconds as `2026-12-02 06:00:00 UTC` ([`tessera_core::utc`]);
/// an instant outside years 1970 to 9999 as its number.
pub fn utc(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(seconds) if seconds <= 253_402_300_799 => tessera_core::utc(seconds * 1_000_000),
        _ => format!("{unix} (Unix seconds)"),
    }
}

/// The kind's word in messages and listings.
pub(super) fn kind_name(kind: IssuedKind) -> &'static str {
    match kind {
        IssuedKind::Site => "site",
        IssuedKind::Coordinator => "coordinator",
        IssuedKind::Aggregator => "aggregator",
    }
}

/// Checks a site's or aggregator's name (`role`) for a certificate and its
/// folder; the site's certificate name.
pub(super) fn party_name(role: &str, name: &str) -> Result<String, TlsError> {
    let dns = site_dns_name(name)?;
    if name == "coordinator" || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(TlsError::Invalid(format!(
            "'{}' cannot be {} {role} name",
            name.escape_debug(),
            if role == "aggregator" { "an" } else { "a" }
        )));
    }
    Ok(dns)
}

impl Issued {
    /// Its status at `now_unix` (Unix seconds).
    pub fn status(&self, now_unix: i64) -> CertStatus {
        if self.revoked {
            CertStatus::Revoked
        } else if self.not_after_unix <= now_unix {
            CertStatus::Expired
        } else {
            CertStatus::Live
        }
    }

    /// The kind's word: site, coordinator or aggregator.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }

    /// One line naming it: kind, name, serial, dates.
    pub fn describe(&self) -> String {
        let issued = if self.not_before_unix == 0 {
            String::new()
        } else {
            format!("valid from {} ", utc(self.not_before_unix))
        };
        let name = if self.kind == IssuedKind::Coordinator {
            String::new()
        } else {
            format!(" '{}'", self.name)
        };
        format!(
            "the {} certificate{name} (serial {}, {issued}until {})",
            self.kind_name(),
            self.serial,
            utc(self.not_after_unix)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_191_200), "2026-12-02 06:00:00 UTC");
        assert_eq!(utc(i64::MAX), format!("{} (Unix seconds)", i64::MAX));
    }
}
