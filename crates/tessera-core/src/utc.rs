//! Wall-clock times for operators, one format everywhere: UTC to the
//! second, as `2026-12-02 05:58:45 UTC`. Formatting only: this crate never
//! reads a clock; callers give the instant.

/// `unix_micros` (microseconds since the Unix epoch) as a UTC date and time.
pub fn utc(unix_micros: u64) -> String {
    let seconds = unix_micros / 1_000_000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::utc;

    /// Known instants, across leap days and century years (checked against
    /// `date -u -d @SECONDS`).
    #[test]
    fn known_instants_read_as_their_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199_999_999), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc(4_102_444_800_000_000), "2100-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(1_796_190_525_000_000), "2026-12-02 05:48:45 UTC");
        assert_eq!(utc(1_798_761_599_000_000), "2026-12-31 23:59:59 UTC");
    }
}
