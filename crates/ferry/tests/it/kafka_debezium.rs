//! Ferry's Kafka events against Debezium's own documentation: the envelope examples and the
//! type table of the PostgreSQL connector's page, copied into tests/fixtures/debezium (see its
//! README for where from and for the documentation's slips this file undoes, each with its
//! reason).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{connect, Dbs, Migrator};
use crate::kafka::{broker, read_topic};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/debezium/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The documentation's JSON blocks as values. The blocks take two liberties JSON does not:
/// an elided part (`{ ... }`, read as null) and trailing commas (dropped). A block may hold
/// several values one after the other.
pub fn doc_json(text: &str) -> Vec<Value> {
    let mut s = String::with_capacity(text.len());
    let mut in_string = false;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if in_string {
            s.push(c);
            if c == '\\' {
                s.push(chars[i + 1]);
                i += 1;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            s.push(c);
        } else if c == '{' {
            // `{ ... }` elides a part.
            let rest: String = chars[i + 1..].iter().collect();
            let trimmed = rest.trim_start();
            if let Some(after) = trimmed.strip_prefix("...") {
                let after = after.trim_start();
                assert!(after.starts_with('}'), "an elision that is not {{ ... }}");
                s.push_str("null");
                i = chars.len() - after.chars().count() + 1;
                continue;
            }
            s.push(c);
        } else if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if !matches!(next, Some('}') | Some(']')) {
                s.push(c);
            }
        } else {
            s.push(c);
        }
        i += 1;
    }
    serde_json::Deserializer::from_str(&s)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("documentation JSON: {e}\n{s}"))
}

/// A schema's fields by name.
fn fields(schema: &Value) -> BTreeMap<String, Value> {
    schema["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields in {schema}"))
        .iter()
        .map(|f| (f["field"].as_str().unwrap().to_string(), f.clone()))
        .collect()
}

/// The JSON type of a value, for fields whose value is the instance's own (times, positions).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The documentation's `source` block against Ferry's, field by field: every documented field
/// is there; the instance's own values (version, times, positions, database, transaction id)
/// have the documented JSON type; the others are equal.
fn conform_source(op: &str, doc: &Value, ours: &Value, prefix: &str) {
    let doc = doc.as_object().unwrap();
    let ours_map = ours.as_object().unwrap();
    for (k, d) in doc {
        let o = ours_map
            .get(k)
            .unwrap_or_else(|| panic!("{op}: source.{k} is documented, Ferry's event lacks it: {ours}"));
        match k.as_str() {
            "version" | "ts_ms" | "ts_us" | "ts_ns" | "txId" | "lsn" | "db" => {
                assert_eq!(kind(o), kind(d), "{op}: source.{k}: {o} is not a {} like {d}", kind(d))
            }
            // The previous commit and this change: Ferry's first value is null right after a
            // restart, which the documentation allows ("Either value may be null").
            "sequence" => {
                let seq: Vec<Value> = serde_json::from_str(o.as_str().expect("sequence is a string")).unwrap();
                assert_eq!(seq.len(), 2, "{op}: sequence {o}");
                assert!(seq.iter().all(|v| v.is_null() || v.is_string()), "{op}: sequence {o}");
            }
            // Erratum: the examples write a JSON boolean; Debezium's SourceInfo field is the
            // string enum io.debezium.data.Enum (true, first, last, false, incremental...), as
            // the schema Ferry writes says. Every example here is of a streamed change.
            "snapshot" => assert_eq!(o, &json!("false"), "{op}: source.snapshot"),
            // The topic prefix (the examples' is `PostgreSQL_server`; each test run has its own).
            "name" => assert_eq!(o, &json!(prefix), "{op}: source.name"),
            _ => assert_eq!(o, d, "{op}: source.{k}"),
        }
    }
    let extra: Vec<&String> = ours_map
        .keys()
        .filter(|k| !doc.contains_key(*k) && k.as_str() != "sequence")
        .collect();
    assert!(extra.is_empty(), "{op}: source fields the documentation does not have: {extra:?}");
}

/// The documentation's example table, as it creates it.
const CUSTOMERS: &str = "CREATE TABLE customers (
  id SERIAL,
  first_name VARCHAR(255) NOT NULL,
  last_name VARCHAR(255) NOT NULL,
  email VARCHAR(255) NOT NULL,
  PRIMARY KEY(id)
);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_writes_the_events_of_debeziums_documentation_field_by_field() {
    let dbs = Dbs::create("kdoc").await;
    let src = connect(&dbs.source).await;
    src.batch_execute(CUSTOMERS).await.unwrap();
    // The topic prefix of the examples.
    let prefix = format!("PostgreSQL_server_{}", dbs.name);
    let capture = Migrator::spawn(&[
        "capture",
        "--source",
        &dbs.source,
        "--to",
        &format!("kafka://{}/{prefix}", broker()),
    ]);
    read_topic(&format!("{prefix}.ferry.capture"), 1, Duration::from_secs(90));
    // The examples' operations, one transaction each.
    for sql in [
        "INSERT INTO customers VALUES (1, 'Anne', 'Kretchmar', 'annek@noanswer.org')",
        "UPDATE customers SET first_name = 'Anne Marie' WHERE id = 1",
        "DELETE FROM customers WHERE id = 1",
        "TRUNCATE customers",
    ] {
        src.batch_execute(sql).await.unwrap();
    }
    let topic = format!("{prefix}.public.customers");
    // create, update, delete, its tombstone, truncate.
    let recs = read_topic(&topic, 5, Duration::from_secs(60));
    assert_eq!(recs.len(), 5, "{recs:?}");
    let named = |v: &str| v.replace("PostgreSQL_server.inventory.", &format!("{prefix}.public."));

    // create: the whole value, schema part included.
    let doc = &doc_json(&fixture("postgresql/create.json"))[0];
    let ours = recs[0].value.as_ref().expect("create value");
    let (ds, os) = (&doc["schema"], &ours["schema"]);
    // Erratum: the examples name the value schemas `PostgreSQL_server.inventory.customers...`,
    // with the database; the schema names follow the topic (`<prefix>.<schema>.<table>`), as
    // the examples' own `source.schema` is `public`.
    assert_eq!(os["name"], json!(named(ds["name"].as_str().unwrap())));
    assert_eq!((&os["type"], &os["optional"]), (&ds["type"], &ds["optional"]));
    let (dfields, ofields) = (fields(ds), fields(os));
    for (f, d) in &dfields {
        let o = ofields
            .get(f)
            .unwrap_or_else(|| panic!("envelope field {f} is documented, Ferry's schema lacks it"));
        assert_eq!(o["type"], d["type"], "envelope field {f}");
        match f.as_str() {
            "before" | "after" => {
                assert_eq!(o["name"], json!(named(d["name"].as_str().unwrap())), "{f}");
                assert_eq!(o["optional"], d["optional"], "{f}");
                // Every column: type, optionality, semantic name, in order.
                assert_eq!(o["fields"], d["fields"], "{f}: the row's columns");
            }
            "source" => {
                assert_eq!(o["name"], d["name"]);
                let (dsrc, osrc) = (fields(d), fields(o));
                for (sf, sd) in &dsrc {
                    let so = osrc
                        .get(sf)
                        .unwrap_or_else(|| panic!("source field {sf} is documented, Ferry's schema lacks it"));
                    if sf == "snapshot" {
                        // Erratum (see conform_source): the field is Debezium's string enum.
                        assert_eq!(so["type"], json!("string"));
                        assert_eq!(so["name"], json!("io.debezium.data.Enum"));
                        assert_eq!(so["default"], json!("false"));
                        continue;
                    }
                    assert_eq!(so["type"], sd["type"], "source field {sf}");
                    // Erratum: the examples make ts_us and ts_ns required; they came in
                    // Debezium 2.6 and are optional in its SourceInfo schema, as in Ferry's.
                    if !matches!(sf.as_str(), "ts_us" | "ts_ns") {
                        assert_eq!(so["optional"], sd["optional"], "source field {sf}");
                    }
                }
                // `sequence`: in the examples' payloads, left out of their schema.
                let extra: Vec<&String> = osrc.keys().filter(|k| !dsrc.contains_key(*k) && *k != "sequence").collect();
                assert!(extra.is_empty(), "source schema fields not documented: {extra:?}");
            }
            _ => assert_eq!(o["optional"], d["optional"], "envelope field {f}"),
        }
    }
    // `transaction`: the block the transaction metadata section adds to the envelope.
    let extra: Vec<&String> = ofields.keys().filter(|k| !dfields.contains_key(*k)).collect();
    assert_eq!(extra, ["transaction"], "envelope fields not documented");
    let tx_fields = fields(&ofields["transaction"]);
    assert_eq!(tx_fields.keys().collect::<Vec<_>>(), ["data_collection_order", "id", "total_order"]);

    // The payloads of create, update, delete and truncate.
    let docs = [
        ("c", doc["payload"].clone()),
        ("u", doc_json(&fixture("postgresql/update.json"))[0]["payload"].clone()),
        ("d", doc_json(&fixture("postgresql/delete.json"))[0]["payload"].clone()),
        ("t", doc_json(&fixture("postgresql/truncate.json"))[0]["payload"].clone()),
    ];
    let ours_payloads: Vec<Value> = [0, 1, 2, 4]
        .iter()
        .map(|i| recs[*i].value.as_ref().expect("a value")["payload"].clone())
        .collect();
    assert!(recs[3].value.is_none(), "a delete is followed by a tombstone");
    assert_eq!(recs[3].key, recs[2].key, "the tombstone has the delete's key");
    for ((op, d), o) in docs.iter().zip(&ours_payloads) {
        assert_eq!(o["op"], json!(op));
        conform_source(op, &d["source"], &o["source"], &prefix);
        for k in ["ts_ms", "ts_us", "ts_ns"] {
            assert!(o[k].is_i64(), "{op}: {k} is a number: {o}");
        }
        match *op {
            "c" => {
                assert_eq!(o["before"], d["before"]);
                assert_eq!(o["after"], d["after"]);
            }
            "u" => {
                assert_eq!(o["after"], d["after"]);
                // Erratum: the example shows the old key in `before`; under REPLICA IDENTITY
                // DEFAULT PostgreSQL's pgoutput sends no old row when the key did not change,
                // so there is nothing to put there (the section's own text: `before` holds the
                // primary key only "if the key changed"; Debezium writes null).
                assert_eq!(o["before"], Value::Null);
            }
            "d" => {
                // Erratum: the example shows `{"id": 1}`; JsonConverter writes every field of
                // the Value struct, the ones the old key does not have as null.
                let b = o["before"].as_object().expect("before");
                assert_eq!(b["id"], d["before"]["id"]);
                assert!(b.iter().all(|(k, v)| k == "id" || v.is_null()), "{b:?}");
                assert_eq!(o["after"], d["after"]);
            }
            "t" => {
                // Erratum: the example leaves them out; JsonConverter writes both, null.
                assert_eq!((&o["before"], &o["after"]), (&Value::Null, &Value::Null));
            }
            _ => unreachable!(),
        }
        // The event's transaction block (documented with string numbers, an erratum: the
        // schema's total_order and data_collection_order are int64).
        let t = &o["transaction"];
        assert!(t["id"].as_str().is_some_and(|id| id.split_once(':').is_some()), "{t}");
        assert_eq!(
            (t["total_order"].as_i64(), t["data_collection_order"].as_i64()),
            (Some(1), Some(1)),
            "{op}: {t}"
        );
    }
    let dtx = doc_json(&fixture("postgresql/transaction.json"));
    assert_eq!(dtx.len(), 2, "BEGIN and END");
    // The enriched event's block: the same fields (its numbers written as strings, see above).
    let enriched = &doc_json(&fixture("postgresql/transaction-event.json"))[0];
    let block_keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(block_keys(&ours_payloads[0]["transaction"]), block_keys(&enriched["transaction"]));
    let txrecs = read_topic(&format!("{prefix}.transaction"), 8, Duration::from_secs(30));
    let tx: Vec<Value> = txrecs
        .iter()
        .filter_map(|r| r.value.clone())
        .map(|v| v["payload"].clone())
        .collect();
    assert_eq!(tx.len(), 8, "BEGIN and END of four transactions");
    for (i, t) in tx.iter().enumerate() {
        let d = if i % 2 == 0 { &dtx[0] } else { &dtx[1] };
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(keys(t), keys(d), "transaction record {t}");
        assert_eq!(t["status"], d["status"]);
        assert!(t["ts_ms"].is_i64());
        let (txid, lsn) = t["id"].as_str().unwrap().split_once(':').expect("txID:LSN");
        assert!(txid.parse::<u64>().is_ok() && lsn.parse::<u64>().is_ok(), "{t}");
        if d["status"] == "BEGIN" {
            assert_eq!((&t["event_count"], &t["data_collections"]), (&Value::Null, &Value::Null));
        } else {
            assert_eq!(t["event_count"], json!(1));
            assert_eq!(
                t["data_collections"],
                json!([{"data_collection": "public.customers", "event_count": 1}])
            );
            // As in the example, an event's transaction id is its END record's.
            assert_eq!(ours_payloads[i / 2]["transaction"]["id"], t["id"]);
        }
    }
    crate::kafka::stop_capture(capture, &dbs.source, &prefix);
    drop(src);
    dbs.drop().await;
}

/// The documented types Ferry does not write as Debezium does yet, and why.
const NOT_YET: &[(&str, &str)] = &[
    (
        "BIT VARYING[(M)]",
        "kept as its text: Debezium's Bits lose a varying string's leading zeros, Ferry's events round-trip exactly",
    ),
    ("POINT", "geometric types travel as their text"),
    ("BOX, LSEG, PATH, POLYGON", "geometric types travel as their text"),
    ("CIRCLE", "geometric types travel as their text"),
    ("LINE", "geometric types travel as their text"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_types_every_column_as_debeziums_type_table_says() {
    let dbs = Dbs::create("kdoctypes").await;
    let src = connect(&dbs.source).await;
    let table = fixture("postgresql/types.tsv");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    let mut columns = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        for (j, ty) in r[4].split(';').enumerate() {
            columns.push((format!("c{i}_{j}"), ty.to_string(), i));
        }
    }
    src.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS ltree; CREATE EXTENSION IF NOT EXISTS citext;
         CREATE TYPE fixture_mood AS ENUM ('sad', 'happy');
         CREATE TABLE typed (id int PRIMARY KEY, {});
         INSERT INTO typed (id) VALUES (1);",
        columns.iter().map(|(n, t, _)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")
    ))
    .await
    .unwrap();
    let prefix = format!("it_{}", dbs.name);
    let capture = Migrator::spawn(&[
        "capture",
        "--source",
        &dbs.source,
        "--to",
        &format!("kafka://{}/{prefix}", broker()),
    ]);
    let recs = read_topic(&format!("{prefix}.public.typed"), 1, Duration::from_secs(90));
    let value = recs[0].value.as_ref().expect("the snapshot row");
    let after = fields(&fields(&value["schema"])["after"]);
    // Kafka Connect's schema types as JsonConverter spells them.
    let literal = |t: &str| match t {
        "FLOAT32" => "float".to_string(),
        "FLOAT64" => "double".to_string(),
        other => other.to_ascii_lowercase(),
    };
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (name, ty, i) in &columns {
        let r = &rows[*i];
        if NOT_YET.iter().any(|(t, _)| *t == r[1]) {
            continue;
        }
        let f = &after[name];
        let want_name = (r[3] != "n/a").then(|| r[3].to_string());
        let got = (f["type"].as_str().unwrap_or("").to_string(), f["name"].as_str().map(str::to_string));
        if got != (literal(r[2]), want_name.clone()) {
            wrong.push(format!(
                "{ty} ({}): Ferry writes {got:?}, documented {:?}",
                r[1],
                (literal(r[2]), want_name)
            ));
        }
        checked += 1;
    }
    assert!(wrong.is_empty(), "columns not typed as documented:\n{}", wrong.join("\n"));
    assert!(checked >= 50, "{checked} columns checked");
    // The documented rows Ferry leaves out are still in the table (the list is not stale).
    for (t, _) in NOT_YET {
        assert!(rows.iter().any(|r| r[1] == *t), "{t} is not in the type table");
    }
    // The parameters the table's notes name: a decimal's scale, bits' length.
    let by_type = |t: &str| &after[&columns.iter().find(|(_, ty, _)| ty == t).unwrap().0];
    assert_eq!(by_type("numeric(10,2)")["parameters"]["scale"], json!("2"));
    assert_eq!(by_type("bit(10)")["parameters"]["length"], json!("10"));
    crate::kafka::stop_capture(capture, &dbs.source, &prefix);
    drop(src);
    dbs.drop().await;
}

/// Records to produce: key and value (None: null).
type Records = Vec<(Option<String>, Option<String>)>;

/// Produces records to `topic`, waiting for the broker's acknowledgement.
pub fn produce(topic: &str, records: &[(Option<String>, Option<String>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("enable.idempotence", "true")
        .set("log_level", "3")
        .create()
        .expect("producer");
    for (k, v) in records {
        let mut r: BaseRecord<'_, String, String> = BaseRecord::to(topic);
        if let Some(k) = k {
            r = r.key(k);
        }
        if let Some(v) = v {
            r = r.payload(v);
        }
        producer.send(r).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("the broker acknowledges");
}

/// Creates topics the way a Debezium deployment has them (Kafka Connect creates them).
pub async fn create_topics(names: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .expect("admin");
    let topics: Vec<NewTopic<'_>> = names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(-1))).collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.expect("create topics") {
        r.expect("topic created");
    }
}

/// A value as JsonConverter writes it with schemas: the documentation's create-event schema
/// (the update, delete and truncate examples say theirs is the same) and `payload`.
fn with_schema(schema: &Value, payload: Value) -> Option<String> {
    Some(json!({"schema": schema, "payload": payload}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_applies_debeziums_documented_events_exactly_once_across_a_kill_9() {
    let dbs = Dbs::create("kdocapply").await;
    let target = connect(&dbs.target).await;
    target.batch_execute(CUSTOMERS).await.unwrap();
    let prefix = format!("PostgreSQL_server_{}", dbs.name);
    let topic = format!("{prefix}.public.customers");
    let ttopic = format!("{prefix}.transaction");
    create_topics(&[topic.clone(), ttopic.clone()]).await;

    let create = &doc_json(&fixture("postgresql/create.json"))[0];
    let schema = create["schema"].clone();
    let dtx = doc_json(&fixture("postgresql/transaction.json"));
    let key = |id: i64| {
        Some(
            json!({"schema": {"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}],
                    "optional": false, "name": format!("{prefix}.public.customers.Key")},
                   "payload": {"id": id}})
            .to_string(),
        )
    };
    // The documented events, with the positions and transaction ids a connector would give a
    // run of them (the examples reuse one LSN and one txId for several transactions): each
    // record's transaction id is `txId:<its own LSN>`, as Debezium's PostgresTransactionMonitor
    // writes it, and `sequence` starts with the previous transaction's END.
    struct Txn {
        txid: u64,
        begin: u64,
        end: u64,
        event: Value,
    }
    let event_of = |file: &str| doc_json(&fixture(file))[0]["payload"].clone();
    let mut second = create["payload"].clone();
    second["after"] = json!({"id": 2, "first_name": "Bob", "last_name": "Ross", "email": "bob@noanswer.org"});
    let txns = [
        Txn {
            txid: 555,
            begin: 24023119,
            end: 24023130,
            event: create["payload"].clone(),
        },
        Txn {
            txid: 556,
            begin: 24023190,
            end: 24023210,
            event: event_of("postgresql/update.json"),
        },
        Txn {
            txid: 557,
            begin: 46523100,
            end: 46523140,
            event: event_of("postgresql/delete.json"),
        },
        Txn {
            txid: 558,
            begin: 46523180,
            end: 46523210,
            event: second,
        },
        Txn {
            txid: 559,
            begin: 46523290,
            end: 46523310,
            event: event_of("postgresql/truncate.json"),
        },
    ];
    let mut previous_end = 24023100u64;
    let mut records_of = |t: &Txn| -> (Records, Records) {
        let lsn = t.begin + 5;
        let mut e = t.event.clone();
        e["source"]["snapshot"] = json!("false");
        e["source"]["txId"] = json!(t.txid);
        e["source"]["lsn"] = json!(lsn);
        e["source"]["sequence"] = json!(json!([previous_end.to_string(), lsn.to_string()]).to_string());
        e["transaction"] = json!({"id": format!("{}:{lsn}", t.txid), "total_order": 1, "data_collection_order": 1});
        let mut begin = dtx[0].clone();
        begin["id"] = json!(format!("{}:{}", t.txid, t.begin));
        let mut end = dtx[1].clone();
        end["id"] = json!(format!("{}:{}", t.txid, t.end));
        end["event_count"] = json!(1);
        end["data_collections"] = json!([{"data_collection": "public.customers", "event_count": 1}]);
        previous_end = t.end;
        let id = e["after"]["id"].as_i64().or(e["before"]["id"].as_i64());
        let mut table = vec![(
            if e["op"] == "t" { None } else { id.and_then(key) },
            with_schema(&schema, e.clone()),
        )];
        if e["op"] == "d" {
            table.push((id.and_then(key), None));
        }
        let tx = [begin, end]
            .into_iter()
            .map(|v| (Some(json!({"id": v["id"]}).to_string()), Some(v.to_string())))
            .collect();
        (table, tx)
    };
    // The snapshot: one row read at the snapshot's LSN, the last one, as the connector marks it.
    let mut snap = create["payload"].clone();
    snap["op"] = json!("r");
    snap["after"] = json!({"id": 7, "first_name": "Ada", "last_name": "Lovelace", "email": "ada@noanswer.org"});
    snap["source"]["snapshot"] = json!("last");
    snap["source"]["lsn"] = json!(24023100);
    snap["source"]["sequence"] = json!("[null,\"24023100\"]");
    produce(&topic, &[(key(7), with_schema(&schema, snap))]);
    let mut send = |t: &Txn| {
        let (table, tx) = records_of(t);
        // The END record first: the applier must wait for the transaction's events.
        produce(&ttopic, &tx);
        produce(&topic, &table);
    };
    send(&txns[0]);
    send(&txns[1]);

    let from = format!("kafka://{}/{prefix}", broker());
    let apply = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target]);
    let row = |sql: &'static str| {
        let url = dbs.target.clone();
        async move { crate::harness::wait_for_row(&url, sql, Duration::from_secs(60), sql).await }
    };
    row("SELECT 1 FROM customers WHERE id = 7 AND first_name = 'Ada'").await;
    row("SELECT 1 FROM customers WHERE id = 1 AND first_name = 'Anne Marie' AND last_name = 'Kretchmar' AND email = 'annek@noanswer.org'")
        .await;
    // Killed: on restart the create (txn 555) must not be applied again (it would fail on the
    // key), nor the snapshot loaded over the applied changes.
    apply.kill9();
    send(&txns[2]);
    let apply = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target]);
    row("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM customers WHERE id = 1)").await;
    send(&txns[3]);
    row("SELECT 1 FROM customers WHERE id = 2 AND first_name = 'Bob'").await;
    let rows: Vec<(i32, String)> = target
        .query("SELECT id, first_name::text FROM customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(2, "Bob".to_string()), (7, "Ada".to_string())]);
    // The source gains a column mid-stream: the events' schema has it, the target gets it.
    let mut grown_schema = schema.clone();
    for f in grown_schema["fields"].as_array_mut().unwrap().iter_mut().take(2) {
        f["fields"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "string", "optional": true, "field": "phone"}));
    }
    let mut third = create["payload"].clone();
    third["after"] = json!({"id": 3, "first_name": "Cy", "last_name": "Young", "email": "cy@noanswer.org", "phone": "+1 555 0100"});
    third["source"]["txId"] = json!(560);
    third["source"]["lsn"] = json!(46523255);
    third["source"]["sequence"] = json!("[\"46523210\",\"46523255\"]");
    third["transaction"] = json!({"id": "560:46523255", "total_order": 1, "data_collection_order": 1});
    let mut end = dtx[1].clone();
    end["id"] = json!("560:46523260");
    end["event_count"] = json!(1);
    end["data_collections"] = json!([{"data_collection": "public.customers", "event_count": 1}]);
    produce(&ttopic, &[(None, Some(end.to_string()))]);
    produce(&topic, &[(key(3), with_schema(&grown_schema, third))]);
    row("SELECT 1 FROM customers WHERE id = 3 AND phone = '+1 555 0100'").await;
    let phone_type: String = target
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'phone'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phone_type, "text");
    send(&txns[4]);
    row("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM customers)").await;
    // The last applied transaction is the truncate's, by the position in its END record (the
    // sink keeps the position just past it).
    let applied: i64 = target
        .query_one("SELECT (applied_lsn - '0/0'::pg_lsn)::bigint FROM ferry.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 46523310 + 1);
    let run = apply.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.all().contains("reading the topics as a Debezium connector writes them"),
        "{}",
        run.all()
    );
    drop(target);
    dbs.drop().await;
}

/// One source transaction of one insert into `customers`, as Debezium's PostgreSQL connector
/// writes it without schemas: the table record and the BEGIN/END records.
fn insert_txn(txid: u64, lsn: u64, previous: u64, after: Value) -> (Records, Records) {
    let event = json!({
        "before": null, "after": after, "op": "c", "ts_ms": 1_700_000_000_000i64,
        "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "x", "ts_ms": 1_700_000_000_000i64,
                   "snapshot": "false", "db": "postgres", "sequence": format!("[\"{previous}\",\"{lsn}\"]"),
                   "schema": "public", "table": "customers", "txId": txid, "lsn": lsn, "xmin": null},
        "transaction": {"id": format!("{txid}:{lsn}"), "total_order": 1, "data_collection_order": 1}
    });
    let begin = json!({"status": "BEGIN", "id": format!("{txid}:{}", lsn - 2), "ts_ms": 1_700_000_000_000i64,
                       "event_count": null, "data_collections": null});
    let end = json!({"status": "END", "id": format!("{txid}:{}", lsn + 2), "ts_ms": 1_700_000_000_000i64, "event_count": 1,
                     "data_collections": [{"data_collection": "public.customers", "event_count": 1}]});
    (
        vec![(Some(json!({"id": after["id"]}).to_string()), Some(event.to_string()))],
        vec![(None, Some(begin.to_string())), (None, Some(end.to_string()))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_records_poison_events_and_rejected_changes_as_dead_letters_and_steps_over_them_when_told() {
    let dbs = Dbs::create("kdead").await;
    let target = connect(&dbs.target).await;
    target
        .batch_execute("CREATE TABLE customers (id int PRIMARY KEY, first_name varchar(255) NOT NULL, email text NOT NULL)")
        .await
        .unwrap();
    let prefix = format!("it_{}", dbs.name);
    let topic = format!("{prefix}.public.customers");
    let ttopic = format!("{prefix}.transaction");
    create_topics(&[topic.clone(), ttopic.clone()]).await;
    let send = |(table, tx): (Records, Records)| {
        produce(&ttopic, &tx);
        produce(&topic, &table);
    };
    send(insert_txn(700, 1000, 900, json!({"id": 1, "first_name": "Ann", "email": "a@x"})));
    // A poison message: the key column is not a number.
    send(insert_txn(
        701,
        1100,
        1002,
        json!({"id": "one hundred", "first_name": "Bad", "email": "b@x"}),
    ));
    send(insert_txn(702, 1200, 1102, json!({"id": 3, "first_name": "Cy", "email": "c@x"})));
    let from = format!("kafka://{}/{prefix}?schemas=false", broker());
    let run = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target]).wait();
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.all().contains("dead_letters") && run.all().contains("--skip-dead-letters") && run.all().contains("public.customers"),
        "{}",
        run.all()
    );
    let applied: Vec<i32> = target
        .query("SELECT id FROM customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Transactions before the poisoned one may share its target transaction (a batch), which
    // rolls back with it; nothing at or after it is applied.
    assert!(applied.is_empty() || applied == [1], "{applied:?}");
    let letters = |skipped: bool| {
        let url = dbs.target.clone();
        async move {
            connect(&url)
                .await
                .query_one(
                    "SELECT count(*) FROM ferry.dead_letters WHERE skipped = $1 AND table_name = 'public.customers'",
                    &[&skipped],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!((letters(false).await, letters(true).await), (1, 0));
    // Told to step over: the poison message is skipped, and a change the target rejects (a
    // first name longer than varchar(255)) is recorded and skipped too; the rest is applied.
    let apply = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target, "--skip-dead-letters"]);
    crate::harness::wait_for_row(
        &dbs.target,
        "row 3",
        Duration::from_secs(60),
        "SELECT 1 FROM customers WHERE id = 3",
    )
    .await;
    send(insert_txn(
        703,
        1300,
        1202,
        json!({"id": 4, "first_name": "x".repeat(300), "email": "d@x"}),
    ));
    send(insert_txn(704, 1400, 1302, json!({"id": 5, "first_name": "Eve", "email": "e@x"})));
    crate::harness::wait_for_row(
        &dbs.target,
        "row 5",
        Duration::from_secs(60),
        "SELECT 1 FROM customers WHERE id = 5",
    )
    .await;
    let applied: Vec<i32> = target
        .query("SELECT id FROM customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, [1, 3, 5]);
    assert_eq!((letters(false).await, letters(true).await), (0, 2));
    let reasons: Vec<String> = target
        .query("SELECT error FROM ferry.dead_letters ORDER BY commit_lsn", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(reasons[0].contains("id"), "{reasons:?}");
    assert!(reasons[1].contains("too long"), "{reasons:?}");
    let run = apply.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    drop(target);
    dbs.drop().await;
}

/// The MySQL page's blocks with the attributes its renderer fills in.
fn mysql_doc(name: &str) -> Vec<Value> {
    doc_json(
        &fixture(&format!("mysql/{name}"))
            .replace("{context}", "mysql")
            .replace("{debezium-version}", "2.7.0.Final"),
    )
}

/// Each field of a struct schema as (name, type, optional).
fn struct_fields(schema: &Value) -> Vec<(String, String, bool)> {
    schema["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("a struct schema: {schema}"))
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_string(),
                f["type"].as_str().unwrap().to_string(),
                f["optional"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_capture_writes_the_events_of_debeziums_mysql_documentation_field_by_field() {
    use crate::mysql::my_sql;
    let (source, _target, dbs) = crate::mysql::fresh("FERRY_TEST_MYSQL", "kmydoc").await;
    let db = dbs.name.clone();
    // The documentation's `inventory.customers`, and its rows.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "CREATE TABLE {db}.customers (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, first_name VARCHAR(255) NOT NULL,
               last_name VARCHAR(255) NOT NULL, email VARCHAR(255) NOT NULL UNIQUE) AUTO_INCREMENT = 1001;
             INSERT INTO {db}.customers VALUES (1001, 'Sally', 'Thomas', 'sally.thomas@acme.com')"
        ),
    );
    let prefix = format!("mysql_server_{db}");
    let to = format!("kafka://{}/{prefix}", broker());
    let capture = Migrator::spawn(&["capture", "--source", &source, "--to", &to]);
    crate::kafka::wait_snapshot(&prefix);
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "INSERT INTO {db}.customers VALUES (1004, 'Anne', 'Kretchmar', 'annek@noanswer.org');
             UPDATE {db}.customers SET first_name = 'Anne Marie' WHERE id = 1004;
             DELETE FROM {db}.customers WHERE id = 1004"
        ),
    );
    // Snapshot row, create, update, delete and its tombstone.
    let recs = read_topic(&format!("{prefix}.{db}.customers"), 5, Duration::from_secs(60));
    let by_op = |op: &str| {
        recs.iter()
            .filter_map(|r| r.value.as_ref())
            .find(|v| v["payload"]["op"] == op)
            .unwrap_or_else(|| panic!("no {op} event in {recs:?}"))
            .clone()
    };
    let doc_create = &mysql_doc("create.json")[0];
    let ours = by_op("c");
    // The value schema: the row struct's fields, types and optionality, and the envelope's
    // fields (Ferry adds the transaction block: the example ran without transaction metadata).
    assert_eq!(
        struct_fields(&ours["schema"]["fields"][1]),
        struct_fields(&doc_create["schema"]["fields"][1]),
        "the row's schema: {ours}"
    );
    let envelope: BTreeSet<String> = struct_fields(&ours["schema"]).into_iter().map(|f| f.0).collect();
    let doc_envelope: BTreeSet<String> = struct_fields(&doc_create["schema"]).into_iter().map(|f| f.0).collect();
    assert_eq!(
        envelope.difference(&doc_envelope).cloned().collect::<Vec<_>>(),
        ["transaction"],
        "{ours}"
    );
    assert!(doc_envelope.is_subset(&envelope));
    // The source block: every field of the example, and the connector's `sequence` (common to
    // every connector's source, left out of the MySQL page), with the same types.
    let src = |v: &Value| -> BTreeMap<String, (String, bool)> {
        let s = v["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == "source")
            .unwrap()
            .clone();
        struct_fields(&s).into_iter().map(|(n, t, o)| (n, (t, o))).collect()
    };
    let (ours_src, mut doc_src) = (src(&ours), src(doc_create));
    // The example's slips, as on the PostgreSQL page (tests/fixtures/debezium/README.md): the
    // connector's `snapshot` is the string enum, its `ts_us` and `ts_ns` are optional.
    doc_src.insert("snapshot".into(), ("string".into(), true));
    doc_src.insert("ts_us".into(), ("int64".into(), true));
    doc_src.insert("ts_ns".into(), ("int64".into(), true));
    for (name, ty) in &doc_src {
        assert_eq!(ours_src.get(name), Some(ty), "source.{name}: {ours}");
    }
    assert_eq!(
        ours_src.keys().filter(|k| !doc_src.contains_key(*k)).cloned().collect::<Vec<_>>(),
        ["sequence"]
    );
    let p = &ours["payload"];
    assert_eq!(p["after"], doc_create["payload"]["after"], "the row, value by value");
    assert_eq!(p["before"], Value::Null);
    assert_eq!(p["source"]["connector"], "mysql");
    assert_eq!(p["source"]["name"], prefix.as_str());
    assert_eq!(p["source"]["db"], db.as_str());
    assert_eq!(p["source"]["table"], "customers");
    assert_eq!(p["source"]["snapshot"], "false");
    assert_eq!(p["source"]["row"], 0);
    assert!(
        p["source"]["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("binlog.") || f.contains("bin.")),
        "{p}"
    );
    assert!(p["source"]["pos"].as_u64().is_some_and(|n| n > 4), "{p}");
    assert!(p["source"]["server_id"].as_u64().is_some(), "{p}");
    let id = p["transaction"]["id"].as_str().unwrap();
    assert!(id.starts_with("file=") && id.contains(",pos="), "Debezium's id without GTID: {id}");
    let doc_update = &mysql_doc("update.json")[0]["payload"];
    let u = by_op("u");
    assert_eq!(u["payload"]["before"], doc_update["before"], "MySQL logs the whole old row");
    assert_eq!(u["payload"]["after"], doc_update["after"]);
    let doc_delete = &mysql_doc("delete.json")[0]["payload"];
    let d = by_op("d");
    assert_eq!(d["payload"]["before"], doc_delete["before"]);
    assert_eq!(d["payload"]["after"], Value::Null);
    assert!(recs.last().unwrap().value.is_none(), "a tombstone follows the delete");
    assert_eq!(recs.last().unwrap().key.as_ref().unwrap()["payload"], json!({"id": 1004}));
    let r = by_op("r");
    assert_eq!(r["payload"]["source"]["snapshot"], "last");
    assert_eq!(r["payload"]["after"]["first_name"], "Sally");
    // BEGIN and END as the page's transaction metadata example has them.
    let doc_tx = mysql_doc("transaction.json");
    let tx = read_topic(&format!("{prefix}.transaction"), 6, Duration::from_secs(30));
    let fields = |v: &Value| payload_keys(v.get("payload").unwrap_or(v));
    let end = tx
        .iter()
        .filter_map(|r| r.value.as_ref())
        .find(|v| v.get("payload").unwrap_or(v)["status"] == "END")
        .unwrap();
    assert_eq!(fields(end), payload_keys(&doc_tx[1]));
    let end = end.get("payload").unwrap_or(end);
    assert_eq!(
        end["data_collections"],
        json!([{"data_collection": format!("{db}.customers"), "event_count": 1}])
    );
    let run = capture.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    crate::mysql::dispose("FERRY_TEST_MYSQL", dbs).await;
}

fn payload_keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_applies_debeziums_mysql_documented_events_with_gtid_ids_exactly_once_across_a_kill_9() {
    let dbs = Dbs::create("kmyapply").await;
    let target = connect(&dbs.target).await;
    target
        .batch_execute(&format!("CREATE SCHEMA inventory; SET search_path = inventory; {CUSTOMERS}"))
        .await
        .unwrap();
    let prefix = format!("mysql_server_{}", dbs.name);
    let topic = format!("{prefix}.inventory.customers");
    let ttopic = format!("{prefix}.transaction");
    create_topics(&[topic.clone(), ttopic.clone()]).await;
    let create = &mysql_doc("create.json")[0];
    let schema = create["schema"].clone();
    let dtx = mysql_doc("transaction.json");
    let key = |id: i64| {
        Some(
            json!({"schema": {"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}],
                    "optional": false, "name": "mysql-server-1.inventory.customers.Key"},
                   "payload": {"id": id}})
            .to_string(),
        )
    };
    // The documented events in one run of a connector with GTIDs: each transaction's id is its
    // GTID (the page's example id, numbered on), its events' positions those of the examples.
    let gtid = |n: u32| format!("0e4d5dcd-a33b-11ea-80f1-02010a22a99e:{n}");
    let records_of = |n: u32, event: &Value| -> (Records, Records) {
        let mut e = event.clone();
        e["source"]["snapshot"] = json!("false");
        e["source"]["gtid"] = json!(gtid(n));
        e["transaction"] = json!({"id": gtid(n), "total_order": 1, "data_collection_order": 1});
        let mut begin = dtx[0].clone();
        begin["id"] = json!(gtid(n));
        let mut end = dtx[1].clone();
        end["id"] = json!(gtid(n));
        end["event_count"] = json!(1);
        end["data_collections"] = json!([{"data_collection": "inventory.customers", "event_count": 1}]);
        let id = e["after"]["id"].as_i64().or(e["before"]["id"].as_i64());
        let mut table = vec![(id.and_then(key), with_schema(&schema, e.clone()))];
        if e["op"] == "d" {
            table.push((id.and_then(key), None));
        }
        let tx = [begin, end].into_iter().map(|v| (None, Some(v.to_string()))).collect();
        (table, tx)
    };
    let send = |n: u32, event: &Value| {
        let (table, tx) = records_of(n, event);
        // The END record first: the applier must wait for the transaction's events.
        produce(&ttopic, &tx);
        produce(&topic, &table);
    };
    // The snapshot: one row, read at the position the stream starts from.
    let mut snap = create["payload"].clone();
    snap["op"] = json!("r");
    snap["after"] = json!({"id": 1001, "first_name": "Sally", "last_name": "Thomas", "email": "sally.thomas@acme.com"});
    snap["source"]["snapshot"] = json!("last");
    snap["source"]["pos"] = json!(100);
    produce(&topic, &[(key(1001), with_schema(&schema, snap))]);
    send(10, &create["payload"]);
    send(11, &mysql_doc("update.json")[0]["payload"]);
    let from = format!("kafka://{}/{prefix}", broker());
    let apply = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target]);
    let row = |sql: &'static str| {
        let url = dbs.target.clone();
        async move { crate::harness::wait_for_row(&url, sql, Duration::from_secs(60), sql).await }
    };
    row("SELECT 1 FROM inventory.customers WHERE id = 1001 AND first_name = 'Sally'").await;
    row("SELECT 1 FROM inventory.customers WHERE id = 1004 AND first_name = 'Anne Marie'").await;
    // Killed: the create must not be applied again on restart (it would fail on the key).
    apply.kill9();
    send(12, &mysql_doc("delete.json")[0]["payload"]);
    let apply = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target]);
    row("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM inventory.customers WHERE id = 1004)").await;
    let mut again = create["payload"].clone();
    again["after"]["id"] = json!(1005);
    again["source"]["pos"] = json!(1200);
    send(13, &again);
    row("SELECT 1 FROM inventory.customers WHERE id = 1005").await;
    let rows: Vec<i32> = target
        .query("SELECT id FROM inventory.customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, [1001, 1005]);
    let run = apply.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    drop(target);
    dbs.drop().await;
}
