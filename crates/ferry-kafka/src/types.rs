//! Column values between PostgreSQL's text forms and Debezium's JSON encodings.
//!
//! The change stream carries values in the target type's text input form
//! ([`ferry_core::change::Datum::Text`]); Debezium's JsonConverter writes each type in a form
//! of its own, named by the field's `name` in the schema part (the "semantic type"). This
//! module knows both directions for the settings a Debezium connector has by default
//! (`decimal.handling.mode=precise`, `time.precision.mode=adaptive`,
//! `binary.handling.mode=bytes`, `interval.handling.mode=numeric`):
//!
//! | PostgreSQL type | Debezium type (schema `type`, `name`) | JSON value |
//! |---|---|---|
//! | boolean | boolean | `true` |
//! | smallint, integer, bigint | int16, int32, int64 | number |
//! | real, double precision | float, double | number |
//! | numeric(p,s), money | bytes, `org.apache.kafka.connect.data.Decimal` (scale) | base64 of the unscaled value, two's complement, big-endian |
//! | numeric | struct `io.debezium.data.VariableScaleDecimal` | `{"scale":2,"value":"base64"}` |
//! | text, varchar, char, enum, inet, ... | string (`io.debezium.data.Enum` for enums) | string |
//! | bytea | bytes | base64 |
//! | json, jsonb | string, `io.debezium.data.Json` | the JSON text |
//! | uuid, xml | string, `io.debezium.data.Uuid`, `io.debezium.data.Xml` | string |
//! | date | int32, `io.debezium.time.Date` | days since 1970-01-01 |
//! | time(0..3) | int32, `io.debezium.time.Time` | milliseconds past midnight |
//! | time(4..6), time | int64, `io.debezium.time.MicroTime` | microseconds past midnight |
//! | timestamp(0..3) | int64, `io.debezium.time.Timestamp` | milliseconds since the epoch |
//! | timestamp(4..6), timestamp | int64, `io.debezium.time.MicroTimestamp` | microseconds since the epoch |
//! | timestamptz | string, `io.debezium.time.ZonedTimestamp` | ISO 8601 in UTC (`2024-01-02T03:04:05.123456Z`) |
//! | timetz | string, `io.debezium.time.ZonedTime` | `03:04:05.123456Z` |
//! | interval | int64, `io.debezium.time.MicroDuration` | microseconds (a month = 30.4375 days, as Debezium) |
//! | T[] | array of T's encoding | JSON array |
//!
//! An unchanged TOASTed value is Debezium's placeholder `__debezium_unavailable_value` (for a
//! bytes field, its base64).

use base64::Engine as _;
use num_bigint::BigInt;
use serde_json::{json, Map, Value};

/// Debezium's placeholder for a value the source did not send (PostgreSQL's unchanged TOAST).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";
/// [`UNAVAILABLE`] in base64: the placeholder of a binary, decimal or bit value.
const UNAVAILABLE_B64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// A value could not be carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn bad(what: &str, text: &str) -> ValueError {
    let shown: String = text.chars().take(80).collect();
    ValueError(format!("{what}: cannot read {shown:?}"))
}

/// How a column is encoded: Debezium's semantic type for a PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// boolean
    Bool,
    /// int16
    Int16,
    /// int32
    Int32,
    /// int64
    Int64,
    /// float
    Float32,
    /// double
    Float64,
    /// `org.apache.kafka.connect.data.Decimal` with this scale (and precision, when declared).
    Decimal {
        /// Digits after the point.
        scale: u32,
        /// Declared precision.
        precision: Option<u32>,
    },
    /// `io.debezium.data.VariableScaleDecimal`.
    VariableDecimal,
    /// A plain string.
    Text,
    /// `io.debezium.data.Enum`.
    Enum,
    /// bytes.
    Bytes,
    /// `io.debezium.data.Json`.
    Json,
    /// `io.debezium.data.Uuid`.
    Uuid,
    /// `io.debezium.data.Xml`.
    Xml,
    /// `io.debezium.time.Date`.
    Date,
    /// `io.debezium.time.Time` (milliseconds).
    TimeMillis,
    /// `io.debezium.time.MicroTime`.
    MicroTime,
    /// `io.debezium.time.Timestamp` (milliseconds).
    TimestampMillis,
    /// `io.debezium.time.MicroTimestamp`.
    MicroTimestamp,
    /// `io.debezium.time.ZonedTimestamp`.
    ZonedTimestamp,
    /// `io.debezium.time.ZonedTime`.
    ZonedTime,
    /// `io.debezium.time.MicroDuration`.
    MicroDuration,
    /// `io.debezium.time.Year` (MySQL's YEAR).
    Year,
    /// PostgreSQL's `bit(1)`: Debezium's boolean.
    Bit1,
    /// `io.debezium.data.Bits`: `bit(n)`, the bits little-endian (the string's last bit is bit
    /// 0), in as many bytes as the column has bits.
    Bits {
        /// Bits of the column (the schema's `length` parameter).
        length: u32,
        /// `bit varying` on the target: decoded without leading zeros (Debezium's form does not
        /// keep a varying string's length).
        varying: bool,
    },
    /// `io.debezium.data.Ltree`.
    Ltree,
    /// PostgreSQL's hstore as `io.debezium.data.Json` (`hstore.handling.mode=json`): a JSON
    /// object of strings and nulls.
    Hstore,
    /// An array of the inner kind.
    Array(Box<Kind>),
}

fn precision_of(t: &str) -> Option<u32> {
    let open = t.find('(')?;
    let close = t[open..].find(')')? + open;
    t[open + 1..close].split(',').next()?.trim().parse().ok()
}

impl Kind {
    /// The encoding of a column whose type is `type_sql` (PostgreSQL's `format_type` text).
    pub fn of(type_sql: &str) -> Kind {
        let t = type_sql.trim().to_ascii_lowercase();
        if let Some(inner) = t.strip_suffix("[]") {
            return Kind::Array(Box::new(Kind::of(inner)));
        }
        let base = t.split('(').next().unwrap_or("").trim();
        // An extension's type is schema-qualified in the stream ("public.citext").
        let unqualified = base.rsplit('.').next().unwrap_or(base).trim_matches('"');
        match unqualified {
            "citext" => return Kind::Text,
            "ltree" => return Kind::Ltree,
            "hstore" => return Kind::Hstore,
            _ => {}
        }
        let with_tz = t.ends_with("with time zone");
        match base {
            "boolean" | "bool" => Kind::Bool,
            "smallint" | "int2" => Kind::Int16,
            "integer" | "int" | "int4" => Kind::Int32,
            "bigint" | "int8" | "oid" => Kind::Int64,
            "real" | "float4" => Kind::Float32,
            "double precision" | "float8" => Kind::Float64,
            "numeric" | "decimal" => {
                let open = t.find('(');
                match open {
                    Some(o) => {
                        let inner = &t[o + 1..t.find(')').unwrap_or(t.len())];
                        let mut parts = inner.split(',').map(|p| p.trim().parse::<u32>().ok());
                        let precision = parts.next().flatten();
                        let scale = parts.next().flatten().unwrap_or(0);
                        Kind::Decimal { scale, precision }
                    }
                    None => Kind::VariableDecimal,
                }
            }
            "money" => Kind::Decimal { scale: 2, precision: None },
            "bytea" => Kind::Bytes,
            "json" | "jsonb" => Kind::Json,
            "uuid" => Kind::Uuid,
            "xml" => Kind::Xml,
            "date" => Kind::Date,
            "interval" => Kind::MicroDuration,
            "time" | "time without time zone" | "time with time zone" => {
                if with_tz {
                    Kind::ZonedTime
                } else if precision_of(&t).is_some_and(|p| p <= 3) {
                    Kind::TimeMillis
                } else {
                    Kind::MicroTime
                }
            }
            "timestamp" | "timestamp without time zone" | "timestamp with time zone" | "timestamptz" => {
                if with_tz || base == "timestamptz" {
                    Kind::ZonedTimestamp
                } else if precision_of(&t).is_some_and(|p| p <= 3) {
                    Kind::TimestampMillis
                } else {
                    Kind::MicroTimestamp
                }
            }
            "bit" => match precision_of(&t).unwrap_or(1) {
                1 => Kind::Bit1,
                n => Kind::Bits { length: n, varying: false },
            },
            // Kept as its text: Debezium's bytes do not keep a varying bit string's length
            // (leading zeros), and Ferry's events must round-trip exactly.
            "bit varying" | "varbit" => Kind::Text,
            "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "name" | "inet" | "cidr" | "macaddr"
            | "macaddr8" => Kind::Text,
            // A qualified name is a user type: enums (and domains) travel as their text.
            _ if base.contains('.') || base.starts_with('"') => Kind::Enum,
            _ => Kind::Text,
        }
    }

    /// The field's schema, as Debezium's JsonConverter writes it (without `field`/`optional`).
    pub fn schema(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let (ty, name) = match self {
            Kind::Bool => ("boolean", None),
            Kind::Int16 => ("int16", None),
            Kind::Int32 => ("int32", None),
            Kind::Int64 => ("int64", None),
            Kind::Float32 => ("float", None),
            Kind::Float64 => ("double", None),
            Kind::Decimal { scale, precision } => {
                let mut p = Map::new();
                p.insert("scale".into(), Value::String(scale.to_string()));
                if let Some(pr) = precision {
                    p.insert("connect.decimal.precision".into(), Value::String(pr.to_string()));
                }
                m.insert("parameters".into(), Value::Object(p));
                m.insert("version".into(), json!(1));
                ("bytes", Some("org.apache.kafka.connect.data.Decimal"))
            }
            Kind::VariableDecimal => {
                m.insert(
                    "fields".into(),
                    json!([{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}]),
                );
                m.insert("version".into(), json!(1));
                ("struct", Some("io.debezium.data.VariableScaleDecimal"))
            }
            Kind::Text => ("string", None),
            Kind::Enum => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.data.Enum"))
            }
            Kind::Bytes => ("bytes", None),
            Kind::Json => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.data.Json"))
            }
            Kind::Uuid => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.data.Uuid"))
            }
            Kind::Xml => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.data.Xml"))
            }
            Kind::Date => {
                m.insert("version".into(), json!(1));
                ("int32", Some("io.debezium.time.Date"))
            }
            Kind::TimeMillis => {
                m.insert("version".into(), json!(1));
                ("int32", Some("io.debezium.time.Time"))
            }
            Kind::MicroTime => {
                m.insert("version".into(), json!(1));
                ("int64", Some("io.debezium.time.MicroTime"))
            }
            Kind::TimestampMillis => {
                m.insert("version".into(), json!(1));
                ("int64", Some("io.debezium.time.Timestamp"))
            }
            Kind::MicroTimestamp => {
                m.insert("version".into(), json!(1));
                ("int64", Some("io.debezium.time.MicroTimestamp"))
            }
            Kind::ZonedTimestamp => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.time.ZonedTimestamp"))
            }
            Kind::ZonedTime => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.time.ZonedTime"))
            }
            Kind::MicroDuration => {
                m.insert("version".into(), json!(1));
                ("int64", Some("io.debezium.time.MicroDuration"))
            }
            Kind::Year => {
                m.insert("version".into(), json!(1));
                ("int32", Some("io.debezium.time.Year"))
            }
            Kind::Bit1 => ("boolean", None),
            Kind::Bits { length, .. } => {
                m.insert("parameters".into(), json!({"length": length.to_string()}));
                m.insert("version".into(), json!(1));
                ("bytes", Some("io.debezium.data.Bits"))
            }
            Kind::Ltree => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.data.Ltree"))
            }
            Kind::Hstore => {
                m.insert("version".into(), json!(1));
                ("string", Some("io.debezium.data.Json"))
            }
            Kind::Array(inner) => {
                let mut items = inner.schema();
                items.insert("optional".into(), Value::Bool(true));
                m.insert("items".into(), Value::Object(items));
                ("array", None)
            }
        };
        m.insert("type".into(), Value::String(ty.into()));
        if let Some(n) = name {
            m.insert("name".into(), Value::String(n.into()));
        }
        m
    }

    /// The kind a field's schema names (the inverse of [`Kind::schema`]); `None` for a schema
    /// this module does not know.
    pub fn from_schema(s: &Value) -> Option<Kind> {
        let ty = s.get("type")?.as_str()?;
        let name = s.get("name").and_then(Value::as_str);
        Some(match (ty, name) {
            (_, Some("org.apache.kafka.connect.data.Decimal")) => Kind::Decimal {
                scale: s.pointer("/parameters/scale")?.as_str()?.parse().ok()?,
                precision: s
                    .pointer("/parameters/connect.decimal.precision")
                    .and_then(Value::as_str)
                    .and_then(|p| p.parse().ok()),
            },
            (_, Some("io.debezium.data.VariableScaleDecimal")) => Kind::VariableDecimal,
            (_, Some("io.debezium.data.Json")) => Kind::Json,
            (_, Some("io.debezium.data.Uuid")) => Kind::Uuid,
            (_, Some("io.debezium.data.Xml")) => Kind::Xml,
            (_, Some("io.debezium.data.Ltree")) => Kind::Ltree,
            (_, Some("io.debezium.data.Bits")) => Kind::Bits {
                length: s.pointer("/parameters/length")?.as_str()?.parse().ok()?,
                varying: false,
            },
            (_, Some("io.debezium.data.Enum")) | (_, Some("io.debezium.data.EnumSet")) => Kind::Enum,
            (_, Some("io.debezium.time.Date")) => Kind::Date,
            (_, Some("io.debezium.time.Time")) => Kind::TimeMillis,
            (_, Some("io.debezium.time.MicroTime")) => Kind::MicroTime,
            (_, Some("io.debezium.time.NanoTime")) => return None,
            (_, Some("io.debezium.time.Timestamp")) => Kind::TimestampMillis,
            (_, Some("io.debezium.time.MicroTimestamp")) => Kind::MicroTimestamp,
            (_, Some("io.debezium.time.ZonedTimestamp")) => Kind::ZonedTimestamp,
            (_, Some("io.debezium.time.ZonedTime")) => Kind::ZonedTime,
            (_, Some("io.debezium.time.MicroDuration")) => Kind::MicroDuration,
            (_, Some("io.debezium.time.Year")) => Kind::Year,
            ("boolean", _) => Kind::Bool,
            ("int8", _) | ("int16", _) => Kind::Int16,
            ("int32", _) => Kind::Int32,
            ("int64", _) => Kind::Int64,
            ("float", _) => Kind::Float32,
            ("double", _) => Kind::Float64,
            ("bytes", _) => Kind::Bytes,
            ("string", _) => Kind::Text,
            ("array", _) => Kind::Array(Box::new(Kind::from_schema(s.get("items")?)?)),
            _ => return None,
        })
    }

    /// A PostgreSQL text value (input/output form, DateStyle ISO) in Debezium's JSON form.
    pub fn encode(&self, text: &str) -> Result<Value, ValueError> {
        Ok(match self {
            Kind::Bool => Value::Bool(match text {
                "t" | "true" => true,
                "f" | "false" => false,
                _ => return Err(bad("boolean", text)),
            }),
            Kind::Int16 | Kind::Int32 | Kind::Int64 | Kind::Year => {
                Value::Number(text.parse::<i64>().map_err(|_| bad("integer", text))?.into())
            }
            Kind::Float32 | Kind::Float64 => match text {
                // JSON has no NaN or infinities; Debezium's JsonConverter writes them as strings.
                "NaN" | "Infinity" | "-Infinity" => Value::String(text.into()),
                _ => {
                    let f: f64 = text.parse().map_err(|_| bad("float", text))?;
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(|| bad("float", text))?
                }
            },
            Kind::Decimal { scale, .. } => {
                let digits = text.trim_start_matches('$').replace(',', "");
                Value::String(b64(&unscaled(&digits, *scale)?.to_signed_bytes_be()))
            }
            Kind::VariableDecimal => {
                let scale = text.split_once('.').map(|(_, f)| f.len() as u32).unwrap_or(0);
                json!({"scale": scale, "value": b64(&unscaled(text, scale)?.to_signed_bytes_be())})
            }
            Kind::Text | Kind::Enum | Kind::Json | Kind::Uuid | Kind::Xml | Kind::Ltree => Value::String(text.into()),
            Kind::Bit1 => match text {
                "1" => Value::Bool(true),
                "0" => Value::Bool(false),
                _ => return Err(bad("bit(1)", text)),
            },
            Kind::Bits { .. } => Value::String(b64(&bits_le(text)?)),
            Kind::Hstore => Value::String(hstore_json(text)?),
            Kind::Bytes => Value::String(b64(&bytea_bytes(text)?)),
            Kind::Date => json!(date_days(text)?),
            Kind::TimeMillis => json!(time_micros(text)? / 1000),
            Kind::MicroTime => json!(time_micros(text)?),
            Kind::TimestampMillis => json!(timestamp_micros(text)?.div_euclid(1000)),
            Kind::MicroTimestamp => json!(timestamp_micros(text)?),
            Kind::ZonedTimestamp => Value::String(zoned_timestamp(text)?),
            Kind::ZonedTime => Value::String(zoned_time(text)?),
            Kind::MicroDuration => json!(interval_micros(text)?),
            Kind::Array(inner) => Value::Array(
                parse_array(text)?
                    .into_iter()
                    .map(|e| match e {
                        None => Ok(Value::Null),
                        Some(s) => inner.encode(&s),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Debezium's JSON value back to PostgreSQL's text input form (None: SQL NULL).
    pub fn decode(&self, v: &Value) -> Result<Option<String>, ValueError> {
        if v.is_null() {
            return Ok(None);
        }
        let as_str = || v.as_str().ok_or_else(|| bad("string", &v.to_string()));
        let as_i64 = || v.as_i64().ok_or_else(|| bad("integer", &v.to_string()));
        Ok(Some(match self {
            Kind::Bool => match v {
                Value::Bool(b) => if *b { "t" } else { "f" }.to_string(),
                _ => return Err(bad("boolean", &v.to_string())),
            },
            Kind::Int16 | Kind::Int32 | Kind::Int64 | Kind::Year => as_i64()?.to_string(),
            Kind::Float32 | Kind::Float64 => match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => return Err(bad("float", &v.to_string())),
            },
            Kind::Decimal { scale, .. } => scaled(&BigInt::from_signed_bytes_be(&unb64(as_str()?)?), *scale),
            Kind::VariableDecimal => {
                let scale = v
                    .get("scale")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("decimal scale", &v.to_string()))?;
                let value = v
                    .get("value")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("decimal value", &v.to_string()))?;
                scaled(&BigInt::from_signed_bytes_be(&unb64(value)?), scale as u32)
            }
            Kind::Text | Kind::Enum | Kind::Uuid | Kind::Xml | Kind::ZonedTimestamp | Kind::ZonedTime | Kind::Ltree => {
                as_str()?.to_string()
            }
            Kind::Bit1 => match v {
                Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
                _ => return Err(bad("bit(1)", &v.to_string())),
            },
            Kind::Bits { length, varying } => le_bits(&unb64(as_str()?)?, *length, *varying),
            Kind::Hstore => json_hstore(as_str()?)?,
            Kind::Json => match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            Kind::Bytes => {
                let bytes = unb64(as_str()?)?;
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut s = String::with_capacity(2 + bytes.len() * 2);
                s.push_str("\\x");
                for b in bytes {
                    s.push(HEX[usize::from(b >> 4)] as char);
                    s.push(HEX[usize::from(b & 15)] as char);
                }
                s
            }
            Kind::Date => civil(as_i64()?),
            Kind::TimeMillis => clock(as_i64()? * 1000),
            Kind::MicroTime => clock(as_i64()?),
            Kind::TimestampMillis => micros_timestamp(as_i64()? * 1000),
            Kind::MicroTimestamp => micros_timestamp(as_i64()?),
            Kind::MicroDuration => format!("{} microseconds", as_i64()?),
            Kind::Array(inner) => {
                let items = v.as_array().ok_or_else(|| bad("array", &v.to_string()))?;
                let mut out = String::from("{");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match inner.decode(item)? {
                        None => out.push_str("NULL"),
                        Some(s) => {
                            out.push('"');
                            for c in s.chars() {
                                if c == '"' || c == '\\' {
                                    out.push('\\');
                                }
                                out.push(c);
                            }
                            out.push('"');
                        }
                    }
                }
                out.push('}');
                out
            }
        }))
    }

    /// The PostgreSQL type a column of this kind gets when Ferry adds it to the target (a
    /// column the source gained mid-stream): the type that holds every value of the kind
    /// exactly. An enum or ltree arrives as text (its type may not exist on the target).
    pub fn pg_type(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Int16 => "smallint".into(),
            Kind::Int32 | Kind::Year => "integer".into(),
            Kind::Int64 => "bigint".into(),
            Kind::Float32 => "real".into(),
            Kind::Float64 => "double precision".into(),
            Kind::Decimal { scale, precision: Some(p) } => format!("numeric({p},{scale})"),
            Kind::Decimal { .. } | Kind::VariableDecimal => "numeric".into(),
            Kind::Text | Kind::Enum | Kind::Ltree => "text".into(),
            Kind::Bytes => "bytea".into(),
            Kind::Json => "json".into(),
            Kind::Hstore => "public.hstore".into(),
            Kind::Uuid => "uuid".into(),
            Kind::Xml => "xml".into(),
            Kind::Date => "date".into(),
            Kind::TimeMillis => "time(3) without time zone".into(),
            Kind::MicroTime => "time without time zone".into(),
            Kind::TimestampMillis => "timestamp(3) without time zone".into(),
            Kind::MicroTimestamp => "timestamp without time zone".into(),
            Kind::ZonedTimestamp => "timestamp with time zone".into(),
            Kind::ZonedTime => "time with time zone".into(),
            Kind::MicroDuration => "interval".into(),
            Kind::Bit1 => "bit(1)".into(),
            Kind::Bits { length, .. } => format!("bit({length})"),
            Kind::Array(inner) => format!("{}[]", inner.pg_type()),
        }
    }

    /// The kind to decode a field with: the event schema's (`self`), unless the target's
    /// column (`target`) needs its own text form of the same encoding.
    pub fn refined(self, target: &Kind) -> Kind {
        match (&self, target) {
            (Kind::Bool, Kind::Bit1) | (Kind::Json, Kind::Hstore) | (Kind::Text, Kind::Ltree) => target.clone(),
            (Kind::Bits { length, .. }, Kind::Text) => Kind::Bits {
                length: *length,
                varying: true,
            },
            _ => self,
        }
    }

    /// The placeholder for a value not sent.
    pub fn unavailable(&self) -> Value {
        match self {
            Kind::Bytes | Kind::Decimal { .. } | Kind::Bits { .. } => Value::String(b64(UNAVAILABLE.as_bytes())),
            Kind::Array(_) => json!([UNAVAILABLE]),
            _ => Value::String(UNAVAILABLE.into()),
        }
    }

    /// Whether a string value is the placeholder for a value not sent.
    pub fn is_unavailable_text(&self, s: &str) -> bool {
        s == UNAVAILABLE || (matches!(self, Kind::Bytes | Kind::Decimal { .. } | Kind::Bits { .. }) && s == UNAVAILABLE_B64)
    }

    /// Whether `v` is the placeholder for a value not sent (asked of every value applied:
    /// compared in place, nothing built).
    pub fn is_unavailable(&self, v: &Value) -> bool {
        match v {
            Value::String(s) => self.is_unavailable_text(s),
            Value::Array(a) => matches!(self, Kind::Array(_)) && a.len() == 1 && a[0].as_str() == Some(UNAVAILABLE),
            _ => false,
        }
    }
}

/// A bit string (`0101`) as Debezium's Bits: little-endian, the last character bit 0, in as
/// many bytes as the string has bits.
fn bits_le(text: &str) -> Result<Vec<u8>, ValueError> {
    let mut out = vec![0u8; text.len().div_ceil(8)];
    for (i, c) in text.bytes().rev().enumerate() {
        match c {
            b'1' => out[i / 8] |= 1 << (i % 8),
            b'0' => {}
            _ => return Err(bad("bit string", text)),
        }
    }
    Ok(out)
}

/// Debezium's Bits back to a bit string of `length` bits (without leading zeros if `varying`).
fn le_bits(bytes: &[u8], length: u32, varying: bool) -> String {
    let n = if varying { bytes.len() * 8 } else { length as usize };
    let mut s: String = (0..n)
        .rev()
        .map(|i| {
            if bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                '1'
            } else {
                '0'
            }
        })
        .collect();
    if varying {
        let trimmed = s.trim_start_matches('0');
        s = if trimmed.is_empty() && !s.is_empty() {
            "0".into()
        } else {
            trimmed.into()
        };
    }
    s
}

/// hstore's output form (`"a"=>"1", "b"=>NULL`) as a JSON object's text.
fn hstore_json(text: &str) -> Result<String, ValueError> {
    let mut map = Map::new();
    let mut chars = text.chars().peekable();
    let quoted = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Result<String, ValueError> {
        if chars.next() != Some('"') {
            return Err(bad("hstore", text));
        }
        let mut s = String::new();
        loop {
            match chars.next() {
                Some('\\') => s.push(chars.next().ok_or_else(|| bad("hstore", text))?),
                Some('"') => return Ok(s),
                Some(c) => s.push(c),
                None => return Err(bad("hstore", text)),
            }
        }
    };
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key = quoted(&mut chars)?;
        for expect in ['=', '>'] {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some(expect) {
                return Err(bad("hstore", text));
            }
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let value = if chars.peek() == Some(&'"') {
            Value::String(quoted(&mut chars)?)
        } else {
            let word: String = std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphabetic())).collect();
            if !word.eq_ignore_ascii_case("null") {
                return Err(bad("hstore", text));
            }
            Value::Null
        };
        map.insert(key, value);
    }
    Ok(Value::Object(map).to_string())
}

/// A JSON object of strings and nulls as hstore's input form.
fn json_hstore(text: &str) -> Result<String, ValueError> {
    let v: Value = serde_json::from_str(text).map_err(|_| bad("hstore JSON", text))?;
    let obj = v.as_object().ok_or_else(|| bad("hstore JSON", text))?;
    let quote = |s: &str| {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    };
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let value = match v {
            Value::Null => "NULL".to_string(),
            Value::String(s) => quote(s),
            other => quote(&other.to_string()),
        };
        out.push(format!("{}=>{}", quote(k), value));
    }
    Ok(out.join(", "))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, ValueError> {
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad("base64", s))
}

/// `-12.340` with scale 3 is -12340.
fn unscaled(text: &str, scale: u32) -> Result<BigInt, ValueError> {
    let t = text.trim();
    if matches!(t, "NaN" | "Infinity" | "-Infinity") {
        return Err(ValueError(format!("numeric {t} has no Debezium decimal form")));
    }
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad("numeric", text));
    }
    if frac.len() > scale as usize && frac[scale as usize..].bytes().any(|b| b != b'0') {
        return Err(ValueError(format!("numeric {text} has more than {scale} digits after the point")));
    }
    let mut digits = String::with_capacity(int.len() + scale as usize + 1);
    digits.push_str(if int.is_empty() { "0" } else { int });
    let take = frac.len().min(scale as usize);
    digits.push_str(&frac[..take]);
    for _ in take..scale as usize {
        digits.push('0');
    }
    let n = BigInt::parse_bytes(digits.as_bytes(), 10).ok_or_else(|| bad("numeric", text))?;
    Ok(if neg { -n } else { n })
}

fn scaled(n: &BigInt, scale: u32) -> String {
    let s = n.magnitude().to_string();
    let neg = n.sign() == num_bigint::Sign::Minus;
    let scale = scale as usize;
    let body = if scale == 0 {
        s
    } else if s.len() > scale {
        format!("{}.{}", &s[..s.len() - scale], &s[s.len() - scale..])
    } else {
        format!("0.{}{}", "0".repeat(scale - s.len()), s)
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

fn bytea_bytes(text: &str) -> Result<Vec<u8>, ValueError> {
    let hex = text.strip_prefix("\\x").ok_or_else(|| bad("bytea (hex output expected)", text))?;
    if hex.len() % 2 != 0 {
        return Err(bad("bytea", text));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad("bytea", text)))
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` (with ` BC` for years before 1) to days since the epoch.
fn date_days(text: &str) -> Result<i64, ValueError> {
    let (t, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let mut parts = t.splitn(3, '-');
    let mut next = || parts.next().and_then(|p| p.parse::<i64>().ok()).ok_or_else(|| bad("date", text));
    let (y, m, d) = (next()?, next()?, next()?);
    let y = if bc { 1 - y } else { y };
    Ok(days_from_civil(y, m, d))
}

fn civil(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// `HH:MM:SS[.ffffff]` to microseconds past midnight.
fn time_micros(text: &str) -> Result<i64, ValueError> {
    let mut parts = text.splitn(3, ':');
    let h: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(|| bad("time", text))?;
    let m: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(|| bad("time", text))?;
    let sec = parts.next().ok_or_else(|| bad("time", text))?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: i64 = s.parse().map_err(|_| bad("time", text))?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("time", text));
    }
    let us: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| bad("time", text))?
    };
    Ok(((h * 60 + m) * 60 + s) * 1_000_000 + us)
}

fn clock(us: i64) -> String {
    let (s, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let base = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
    }
}

/// Splits `2024-01-02 03:04:05.123456+05:30` (or ` BC` after it) into date, time, offset
/// seconds (None: no offset written).
fn split_timestamp(text: &str) -> Result<(i64, i64, Option<i64>), ValueError> {
    if matches!(text, "infinity" | "-infinity") {
        return Err(ValueError(format!("timestamp {text} has no Debezium form")));
    }
    let (t, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let (date, rest) = t.split_once([' ', 'T']).ok_or_else(|| bad("timestamp", text))?;
    let date = if bc { format!("{date} BC") } else { date.to_string() };
    let days = date_days(&date)?;
    let (clock_part, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => {
            let (c, o) = rest.split_at(i);
            let secs = if o == "Z" {
                0
            } else {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let mut f = o[1..].split(':').map(|p| p.parse::<i64>());
                let h = f.next().and_then(Result::ok).ok_or_else(|| bad("time zone offset", text))?;
                let m = f.next().and_then(Result::ok).unwrap_or(0);
                let s = f.next().and_then(Result::ok).unwrap_or(0);
                sign * (h * 3600 + m * 60 + s)
            };
            (c, Some(secs))
        }
        None => (rest, None),
    };
    Ok((days, time_micros(clock_part)?, offset))
}

fn timestamp_micros(text: &str) -> Result<i64, ValueError> {
    let (days, us, _) = split_timestamp(text)?;
    Ok(days * 86_400_000_000 + us)
}

fn micros_timestamp(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rest = us.rem_euclid(86_400_000_000);
    let date = civil(days);
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {} BC", clock(rest)),
        None => format!("{date} {}", clock(rest)),
    }
}

/// A timestamptz in UTC, ISO 8601 with as many fraction digits as it has (`...T03:04:05.5Z`).
fn zoned_timestamp(text: &str) -> Result<String, ValueError> {
    let (days, us, offset) = split_timestamp(text)?;
    let utc = days * 86_400_000_000 + us - offset.unwrap_or(0) * 1_000_000;
    let (d, rest) = (utc.div_euclid(86_400_000_000), utc.rem_euclid(86_400_000_000));
    let (y, m, dd) = civil_from_days(d);
    let c = clock(rest);
    let c = c.trim_end_matches('0').trim_end_matches('.');
    let c = if c.len() < 8 { &clock(rest)[..8] } else { c };
    Ok(if y <= 0 {
        format!("-{:04}-{m:02}-{dd:02}T{c}Z", -(y))
    } else {
        format!("{y:04}-{m:02}-{dd:02}T{c}Z")
    })
}

/// A timetz in UTC (`03:04:05.123456Z`).
fn zoned_time(text: &str) -> Result<String, ValueError> {
    let i = text.find(['+', '-']).ok_or_else(|| bad("timetz", text))?;
    let (c, o) = text.split_at(i);
    let sign = if o.starts_with('-') { -1 } else { 1 };
    let mut f = o[1..].split(':').map(|p| p.parse::<i64>());
    let h = f.next().and_then(Result::ok).ok_or_else(|| bad("timetz", text))?;
    let m = f.next().and_then(Result::ok).unwrap_or(0);
    let s = f.next().and_then(Result::ok).unwrap_or(0);
    let utc = (time_micros(c)? - sign * (h * 3600 + m * 60 + s) * 1_000_000).rem_euclid(86_400_000_000);
    Ok(format!("{}Z", clock(utc)))
}

/// An interval in PostgreSQL's `postgres` style (`1 year 2 mons 3 days 04:05:06.5`) to
/// microseconds, a month being 30.4375 days (Debezium's 365.25/12).
fn interval_micros(text: &str) -> Result<i64, ValueError> {
    let mut total: f64 = 0.0;
    let mut words = text.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (neg, t) = match w.strip_prefix('-') {
                Some(t) => (true, t),
                None => (false, w.strip_prefix('+').unwrap_or(w)),
            };
            let us = time_micros(t).or_else(|_| {
                // More than 24 hours: `100:00:00`.
                let (h, rest) = t.split_once(':').ok_or_else(|| bad("interval", text))?;
                let h: i64 = h.parse().map_err(|_| bad("interval", text))?;
                Ok::<_, ValueError>(h * 3_600_000_000 + time_micros(&format!("00:{rest}"))?)
            })?;
            total += if neg { -(us as f64) } else { us as f64 };
            continue;
        }
        let n: f64 = w.parse().map_err(|_| bad("interval", text))?;
        let unit = words.next().ok_or_else(|| bad("interval", text))?;
        let us_per = match unit.trim_end_matches('s') {
            "year" => 365.25 * 86_400e6,
            "mon" | "month" => 30.4375 * 86_400e6,
            "day" => 86_400e6,
            "hour" => 3_600e6,
            "min" | "minute" => 60e6,
            "sec" | "second" => 1e6,
            "microsecond" => 1.0,
            "millisecond" => 1e3,
            _ => return Err(bad("interval", text)),
        };
        total += n * us_per;
    }
    Ok(total.round() as i64)
}

/// Elements of a one-dimensional PostgreSQL array literal (`{1,NULL,"a b"}`); None is NULL.
fn parse_array(text: &str) -> Result<Vec<Option<String>>, ValueError> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad("array (one dimension expected)", text))?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.push(chars.next().ok_or_else(|| bad("array", text))?),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err(bad("array", text)),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' {
                    return Err(ValueError("arrays of more than one dimension are not carried to Kafka yet".into()));
                }
                item.push(c);
                chars.next();
            }
        }
        out.push(if !quoted && item == "NULL" { None } else { Some(item) });
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(_) => return Err(bad("array", text)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes, writes as JSON, reads back as a consumer does, decodes.
    fn round(kind: &Kind, text: &str) -> (Value, String) {
        let v = kind.encode(text).unwrap();
        let wire: Value = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        let back = kind.decode(&wire).unwrap().unwrap();
        (v, back)
    }

    #[test]
    fn bits_oid_ltree_and_hstore_as_debezium_encodes_them() {
        assert_eq!(Kind::of("bit(1)"), Kind::Bit1);
        assert_eq!(round(&Kind::Bit1, "1"), (json!(true), "1".into()));
        let bits = Kind::of("bit(10)");
        assert_eq!(
            bits,
            Kind::Bits {
                length: 10,
                varying: false
            }
        );
        // 1000000011: bit 0 and 1 in the first byte, bit 9 in the second.
        assert_eq!(round(&bits, "1000000011"), (json!("AwI="), "1000000011".into()));
        assert_eq!(round(&bits, "0000000000"), (json!("AAA="), "0000000000".into()));
        let varying = bits.clone().refined(&Kind::of("bit varying(20)"));
        assert_eq!(varying.decode(&json!("AwI=")).unwrap().as_deref(), Some("1000000011"));
        assert_eq!(Kind::of("oid"), Kind::Int64);
        assert_eq!(Kind::of("public.ltree"), Kind::Ltree);
        assert_eq!(Kind::of("public.citext"), Kind::Text);
        assert_eq!(Kind::of("public.mood"), Kind::Enum);
        let h = Kind::of("public.hstore");
        let (v, back) = round(&h, r#""a"=>"1", "b\"q"=>NULL, "c"=>"x\\y""#);
        assert_eq!(
            serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap(),
            json!({"a":"1","b\"q":null,"c":"x\\y"})
        );
        assert_eq!(back, r#""a"=>"1", "b\"q"=>NULL, "c"=>"x\\y""#);
        assert_eq!(Kind::Json.refined(&h), h);
    }

    #[test]
    fn kinds_of_postgres_types() {
        assert_eq!(
            Kind::of("numeric(10,2)"),
            Kind::Decimal {
                scale: 2,
                precision: Some(10)
            }
        );
        assert_eq!(Kind::of("numeric"), Kind::VariableDecimal);
        assert_eq!(Kind::of("timestamp(3) without time zone"), Kind::TimestampMillis);
        assert_eq!(Kind::of("timestamp without time zone"), Kind::MicroTimestamp);
        assert_eq!(Kind::of("timestamp with time zone"), Kind::ZonedTimestamp);
        assert_eq!(Kind::of("time(2) without time zone"), Kind::TimeMillis);
        assert_eq!(Kind::of("integer[]"), Kind::Array(Box::new(Kind::Int32)));
        assert_eq!(Kind::of("public.mood"), Kind::Enum);
        assert_eq!(Kind::of("character varying(20)"), Kind::Text);
        for k in [
            Kind::of("numeric(10,2)"),
            Kind::of("timestamp with time zone"),
            Kind::of("text[]"),
            Kind::of("numeric"),
        ] {
            assert_eq!(Kind::from_schema(&Value::Object(k.schema())), Some(k));
        }
    }

    #[test]
    fn decimals_are_unscaled_twos_complement() {
        let k = Kind::Decimal {
            scale: 2,
            precision: Some(10),
        };
        // Debezium's documentation: 1.00 with scale 2 is unscaled 100 = 0x64 = "ZA==".
        assert_eq!(k.encode("1.00").unwrap(), json!("ZA=="));
        assert_eq!(round(&k, "-12.34").1, "-12.34");
        assert_eq!(round(&k, "0.05").1, "0.05");
        assert_eq!(round(&k, "-0.05").1, "-0.05");
        let big = "123456789012345678901234567890.12";
        assert_eq!(round(&Kind::Decimal { scale: 2, precision: None }, big).1, big);
        let (v, back) = round(&Kind::VariableDecimal, "-3.14159");
        assert_eq!(v["scale"], json!(5));
        assert_eq!(back, "-3.14159");
        assert!(Kind::VariableDecimal.encode("NaN").is_err());
        assert!(k.encode("1.234").is_err());
    }

    #[test]
    fn temporal_values() {
        assert_eq!(Kind::Date.encode("1970-01-02").unwrap(), json!(1));
        assert_eq!(round(&Kind::Date, "2024-02-29").1, "2024-02-29");
        assert_eq!(round(&Kind::Date, "0044-03-15 BC").1, "0044-03-15 BC");
        assert_eq!(Kind::MicroTimestamp.encode("1970-01-01 00:00:01.000001").unwrap(), json!(1_000_001));
        assert_eq!(
            round(&Kind::MicroTimestamp, "2024-12-31 23:59:59.999999").1,
            "2024-12-31 23:59:59.999999"
        );
        assert_eq!(round(&Kind::MicroTimestamp, "1900-01-01 00:00:00").1, "1900-01-01 00:00:00");
        assert_eq!(
            Kind::ZonedTimestamp.encode("2024-01-02 03:04:05.5+02").unwrap(),
            json!("2024-01-02T01:04:05.5Z")
        );
        assert_eq!(
            Kind::ZonedTimestamp.encode("2024-01-02 00:30:00-05:30").unwrap(),
            json!("2024-01-02T06:00:00Z")
        );
        assert_eq!(Kind::ZonedTime.encode("10:00:00.25+01").unwrap(), json!("09:00:00.250000Z"));
        assert_eq!(round(&Kind::MicroTime, "23:59:59.000001").1, "23:59:59.000001");
        assert_eq!(Kind::TimeMillis.encode("00:00:01.5").unwrap(), json!(1500));
        assert_eq!(Kind::MicroDuration.encode("1 day 01:00:00").unwrap(), json!(90_000_000_000i64));
        assert_eq!(Kind::MicroDuration.encode("1 mon").unwrap(), json!(2_629_800_000_000i64));
        assert_eq!(Kind::MicroDuration.encode("-00:00:01.5").unwrap(), json!(-1_500_000));
    }

    #[test]
    fn bytes_arrays_and_placeholders() {
        assert_eq!(Kind::Bytes.encode("\\x00ff").unwrap(), json!("AP8="));
        assert_eq!(round(&Kind::Bytes, "\\x00ff10").1, "\\x00ff10");
        let a = Kind::Array(Box::new(Kind::Text));
        assert_eq!(
            a.encode("{a,NULL,\"b \\\"c\\\"\",\"NULL\"}").unwrap(),
            json!(["a", null, "b \"c\"", "NULL"])
        );
        assert_eq!(a.decode(&json!(["a", null, "x\"y"])).unwrap().unwrap(), "{\"a\",NULL,\"x\\\"y\"}");
        assert_eq!(Kind::Array(Box::new(Kind::Int32)).encode("{}").unwrap(), json!([]));
        assert!(Kind::Bytes.is_unavailable(&Kind::Bytes.unavailable()));
        assert_eq!(Kind::Text.unavailable(), json!(UNAVAILABLE));
        assert_eq!(b64(UNAVAILABLE.as_bytes()), UNAVAILABLE_B64);
        for k in [
            Kind::Text,
            Kind::Bytes,
            Kind::Array(Box::new(Kind::Int32)),
            Kind::Decimal { scale: 2, precision: None },
        ] {
            assert!(k.is_unavailable(&k.unavailable()), "{k:?}");
            assert!(!k.is_unavailable(&json!("x")), "{k:?}");
        }
        assert!(!Kind::Text.is_unavailable(&json!(UNAVAILABLE_B64)));
        assert_eq!(Kind::Float64.encode("NaN").unwrap(), json!("NaN"));
        assert_eq!(round(&Kind::Float64, "1.5e-300").1, "1.5e-300");
    }
}
