//! A record's operation and row images, decoded in one pass straight into the target's columns.
//!
//! The applier used to parse each record's row images into `serde_json::Value` trees (a map
//! node and a key string per column, a string per value) and then copy every value again into
//! its text form. Here the record is read by a visitor that knows the target's columns: each
//! key is matched in place, each value goes straight to the column's [`Kind`] and becomes a
//! [`Datum`]; a string a text-like column takes as it is is copied once. Only what has
//! structure (arrays, Debezium's variable-scale decimals) is built as a `Value` first, and
//! every value still ends in [`Kind::decode`]'s forms, so both paths agree by construction.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use ferry_core::change::{Column, Datum, Row};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::types::Kind;

/// A row image, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// Per target column, its value (None: the image does not have it).
    Row(Vec<Option<Datum>>),
    /// The image has this column and the target's table does not.
    Unknown(String),
    /// A value that does not fit its column, or an image that is not an object: why.
    Bad(String),
}

/// A row image as the target table's row (a column it lacks takes `missing`), or why it
/// cannot be one (`table` names the target's table).
pub fn row(image: Option<Image>, missing: Datum, table: &impl fmt::Display) -> Result<Row, String> {
    match image {
        Some(Image::Row(values)) => Ok(values.into_iter().map(|v| v.unwrap_or_else(|| missing.clone())).collect()),
        Some(Image::Unknown(name)) => Err(format!("column {name} is not in {table} on the target")),
        Some(Image::Bad(why)) => Err(why),
        None => Err("a row image is not an object".into()),
    }
}

/// A record's `op` and images (`payload`'s, when the record has a schema part beside it).
#[derive(Debug, Default)]
pub struct Decoded {
    pub op: Option<String>,
    /// None: null or absent.
    pub before: Option<Image>,
    pub after: Option<Image>,
}

/// Decodes `raw` for a table of these columns (and the kinds their values are read as);
/// Err: not JSON.
pub fn decode(raw: &[u8], columns: &[Column], kinds: &[Kind]) -> Result<Decoded, String> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let d = de
        .deserialize_map(Envelope { columns, kinds })
        .map_err(|e| format!("a record is not JSON: {e}"))?;
    de.end().map_err(|e| format!("a record is not JSON: {e}"))?;
    Ok(d)
}

#[derive(Clone, Copy)]
struct Envelope<'s> {
    columns: &'s [Column],
    kinds: &'s [Kind],
}

impl<'de> Visitor<'de> for Envelope<'_> {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Debezium record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Decoded, A::Error> {
        let mut out = Decoded::default();
        let mut payload: Option<Decoded> = None;
        while let Some(key) = m.next_key_seed(Key)? {
            match &*key {
                "op" => out.op = m.next_value::<Option<String>>()?,
                "before" => out.before = m.next_value_seed(ImageSeed(self))?,
                "after" => out.after = m.next_value_seed(ImageSeed(self))?,
                "payload" => payload = m.next_value_seed(PayloadSeed(self))?,
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(payload.unwrap_or(out))
    }
}

/// `payload`: the envelope, or null.
struct PayloadSeed<'s>(Envelope<'s>);

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = Option<Decoded>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Decoded>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = Option<Decoded>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the envelope or null")
    }

    fn visit_none<E>(self) -> Result<Option<Decoded>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<Decoded>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Decoded>, D::Error> {
        d.deserialize_map(self.0).map(Some)
    }
}

/// An object key, borrowed from the record unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

/// `before` / `after`: None for null; anything but an object is [`Image::Bad`].
struct ImageSeed<'s>(Envelope<'s>);

impl<'de> DeserializeSeed<'de> for ImageSeed<'_> {
    type Value = Option<Image>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Image>, D::Error> {
        d.deserialize_any(self)
    }
}

fn not_an_object() -> Option<Image> {
    Some(Image::Bad("a row image is not an object".into()))
}

impl<'de> Visitor<'de> for ImageSeed<'_> {
    type Value = Option<Image>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row image")
    }

    fn visit_unit<E>(self) -> Result<Option<Image>, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Option<Image>, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<Image>, E> {
        Ok(not_an_object())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<Image>, E> {
        Ok(not_an_object())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<Image>, E> {
        Ok(not_an_object())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<Image>, E> {
        Ok(not_an_object())
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<Image>, E> {
        Ok(not_an_object())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Option<Image>, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Option<Image>, A::Error> {
        let Envelope { columns, kinds } = self.0;
        let mut row: Vec<Option<Datum>> = vec![None; columns.len()];
        let (mut unknown, mut bad) = (None, None);
        while let Some(key) = m.next_key_seed(Key)? {
            match columns.iter().position(|c| c.name == *key) {
                None => {
                    m.next_value::<IgnoredAny>()?;
                    unknown.get_or_insert_with(|| key.into_owned());
                }
                Some(i) => match m.next_value_seed(Field(&kinds[i]))? {
                    Ok(d) => row[i] = Some(d),
                    Err(e) => {
                        bad.get_or_insert_with(|| format!("column {}: {e}", columns[i].name));
                    }
                },
            }
        }
        Ok(Some(match (unknown, bad) {
            (Some(name), _) => Image::Unknown(name),
            (None, Some(why)) => Image::Bad(why),
            (None, None) => Image::Row(row),
        }))
    }
}

/// One value, read as its column's kind: the datum, or why it does not fit.
struct Field<'k>(&'k Kind);

impl Field<'_> {
    /// Through [`Kind::decode`], the one definition of every kind's text form.
    fn decoded(&self, v: &Value) -> Result<Datum, String> {
        match self.0.decode(v) {
            Ok(None) => Ok(Datum::Null),
            Ok(Some(s)) => Ok(Datum::Text(Bytes::from(s))),
            Err(e) => Err(e.0),
        }
    }

    /// A string: the kinds whose text form is the string itself take it as it is (what
    /// `decode` would return); the others go through `decode`.
    fn text(&self, s: Cow<'_, str>) -> Result<Datum, String> {
        if self.0.is_unavailable_text(&s) {
            return Ok(Datum::Unchanged);
        }
        match self.0 {
            Kind::Text
            | Kind::Enum
            | Kind::Uuid
            | Kind::Xml
            | Kind::ZonedTimestamp
            | Kind::ZonedTime
            | Kind::Ltree
            | Kind::Json
            | Kind::Float32
            | Kind::Float64 => Ok(Datum::Text(match s {
                Cow::Borrowed(b) => Bytes::copy_from_slice(b.as_bytes()),
                Cow::Owned(o) => Bytes::from(o),
            })),
            _ => self.decoded(&Value::String(s.into_owned())),
        }
    }

    /// A value with structure, built whole first.
    fn structured(&self, v: Value) -> Result<Datum, String> {
        if self.0.is_unavailable(&v) {
            return Ok(Datum::Unchanged);
        }
        self.decoded(&v)
    }
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = Result<Datum, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = Result<Datum, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a column value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(Datum::Null))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(Datum::Null))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.decoded(&Value::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(self.decoded(&Value::from(n)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(self.decoded(&Value::from(n)))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        Ok(self.decoded(&Value::from(n)))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(self.text(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.text(Cow::Borrowed(s)))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(self.text(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(SeqAccessDeserializer::new(s))?;
        Ok(self.structured(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(MapAccessDeserializer::new(m))?;
        Ok(self.structured(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(name: &str) -> Column {
        Column {
            name: name.into(),
            type_sql: "text".into(),
            key: false,
            default: None,
            not_null: false,
        }
    }

    /// Every value decoded in one pass equals what `Kind::decode` makes of the parsed tree,
    /// kind by kind, placeholders and nulls included.
    #[test]
    fn one_pass_agrees_with_the_value_tree() {
        let cases: Vec<(Kind, Value)> = vec![
            (Kind::Text, json!("plain")),
            (Kind::Text, json!("esc\"aped\\ \u{e9}\n")),
            (Kind::Text, json!("")),
            (Kind::Text, json!(null)),
            (Kind::Text, json!(crate::types::UNAVAILABLE)),
            (Kind::Int32, json!(-42)),
            (Kind::Int64, json!(9_007_199_254_740_993u64)),
            (Kind::Bool, json!(true)),
            (Kind::Float64, json!(1.5e-7)),
            (Kind::Float64, json!("NaN")),
            (Kind::Decimal { scale: 2, precision: None }, json!("AJ4=")),
            (
                Kind::Decimal { scale: 2, precision: None },
                Kind::Decimal { scale: 2, precision: None }.unavailable(),
            ),
            (Kind::VariableDecimal, json!({"scale": 3, "value": "MDk="})),
            (Kind::Bytes, json!("3q2+7w==")),
            (Kind::Bytes, Kind::Bytes.unavailable()),
            (Kind::Json, json!("{\"a\": [1, 2]}")),
            (Kind::Json, json!({"a": [1, 2]})),
            (Kind::Date, json!(19000)),
            (Kind::MicroTimestamp, json!(1_700_000_000_123_456i64)),
            (Kind::ZonedTimestamp, json!("2024-01-02T03:04:05.123456Z")),
            (Kind::Array(Box::new(Kind::Text)), json!(["x", "y z", null])),
            (Kind::Array(Box::new(Kind::Int32)), Kind::Array(Box::new(Kind::Int32)).unavailable()),
            (Kind::Int32, json!("not a number")),
        ];
        let columns: Vec<Column> = (0..cases.len()).map(|i| col(&format!("c{i}"))).collect();
        let kinds: Vec<Kind> = cases.iter().map(|(k, _)| k.clone()).collect();
        let after: serde_json::Map<String, Value> = cases
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != cases.len() - 1)
            .map(|(i, (_, v))| (format!("c{i}"), v.clone()))
            .collect();
        let record = json!({"schema": {"type": "struct"}, "payload": {"before": null, "after": after, "op": "c"}});
        let d = decode(record.to_string().as_bytes(), &columns, &kinds).unwrap();
        assert_eq!(d.op.as_deref(), Some("c"));
        assert_eq!(d.before, None);
        let Some(Image::Row(row)) = d.after else { panic!("{:?}", d.after) };
        for (i, (k, v)) in cases.iter().enumerate().take(cases.len() - 1) {
            let want = if k.is_unavailable(v) {
                Datum::Unchanged
            } else {
                match k.decode(v).unwrap() {
                    None => Datum::Null,
                    Some(s) => Datum::Text(Bytes::from(s)),
                }
            };
            assert_eq!(row[i].as_ref(), Some(&want), "{k:?} {v}");
        }
        // The last column is missing from the image.
        assert_eq!(row[cases.len() - 1], None);

        // A value that does not fit names its column; an unknown column wins over it.
        let bad = json!({"op": "u", "after": {"c5": "x", "c0": "a"}});
        let d = decode(bad.to_string().as_bytes(), &columns, &kinds).unwrap();
        assert!(
            matches!(&d.after, Some(Image::Bad(e)) if e.starts_with("column c5: ")),
            "{:?}",
            d.after
        );
        let unknown = json!({"op": "u", "after": {"c5": "x", "new": 1}});
        let d = decode(unknown.to_string().as_bytes(), &columns, &kinds).unwrap();
        assert_eq!(d.after, Some(Image::Unknown("new".into())));
        let not_object = json!({"op": "d", "before": [1]});
        let d = decode(not_object.to_string().as_bytes(), &columns, &kinds).unwrap();
        assert!(matches!(d.before, Some(Image::Bad(_))));
        assert!(decode(b"{\"op\": ", &columns, &kinds).is_err());
        assert!(decode(b"{} trailing", &columns, &kinds).is_err());
    }
}
