//! One MySQL value (binary protocol) to PostgreSQL's COPY text form, for the column's mapped
//! type. Exact or an error naming what is wrong: never a different value. No I/O.

use mysql_async::Value;

use crate::types::ZeroDates;

/// What a column's values become on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Integers, numeric, real, double: the number as text.
    Number,
    /// TINYINT(1) as boolean: 0 or 1 only.
    Boolean,
    /// `bit(n)`: the low n bits of the big-endian bytes.
    Bit(u32),
    /// DATE.
    Date,
    /// DATETIME (no zone).
    Timestamp,
    /// TIMESTAMP, read in UTC.
    TimestampTz,
    /// TIME as interval.
    Interval,
    /// Text, varchar, char, jsonb, enum labels: UTF-8 text.
    Text,
    /// ENUM: text, but MySQL's error value '' is refused.
    Enum,
    /// SET as text[].
    Set,
    /// bytea.
    Bytes,
}

impl Kind {
    /// The kind for a mapped PostgreSQL type.
    pub fn of(source_data_type: &str, target: &str) -> Kind {
        match (source_data_type, target) {
            (_, "boolean") => Kind::Boolean,
            (_, "bytea") => Kind::Bytes,
            (_, "text[]") => Kind::Set,
            ("enum", _) => Kind::Enum,
            (_, "date") => Kind::Date,
            (_, t) if t.starts_with("bit(") => Kind::Bit(t[4..t.len() - 1].parse().unwrap_or(1)),
            (_, t) if t.starts_with("timestamp(") && t.ends_with("with time zone") => Kind::TimestampTz,
            (_, t) if t.starts_with("timestamp(") => Kind::Timestamp,
            (_, t) if t.starts_with("interval") => Kind::Interval,
            (_, "smallint" | "integer" | "bigint" | "real" | "double precision") => Kind::Number,
            (_, t) if t.starts_with("numeric") => Kind::Number,
            _ => Kind::Text,
        }
    }
}

/// Appends `v` to a COPY text line. Err says what is wrong with the value (the caller names
/// the row and column).
pub fn write(out: &mut Vec<u8>, v: &Value, kind: &Kind, zero_dates: ZeroDates) -> Result<(), String> {
    if !write_form(out, v, kind, zero_dates, true)? {
        out.extend_from_slice(b"\\N");
    }
    Ok(())
}

/// The value's PostgreSQL input text (not escaped for COPY), for SQL parameters and
/// literals; None for NULL (or a zero date under `--zero-dates null`).
pub fn text_of(v: &Value, kind: &Kind, zero_dates: ZeroDates) -> Result<Option<String>, String> {
    let mut out = Vec::new();
    if !write_form(&mut out, v, kind, zero_dates, false)? {
        return Ok(None);
    }
    // Only UTF-8 is ever written (text is checked, everything else is ASCII).
    String::from_utf8(out).map(Some).map_err(|_| "not UTF-8".to_string())
}

/// Writes the value's text, escaped for COPY when `copy`; false for NULL (nothing written).
fn write_form(out: &mut Vec<u8>, v: &Value, kind: &Kind, zero_dates: ZeroDates, copy: bool) -> Result<bool, String> {
    let escape_char = |out: &mut Vec<u8>, c: char| {
        if copy {
            escape_char(out, c)
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    };
    match v {
        Value::NULL => return Ok(false),
        Value::Int(i) => match kind {
            Kind::Boolean => match i {
                0 => out.push(b'f'),
                1 => out.push(b't'),
                _ => {
                    return Err(format!(
                        "{i} is not a boolean (0 or 1): map TINYINT(1) to smallint (drop --tinyint1-boolean)"
                    ))
                }
            },
            _ => out.extend_from_slice(i.to_string().as_bytes()),
        },
        Value::UInt(u) => match kind {
            Kind::Boolean if *u <= 1 => out.push(if *u == 1 { b't' } else { b'f' }),
            Kind::Boolean => return Err(format!("{u} is not a boolean (0 or 1)")),
            _ => out.extend_from_slice(u.to_string().as_bytes()),
        },
        // Rust prints the shortest text that reads back as the same binary value.
        Value::Float(f) => out.extend_from_slice(format!("{f:?}").as_bytes()),
        Value::Double(d) => out.extend_from_slice(format!("{d:?}").as_bytes()),
        Value::Bytes(b) => match kind {
            Kind::Bytes => {
                out.extend_from_slice(if copy { b"\\\\x" } else { b"\\x" });
                for byte in b {
                    out.extend_from_slice(format!("{byte:02x}").as_bytes());
                }
            }
            Kind::Bit(n) => {
                let mut bits = String::with_capacity(b.len() * 8);
                for byte in b {
                    bits.push_str(&format!("{byte:08b}"));
                }
                let n = *n as usize;
                let bits = if bits.len() >= n {
                    bits[bits.len() - n..].to_string()
                } else {
                    format!("{}{bits}", "0".repeat(n - bits.len()))
                };
                out.extend_from_slice(bits.as_bytes());
            }
            Kind::Enum if b.is_empty() => {
                return Err(
                    "the ENUM holds MySQL's error value '' (written outside strict mode), which is not one of its labels: \
                            fix the row on the source"
                        .into(),
                )
            }
            Kind::Set => {
                let s = text(b)?;
                out.push(b'{');
                for (i, member) in s.split(',').filter(|m| !m.is_empty()).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Array element quoted, inside COPY's own escaping.
                    out.push(b'"');
                    for c in member.chars() {
                        if c == '"' || c == '\\' {
                            // The array's own escape, itself escaped for COPY.
                            out.extend_from_slice(if copy { b"\\\\" } else { b"\\" });
                        }
                        escape_char(out, c);
                    }
                    out.push(b'"');
                }
                out.push(b'}');
            }
            Kind::Boolean => match b.as_slice() {
                b"0" => out.push(b'f'),
                b"1" => out.push(b't'),
                other => return Err(format!("{} is not a boolean (0 or 1)", String::from_utf8_lossy(other))),
            },
            _ => {
                for c in text(b)?.chars() {
                    escape_char(out, c);
                }
            }
        },
        Value::Date(y, mo, d, h, mi, s, us) => {
            if *y == 0 || *mo == 0 || *d == 0 {
                return match zero_dates {
                    ZeroDates::Null => Ok(false),
                    ZeroDates::Error => Err(format!(
                        "zero date {y:04}-{mo:02}-{d:02}: PostgreSQL has no such date; fix the row on the source, or pass --zero-dates null to write NULL"
                    )),
                };
            }
            match kind {
                Kind::Date => out.extend_from_slice(format!("{y:04}-{mo:02}-{d:02}").as_bytes()),
                _ => {
                    out.extend_from_slice(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}").as_bytes());
                    if *kind == Kind::TimestampTz {
                        out.extend_from_slice(b"+00");
                    }
                }
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            out.extend_from_slice(format!("{}{hours}:{mi:02}:{s:02}.{us:06}", if *neg { "-" } else { "" }).as_bytes());
        }
    }
    Ok(true)
}

fn text(b: &[u8]) -> Result<&str, String> {
    let s = std::str::from_utf8(b).map_err(|_| "the text is not valid UTF-8 after conversion by the server".to_string())?;
    if s.contains('\0') {
        return Err("the text contains a NUL byte, which PostgreSQL text cannot hold: map the column to bytea, or fix the row".into());
    }
    Ok(s)
}

fn escape_char(out: &mut Vec<u8>, c: char) {
    match c {
        '\\' => out.extend_from_slice(b"\\\\"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        c => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: Value, kind: Kind) -> Result<String, String> {
        let mut out = Vec::new();
        write(&mut out, &v, &kind, ZeroDates::Error)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn numbers_exact() {
        assert_eq!(w(Value::UInt(u64::MAX), Kind::Number).unwrap(), "18446744073709551615");
        assert_eq!(w(Value::Int(i64::MIN), Kind::Number).unwrap(), "-9223372036854775808");
        assert_eq!(w(Value::Float(0.1), Kind::Number).unwrap(), "0.1");
        assert_eq!(w(Value::Double(1e-300), Kind::Number).unwrap(), "1e-300");
        assert_eq!(
            w(Value::Bytes(b"-12345.678900000000000000000000000000".to_vec()), Kind::Number).unwrap(),
            "-12345.678900000000000000000000000000"
        );
        assert_eq!(w(Value::Int(1), Kind::Boolean).unwrap(), "t");
        assert!(w(Value::Int(2), Kind::Boolean).is_err());
    }

    #[test]
    fn text_bytes_bits_sets() {
        assert_eq!(w(Value::Bytes("a\tb\\c\n😀".into()), Kind::Text).unwrap(), "a\\tb\\\\c\\n😀");
        assert_eq!(w(Value::Bytes(vec![]), Kind::Text).unwrap(), "");
        assert_eq!(w(Value::Bytes(vec![0, 255]), Kind::Bytes).unwrap(), "\\\\x00ff");
        assert_eq!(w(Value::Bytes(vec![0x80, 0, 0, 0, 0, 0, 0, 1]), Kind::Bit(64)).unwrap().len(), 64);
        assert_eq!(w(Value::Bytes(vec![5]), Kind::Bit(3)).unwrap(), "101");
        assert_eq!(w(Value::Bytes(b"r,x".to_vec()), Kind::Set).unwrap(), "{\"r\",\"x\"}");
        assert_eq!(w(Value::Bytes(b"".to_vec()), Kind::Set).unwrap(), "{}");
        assert!(w(Value::Bytes(b"".to_vec()), Kind::Enum).is_err());
        assert!(w(Value::Bytes(b"a\0b".to_vec()), Kind::Text).is_err());
    }

    #[test]
    fn dates_times_and_zero_dates() {
        assert_eq!(
            w(Value::Date(2024, 2, 29, 23, 59, 58, 123456), Kind::Timestamp).unwrap(),
            "2024-02-29 23:59:58.123456"
        );
        assert_eq!(
            w(Value::Date(2024, 2, 29, 1, 2, 3, 4), Kind::TimestampTz).unwrap(),
            "2024-02-29 01:02:03.000004+00"
        );
        assert_eq!(w(Value::Date(1, 1, 1, 0, 0, 0, 0), Kind::Date).unwrap(), "0001-01-01");
        assert!(w(Value::Date(0, 0, 0, 0, 0, 0, 0), Kind::Date).unwrap_err().contains("zero date"));
        let mut out = Vec::new();
        write(&mut out, &Value::Date(2020, 0, 1, 0, 0, 0, 0), &Kind::Date, ZeroDates::Null).unwrap();
        assert_eq!(out, b"\\N");
        assert_eq!(
            w(Value::Time(true, 34, 22, 59, 59, 0), Kind::Interval).unwrap(),
            "-838:59:59.000000"
        );
    }
}
