//! Text rules shared by the formats and by the tools that print them.
//!
//! Names that reach an operator's terminal (object names and owners, instance
//! names, snapshot descriptions) must not be able to move the cursor, change
//! colours or reorder what is shown around them. Two kinds of characters can:
//! control characters (Unicode category Cc: C0, DEL and the C1 range, whose
//! U+009B is a one-byte CSI on some terminals) and invisible formatting
//! characters (category Cf: the bidi embeddings, overrides and isolates
//! U+202A–U+202E and U+2066–U+2069, marks like U+200E, zero-width space
//! U+200B, U+FEFF, the tag characters U+E0000–U+E007F, ...).
//!
//! Object names refuse both ([`is_hidden`]), except U+200C ZERO WIDTH
//! NON-JOINER and U+200D ZERO WIDTH JOINER, which Persian, the Indic scripts
//! and emoji sequences need and which reorder nothing. Output escapes the
//! same set ([`escape_hidden`]).

use std::borrow::Cow;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Whether `c` is an invisible formatting character (general category Cf).
pub fn is_format(c: char) -> bool {
    // (No ASCII character is: the table lookup is for the rest.)
    !c.is_ascii() && c.general_category() == GeneralCategory::Format
}

/// Whether `c` is refused in object names and escaped on output: a control
/// character (Cc), or a formatting character (Cf) other than ZWNJ/ZWJ.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || (is_format(c) && c != '\u{200c}' && c != '\u{200d}')
}

/// The first character of `s` that [`is_hidden`] refuses, if any.
pub fn first_hidden(s: &str) -> Option<char> {
    s.chars().find(|c| is_hidden(*c))
}

/// `s` with every [`is_hidden`] character written as `\u{XXXX}` (upper-case
/// hex, at least four digits), so that printing it cannot move the cursor,
/// colour or reorder the terminal's text. Borrowed when nothing needs it.
pub fn escape_hidden(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_hidden(c) {
            out.push_str(&format!("\\u{{{:04X}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters() {
        for c in [
            '\0',
            '\n',
            '\u{1b}',
            '\u{7f}',
            '\u{9b}',
            '\u{200b}',
            '\u{200e}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{e0041}',
            '\u{00ad}',
        ] {
            assert!(is_hidden(c), "{:04X}", c as u32);
        }
        for c in ['a', ' ', 'é', 'ß', '\u{200c}', '\u{200d}', '😀', '中', 'ا'] {
            assert!(!is_hidden(c), "{:04X}", c as u32);
        }
    }

    #[test]
    fn escaping() {
        assert!(matches!(escape_hidden("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_hidden("a\u{1b}[31mb\u{202e}c"),
            "a\\u{001B}[31mb\\u{202E}c"
        );
        assert_eq!(escape_hidden("\u{e0041}"), "\\u{E0041}");
    }
}
