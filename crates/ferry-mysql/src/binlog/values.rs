//! Binlog values in the full load's form: ENUM indexes and SET bitmasks to their labels,
//! TIMESTAMPs from seconds since the epoch to dates, MEDIUMINTs with their column's sign.

use std::collections::HashMap;

use mysql_async::Value;

use crate::preflight::MyTable;

/// Label lists of a table's ENUM and SET columns, by column index.
#[derive(Debug, Clone, Default)]
pub(super) struct Labels {
    pub(super) enums: HashMap<usize, Vec<String>>,
    pub(super) sets: HashMap<usize, Vec<String>>,
    /// TIMESTAMP columns: the binlog has seconds since the epoch (with a fraction).
    pub(super) timestamps: Vec<usize>,
    /// MEDIUMINT columns, with whether they are signed: the binlog has their three bytes, which
    /// mysql_common hands over without regard to the column's sign (-8388608 came out as
    /// 8388608).
    pub(super) int24: HashMap<usize, bool>,
}

impl Labels {
    /// The labels and special columns of a table of the plan.
    pub(super) fn of(t: &MyTable) -> Labels {
        let mut l = Labels::default();
        for (i, (_, m)) in t.columns.iter().enumerate() {
            if m.target == "text[]" {
                l.sets.insert(i, m.labels.clone());
            } else if !m.labels.is_empty() {
                l.enums.insert(i, m.labels.clone());
            } else if m.source.to_ascii_lowercase().starts_with("timestamp") {
                l.timestamps.push(i);
            } else if m.source.to_ascii_lowercase().starts_with("mediumint") {
                l.int24.insert(i, !m.source.to_ascii_lowercase().contains("unsigned"));
            }
        }
        l
    }
}

/// A MEDIUMINT's value with its column's sign: three bytes, two's complement when signed.
fn int24(v: Value, signed: bool) -> Value {
    let raw = match v {
        Value::Int(n) => n,
        Value::UInt(n) => n as i64,
        other => return other,
    };
    let bits = raw & 0xFF_FFFF;
    match signed {
        true if bits >= 0x80_0000 => Value::Int(bits - 0x100_0000),
        true => Value::Int(bits),
        false => Value::UInt(bits as u64),
    }
}

/// A TIMESTAMP from the binlog (`secs` or `secs.fraction` since the epoch, UTC) as the date
/// and time a query returns with time_zone '+00:00'; 0 is MySQL's zero timestamp.
fn epoch_to_date(v: Value) -> Value {
    let (secs, micros) = match &v {
        Value::Int(n) => (*n, 0),
        Value::UInt(n) => (*n as i64, 0),
        Value::Bytes(b) => {
            let text = String::from_utf8_lossy(b);
            let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
            let Ok(secs) = whole.parse::<i64>() else { return v };
            let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
            (secs, digits.parse::<u32>().unwrap_or(0))
        }
        _ => return v,
    };
    if secs == 0 && micros == 0 {
        return Value::Date(0, 0, 0, 0, 0, 0, 0);
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Value::Date(
        y as u16,
        m as u8,
        d as u8,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
        micros,
    )
}

/// ENUM indexes and SET bitmasks to their labels (as the full load reads them: text).
pub(super) fn labelled(labels: &Labels, i: usize, v: Value) -> Value {
    if labels.timestamps.contains(&i) {
        return epoch_to_date(v);
    }
    if let Some(&signed) = labels.int24.get(&i) {
        return int24(v, signed);
    }
    // The binlog holds an ENUM's index and a SET's bitmask (1 to 8 bytes, little-endian);
    // mysql_common hands them over as an integer or as those bytes.
    let index = |v: &Value| match v {
        Value::Int(n) => Some(*n as u64),
        Value::UInt(n) => Some(*n),
        Value::Bytes(b) if !b.is_empty() && b.len() <= 8 => Some(b.iter().rev().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))),
        _ => None,
    };
    if let Some(l) = labels.enums.get(&i) {
        // An ENUM arrives as an integer; bytes would be a label already.
        if let Some(n) = index(&v).filter(|_| !matches!(v, Value::Bytes(_))) {
            // 0 is MySQL's '' error value; value::write refuses it.
            let label = if n == 0 {
                String::new()
            } else {
                l.get(n as usize - 1).cloned().unwrap_or_default()
            };
            return Value::Bytes(label.into_bytes());
        }
    }
    if let Some(l) = labels.sets.get(&i) {
        if let Some(bits) = index(&v) {
            let members: Vec<&str> = l
                .iter()
                .enumerate()
                .filter(|(b, _)| bits & (1 << b) != 0)
                .map(|(_, m)| m.as_str())
                .collect();
            return Value::Bytes(members.join(",").into_bytes());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mediumints_keep_their_sign() {
        assert_eq!(int24(Value::UInt(8_388_608), true), Value::Int(-8_388_608));
        assert_eq!(int24(Value::Int(8_388_607), true), Value::Int(8_388_607));
        assert_eq!(int24(Value::Int(-1), true), Value::Int(-1));
        assert_eq!(int24(Value::UInt(0xFF_FFFF), true), Value::Int(-1));
        assert_eq!(int24(Value::Int(-1), false), Value::UInt(16_777_215));
        assert_eq!(int24(Value::UInt(8_388_608), false), Value::UInt(8_388_608));
        assert_eq!(int24(Value::NULL, true), Value::NULL);
    }

    #[test]
    fn timestamps_from_epoch() {
        assert_eq!(
            epoch_to_date(Value::Bytes(b"2147483647.999999".to_vec())),
            Value::Date(2038, 1, 19, 3, 14, 7, 999_999)
        );
        assert_eq!(
            epoch_to_date(Value::Bytes(b"1.05".to_vec())),
            Value::Date(1970, 1, 1, 0, 0, 1, 50_000)
        );
        assert_eq!(epoch_to_date(Value::Int(951_782_400)), Value::Date(2000, 2, 29, 0, 0, 0, 0));
        assert_eq!(epoch_to_date(Value::Int(0)), Value::Date(0, 0, 0, 0, 0, 0, 0));
    }
}
