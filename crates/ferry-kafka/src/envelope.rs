//! Debezium's change event envelope, as its JsonConverter writes it.
//!
//! One topic per table, named `<prefix>.<schema>.<table>` (PostgreSQL) or
//! `<prefix>.<database>.<table>` (MySQL), as Debezium names them; the message key is the row's
//! key (`null` for a table without one); the value is the envelope:
//!
//! ```text
//! {"schema": {...}, "payload": {"before": {...}|null, "after": {...}|null,
//!   "source": {"version","connector","name","ts_ms","snapshot","db","sequence","schema","table","txId","lsn","xmin"},
//!   "op": "c"|"u"|"d"|"r"|"t", "ts_ms": ..., "transaction": {"id","total_order","data_collection_order"}}}
//! ```
//!
//! Without schemas (`value.converter.schemas.enable=false`) the value is the payload alone. A
//! delete is followed by a tombstone (same key, null value) for log compaction, as Debezium
//! does by default. Transaction metadata goes to `<prefix>.transaction`: a `BEGIN` record before
//! a transaction's first event and an `END` record with per-table event counts after its last.
//! The transaction id is `<txId>:<commit LSN>` for PostgreSQL (as Debezium's PostgreSQL
//! connector writes it), the GTID or `file:pos` for MySQL.

use std::collections::HashMap;

use ferry_core::change::{Datum, Relation, Row};
use ferry_core::{SourcePosition, TableName};
use serde_json::{json, Map, Value};

use crate::types::{Kind, ValueError};

/// The Debezium version Ferry's events follow.
pub const DEBEZIUM_VERSION: &str = "2.7.0.Final";

/// A change's kind, Debezium's `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// c: insert.
    Create,
    /// u: update.
    Update,
    /// d: delete.
    Delete,
    /// r: a row read by the snapshot.
    Read,
    /// t: truncate.
    Truncate,
}

impl Op {
    /// The letter.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// The source engine, for the `source` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL: the database's name.
    Postgres {
        /// Database.
        db: String,
    },
    /// MySQL/MariaDB: the server id, when known.
    Mysql {
        /// The source's `server_id`.
        server_id: u64,
    },
}

/// Where an event comes from: the `source` block's variable part.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The transaction's commit position.
    pub commit: &'a SourcePosition,
    /// The change's own position (PostgreSQL: the LSN of its WAL record when known; else the
    /// commit's).
    pub at: &'a SourcePosition,
    /// The previous transaction's commit (Debezium's `sequence[0]`), if known.
    pub previous: Option<&'a SourcePosition>,
    /// Commit time, microseconds since the epoch.
    pub ts_us: i64,
    /// The source's transaction id (0: none).
    pub txid: u64,
    /// `"false"` in the stream; `"true"`, `"first"`, `"last"` in a snapshot.
    pub snapshot: &'static str,
    /// When Ferry handled the event (the envelope's `ts_ms`), microseconds since the epoch.
    pub processed_us: i64,
}

/// The `transaction` block of a data event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TxnBlock {
    /// The transaction's id.
    pub id: String,
    /// 1-based position of the event in the transaction.
    pub total_order: u64,
    /// 1-based position among the transaction's events of the same table.
    pub data_collection_order: u64,
}

/// A data event's payload, its fields in the order of the envelope's schema.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    before: Option<RowJson<'a>>,
    after: Option<RowJson<'a>>,
    source: &'a SourceBlock<'a>,
    op: &'a str,
    ts_ms: i64,
    ts_us: i64,
    ts_ns: i64,
    transaction: Option<&'a TxnBlock>,
}

/// The `source` block, its fields in the order of the connector's schema.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum SourceBlock<'a> {
    Pg(PgSourceBlock<'a>),
    My(MySourceBlock<'a>),
}

#[derive(serde::Serialize)]
struct PgSourceBlock<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'a str,
    db: &'a str,
    sequence: String,
    ts_us: i64,
    ts_ns: i64,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: Option<u64>,
    lsn: Option<u64>,
    xmin: Option<u64>,
}

#[derive(serde::Serialize)]
struct MySourceBlock<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'a str,
    db: &'a str,
    sequence: Option<&'a str>,
    ts_us: i64,
    ts_ns: i64,
    table: &'a str,
    server_id: u64,
    gtid: Option<&'a str>,
    file: &'a str,
    pos: u64,
    row: i32,
    thread: Option<i64>,
    query: Option<&'a str>,
}

/// A row as a JSON object in column order (its key columns only for the record key), each
/// value encoded as Debezium encodes its type.
struct RowJson<'a> {
    t: &'a Table,
    row: &'a Row,
    only_key: bool,
}

impl serde::Serialize for RowJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let t = self.t;
        let mut m = s.serialize_map(None)?;
        for (i, (name, kind, _)) in t.columns.iter().enumerate() {
            if self.only_key && !t.key.contains(&i) {
                continue;
            }
            let v = match self.row.get(i) {
                None | Some(Datum::Null) => Value::Null,
                Some(Datum::Unchanged) => kind.unavailable(),
                Some(Datum::Text(b)) => {
                    let text = std::str::from_utf8(b).map_err(|_| S::Error::custom(format!("column {name}: not UTF-8")))?;
                    kind.encode(text).map_err(|e| S::Error::custom(format!("column {name}: {}", e.0)))?
                }
                Some(Datum::Binary(_)) => return Err(S::Error::custom(format!("column {name}: binary values are not carried to Kafka"))),
            };
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

/// A message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Key (JSON); None: a null key.
    pub key: Option<Vec<u8>>,
    /// Value (JSON); None: a tombstone.
    pub value: Option<Vec<u8>>,
}

/// What the encoder knows of a table.
#[derive(Debug, Clone)]
struct Table {
    name: TableName,
    topic: String,
    data_collection: String,
    columns: Vec<(String, Kind, bool)>,
    key: Vec<usize>,
    /// The key's and the value's schema part, serialized once (JsonConverter's `schema`).
    key_schema: Vec<u8>,
    value_schema: Vec<u8>,
}

/// Encodes a change stream as Debezium events.
#[derive(Debug)]
pub struct Encoder {
    prefix: String,
    schemas: bool,
    engine: Engine,
    tables: HashMap<u32, Table>,
    /// The transaction topic's key and value schema parts, serialized once.
    tx_key_schema: Vec<u8>,
    tx_value_schema: Vec<u8>,
}

/// The Debezium topic of a table.
pub fn table_topic(prefix: &str, table: &TableName) -> String {
    format!("{prefix}.{}.{}", table.schema, table.name)
}

/// The transaction metadata topic.
pub fn transaction_topic(prefix: &str) -> String {
    format!("{prefix}.transaction")
}

/// Ferry's watermark topic (`<prefix>.ferry.watermark`): with nothing to publish, a capture
/// that was asked to (`ferry migrate --via kafka`) says here how far the source has sent, so
/// that an apply can reach a position no transaction carries (the final position of a
/// cutover, after writes stopped). Debezium has no such record; its consumers ignore the topic.
pub fn watermark_topic(prefix: &str) -> String {
    format!("{prefix}.ferry.watermark")
}

/// A record of the watermark topic: every source transaction that commits before `position`
/// is in the topics, its END record before `transactions_end` in the transaction topic's
/// partition 0 (an apply that has read that far and finds no transaction open has applied
/// everything before `position`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    /// The source position (an LSN as PostgreSQL prints it).
    pub position: String,
    /// The transaction topic's high watermark when the record was written.
    pub transactions_end: i64,
    /// When (milliseconds since the epoch).
    pub ts_ms: i64,
}

/// The transaction id Debezium's connector would give: `<txId>:<commit LSN>` for PostgreSQL;
/// for MySQL its form without GTIDs, `file=<binlog file>,pos=<where the transaction starts>`
/// (Debezium uses the transaction's GTID when the server has them; Ferry always gives the
/// position, which orders transactions where a GTID cannot: `docs/kafka.md`).
pub fn transaction_id(commit: &SourcePosition, txid: u64) -> String {
    match commit {
        SourcePosition::Postgres(lsn) => format!("{txid}:{}", lsn.0),
        SourcePosition::Mysql(p) => format!("file={},pos={}", p.file(), p.pos()),
    }
}

fn field(name: &str, mut schema: Map<String, Value>, optional: bool) -> Value {
    schema.insert("optional".into(), Value::Bool(optional));
    schema.insert("field".into(), Value::String(name.into()));
    Value::Object(schema)
}

impl Encoder {
    /// An encoder for topics under `prefix`; `schemas`: JSON with the schema part.
    pub fn new(prefix: &str, schemas: bool, engine: Engine) -> Encoder {
        let tx_key = json!({"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"optional":false,
            "name":"io.debezium.connector.common.TransactionMetadataKey","version":1});
        Encoder {
            prefix: prefix.to_string(),
            schemas,
            engine,
            tables: HashMap::new(),
            tx_key_schema: serde_json::to_vec(&tx_key).expect("json"),
            tx_value_schema: serde_json::to_vec(&Self::tx_schema()).expect("json"),
        }
    }

    /// The topics prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Learns (or relearns) a table's shape.
    pub fn relation(&mut self, rel: &Relation) {
        let columns: Vec<(String, Kind, bool)> = rel
            .columns
            .iter()
            .map(|c| (c.name.clone(), Kind::of(&c.type_sql), !c.not_null))
            .collect();
        let key: Vec<usize> = rel.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
        let base = format!("{}.{}.{}", self.prefix, rel.table.schema, rel.table.name);
        let row_fields = |only: Option<&[usize]>| -> Vec<Value> {
            columns
                .iter()
                .enumerate()
                .filter(|(i, _)| only.is_none_or(|k| k.contains(i)))
                .map(|(_, (n, k, opt))| field(n, k.schema(), *opt))
                .collect()
        };
        let key_schema = json!({"type":"struct","fields": row_fields(Some(&key)),"optional":false,"name": format!("{base}.Key")});
        let value_struct =
            json!({"type":"struct","fields": row_fields(None),"optional":true,"name": format!("{base}.Value"),"field":"before"});
        let mut after = value_struct.clone();
        after["field"] = json!("after");
        let source = self.source_schema();
        let value_schema = json!({
            "type": "struct",
            "fields": [
                value_struct,
                after,
                source,
                {"type":"string","optional":false,"field":"op"},
                {"type":"int64","optional":true,"field":"ts_ms"},
                {"type":"int64","optional":true,"field":"ts_us"},
                {"type":"int64","optional":true,"field":"ts_ns"},
                {"type":"struct","fields":[
                    {"type":"string","optional":false,"field":"id"},
                    {"type":"int64","optional":false,"field":"total_order"},
                    {"type":"int64","optional":false,"field":"data_collection_order"}
                ],"optional":true,"name":"event.block","version":1,"field":"transaction"}
            ],
            "optional": false,
            "name": format!("{base}.Envelope"),
            "version": 2
        });
        self.tables.insert(
            rel.id,
            Table {
                name: rel.table.clone(),
                topic: table_topic(&self.prefix, &rel.table),
                data_collection: format!("{}.{}", rel.table.schema, rel.table.name),
                columns,
                key,
                key_schema: serde_json::to_vec(&key_schema).expect("json"),
                value_schema: serde_json::to_vec(&value_schema).expect("json"),
            },
        );
    }

    fn source_schema(&self) -> Value {
        let s = |name: &str, optional: bool| json!({"type":"string","optional":optional,"field":name});
        let i = |name: &str, optional: bool| json!({"type":"int64","optional":optional,"field":name});
        let snapshot = json!({"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,
            "parameters":{"allowed":"true,last,false,incremental"},"default":"false","field":"snapshot"});
        let (fields, name) = match self.engine {
            Engine::Postgres { .. } => (
                vec![
                    s("version", false),
                    s("connector", false),
                    s("name", false),
                    i("ts_ms", false),
                    snapshot,
                    s("db", false),
                    s("sequence", true),
                    i("ts_us", true),
                    i("ts_ns", true),
                    s("schema", false),
                    s("table", false),
                    i("txId", true),
                    i("lsn", true),
                    i("xmin", true),
                ],
                "io.debezium.connector.postgresql.Source",
            ),
            Engine::Mysql { .. } => (
                vec![
                    s("version", false),
                    s("connector", false),
                    s("name", false),
                    i("ts_ms", false),
                    snapshot,
                    s("db", false),
                    s("sequence", true),
                    i("ts_us", true),
                    i("ts_ns", true),
                    s("table", true),
                    i("server_id", false),
                    s("gtid", true),
                    s("file", false),
                    i("pos", false),
                    json!({"type":"int32","optional":false,"field":"row"}),
                    i("thread", true),
                    s("query", true),
                ],
                "io.debezium.connector.mysql.Source",
            ),
        };
        json!({"type":"struct","fields":fields,"optional":false,"name":name,"field":"source"})
    }

    fn source<'a>(&'a self, table: &'a TableName, o: &'a Origin<'_>) -> SourceBlock<'a> {
        let ts_ms = o.ts_us.div_euclid(1000);
        let ts_ns = o.ts_us.saturating_mul(1000);
        match &self.engine {
            Engine::Postgres { db } => {
                let lsn = |p: &SourcePosition| p.as_lsn().map(|l| l.0);
                // `["<previous commit>","<commit>"]` as a string, as Debezium writes it.
                let quoted = |l: Option<u64>| l.map(|l| format!("\"{l}\"")).unwrap_or_else(|| "null".into());
                SourceBlock::Pg(PgSourceBlock {
                    version: DEBEZIUM_VERSION,
                    connector: "postgresql",
                    name: &self.prefix,
                    ts_ms,
                    snapshot: o.snapshot,
                    db,
                    sequence: format!("[{},{}]", quoted(o.previous.and_then(lsn)), quoted(lsn(o.commit))),
                    ts_us: o.ts_us,
                    ts_ns,
                    schema: &table.schema,
                    table: &table.name,
                    tx_id: (o.txid != 0).then_some(o.txid),
                    lsn: lsn(o.at),
                    xmin: None,
                })
            }
            Engine::Mysql { server_id } => {
                let p = o.at.as_mysql();
                SourceBlock::My(MySourceBlock {
                    version: DEBEZIUM_VERSION,
                    connector: "mysql",
                    name: &self.prefix,
                    ts_ms,
                    snapshot: o.snapshot,
                    db: &table.schema,
                    sequence: None,
                    ts_us: o.ts_us,
                    ts_ns,
                    table: &table.name,
                    server_id: *server_id,
                    gtid: None,
                    file: p.map(|p| p.file()).unwrap_or(""),
                    pos: p.map(|p| p.pos()).unwrap_or(0),
                    row: 0,
                    thread: None,
                    query: None,
                })
            }
        }
    }

    /// The record's value or key as JsonConverter writes it: `{"schema":...,"payload":...}`
    /// with schemas, else the payload alone. The schema part is serialized once per table; the
    /// payload straight from the row (`Envelope`), without a JSON tree.
    fn wrap(&self, schema: &[u8], payload: &impl serde::Serialize) -> Result<Vec<u8>, ValueError> {
        let mut out = Vec::with_capacity(if self.schemas { schema.len() + 512 } else { 512 });
        if self.schemas {
            out.extend_from_slice(b"{\"schema\":");
            out.extend_from_slice(schema);
            out.extend_from_slice(b",\"payload\":");
        }
        serde_json::to_writer(&mut out, payload).map_err(|e| ValueError(e.to_string()))?;
        if self.schemas {
            out.push(b'}');
        }
        Ok(out)
    }

    /// The table and data collection (`schema.table`) of a relation id.
    pub fn table(&self, relation: u32) -> Option<(&TableName, &str)> {
        self.tables.get(&relation).map(|t| (&t.name, t.data_collection.as_str()))
    }

    /// A row change (or a snapshot row): the event, and for a delete the tombstone after it.
    pub fn row_event(
        &self,
        relation: u32,
        op: Op,
        before: Option<&Row>,
        after: Option<&Row>,
        origin: &Origin<'_>,
        txn: Option<&TxnBlock>,
    ) -> Result<Vec<Message>, ValueError> {
        let now_us = origin.processed_us;
        let t = self
            .tables
            .get(&relation)
            .ok_or_else(|| ValueError(format!("relation {relation} was not described before its change")))?;
        let key_row = after.or(before);
        let key = match (t.key.is_empty(), key_row) {
            (false, Some(r)) => Some(self.wrap(&t.key_schema, &RowJson { t, row: r, only_key: true })?),
            _ => None,
        };
        let source = self.source(&t.name, origin);
        let payload = Envelope {
            before: before.map(|row| RowJson { t, row, only_key: false }),
            after: after.map(|row| RowJson { t, row, only_key: false }),
            source: &source,
            op: op.code(),
            ts_ms: now_us.div_euclid(1000),
            ts_us: now_us,
            ts_ns: now_us.saturating_mul(1000),
            transaction: txn,
        };
        let mut out = vec![Message {
            topic: t.topic.clone(),
            key: key.clone(),
            value: Some(self.wrap(&t.value_schema, &payload)?),
        }];
        if op == Op::Delete && key.is_some() {
            out.push(Message {
                topic: t.topic.clone(),
                key,
                value: None,
            });
        }
        Ok(out)
    }

    /// A truncate event (no key, no row).
    pub fn truncate(&self, relation: u32, origin: &Origin<'_>, txn: Option<&TxnBlock>) -> Result<Message, ValueError> {
        let now_us = origin.processed_us;
        let t = self
            .tables
            .get(&relation)
            .ok_or_else(|| ValueError(format!("relation {relation} was not described before its truncate")))?;
        let source = self.source(&t.name, origin);
        let payload = Envelope {
            before: None,
            after: None,
            source: &source,
            op: "t",
            ts_ms: now_us.div_euclid(1000),
            ts_us: now_us,
            ts_ns: now_us.saturating_mul(1000),
            transaction: txn,
        };
        Ok(Message {
            topic: t.topic.clone(),
            key: None,
            value: Some(self.wrap(&t.value_schema, &payload)?),
        })
    }

    fn tx_schema() -> Value {
        json!({"type":"struct","fields":[
            {"type":"string","optional":false,"field":"status"},
            {"type":"string","optional":false,"field":"id"},
            {"type":"int64","optional":true,"field":"event_count"},
            {"type":"array","items":{"type":"struct","fields":[
                {"type":"string","optional":false,"field":"data_collection"},
                {"type":"int64","optional":false,"field":"event_count"}],"optional":false},
             "optional":true,"field":"data_collections"},
            {"type":"int64","optional":false,"field":"ts_ms"}
        ],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataValue","version":1})
    }

    fn tx_key(&self, id: &str) -> Vec<u8> {
        self.wrap(&self.tx_key_schema, &json!({ "id": id })).expect("json")
    }

    /// A transaction's BEGIN record.
    pub fn begin(&self, id: &str, ts_ms: i64) -> Message {
        let payload = json!({"status":"BEGIN","id":id,"event_count":null,"data_collections":null,"ts_ms":ts_ms});
        Message {
            topic: transaction_topic(&self.prefix),
            key: Some(self.tx_key(id)),
            value: Some(self.wrap(&self.tx_value_schema, &payload).expect("json")),
        }
    }

    /// A transaction's END record: its events per table, in first-seen order.
    pub fn end(&self, id: &str, ts_ms: i64, counts: &[(String, u64)]) -> Message {
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let collections: Vec<Value> = counts
            .iter()
            .map(|(c, n)| json!({"data_collection": c, "event_count": n}))
            .collect();
        let payload = json!({"status":"END","id":id,"event_count":total,"data_collections":collections,"ts_ms":ts_ms});
        Message {
            topic: transaction_topic(&self.prefix),
            key: Some(self.tx_key(id)),
            value: Some(self.wrap(&self.tx_value_schema, &payload).expect("json")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_core::change::{Column, Identity};
    use ferry_core::Lsn;

    fn rel() -> Relation {
        let col = |name: &str, ty: &str, key: bool| Column {
            name: name.into(),
            type_sql: ty.into(),
            key,
            default: None,
            not_null: key,
        };
        Relation {
            id: 7,
            table: TableName::new("public", "customers"),
            scope: TableName::new("public", "customers"),
            identity: Identity::Key,
            columns: vec![
                col("id", "integer", true),
                col("email", "text", false),
                col("balance", "numeric(10,2)", false),
            ],
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn an_update_in_debeziums_envelope() {
        let mut e = Encoder::new("dbserver1", true, Engine::Postgres { db: "inventory".into() });
        e.relation(&rel());
        let commit = SourcePosition::Postgres(Lsn(33227720));
        let origin = Origin {
            commit: &commit,
            at: &commit,
            previous: None,
            ts_us: 1_559_033_904_863_123,
            txid: 556,
            snapshot: "false",
            processed_us: 1_559_033_904_900_000,
        };
        let txn = TxnBlock {
            id: transaction_id(&commit, 556),
            total_order: 1,
            data_collection_order: 1,
        };
        let before = vec![text("1004"), text("a@b.c"), Datum::Null];
        let after = vec![text("1004"), Datum::Unchanged, text("-1.50")];
        let msgs = e
            .row_event(7, Op::Update, Some(&before), Some(&after), &origin, Some(&txn))
            .unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].topic, "dbserver1.public.customers");
        let key: Value = serde_json::from_slice(msgs[0].key.as_ref().unwrap()).unwrap();
        assert_eq!(key["payload"], json!({"id": 1004}));
        assert_eq!(key["schema"]["name"], json!("dbserver1.public.customers.Key"));
        let v: Value = serde_json::from_slice(msgs[0].value.as_ref().unwrap()).unwrap();
        let p = &v["payload"];
        assert_eq!(p["op"], json!("u"));
        assert_eq!(p["before"], json!({"id": 1004, "email": "a@b.c", "balance": null}));
        assert_eq!(p["after"]["email"], json!(crate::types::UNAVAILABLE));
        assert_eq!(p["after"]["balance"], json!("/2o="));
        assert_eq!(p["source"]["lsn"], json!(33227720));
        assert_eq!(p["source"]["txId"], json!(556));
        assert_eq!(p["source"]["ts_ms"], json!(1_559_033_904_863i64));
        assert_eq!(p["transaction"]["id"], json!("556:33227720"));
        assert_eq!(v["schema"]["name"], json!("dbserver1.public.customers.Envelope"));
        let fields: Vec<&str> = v["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            ["before", "after", "source", "op", "ts_ms", "ts_us", "ts_ns", "transaction"]
        );
        // Without schemas, the payload alone.
        let bare = Encoder::new("dbserver1", false, Engine::Postgres { db: "inventory".into() });
        let mut bare = bare;
        bare.relation(&rel());
        let d = bare.row_event(7, Op::Delete, Some(&before), None, &origin, None).unwrap();
        assert_eq!(d.len(), 2, "a delete is followed by its tombstone");
        assert!(d[1].value.is_none());
        let v: Value = serde_json::from_slice(d[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(v["op"], json!("d"));
        assert!(v.get("schema").is_none());
        let end: Value = serde_json::from_slice(
            bare.end("556:33227720", 5, &[("public.customers".into(), 2)])
                .value
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            end,
            json!({"status":"END","id":"556:33227720","event_count":2,"data_collections":[{"data_collection":"public.customers","event_count":2}],"ts_ms":5})
        );
    }
}
