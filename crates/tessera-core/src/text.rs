//! Text from outside, bounded before it is echoed or kept.

use std::borrow::Cow;

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` for a message: whole when at most `max` bytes, else its first
/// `max` bytes and how long it was; control characters escaped either way
/// (see [`one_line`]).
pub fn shown(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        one_line(text)
    } else {
        Cow::Owned(format!(
            "{}... ({} bytes in all)",
            one_line(cut(text, max)),
            text.len()
        ))
    }
}

/// `text` with its control characters (line breaks among them) escaped, so
/// that a message quoting a name or value from outside stays on one line.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// `x` for a message quoting a setting: its shortest exact form, in
/// scientific notation when tiny or huge (1e300 is not 301 digits).
pub fn value<T>(x: T) -> String
where
    T: Copy + Into<f64> + std::fmt::Display + std::fmt::LowerExp,
{
    let wide: f64 = x.into();
    if wide != 0.0 && wide.is_finite() && !(1e-4..1e15).contains(&wide.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// `x` for a message: plain for ordinary magnitudes, in scientific
/// notation when tiny or huge (1e-300 is not 300 digits), to at most
/// `digits` decimals.
pub fn number(x: f64, digits: usize) -> String {
    if x != 0.0 && x.is_finite() && !(1e-4..1e9).contains(&x.abs()) {
        format!("{x:.digits$e}")
    } else {
        let plain = format!("{x:.digits$}");
        if plain.contains('.') {
            plain
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        } else {
            plain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries_and_says_how_long() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(shown("short", 10), "short");
        assert_eq!(shown("abcdef", 3), "abc... (6 bytes in all)");
        assert_eq!(shown("a\nbcdef", 3), "a\\nb... (7 bytes in all)");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("a\nb\tc\u{1b}"), "a\\nb\\tc\\u{1b}");
    }

    #[test]
    fn values_stay_short_and_exact() {
        assert_eq!(value(1e300), "1e300");
        assert_eq!(value(-1e-300), "-1e-300");
        assert_eq!(value(1.5), "1.5");
        assert_eq!(value(0.1), "0.1");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(1e30), "1e30");
        assert_eq!(value(1.1f32), "1.1");
        assert_eq!(value(1e-40f32), "1e-40");
    }

    #[test]
    fn numbers_stay_short() {
        assert_eq!(number(1e-300, 4), "1.0000e-300");
        assert_eq!(number(1e300, 4), "1.0000e300");
        assert_eq!(number(2.5, 4), "2.5");
        assert_eq!(number(3.0, 4), "3");
        assert_eq!(number(0.0, 4), "0");
    }
}
