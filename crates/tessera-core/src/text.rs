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
/// `max` bytes and how long it was.
pub fn shown(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!(
            "{}... ({} bytes in all)",
            cut(text, max),
            text.len()
        ))
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
    }
}
