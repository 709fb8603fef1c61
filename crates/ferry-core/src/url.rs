//! What every engine's connection URL shares.

use std::fmt;

/// Why a %-escaped text does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PercentError {
    /// A `%` not followed by two hexadecimal digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for PercentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PercentError::BadEscape => "a % is not followed by two hexadecimal digits",
            PercentError::NotUtf8 => "the text is not UTF-8 once %-decoded",
        })
    }
}

/// Decodes a URL part's `%XX` escapes (RFC 3986; a `+` stays a `+`).
pub fn percent_decode(s: &str) -> Result<String, PercentError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PercentError::BadEscape)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PercentError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(percent_decode("a%40b%2Fc+d").unwrap(), "a@b/c+d");
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
        assert_eq!(percent_decode("50%"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%zz"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%ff"), Err(PercentError::NotUtf8));
    }
}
