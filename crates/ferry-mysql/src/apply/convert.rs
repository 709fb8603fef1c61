//! PostgreSQL's text output of a value (what pgoutput sends) to the MySQL value of the column it
//! came from: the reverse of `docs/mysql-types.md`, one function per row of the map. Exact or
//! an error naming the value: a value MySQL cannot hold (infinity, a BC date, NaN, an interval
//! with months) is never replaced by another one. No I/O.
//!
//! The text forms are those of PostgreSQL's defaults, which the sink checks at open
//! (`DateStyle` ISO, `IntervalStyle` postgres): `2024-01-02 03:04:05.123456+05:30`,
//! `-1 days +02:00:00`, `\x0aff`, `{a,"b c"}`.

use mysql_async::Value;

/// How one column's values are converted, decided once per column from its MySQL
/// `DATA_TYPE`/`COLUMN_TYPE` and the PostgreSQL type of the stream's relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conv {
    /// PostgreSQL boolean (TINYINT(1) with `--tinyint1-boolean`): `t`/`f` to 1/0.
    Bool,
    /// Integer types and YEAR: the number, as a signed or unsigned integer parameter.
    Int {
        /// `UNSIGNED`.
        unsigned: bool,
    },
    /// DECIMAL(p,s): the text; compared through `CAST(? AS DECIMAL(p,s))` (a string against a
    /// decimal compares as double in MySQL).
    Decimal {
        /// `decimal(p,s)` as MySQL spells it in `COLUMN_TYPE`.
        cast: String,
    },
    /// FLOAT: the single-precision value PostgreSQL's `real` printed.
    Float,
    /// DOUBLE.
    Double,
    /// BIT(n): PostgreSQL's `0101` to the integer.
    Bit,
    /// DATE.
    Date,
    /// DATETIME: `timestamp without time zone`.
    DateTime,
    /// TIMESTAMP: `timestamp with time zone`, moved to UTC (the session's time zone).
    Timestamp,
    /// TIME: `interval second(p)` to `[-]HHH:MM:SS.ffffff`.
    Time,
    /// BINARY/VARBINARY/BLOB (PostgreSQL `bytea`): the raw bytes.
    Bytes,
    /// SET (PostgreSQL `text[]`): the members joined by commas.
    Set,
    /// JSON (MySQL) or MariaDB's JSON LONGTEXT (PostgreSQL `jsonb`): the text.
    Json,
    /// Character types and ENUM: the text (CHAR without PostgreSQL's padding).
    Text {
        /// CHAR(n): PostgreSQL pads `char(n)` with spaces, MySQL strips them on read.
        char: bool,
    },
}

impl Conv {
    /// The conversion for a MySQL column (`data_type`, `column_type` as `information_schema`
    /// has them) whose values arrive as PostgreSQL type `pg_type` (`format_type`).
    pub fn of(data_type: &str, column_type: &str, pg_type: &str) -> Result<Conv, String> {
        let data_type = data_type.to_ascii_lowercase();
        let column_type = column_type.to_ascii_lowercase();
        Ok(match (data_type.as_str(), pg_type) {
            (_, "boolean") => Conv::Bool,
            (_, "bytea") => Conv::Bytes,
            (_, t) if t.ends_with("[]") => Conv::Set,
            (_, "jsonb" | "json") => Conv::Json,
            ("tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint", _) => Conv::Int {
                unsigned: column_type.contains("unsigned"),
            },
            ("year", _) => Conv::Int { unsigned: false },
            ("decimal" | "numeric", _) => Conv::Decimal {
                cast: column_type
                    .split_whitespace()
                    .next()
                    .unwrap_or("decimal")
                    .replace("numeric", "decimal"),
            },
            ("float", _) => Conv::Float,
            ("double" | "real" | "double precision", _) => Conv::Double,
            ("bit", _) => Conv::Bit,
            ("date", _) => Conv::Date,
            ("datetime", _) => Conv::DateTime,
            ("timestamp", t) if t.contains("with time zone") && !t.contains("without") => Conv::Timestamp,
            ("timestamp", _) => Conv::DateTime,
            ("time", _) => Conv::Time,
            ("binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob", _) => Conv::Bytes,
            ("set", _) => Conv::Set,
            ("json", _) => Conv::Json,
            ("char", _) => Conv::Text { char: true },
            ("varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum", _) => Conv::Text { char: false },
            (other, _) => {
                return Err(format!(
                    "MySQL type {other} ({column_type}) has no reverse mapping from PostgreSQL {pg_type} (docs/mysql-types.md)"
                ))
            }
        })
    }

    /// The MySQL value for PostgreSQL's text output `text` of a non-NULL value.
    pub fn value(&self, text: &[u8]) -> Result<Value, String> {
        let s = || std::str::from_utf8(text).map_err(|_| "the value is not valid UTF-8".to_string());
        Ok(match self {
            Conv::Bool => match text {
                b"t" | b"true" => Value::Int(1),
                b"f" | b"false" => Value::Int(0),
                _ => return Err(format!("{:?} is not a boolean", s()?)),
            },
            Conv::Int { unsigned: false } => Value::Int(
                s()?.parse::<i64>()
                    .map_err(|_| format!("{} is not an integer MySQL can hold", s().unwrap_or_default()))?,
            ),
            Conv::Int { unsigned: true } => Value::UInt(
                s()?.parse::<u64>()
                    .map_err(|_| format!("{} is not an unsigned integer MySQL can hold", s().unwrap_or_default()))?,
            ),
            Conv::Decimal { cast } => {
                let v = s()?;
                if !v.bytes().any(|b| b.is_ascii_digit()) {
                    return Err(format!("{v} cannot be stored in MySQL {}", cast.to_ascii_uppercase()));
                }
                Value::Bytes(text.to_vec())
            }
            Conv::Float => {
                let f: f32 = float(s()?)?;
                Value::Float(f)
            }
            Conv::Double => Value::Double(float(s()?)?),
            Conv::Bit => Value::UInt(bits(s()?)?),
            Conv::Date => {
                let v = s()?;
                let (date, rest) = split_date(v)?;
                if !rest.is_empty() {
                    return Err(format!("{v} is not a date"));
                }
                Value::Bytes(date.into_bytes())
            }
            Conv::DateTime => {
                let t = Stamp::parse(s()?)?;
                if t.offset_s.is_some() {
                    return Err(format!("{} carries a time zone; the MySQL column is DATETIME", s()?));
                }
                Value::Bytes(t.format().into_bytes())
            }
            Conv::Timestamp => Value::Bytes(Stamp::parse(s()?)?.to_utc()?.format().into_bytes()),
            Conv::Time => Value::Bytes(time(s()?)?.into_bytes()),
            Conv::Bytes => Value::Bytes(bytea(text)?),
            Conv::Set => Value::Bytes(set(s()?)?.into_bytes()),
            Conv::Json => Value::Bytes(text.to_vec()),
            Conv::Text { char: true } => {
                let end = text.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                Value::Bytes(text[..end].to_vec())
            }
            Conv::Text { char: false } => Value::Bytes(text.to_vec()),
        })
    }
}

/// A float or double from PostgreSQL's shortest exact output; NaN and infinities, which MySQL
/// cannot store, are errors.
fn float<F: std::str::FromStr + Into<f64> + Copy>(s: &str) -> Result<F, String> {
    let v: F = s.parse().map_err(|_| format!("{s} is not a number"))?;
    if !v.into().is_finite() {
        return Err(format!(
            "{s} cannot be stored in a MySQL FLOAT or DOUBLE (no NaN or infinity there)"
        ));
    }
    Ok(v)
}

/// `bit(n)` text (`0101`) to its integer value.
fn bits(s: &str) -> Result<u64, String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b == b'0' || b == b'1') {
        return Err(format!("{s} is not a bit string MySQL's BIT can hold (1 to 64 bits)"));
    }
    u64::from_str_radix(s, 2).map_err(|_| format!("{s} is not a bit string"))
}

/// `bytea` output: hex (`\x0aff`, the default) or escape format (`a\000\\`).
pub fn bytea(text: &[u8]) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err("a bytea hex value with an odd number of digits".into());
        }
        return hex
            .chunks(2)
            .map(|p| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "a bytea hex value with a non-hex digit".to_string())
            })
            .collect();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' if text.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            b'\\' => {
                let oct = text
                    .get(i + 1..i + 4)
                    .and_then(|o| std::str::from_utf8(o).ok())
                    .and_then(|o| u8::from_str_radix(o, 8).ok())
                    .ok_or_else(|| "a bytea escape that is not \\\\ or three octal digits".to_string())?;
                out.push(oct);
                i += 4;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A one-dimensional `text[]` literal (`{a,"b c","d\"e"}`) to MySQL's SET text (`a,b c,d"e`).
pub fn set(s: &str) -> Result<String, String> {
    // A lower bound other than 1 is printed as a decoration: `[0:1]={a,b}`.
    let body = match s.strip_prefix('[') {
        Some(_) => s.split_once('=').map(|(_, b)| b).unwrap_or(s),
        None => s,
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| format!("{s} is not an array literal"))?;
    let mut members: Vec<String> = Vec::new();
    let mut chars = inner.chars().peekable();
    if inner.trim().is_empty() {
        return Ok(String::new());
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut member = String::new();
        match chars.peek() {
            Some('"') => {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => member.push(chars.next().ok_or_else(|| format!("{s}: an escape at the end"))?),
                        Some('"') => break,
                        Some(c) => member.push(c),
                        None => return Err(format!("{s}: an unterminated quoted member")),
                    }
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some('{') => return Err(format!("{s} is a multi-dimensional array; a MySQL SET is a list of members")),
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        member.push(chars.next().ok_or_else(|| format!("{s}: an escape at the end"))?);
                    } else {
                        member.push(c);
                    }
                }
                let trimmed = member.trim_end().to_string();
                if trimmed.eq_ignore_ascii_case("null") {
                    return Err(format!("{s} holds a NULL member, which a MySQL SET cannot hold"));
                }
                member = trimmed;
            }
        }
        if member.contains(',') {
            return Err(format!("{s}: member {member:?} holds a comma, which a MySQL SET member cannot"));
        }
        members.push(member);
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => return Err(format!("{s}: unexpected {c:?} after a member")),
        }
    }
    Ok(members.join(","))
}

/// `YYYY-MM-DD` at the start of `s` (and what follows), refusing what MySQL cannot hold:
/// infinity, BC dates, years past 9999.
fn split_date(s: &str) -> Result<(String, &str), String> {
    if s.ends_with(" BC") {
        return Err(format!("{s} is a BC date; MySQL dates start at year 0001"));
    }
    if s.contains("infinity") {
        return Err(format!("{s} cannot be stored in MySQL (no infinite dates there)"));
    }
    let dash = s.find('-').ok_or_else(|| format!("{s} is not an ISO date (DateStyle ISO)"))?;
    let year = &s[..dash];
    if year.len() > 4 {
        return Err(format!("{s}: MySQL years end at 9999"));
    }
    let date = s
        .get(..dash + 6)
        .filter(|d| d.len() == dash + 6)
        .ok_or_else(|| format!("{s} is not an ISO date"))?;
    let ok = year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
        && date.as_bytes()[dash + 3] == b'-'
        && date[dash + 1..dash + 3]
            .bytes()
            .chain(date[dash + 4..].bytes())
            .all(|b| b.is_ascii_digit());
    if !ok {
        return Err(format!("{s} is not an ISO date (DateStyle ISO)"));
    }
    Ok((date.to_string(), &s[dash + 6..]))
}

/// A timestamp as PostgreSQL prints it in DateStyle ISO, with the offset when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    us: u32,
    /// East of UTC, in seconds (`+05:30` is 19800).
    offset_s: Option<i64>,
}

impl Stamp {
    fn parse(text: &str) -> Result<Stamp, String> {
        let (date, rest) = split_date(text)?;
        let bad = || format!("{text} is not an ISO timestamp (DateStyle ISO)");
        let rest = rest.strip_prefix(' ').ok_or_else(bad)?;
        let num = |t: &str| t.parse::<u32>().map_err(|_| bad());
        let (clock, zone) = match rest.find(['+', '-']) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let mut parts = hms.split(':');
        let (h, mi, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(m), Some(s), None) if h.len() == 2 && m.len() == 2 && s.len() == 2 => (num(h)?, num(m)?, num(s)?),
            _ => return Err(bad()),
        };
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let us = if frac.is_empty() { 0 } else { num(&format!("{frac:0<6}"))? };
        let offset_s = match zone {
            None => None,
            Some(z) => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let mut total = 0i64;
                for (i, part) in z[1..].split(':').enumerate() {
                    if i > 2 || part.len() != 2 {
                        return Err(bad());
                    }
                    total += i64::from(num(part)?) * [3600, 60, 1][i];
                }
                Some(sign * total)
            }
        };
        Ok(Stamp {
            y: date[..4].parse().map_err(|_| bad())?,
            mo: num(&date[5..7])?,
            d: num(&date[8..10])?,
            h,
            mi,
            s,
            us,
            offset_s,
        })
    }

    /// The same instant in UTC.
    fn to_utc(&self) -> Result<Stamp, String> {
        let offset = self
            .offset_s
            .ok_or_else(|| "a timestamp with time zone without its offset".to_string())?;
        let secs = days_from_civil(self.y, self.mo, self.d) * 86_400 + i64::from(self.h * 3600 + self.mi * 60 + self.s) - offset;
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400) as u32;
        if !(1..=9999).contains(&y) {
            return Err(format!("{:04}-{mo:02}-{d:02} (UTC) is outside MySQL's years 0001 to 9999", y));
        }
        Ok(Stamp {
            y,
            mo,
            d,
            h: rem / 3600,
            mi: rem % 3600 / 60,
            s: rem % 60,
            us: self.us,
            offset_s: Some(0),
        })
    }

    fn format(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
            self.y, self.mo, self.d, self.h, self.mi, self.s, self.us
        )
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The largest TIME magnitude MariaDB accepts (MySQL stops at 838:59:59.000000 and refuses the
/// rest itself), in microseconds.
const TIME_MAX_US: i128 = (838 * 3600 + 59 * 60 + 59) as i128 * 1_000_000 + 999_999;

/// An interval in IntervalStyle postgres (`1 day 02:00:00`, `-1 days +02:00:00`,
/// `-838:59:59.5`) to MySQL's TIME text `[-]HHH:MM:SS.ffffff`.
pub fn time(s: &str) -> Result<String, String> {
    let bad = || format!("{s} is not an interval in IntervalStyle postgres");
    let mut total: i128 = 0;
    let mut words = s.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (neg, body) = match w.as_bytes()[0] {
                b'-' => (true, &w[1..]),
                b'+' => (false, &w[1..]),
                _ => (false, w),
            };
            let (hms, frac) = body.split_once('.').unwrap_or((body, ""));
            let parts: Vec<&str> = hms.split(':').collect();
            if parts.len() != 3 || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n = |t: &str| t.parse::<i128>().map_err(|_| bad());
            let us = if frac.is_empty() { 0 } else { n(&format!("{frac:0<6}"))? };
            let v = ((n(parts[0])? * 60 + n(parts[1])?) * 60 + n(parts[2])?) * 1_000_000 + us;
            total += if neg { -v } else { v };
            continue;
        }
        let n: i128 = w.parse().map_err(|_| bad())?;
        match words.next().map(|u| u.trim_end_matches('s')) {
            Some("day") => total += n * 86_400 * 1_000_000,
            Some("year" | "mon") if n != 0 => {
                return Err(format!(
                    "{s} counts months or years, which a MySQL TIME (a duration in hours) cannot hold"
                ))
            }
            Some("year" | "mon") => {}
            _ => return Err(bad()),
        }
    }
    if total.abs() > TIME_MAX_US {
        return Err(format!("{s} is outside MySQL TIME's range (-838:59:59 to 838:59:59)"));
    }
    let sign = if total < 0 { "-" } else { "" };
    let a = total.abs();
    let (secs, us) = (a / 1_000_000, a % 1_000_000);
    Ok(format!("{sign}{:02}:{:02}:{:02}.{us:06}", secs / 3600, secs % 3600 / 60, secs % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(conv: Conv, text: &str) -> Result<Value, String> {
        conv.value(text.as_bytes())
    }

    fn bytes(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn conversions_are_chosen_from_both_types() {
        assert_eq!(Conv::of("tinyint", "tinyint(1)", "boolean").unwrap(), Conv::Bool);
        assert_eq!(
            Conv::of("tinyint", "tinyint(1)", "smallint").unwrap(),
            Conv::Int { unsigned: false }
        );
        assert_eq!(
            Conv::of("bigint", "bigint(20) unsigned", "numeric(20,0)").unwrap(),
            Conv::Int { unsigned: true }
        );
        assert_eq!(
            Conv::of("decimal", "decimal(65,30)", "numeric(65,30)").unwrap(),
            Conv::Decimal {
                cast: "decimal(65,30)".into()
            }
        );
        assert_eq!(Conv::of("varbinary", "varbinary(16)", "bytea").unwrap(), Conv::Bytes);
        assert_eq!(Conv::of("set", "set('a','b')", "text[]").unwrap(), Conv::Set);
        assert_eq!(Conv::of("longtext", "longtext", "jsonb").unwrap(), Conv::Json);
        assert_eq!(
            Conv::of("timestamp", "timestamp(6)", "timestamp(6) with time zone").unwrap(),
            Conv::Timestamp
        );
        assert_eq!(
            Conv::of("datetime", "datetime(6)", "timestamp(6) without time zone").unwrap(),
            Conv::DateTime
        );
        assert_eq!(Conv::of("char", "char(3)", "character(3)").unwrap(), Conv::Text { char: true });
        assert!(Conv::of("geometry", "geometry", "bytea").is_ok(), "bytea on the way back is bytes");
        assert!(Conv::of("point", "point", "text").unwrap_err().contains("no reverse mapping"));
    }

    #[test]
    fn numbers_are_exact_and_refuse_what_mysql_cannot_hold() {
        let u = Conv::Int { unsigned: true };
        assert_eq!(v(u.clone(), "18446744073709551615").unwrap(), Value::UInt(u64::MAX));
        assert!(v(u, "-1").is_err());
        let i = Conv::Int { unsigned: false };
        assert_eq!(v(i.clone(), "-9223372036854775808").unwrap(), Value::Int(i64::MIN));
        assert!(v(i, "1.5").is_err());
        assert_eq!(v(Conv::Bool, "t").unwrap(), Value::Int(1));
        assert_eq!(v(Conv::Bool, "f").unwrap(), Value::Int(0));
        assert!(v(Conv::Bool, "x").is_err());
        let d = Conv::Decimal {
            cast: "decimal(65,30)".into(),
        };
        let long = "-12345678901234567890123456789012345.123456789012345678901234567890";
        assert_eq!(v(d.clone(), long).unwrap(), bytes(long));
        for bad in ["NaN", "Infinity", "-Infinity"] {
            assert!(v(d.clone(), bad).unwrap_err().contains(bad), "{bad}");
            assert!(v(Conv::Double, bad).unwrap_err().contains(bad), "{bad}");
            assert!(v(Conv::Float, bad).is_err(), "{bad}");
        }
        assert_eq!(v(Conv::Double, "1e-300").unwrap(), Value::Double(1e-300));
        assert_eq!(
            v(Conv::Double, "2.2250738585072014e-308").unwrap(),
            Value::Double(2.2250738585072014e-308)
        );
        assert_eq!(v(Conv::Float, "-3.4e+38").unwrap(), Value::Float(-3.4e38));
        assert_eq!(v(Conv::Float, "0.1").unwrap(), Value::Float(0.1));
        assert_eq!(v(Conv::Bit, "10101").unwrap(), Value::UInt(21));
        assert_eq!(
            v(Conv::Bit, "1000000000000000000000000000000000000000000000000000000000000001").unwrap(),
            Value::UInt(0x8000_0000_0000_0001)
        );
        assert!(v(Conv::Bit, "012").is_err());
        assert!(v(Conv::Bit, "").is_err());
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(v(Conv::Date, "1000-01-01").unwrap(), bytes("1000-01-01"));
        assert!(v(Conv::Date, "0044-03-15 BC").unwrap_err().contains("BC"));
        assert!(v(Conv::Date, "infinity").unwrap_err().contains("infinity"));
        assert!(v(Conv::Date, "-infinity").unwrap_err().contains("infinity"));
        assert!(v(Conv::Date, "10000-01-01").unwrap_err().contains("9999"));
        assert!(v(Conv::Date, "01/02/2024").is_err());
        assert_eq!(
            v(Conv::DateTime, "2024-02-29 23:59:58.123456").unwrap(),
            bytes("2024-02-29 23:59:58.123456")
        );
        assert_eq!(
            v(Conv::DateTime, "2024-02-29 23:59:58.12").unwrap(),
            bytes("2024-02-29 23:59:58.120000")
        );
        assert_eq!(
            v(Conv::DateTime, "9999-12-31 23:59:59").unwrap(),
            bytes("9999-12-31 23:59:59.000000")
        );
        assert!(v(Conv::DateTime, "infinity").is_err());
        assert!(v(Conv::DateTime, "2024-01-01 00:00:00 BC").is_err());
        let ts = |t: &str| v(Conv::Timestamp, t);
        assert_eq!(ts("2024-01-02 03:04:05.123456+05:30").unwrap(), bytes("2024-01-01 21:34:05.123456"));
        assert_eq!(ts("2024-01-01 20:00:00-08").unwrap(), bytes("2024-01-02 04:00:00.000000"));
        assert_eq!(ts("2038-01-19 03:14:07.999999+00").unwrap(), bytes("2038-01-19 03:14:07.999999"));
        assert_eq!(ts("2000-03-01 00:30:00+01").unwrap(), bytes("2000-02-29 23:30:00.000000"));
        assert_eq!(ts("1970-01-01 00:00:01+00:00:10").unwrap(), bytes("1969-12-31 23:59:51.000000"));
        assert!(ts("infinity").is_err());
        assert!(ts("-infinity").is_err());
        assert!(ts("2024-01-01 00:00:00").unwrap_err().contains("offset"));
        assert!(ts("0001-01-01 00:30:00+01").unwrap_err().contains("0001 to 9999"));
    }

    #[test]
    fn intervals_to_mysql_time() {
        assert_eq!(time("838:59:59").unwrap(), "838:59:59.000000");
        assert_eq!(time("-838:59:59.000001").unwrap(), "-838:59:59.000001");
        assert_eq!(time("00:00:00").unwrap(), "00:00:00.000000");
        assert_eq!(time("1 day 02:00:00").unwrap(), "26:00:00.000000");
        assert_eq!(time("-1 days +02:00:00").unwrap(), "-22:00:00.000000");
        assert_eq!(time("-00:00:00.5").unwrap(), "-00:00:00.500000");
        assert_eq!(time("3 days").unwrap(), "72:00:00.000000");
        assert_eq!(time("0 years 0 mons 1 day").unwrap(), "24:00:00.000000");
        assert!(time("1 mon").unwrap_err().contains("months"));
        assert!(time("839:00:00").unwrap_err().contains("range"));
        assert!(time("P1D").is_err());
        assert!(time("@ 1 hour").is_err());
    }

    #[test]
    fn bytes_sets_json_and_text() {
        assert_eq!(v(Conv::Bytes, "\\x00ff0a").unwrap(), Value::Bytes(vec![0, 255, 10]));
        assert_eq!(v(Conv::Bytes, "\\x").unwrap(), Value::Bytes(vec![]));
        assert!(v(Conv::Bytes, "\\x0").is_err());
        assert!(v(Conv::Bytes, "\\xzz").is_err());
        assert_eq!(bytea(b"a\\000\\\\b\\377").unwrap(), vec![b'a', 0, b'\\', b'b', 255]);
        assert_eq!(set("{a,b}").unwrap(), "a,b");
        assert_eq!(set("{}").unwrap(), "");
        assert_eq!(
            set("{\"b c\",\"it's\",\"q\\\"x\",\"back\\\\slash\"}").unwrap(),
            "b c,it's,q\"x,back\\slash"
        );
        assert_eq!(set("[0:1]={r,w}").unwrap(), "r,w");
        assert!(set("{a,NULL}").unwrap_err().contains("NULL"));
        assert!(set("{{a}}").is_err());
        assert!(set("a,b").is_err());
        assert!(set("{\"a,b\"}").unwrap_err().contains("comma"));
        assert_eq!(set("{\"NULL\"}").unwrap(), "NULL");
        assert_eq!(v(Conv::Json, "{\"a\": [1, 2.5, null]}").unwrap(), bytes("{\"a\": [1, 2.5, null]}"));
        assert_eq!(v(Conv::Text { char: true }, "ab ").unwrap(), bytes("ab"));
        assert_eq!(v(Conv::Text { char: true }, "   ").unwrap(), bytes(""));
        assert_eq!(v(Conv::Text { char: false }, "😀 é ").unwrap(), bytes("😀 é "));
    }
}
