//! `ferry apply`: Debezium events in Kafka applied to PostgreSQL, source transactions whole and
//! exactly once.
//!
//! **Reading.** A reader thread (librdkafka's calls block) owns a consumer with every partition
//! of the prefix's topics assigned, each with its own queue. It first hands over the snapshot
//! (`op: r` records, which come before any change in each partition), table by table; then it
//! follows the transaction metadata topic: at each `END` record it takes that transaction's
//! events from the heads of its tables' partitions, merged by `transaction.total_order`, and
//! hands the transaction over whole. Records at a head that belong to an earlier transaction
//! (one resent after a capture crash, or one cut short without an `END`) are dropped, as are
//! repeats of an order already handed over. The channel to the applier is bounded: memory
//! stays bounded whatever the topics hold.
//!
//! **Applying.** The snapshot of each table is loaded in one target transaction that first
//! empties the table and ends by marking it copied (`ferry.tables`), so a restart loads it
//! again or not at all. Transactions go through the PostgreSQL sink (`Applier`), which commits
//! the source commit position with the changes: a transaction at or before the position
//! recorded on the target is skipped, so a restart, or a transaction Kafka holds twice, is
//! applied once. The commit position is the LSN in the transaction id (`<txId>:<LSN>`, as
//! Ferry and Debezium's PostgreSQL connector write it).
//!
//! A restart with the snapshot loaded starts each partition at its first record produced since
//! the last applied transaction committed, less [`RESUME_MARGIN`] for clocks (a transaction's
//! records are produced after it commits), found by the broker's time index; what is read
//! again is skipped by position. A broker without a time index means the beginning. Without a
//! transaction metadata topic, nothing says where a source transaction ends: `ferry apply`
//! refuses, naming Debezium's `provide.transaction.metadata=true`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::change::{ChangeEvent, Column, Datum, Identity, Relation, Row};
use ferry_core::sink::{DeadLetter, Sink};
use ferry_core::{Lsn, Phase, SourcePosition, TableName};
use ferry_postgres::apply::{Applier, ApplyContext, ApplyError, Direction, PgSource, TextSettings};
use ferry_postgres::cdc::{CdcProgress, Hold, StreamState};
use ferry_postgres::state::{StateStore, ENGINE_POSTGRESQL};
use ferry_postgres::{Endpoint, PgError};
use futures_util::SinkExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::capture::{read_state, state_topic, CaptureState};
use crate::endpoint::{KafkaEndpoint, REQUEST_TIMEOUT};
use crate::envelope::{transaction_topic, watermark_topic, Watermark};
use crate::image::Image;
use crate::sink::{dead_letter_topic, kafka_error};
use crate::types::Kind;

/// How far before the last applied commit a restarted reader starts (clocks of the source and
/// of the capture's host may differ by this much).
pub const RESUME_MARGIN: Duration = Duration::from_secs(600);

/// Longest a batch of applied transactions stays open before it commits.
pub const BATCH_TIME: Duration = Duration::from_millis(100);

/// What `ferry apply` needs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Where events come from.
    pub kafka: KafkaEndpoint,
    /// The PostgreSQL database written.
    pub target: Endpoint,
    /// Ferry's state schema on the target.
    pub state_schema: String,
    /// The apply's id in the state schema.
    pub id: String,
    /// Most changes in one target transaction (a source transaction is never split).
    pub max_batch: usize,
    /// A change the target rejects, or whose event does not fit the target's table, is
    /// recorded as a dead letter and stepped over instead of stopping the apply.
    pub skip_dead_letters: bool,
    /// What the apply reports while it runs (`ferry apply --listen`: /metrics).
    pub progress: Arc<ApplyProgress>,
    /// Share the topics with the other members of this consumer group, per table partition
    /// (`crate::group::run`); None: one applier, source transactions whole (`run`).
    pub group: Option<String>,
    /// This member's name in the group (its offsets' owner and its row in the state schema).
    pub member: String,
    /// Lets verification and cutover stop the apply at exact source positions, as they stop a
    /// direct stream (`ferry migrate --via kafka`; one applier only).
    pub hold: Option<Arc<Hold>>,
    /// While true, the apply stops at a transaction boundary and waits (the topics keep the
    /// changes).
    pub pause: Option<watch::Receiver<bool>>,
    /// The migration's change-capture figures, which its status, metrics and dashboard read
    /// (`ferry migrate --via kafka`).
    pub cdc: Option<Arc<CdcProgress>>,
    /// The PostgreSQL source the topics were captured from, when the apply can reach it
    /// (`ferry migrate --via kafka`): a table created there mid-stream, whose topic appears,
    /// is created on the target from its definition (pg_dump), as a direct stream does.
    pub source: Option<PgSource>,
}

/// What a running apply reports: its counters and, per partition, how far it has read and
/// how far the broker has.
#[derive(Debug, Default)]
pub struct ApplyProgress {
    /// Source transactions handed to the sink (committed, or in the open target transaction).
    pub transactions: AtomicU64,
    /// Row changes handed to the sink.
    pub changes: AtomicU64,
    /// The last transaction's commit position (LSN) and commit time (µs since the epoch).
    pub last_commit_lsn: AtomicU64,
    pub last_commit_time_us: AtomicI64,
    /// (topic, partition) -> (next offset to read, the broker's high watermark).
    pub partitions: Mutex<BTreeMap<(String, i32), (i64, i64)>>,
}

impl ApplyProgress {
    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = self.families();
        out.push_str("# EOF\n");
        out
    }

    /// The metric families, without the exposition's end (`ferry migrate --via kafka` adds
    /// them to its own).
    pub fn families(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        };
        let counter = |name: &str, v: u64| vec![format!("{name}_total {v}")];
        metric(
            "ferry_kafka_apply_transactions",
            "counter",
            "Source transactions applied from Kafka (committed, or in the open target transaction).",
            counter("ferry_kafka_apply_transactions", self.transactions.load(Ordering::Relaxed)),
        );
        metric(
            "ferry_kafka_apply_changes",
            "counter",
            "Row changes applied from Kafka.",
            counter("ferry_kafka_apply_changes", self.changes.load(Ordering::Relaxed)),
        );
        metric(
            "ferry_kafka_apply_last_commit_lsn",
            "gauge",
            "Source commit position (LSN as a number) of the last transaction applied.",
            vec![format!(
                "ferry_kafka_apply_last_commit_lsn {}",
                self.last_commit_lsn.load(Ordering::Relaxed)
            )],
        );
        metric(
            "ferry_kafka_apply_last_commit_timestamp_seconds",
            "gauge",
            "Source commit time of the last transaction applied.",
            vec![format!(
                "ferry_kafka_apply_last_commit_timestamp_seconds {:.6}",
                self.last_commit_time_us.load(Ordering::Relaxed) as f64 / 1e6
            )],
        );
        let parts = self.partitions.lock().expect("progress lock").clone();
        let label = |t: &str, p: i32| format!("{{topic=\"{}\",partition=\"{p}\"}}", t.replace('\\', "\\\\").replace('"', "\\\""));
        metric(
            "ferry_kafka_partition_lag_records",
            "gauge",
            "Records in the partition the apply has not read yet (high watermark minus next offset).",
            parts
                .iter()
                .map(|((t, p), (next, high))| format!("ferry_kafka_partition_lag_records{} {}", label(t, *p), (high - next).max(0)))
                .collect(),
        );
        metric(
            "ferry_kafka_partition_offset",
            "gauge",
            "Next offset the apply reads in the partition.",
            parts
                .iter()
                .map(|((t, p), (next, _))| format!("ferry_kafka_partition_offset{} {next}", label(t, *p)))
                .collect(),
        );
        out
    }
}

/// How a session ended badly.
#[derive(Debug)]
enum SessionError {
    /// From the sink (a change the target rejected is `ApplyError::Rejected`).
    Apply(ApplyError),
    /// An event that does not fit the target's table (a poison message).
    Undecodable(DeadLetter),
}

impl From<ApplyError> for SessionError {
    fn from(e: ApplyError) -> Self {
        SessionError::Apply(e)
    }
}

impl From<PgError> for SessionError {
    fn from(e: PgError) -> Self {
        SessionError::Apply(ApplyError::Db(e))
    }
}

/// What the reader hands the applier.
#[derive(Debug)]
enum Item {
    /// The snapshot rows of a table follow.
    TableStart(String),
    /// A snapshot row (the record as the broker holds it).
    Row(Vec<u8>),
    /// The table's snapshot is over.
    TableEnd,
    /// The snapshot is over.
    SnapshotDone,
    /// A source transaction: commit LSN, its txId, commit time in ms.
    Begin(Lsn, u64, i64),
    /// One of its changes (topic, the record as the broker holds it, its partition and offset).
    Change(String, Vec<u8>, i32, i64),
    /// Its end, with the offset after its END record in the transaction topic's partition.
    Commit(Lsn, i64, (String, i32, i64)),
    /// Between transactions: every transaction that commits before this position has been
    /// handed over (the capture's watermark, once the transaction topic is read as far as the
    /// capture had written it).
    Watermark(Lsn),
    /// Nothing to read for a moment.
    Idle,
    /// The reader failed.
    Failed(PgError),
}

/// Whether the topics are Debezium's JSON with a schema part.
fn payload(v: &Value) -> &Value {
    match v.get("payload") {
        Some(p) if v.get("schema").is_some() => p,
        _ => v,
    }
}

/// A transaction's identity and ordering key from its id: a PostgreSQL id (`<txId>:<LSN>`)
/// gives its txId and commit LSN; a MySQL id without GTID (`file=<file>,pos=<pos>`, where the
/// transaction starts) gives the position's ordering key plus one, as both (every transaction
/// after a snapshot at a position starts at or after it, and its key is then past the
/// snapshot's, [`position_key`]).
fn commit_of(id: &str) -> Option<(u64, Lsn)> {
    if let Some(rest) = id.strip_prefix("file=") {
        let (file, pos) = rest.split_once(",pos=")?;
        let key = ferry_core::BinlogPosition::new(file, pos.parse().ok()?, "").ok()?;
        let key = SourcePosition::Mysql(key).order_key().0 + 1;
        return Some((key, Lsn(key)));
    }
    let (tx, lsn) = id.split_once(':')?;
    Some((tx.parse().ok()?, Lsn(lsn.parse().ok()?)))
}

/// A transaction id that does not order (a GTID) as a number: records of one transaction
/// are known by it.
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// The ordering key of a position as a capture's state records it: a PostgreSQL LSN
/// (`0/16B3748`) or a source position (`pg:...`, `mysql:file:pos...`).
pub(crate) fn position_key(text: &str) -> Option<Lsn> {
    text.parse::<Lsn>()
        .ok()
        .or_else(|| text.parse::<SourcePosition>().ok().map(|p| p.order_key()))
}

/// What the reader needs of a record (routing, ordering, staleness), read without building
/// its JSON tree: the row images and the schema part are skipped, and parsed only by the
/// applier (a record is parsed whole at most once, the first of its table).
#[derive(Debug, Default, serde::Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    source: Option<WireSource<'a>>,
    #[serde(default, borrow)]
    transaction: Option<WireTxn<'a>>,
    /// The envelope, when the record has a schema part beside it (JsonConverter's
    /// `schemas.enable=true`).
    #[serde(default, borrow)]
    payload: Option<Box<Wire<'a>>>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct WireSource<'a> {
    #[serde(default)]
    lsn: Option<u64>,
    /// MySQL: the binlog file and position.
    #[serde(default, borrow)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    pos: Option<u64>,
    #[serde(default)]
    ts_ms: Option<i64>,
    /// A string (`last`, ...), a boolean in old connectors.
    #[serde(default)]
    snapshot: Value,
    #[serde(default, borrow)]
    sequence: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct WireTxn<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    /// A number (written as a string in some of Debezium's examples).
    #[serde(default)]
    total_order: Value,
}

/// A record at the head of its partition.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) raw: Vec<u8>,
    /// The envelope's `op` (None: not Debezium's envelope).
    op: Option<String>,
    /// Its transaction: txId and the LSN in the transaction id.
    pub(crate) txn: Option<(u64, Lsn)>,
    pub(crate) total_order: i64,
    /// `source.sequence[0]`: the commit before its transaction's.
    previous: Option<Lsn>,
    /// `source.lsn`; for MySQL, the ordering key of `source.file` and `source.pos`.
    pub(crate) lsn: Option<u64>,
    /// The connector's last snapshot record.
    last: bool,
    /// `source.ts_ms`.
    source_ts_ms: Option<i64>,
}

impl Head {
    pub(crate) fn read(raw: Vec<u8>) -> Result<Head, serde_json::Error> {
        let w: Wire<'_> = serde_json::from_slice(&raw)?;
        let w = match w.payload {
            Some(p) => *p,
            None => w,
        };
        let src = w.source.unwrap_or_default();
        // MySQL records: the ordering key of their binlog position.
        let lsn = src.lsn.or_else(|| {
            let p = ferry_core::BinlogPosition::new(src.file.as_deref()?, src.pos?, "").ok()?;
            Some(SourcePosition::Mysql(p).order_key().0)
        });
        let (txn, total_order) = match w.transaction {
            Some(t) => (
                t.id.as_deref()
                    .and_then(|id| commit_of(id).or_else(|| Some((id_hash(id), Lsn(lsn?))))),
                t.total_order
                    .as_i64()
                    .or_else(|| t.total_order.as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(0),
            ),
            None => (None, 0),
        };
        // `["<previous commit>","<this LSN>"]` (the first may be null): read in place, no
        // allocation per record.
        let previous = src.sequence.as_deref().and_then(|seq| {
            let first = seq.trim_start().strip_prefix('[')?.trim_start().strip_prefix('"')?;
            Some(Lsn(first[..first.find('"')?].parse().ok()?))
        });
        Ok(Head {
            op: w.op.map(Cow::into_owned),
            txn,
            total_order,
            previous,
            lsn,
            source_ts_ms: src.ts_ms,
            last: src.snapshot == "last",
            raw,
        })
    }

    pub(crate) fn op_is(&self, op: &str) -> bool {
        self.op.as_deref() == Some(op)
    }

    /// Whether a snapshot row is of the snapshot the capture's state record names (taken at
    /// `consistent`, at `ts_ms` when the record says), not of one abandoned before it.
    pub(crate) fn of_snapshot(&self, consistent: Lsn, ts_ms: Option<i64>) -> bool {
        self.lsn == Some(consistent.0) && ts_ms.is_none_or(|t| self.source_ts_ms == Some(t))
    }
}

/// The whole record, for its schema part.
pub(crate) fn whole(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

struct Part {
    queue: rdkafka::consumer::base_consumer::PartitionQueue<rdkafka::consumer::DefaultConsumerContext>,
    head: Option<Head>,
    /// The next offset to read (-1: nothing read yet).
    next_offset: i64,
    topic: String,
    partition: i32,
}

impl Part {
    /// The head record (tombstones are skipped), polling up to `wait`.
    fn head(&mut self, wait: Duration) -> Result<Option<&Head>, String> {
        while self.head.is_none() {
            match self.queue.poll(wait) {
                Some(Ok(m)) => {
                    self.next_offset = m.offset() + 1;
                    if let Some(p) = m.payload() {
                        let h = Head::read(p.to_vec())
                            .map_err(|e| format!("record at offset {} of {} is not JSON: {e}", m.offset(), m.topic()))?;
                        self.head = Some(h);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(None),
            }
        }
        Ok(self.head.as_ref())
    }
}

/// Where the reader starts.
#[derive(Debug, Clone)]
struct Start {
    /// The snapshot is loaded: the reader starts at the first record produced at or after
    /// this time (milliseconds since the epoch), if the broker can say where that is.
    resume_ms: Option<i64>,
    /// The snapshot is loaded and the target holds, per partition, the offset after the last
    /// record applied: the reader starts there ([`crate::offsets::BACKSTEP`] before it), and the
    /// time index is not asked.
    offsets: Option<HashMap<(String, i32), i64>>,
    /// The last transaction applied: END records at or before it are not handed over again.
    applied: Lsn,
}

/// Whether a Debezium connector's snapshot is over, judged from the topics: a transaction
/// record exists (it streams only after its snapshot), or some table partition's newest record
/// is a change, a tombstone or the snapshot's record marked `last`.
fn debezium_snapshot_over(ep: &KafkaEndpoint, consumer: &BaseConsumer, ttopic: &str, partitions: &HashMap<String, Vec<i32>>) -> bool {
    if let Ok((lo, hi)) = consumer.fetch_watermarks(ttopic, 0, REQUEST_TIMEOUT) {
        if hi > lo {
            return true;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (t, ps) in partitions.iter().filter(|(t, _)| t.as_str() != ttopic) {
        for p in ps {
            if let Ok((lo, hi)) = consumer.fetch_watermarks(t, *p, REQUEST_TIMEOUT) {
                if hi > lo {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(hi - 1));
                }
            }
        }
    }
    if tpl.count() == 0 {
        return false;
    }
    let Ok(probe) = ep
        .client_config()
        .set("group.id", "ferry-apply-probe")
        .set("enable.auto.commit", "false")
        .create::<BaseConsumer>()
    else {
        return false;
    };
    if probe.assign(&tpl).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < tpl.count() && Instant::now() < deadline {
        if let Some(Ok(m)) = probe.poll(Duration::from_millis(200)) {
            seen += 1;
            let Some(bytes) = m.payload() else { return true };
            let Ok(v) = serde_json::from_slice::<Value>(bytes) else { continue };
            let p = payload(&v);
            if p["op"] != "r" || p["source"]["snapshot"] == "last" {
                return true;
            }
        }
    }
    false
}

fn reader(
    ep: KafkaEndpoint,
    tables: Vec<String>,
    snapshot: Option<CaptureState>,
    start: Start,
    tx: mpsc::Sender<Item>,
    stop: Arc<AtomicBool>,
    progress: Arc<ApplyProgress>,
) {
    let consistent: Lsn = snapshot
        .as_ref()
        .and_then(|s| position_key(&s.consistent_point))
        .unwrap_or_default();
    let fail = |tx: &mpsc::Sender<Item>, e: PgError| {
        let _ = tx.blocking_send(Item::Failed(e));
    };
    let consumer: Arc<BaseConsumer> = match ep
        .client_config()
        .set("group.id", format!("ferry-apply-{}", ep.prefix))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // A partition that has caught up is asked again this often: a transaction's END record
        // can be read before its records in other partitions, and the broker's long poll
        // (librdkafka's default 500 ms) would hold the applier that long each time.
        .set("fetch.wait.max.ms", "20")
        .create()
    {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(&tx, kafka_error("starting the Kafka consumer", &ep, &e)),
    };
    let ttopic = transaction_topic(&ep.prefix);
    let mut tpl = TopicPartitionList::new();
    let md = match consumer.fetch_metadata(None, REQUEST_TIMEOUT) {
        Ok(m) => m,
        Err(e) => return fail(&tx, kafka_error("reading the topics", &ep, &e)),
    };
    let mut partitions: HashMap<String, Vec<i32>> = HashMap::new();
    for t in md.topics() {
        if t.name() == ttopic || tables.iter().any(|x| x == t.name()) {
            partitions.insert(t.name().to_string(), t.partitions().iter().map(|p| p.id()).collect());
        }
    }
    for (t, ps) in &partitions {
        for p in ps {
            let at = match (&start.offsets, start.resume_ms) {
                // After the offsets the target recorded with the changes (a partition without
                // one had nothing applied: from its beginning).
                (Some(offsets), _) => match offsets.get(&(t.clone(), *p)) {
                    Some(n) if *n > crate::offsets::BACKSTEP => Offset::Offset(n - crate::offsets::BACKSTEP),
                    _ => Offset::Beginning,
                },
                (None, Some(ms)) => Offset::Offset(ms),
                (None, None) => Offset::Beginning,
            };
            let _ = tpl.add_partition_offset(t, *p, at);
        }
    }
    if start.offsets.is_some() {
        tracing::info!(partitions = tpl.count(), "resuming from the offsets recorded in the target");
    }
    // After a restart without recorded offsets (an apply of an earlier version), the first
    // record produced since the last applied transaction committed (less a margin for clocks):
    // every later transaction's records were produced after it committed. What is read again
    // is skipped by position; a broker that cannot answer means reading from the beginning.
    if start.offsets.is_none() && start.resume_ms.is_some() {
        tpl = match consumer.offsets_for_times(tpl.clone(), REQUEST_TIMEOUT) {
            Ok(found) => {
                let mut out = TopicPartitionList::new();
                for e in found.elements() {
                    let offset = match e.offset() {
                        Offset::Offset(o) if o >= 0 && e.error().is_ok() => Offset::Offset(o),
                        Offset::End => Offset::End,
                        _ => Offset::Beginning,
                    };
                    let _ = out.add_partition_offset(e.topic(), e.partition(), offset);
                }
                tracing::info!(
                    partitions = out.count(),
                    "resuming from the records produced since the last applied transaction"
                );
                out
            }
            Err(e) => {
                tracing::warn!(error = %e, "the broker cannot find records by time; reading the topics from their beginning");
                let mut out = TopicPartitionList::new();
                for e in tpl.elements() {
                    let _ = out.add_partition_offset(e.topic(), e.partition(), Offset::Beginning);
                }
                out
            }
        };
    }
    // The capture's watermarks (`ferry migrate --via kafka`), from now on: only the latest
    // matters. Where the transaction topic's reading starts, to compare them with.
    let wtopic = watermark_topic(&ep.prefix);
    let watermarked = md.topics().iter().any(|t| t.name() == wtopic);
    if watermarked {
        let _ = tpl.add_partition_offset(&wtopic, 0, Offset::End);
    }
    let txn_start = tpl
        .elements()
        .iter()
        .find(|e| e.topic() == ttopic && e.partition() == 0)
        .map(|e| match (e.offset(), consumer.fetch_watermarks(&ttopic, 0, REQUEST_TIMEOUT)) {
            (Offset::Offset(n), _) => n,
            (Offset::End, Ok((_, hi))) => hi,
            (_, Ok((lo, _))) => lo,
            (_, Err(_)) => 0,
        })
        .unwrap_or(0);
    if let Err(e) = consumer.assign(&tpl) {
        return fail(&tx, kafka_error("reading the topics", &ep, &e));
    }
    let marks = if watermarked {
        consumer.split_partition_queue(&wtopic, 0)
    } else {
        None
    };
    // The newest watermark read and the transaction topic offset it needs read; the last one
    // handed over.
    let mut mark: Option<(Lsn, i64)> = None;
    let mut marked = Lsn(0);
    let mut parts: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for (t, ps) in &partitions {
        for p in ps {
            let Some(queue) = consumer.split_partition_queue(t, *p) else {
                continue;
            };
            parts.entry(t.clone()).or_default().push(Part {
                queue,
                head: None,
                next_offset: -1,
                topic: t.clone(),
                partition: *p,
            });
        }
    }
    let serve = || {
        let _ = consumer.poll(Duration::ZERO);
    };
    // The snapshot: the `r` records of the snapshot the state record names (they come before
    // any change of their partition), as many as it counted for each table.
    let mut debezium_over = false;
    for t in tables.iter().filter(|_| start.resume_ms.is_none()) {
        if tx.blocking_send(Item::TableStart(t.clone())).is_err() {
            return;
        }
        let Some(snapshot) = snapshot.as_ref() else {
            // Topics a Debezium connector wrote: a table's snapshot is the `r` records at the
            // head of its partitions, until a change follows them or the connector's snapshot
            // is over (it may still be writing this table's rows).
            let ps = parts.get_mut(t).map(|v| v.as_mut_slice()).unwrap_or_default();
            let mut done = vec![false; ps.len()];
            let mut quiet_since = Instant::now();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                serve();
                let mut caught_up = true;
                for (i, part) in ps.iter_mut().enumerate() {
                    if done[i] {
                        continue;
                    }
                    match part.head(Duration::from_millis(50)) {
                        Ok(Some(h)) if h.op_is("r") => {
                            caught_up = false;
                            quiet_since = Instant::now();
                            let h = part.head.take().expect("head");
                            if h.last {
                                debezium_over = true;
                            }
                            if tx.blocking_send(Item::Row(h.raw)).is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => done[i] = true,
                        Ok(None) => {}
                        Err(e) => return fail(&tx, PgError::transient(format!("reading {t}"), e)),
                    }
                }
                if done.iter().all(|d| *d) {
                    break;
                }
                if caught_up && quiet_since.elapsed() > Duration::from_secs(1) {
                    if !debezium_over {
                        debezium_over = debezium_snapshot_over(&ep, &consumer, &ttopic, &partitions);
                    }
                    if debezium_over {
                        break;
                    }
                    if quiet_since.elapsed() > Duration::from_secs(600) {
                        return fail(
                            &tx,
                            PgError::config(
                                "loading the snapshot from Kafka",
                                format!("{t}: no record for 10 minutes and the connector's snapshot is not over (no record marked last, no change, no transaction)"),
                                "check that the Debezium connector is running and its snapshot progresses",
                            ),
                        );
                    }
                }
            }
            if tx.blocking_send(Item::TableEnd).is_err() {
                return;
            }
            continue;
        };
        let collection = t.strip_prefix(&format!("{}.", ep.prefix)).unwrap_or(t);
        let want = snapshot.table_rows.get(collection).copied().unwrap_or(0);
        let ps = parts.get_mut(t).map(|v| v.as_mut_slice()).unwrap_or_default();
        let mut done = vec![false; ps.len()];
        let mut got = 0u64;
        let mut heard = Instant::now();
        while got < want {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            serve();
            for (i, part) in ps.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                match part.head(Duration::from_millis(50)) {
                    Ok(Some(h)) if h.op_is("r") => {
                        heard = Instant::now();
                        // Rows of a snapshot a killed capture did not finish come before the
                        // finished one's: only the snapshot the state record names counts.
                        let ours = h.of_snapshot(consistent, snapshot.snapshot_ts_ms);
                        let h = part.head.take().expect("head");
                        if ours {
                            got += 1;
                            if tx.blocking_send(Item::Row(h.raw)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Some(_)) => done[i] = true,
                    Ok(None) => {}
                    Err(e) => return fail(&tx, PgError::transient(format!("reading {t}"), e)),
                }
            }
            if got < want && (done.iter().all(|d| *d) || heard.elapsed() > Duration::from_secs(120)) {
                return fail(
                    &tx,
                    PgError::config(
                        "loading the snapshot from Kafka",
                        format!("topic {t} holds {got} rows of the snapshot at {consistent}, its capture published {want}"),
                        "the topic lost records (retention, compaction, a broker that cannot serve them): take a new snapshot (delete the capture's state topic and start it again)",
                    ),
                );
            }
        }
        if tx.blocking_send(Item::TableEnd).is_err() {
            return;
        }
    }
    if tx.blocking_send(Item::SnapshotDone).is_err() {
        return;
    }
    let Some(mut txq) = parts.remove(&ttopic) else {
        return fail(
            &tx,
            PgError::config(
                "applying from Kafka",
                format!("topic {ttopic} (transaction metadata) does not exist"),
                "Ferry rebuilds source transactions from it: with Debezium set provide.transaction.metadata=true",
            ),
        );
    };
    let mut txp = txq.remove(0);
    let resume_end = start
        .offsets
        .as_ref()
        .and_then(|o| o.get(&(ttopic.clone(), txp.partition)).copied())
        .unwrap_or(0);
    // The last transaction handed over: an END at or before it is a copy a restarted capture
    // sent again; its records are dropped as stale at the next transaction.
    let mut last_commit = start.applied;
    let mut reported = Instant::now() - Duration::from_secs(60);
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        serve();
        // Each partition's read position, once a second (the high watermarks come from
        // `watermarks`, off this thread).
        if reported.elapsed() >= Duration::from_secs(1) {
            reported = Instant::now();
            let mut map = progress.partitions.lock().expect("progress lock");
            for part in parts.values().flatten().chain(std::iter::once(&txp)) {
                if part.next_offset >= 0 {
                    let e = map.entry((part.topic.clone(), part.partition)).or_insert((0, 0));
                    e.0 = part.next_offset;
                    e.1 = e.1.max(part.next_offset);
                }
            }
        }
        let rec = match txp.head(Duration::from_millis(100)) {
            Ok(Some(_)) => whole(&txp.head.take().expect("head").raw),
            Ok(None) => {
                // Nothing more in the transaction topic: a watermark whose transactions are all
                // read is handed over.
                if let Some(q) = &marks {
                    while let Some(m) = q.poll(Duration::ZERO) {
                        match m {
                            Ok(m) => {
                                let w = m.payload().and_then(|p| serde_json::from_slice::<Watermark>(p).ok());
                                if let Some((at, end)) = w.and_then(|w| Some((position_key(&w.position)?, w.transactions_end))) {
                                    mark = Some((at, end));
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "reading the capture's watermarks"),
                        }
                    }
                }
                if let Some((at, end)) = mark {
                    if txp.next_offset.max(txn_start) >= end {
                        mark = None;
                        if at > marked {
                            marked = at;
                            if tx.blocking_send(Item::Watermark(at)).is_err() {
                                return;
                            }
                        }
                    }
                }
                if tx.blocking_send(Item::Idle).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => return fail(&tx, PgError::transient(format!("reading {ttopic}"), e)),
        };
        let p = payload(&rec);
        if p["status"] != "END" {
            continue;
        }
        let id = p["id"].as_str().unwrap_or("").to_string();
        // An END before the offset the target recorded was applied before a restart (the
        // reader starts some records earlier, see `crate::offsets::BACKSTEP`).
        if txp.next_offset - 1 < resume_end {
            continue;
        }
        let ts_ms = p["ts_ms"].as_i64().unwrap_or(0);
        let total = p["event_count"].as_u64().unwrap_or(0);
        let topics: Vec<String> = p["data_collections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["data_collection"].as_str())
                    .map(|c| format!("{}.{c}", ep.prefix))
                    .collect()
            })
            .unwrap_or_default();
        let (txid, commit) = match commit_of(&id) {
            Some(c) => c,
            None if total == 0 => continue,
            // A GTID (Debezium's MySQL connector with GTIDs): the id does not order
            // transactions; the binlog position of its first event found does.
            None => {
                let txid = id_hash(&id);
                let started = Instant::now();
                let found = 'scan: loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    serve();
                    for t in &topics {
                        let Some(ps) = parts.get_mut(t) else { continue };
                        for part in ps.iter_mut() {
                            loop {
                                match part.head(Duration::from_millis(10)) {
                                    Ok(Some(h)) => match h.txn {
                                        Some((htx, c)) if htx == txid => break 'scan c,
                                        // Applied, or a copy of what was.
                                        Some((_, c)) if c <= last_commit => part.head = None,
                                        None => part.head = None,
                                        Some(_) => break,
                                    },
                                    Ok(None) => break,
                                    Err(e) => return fail(&tx, PgError::transient(format!("reading {t}"), e)),
                                }
                            }
                        }
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        return fail(
                            &tx,
                            PgError::config(
                                "applying from Kafka",
                                format!("transaction {id}: its END record counts {total} events, none is in the topics"),
                                "the topics lost records (retention, compaction, a producer without idempotence): reload the target from a new snapshot",
                            ),
                        );
                    }
                };
                (txid, found)
            }
        };
        if commit <= last_commit {
            continue;
        }
        last_commit = commit;
        if tx.blocking_send(Item::Begin(commit, txid, ts_ms)).is_err() {
            return;
        }
        let mut emitted = 0u64;
        let mut last_order = 0i64;
        let started = Instant::now();
        while emitted < total {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            serve();
            // The head of each partition of the transaction's tables: older transactions'
            // records and repeats are dropped; the next order of this one is handed over.
            let mut best: Option<(String, usize, i64)> = None;
            let mut waiting = false;
            for t in &topics {
                let Some(ps) = parts.get_mut(t) else {
                    // A topic made after this session started (a table created on the source
                    // mid-stream): the next session reads it.
                    if consumer
                        .fetch_metadata(Some(t), REQUEST_TIMEOUT)
                        .is_ok_and(|m| m.topics().iter().any(|x| x.name() == t && x.error().is_none()))
                    {
                        return fail(&tx, PgError::transient("applying from Kafka", format!("transaction {id} has events in topic {t}, which appeared after this session started: reading the topics again")));
                    }
                    return fail(
                        &tx,
                        PgError::config(
                            "applying from Kafka",
                            format!("transaction {id} has events in {t}, a topic that does not exist or is not applied"),
                            "create the table on the target (or apply its topic) and start again",
                        ),
                    );
                };
                for (i, part) in ps.iter_mut().enumerate() {
                    loop {
                        let head = match part.head(Duration::from_millis(10)) {
                            Ok(h) => h,
                            Err(e) => return fail(&tx, PgError::transient(format!("reading {t}"), e)),
                        };
                        let Some(h) = head else {
                            waiting = true;
                            break;
                        };
                        if h.op.is_none() {
                            return fail(
                                &tx,
                                PgError::config(
                                    "applying from Kafka",
                                    format!("a record in {t} is not in Debezium's envelope (no op, before, after, source): flattened, by ExtractNewRecordState or a like transform"),
                                    "have the connector write the envelope (remove the flattening transform): a flattened record has no operation, old key or transaction to apply exactly",
                                ),
                            );
                        }
                        let order = h.total_order;
                        // Ferry's ids are `<txId>:<commit LSN>` on every record of a transaction;
                        // Debezium's carry the LSN of each record instead, so the transaction is
                        // known by its txId, and a record of another one is older than this one
                        // if the commit before its own (`sequence[0]`) is.
                        let (stale, ours) = match h.txn {
                            None => (true, false),
                            Some((htx, _)) if htx == txid => (order <= last_order, true),
                            Some((_, c)) => match h.previous {
                                Some(prev) => (prev < commit, false),
                                None => (c < commit, false),
                            },
                        };
                        if stale {
                            part.head = None;
                            continue;
                        }
                        // Orders run 1..=event_count; the next one may still be on its way
                        // in another partition (the END record can be read first).
                        if ours && order == last_order + 1 {
                            best = Some((t.clone(), i, order));
                        }
                        break;
                    }
                }
            }
            match best {
                Some((t, i, order)) => {
                    let part = &mut parts.get_mut(&t).expect("topic")[i];
                    let v = part.head.take().expect("head").raw;
                    let (partition, offset) = (part.partition, part.next_offset - 1);
                    last_order = order;
                    emitted += 1;
                    if tx.blocking_send(Item::Change(t, v, partition, offset)).is_err() {
                        return;
                    }
                }
                None if waiting && started.elapsed() < Duration::from_secs(60) => {}
                None => {
                    return fail(
                        &tx,
                        PgError::config(
                            "applying from Kafka",
                            format!("transaction {id}: its END record counts {total} events, only {emitted} are in the topics"),
                            "the topics lost records (retention, compaction, a producer without idempotence): reload the target from a new snapshot",
                        ),
                    )
                }
            }
        }
        let end = (txp.topic.clone(), txp.partition, txp.next_offset);
        if tx.blocking_send(Item::Commit(commit, ts_ms, end)).is_err() {
            return;
        }
    }
}

/// The target's tables of the topics: columns, types and keys from its catalog.
pub(crate) async fn target_relation(c: &tokio_postgres::Client, table: &TableName, id: u32) -> Result<Relation, PgError> {
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    COALESCE(a.attnum = ANY (i.indkey), false)
               FROM pg_attribute a
               LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| {
            PgError::config(
                format!("applying to table {table}"),
                format!("the target has no such table ({e})"),
                "create the tables on the target first (for example pg_dump --schema-only of the source), then start again",
            )
        })?;
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_sql: r.get(1),
            not_null: r.get(2),
            key: r.get(3),
            default: None,
        })
        .collect();
    let identity = if columns.iter().any(|c| c.key) {
        Identity::Key
    } else {
        Identity::Full
    };
    Ok(Relation {
        id,
        table: table.clone(),
        scope: table.clone(),
        identity,
        columns,
    })
}

/// How an envelope's fields become a row of the target's table.
pub(crate) struct Shape {
    pub(crate) rel: Relation,
    /// Kind of each column from the event's schema when there is one, else from its type.
    kinds: Vec<Kind>,
}

impl Shape {
    pub(crate) fn new(rel: Relation) -> Shape {
        let kinds = rel.columns.iter().map(|c| Kind::of(&c.type_sql)).collect();
        Shape { rel, kinds }
    }

    /// Learns the kinds of the event's schema part (Debezium's own encodings).
    pub(crate) fn learn(&mut self, envelope: &Value) {
        let Some(fields) = envelope.pointer("/schema/fields").and_then(Value::as_array) else {
            return;
        };
        let Some(after) = fields.iter().find(|f| f["field"] == "after").and_then(|f| f["fields"].as_array()) else {
            return;
        };
        for f in after {
            let Some(name) = f["field"].as_str() else { continue };
            if let Some(i) = self.rel.columns.iter().position(|c| c.name == name) {
                if let Some(k) = Kind::from_schema(f) {
                    self.kinds[i] = k.refined(&Kind::of(&self.rel.columns[i].type_sql));
                }
            }
        }
    }

    /// Adds the columns the event's schema has and the table lacks (the source gained them
    /// mid-stream), typed from their Debezium schema, nullable; true if any. The sink adds
    /// them to the target when it is told the grown relation. Without a schema part the type
    /// is unknown: the row is refused, naming the column.
    fn grow(&mut self, envelope: &Value) -> bool {
        let Some(fields) = envelope.pointer("/schema/fields").and_then(Value::as_array) else {
            return false;
        };
        let Some(after) = fields
            .iter()
            .find(|f| f["field"] == "after" || f["field"] == "before")
            .and_then(|f| f["fields"].as_array())
        else {
            return false;
        };
        let mut grown = false;
        for f in after {
            let Some(name) = f["field"].as_str() else { continue };
            if self.rel.columns.iter().any(|c| c.name == name) {
                continue;
            }
            let Some(kind) = Kind::from_schema(f) else { continue };
            self.rel.columns.push(Column {
                name: name.to_string(),
                type_sql: kind.pg_type(),
                key: false,
                default: None,
                not_null: false,
            });
            self.kinds.push(kind);
            grown = true;
        }
        grown
    }
}

/// Why a record cannot become a change of the target's table.
pub(crate) struct Unfit {
    operation: &'static str,
    /// The row image that failed (Null: none).
    image: Value,
    error: String,
}

impl Unfit {
    /// The dead letter that names it: its transaction's commit and its place in it.
    pub(crate) fn letter(self, shape: &Shape, commit: SourcePosition, change_index: u32, raw: &[u8]) -> DeadLetter {
        let key = shape
            .rel
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| format!("{}={}", c.name, self.image.get(&c.name).map(|v| v.to_string()).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ");
        DeadLetter {
            commit,
            change_index,
            table: shape.rel.table.clone(),
            operation: self.operation,
            key,
            payload: String::from_utf8_lossy(raw).chars().take(2000).collect(),
            error: self.error,
        }
    }
}

/// A record (not a tombstone) as a change of the target's table. The shape first grows by
/// the columns the record has and the table lacks (the source gained them mid-stream) when
/// its schema part types them: `.0` says so, and the sink must be told the grown relation
/// before the change. The record is decoded in one pass ([`crate::image`]).
pub(crate) fn change_of(shape: &mut Shape, raw: &[u8]) -> Result<(bool, ChangeEvent), Unfit> {
    let unfit = |operation: &'static str, field: &str, error: String| Unfit {
        operation,
        image: image_of(raw, field),
        error,
    };
    let decode = |shape: &Shape| crate::image::decode(raw, &shape.rel.columns, &shape.kinds).map_err(|e| unfit("unknown", "", e));
    let mut p = decode(shape)?;
    let unknown = |i: &Option<Image>| matches!(i, Some(Image::Unknown(_)));
    let grown = (unknown(&p.after) || unknown(&p.before)) && shape.grow(&whole(raw));
    if grown {
        p = decode(shape)?;
    }
    let row = |image: Option<Image>, missing: Datum| crate::image::row(image, missing, &shape.rel.table);
    let id = shape.rel.id;
    let event = match p.op.as_deref() {
        Some("c") | Some("r") => ChangeEvent::Insert {
            relation: id,
            new: row(p.after, Datum::Null).map_err(|e| unfit("insert", "after", e))?,
        },
        Some("u") => {
            let new = row(p.after, Datum::Unchanged).map_err(|e| unfit("update", "after", e))?;
            let old = match p.before {
                None => None,
                b => Some(row(b, Datum::Null).map_err(|e| unfit("update", "before", e))?),
            };
            // The sink's contract: an old row only when the update moves the key (or the table
            // has none). A `before` that keeps the key (Debezium's MySQL connector writes the
            // whole old row of every update, its PostgreSQL one under REPLICA IDENTITY FULL) is
            // dropped, so that the update is applied set-based with the others.
            let keeps_key = |o: &Row| {
                shape.rel.identity == Identity::Key
                    && shape
                        .rel
                        .columns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.key)
                        .all(|(i, _)| o.get(i) == new.get(i))
            };
            let old = old.filter(|o| !keeps_key(o));
            ChangeEvent::Update { relation: id, old, new }
        }
        Some("d") => ChangeEvent::Delete {
            relation: id,
            old: row(p.before, Datum::Null).map_err(|e| unfit("delete", "before", e))?,
        },
        Some("t") => ChangeEvent::Truncate {
            relations: vec![id],
            cascade: false,
            restart_identity: false,
        },
        other => return Err(unfit("unknown", "after", format!("unknown op {other:?}"))),
    };
    Ok((grown, event))
}

/// A record's row image `field` (`before`, `after`) as a JSON tree, for a dead letter's key:
/// parsed again, only for a record that failed.
fn image_of(raw: &[u8], field: &str) -> Value {
    if field.is_empty() {
        return Value::Null;
    }
    let w = whole(raw);
    let p = match w.get("payload") {
        Some(p) if p.is_object() => p,
        _ => &w,
    };
    p.get(field).cloned().unwrap_or(Value::Null)
}

fn copy_escape(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// The table of a topic (`<prefix>.<schema>.<table>`).
pub(crate) fn table_of(prefix: &str, topic: &str) -> Option<TableName> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('.')?;
    let (s, t) = rest.split_once('.')?;
    Some(TableName::new(s, t))
}

/// Applies until `stop` turns true (Ok) or a definite error.
pub async fn run(opts: ApplyOptions, mut stop: watch::Receiver<bool>) -> Result<(), PgError> {
    crate::sink::probe(&opts.kafka).await?;
    let mut ordered_until = Lsn(0);
    let mut backoff = Duration::from_millis(500);
    // Dead letters stepped over (--skip-dead-letters): the sink's own (changes the target
    // rejected) and the events that could not be read into the target's table.
    let mut rejected: HashSet<(Lsn, u32)> = HashSet::new();
    let mut undecodable: HashSet<(Lsn, u32)> = HashSet::new();
    let done = Arc::new(AtomicBool::new(false));
    let _watermarks = {
        let (ep, progress, done) = (opts.kafka.clone(), opts.progress.clone(), done.clone());
        std::thread::spawn(move || watermarks(ep, progress, done))
    };
    // The thread ends with the run, however it ends.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _done = Done(done);
    loop {
        match session(&opts, &mut stop, ordered_until, &rejected, &undecodable).await {
            Ok(()) => return Ok(()),
            // A set-based batch failed or missed rows: replay it row by row, which names the
            // change at fault (or applies it, if it was a false alarm).
            Err(SessionError::Apply(ApplyError::Reapply { until })) => {
                tracing::info!(until = %until, "replaying a batch row by row");
                ordered_until = ordered_until.max(until);
            }
            Err(SessionError::Apply(ApplyError::Rejected(d))) => dead_letter(&opts, &d, &mut rejected).await?,
            Err(SessionError::Undecodable(d)) => dead_letter(&opts, &d, &mut undecodable).await?,
            Err(SessionError::Apply(ApplyError::Db(e))) if e.class == ferry_core::ErrorClass::Transient => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "applying from Kafka interrupted; resuming from the last applied transaction");
                if let Some(live) = &opts.cdc {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    live.set_error(Some(e.to_string()));
                    live.set_state(StreamState::Reconnecting);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(SessionError::Apply(ApplyError::Db(e))) => return Err(e),
        }
    }
}

/// Asks the broker for the high watermark of every partition the apply reads, every 5 s,
/// until `stop`: the lag in /metrics.
pub(crate) fn watermarks(ep: KafkaEndpoint, progress: Arc<ApplyProgress>, stop: Arc<AtomicBool>) {
    let Ok(c) = ep.client_config().create::<BaseConsumer>() else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let keys: Vec<(String, i32)> = progress.partitions.lock().expect("progress lock").keys().cloned().collect();
        for (t, p) in keys {
            if let Ok((_, high)) = c.fetch_watermarks(&t, p, Duration::from_secs(5)) {
                if let Some(e) = progress.partitions.lock().expect("progress lock").get_mut(&(t, p)) {
                    e.1 = high.max(e.0);
                }
            }
        }
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Records a dead letter in the target's state schema and, with --skip-dead-letters, adds it
/// to the changes the next session steps over (`skipped`); otherwise, or if it was stepped
/// over already, the apply stops naming it.
async fn dead_letter(opts: &ApplyOptions, d: &DeadLetter, skipped: &mut HashSet<(Lsn, u32)>) -> Result<(), PgError> {
    let client = opts.target.connect("kafka-apply").await?;
    let store = StateStore::new(&opts.state_schema);
    store.record_dead_letter(&client, &opts.id, d, opts.skip_dead_letters).await?;
    if !opts.skip_dead_letters || !skipped.insert((d.commit.as_lsn().unwrap_or_default(), d.change_index)) {
        return Err(stopped_at(d));
    }
    tracing::warn!(
        table = %d.table, operation = d.operation, key = %d.key, commit = %ferry_postgres::apply::position_text(&d.commit),
        change = d.change_index, error = %d.error,
        "dead letter recorded and stepped over (--skip-dead-letters)"
    );
    Ok(())
}

fn stopped_at(d: &DeadLetter) -> PgError {
    PgError::config(
        format!(
            "applying a change to {} ({}, key {}, source commit {}, change {})",
            d.table,
            d.operation,
            d.key,
            ferry_postgres::apply::position_text(&d.commit),
            d.change_index
        ),
        d.error.clone(),
        "the change is recorded in the dead_letters table of Ferry's state schema on the target: fix the cause on the target and start again, or start again with --skip-dead-letters to step over it",
    )
}

/// The prefix's table topics (every topic under it but Ferry's own and the transactions'),
/// and the capture's state: Ferry's capture makes its state topic first and says there when
/// its snapshot is all published (Some); without that topic the topics are a Debezium
/// connector's (None). Fails while a Ferry capture's snapshot is not complete.
pub(crate) async fn topics_and_snapshot(ep: &KafkaEndpoint) -> Result<(Vec<String>, Option<CaptureState>), PgError> {
    let state = read_state(ep).await?;
    // The table topics: every topic under the prefix but Ferry's own and the transactions'.
    let (topics, ferry_capture) = {
        let ep = ep.clone();
        tokio::task::spawn_blocking(move || -> Result<(Vec<String>, bool), PgError> {
            let c: BaseConsumer = ep
                .client_config()
                .create()
                .map_err(|e| kafka_error("reading the topics", &ep, &e))?;
            let md = c
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| kafka_error("reading the topics", &ep, &e))?;
            let skip: HashSet<String> = [
                transaction_topic(&ep.prefix),
                state_topic(&ep.prefix),
                dead_letter_topic(&ep.prefix),
                watermark_topic(&ep.prefix),
            ]
            .into();
            let ferry_capture = md.topics().iter().any(|t| t.name() == state_topic(&ep.prefix));
            let mut v: Vec<String> = md
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .filter(|n| !skip.contains(n) && table_of(&ep.prefix, n).is_some())
                .collect();
            v.sort();
            Ok((v, ferry_capture))
        })
        .await
        .map_err(|e| PgError::transient("reading the topics", e))??
    };
    // Ferry's capture makes its state topic first and says there when its snapshot is all
    // published; without that topic the topics are a Debezium connector's.
    let state = match state {
        Some(s) if s.snapshot_complete => Some(s),
        // Nothing under the prefix yet, not even a table's topic: a capture that is starting
        // (its state topic comes first) must not be taken for a Debezium connector.
        None if !ferry_capture && topics.is_empty() => {
            return Err(PgError::config(
                "applying from Kafka",
                format!(
                    "no snapshot is complete under prefix {}: there is no topic of a table under it yet, nor a Ferry capture's state topic",
                    ep.prefix
                ),
                "start `ferry capture` (or the Debezium connector) to this prefix first, and start the apply again once it has published",
            ))
        }
        None if !ferry_capture => {
            tracing::info!(prefix = %ep.prefix, "no Ferry capture under this prefix: reading the topics as a Debezium connector writes them");
            None
        }
        _ => {
            return Err(PgError::config(
                "applying from Kafka",
                format!(
                    "topic {} says no snapshot is complete under prefix {}",
                    state_topic(&ep.prefix),
                    ep.prefix
                ),
                "start `ferry capture` to this prefix first and wait until it says the snapshot is published",
            ))
        }
    };
    Ok((topics, state))
}

/// The snapshot's consistent point (0/0 for a Debezium connector's topics).
pub(crate) fn consistent_point(state: &Option<CaptureState>) -> Result<Lsn, PgError> {
    match state {
        Some(s) => position_key(&s.consistent_point).ok_or_else(|| {
            PgError::config(
                "applying from Kafka",
                format!(
                    "the capture's consistent point {:?} is not a position Ferry knows",
                    s.consistent_point
                ),
                "report this as a bug",
            )
        }),
        None => Ok(Lsn(0)),
    }
}

/// Creates the tables of `tables` missing on the target whose definition the capture's state
/// record has, each in its own transaction: a MySQL capture's plan (the DDL `ferry migrate`
/// would run: enum types, columns, primary key) for every table of the snapshot at the first
/// apply and for a table created on the source mid-stream; a PostgreSQL capture's pg_dump of a
/// table created on the source mid-stream (a PostgreSQL source's snapshot tables are copied
/// with pg_dump --schema-only first). A table the record does not define stays missing (and is
/// named when its topic is read).
pub(crate) async fn create_tables(
    client: &mut tokio_postgres::Client,
    state: &Option<CaptureState>,
    tables: &[TableName],
) -> Result<(), PgError> {
    let Some(state) = state.as_ref().filter(|s| !s.target_ddl.is_empty() || !s.table_ddl.is_empty()) else {
        return Ok(());
    };
    for t in tables {
        let found: Option<String> = client
            .query_one("SELECT to_regclass($1)::text", &[&t.quoted()])
            .await
            .map_err(|e| PgError::query("looking for the captured tables on the target", e))?
            .get(0);
        if found.is_some() {
            continue;
        }
        let Some(script) = definition(state, t) else {
            continue;
        };
        let tx = client
            .transaction()
            .await
            .map_err(|e| PgError::query("creating the captured tables on the target", e))?;
        // Members of an apply group start together: one creates, the others find it made (two
        // concurrent CREATE TABLE of one name collide on the catalog's unique index). The look
        // comes in a statement after the lock's (under READ COMMITTED a statement sees what
        // committed before it started), and reads pg_class with that statement's snapshot:
        // to_regclass would ask the session's catalog cache, which keeps the "no such table"
        // of the look above until the transaction takes a relation lock (CI saw it).
        tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('ferry_kafka_create_tables'))")
            .await
            .map_err(|e| PgError::query("creating the captured tables on the target", e))?;
        let made = tx
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| PgError::query("creating the captured tables on the target", e))?;
        if made.is_some() {
            continue;
        }
        for ddl in &script {
            tx.batch_execute(ddl).await.map_err(|e| {
                PgError::query(
                    format!("creating {t} on the target ({})", ddl.chars().take(200).collect::<String>()),
                    e,
                )
            })?;
        }
        // pg_dump's script empties the search path for the session; the applier's names are
        // all qualified, but a later statement on this connection must not depend on it.
        tx.batch_execute("RESET search_path")
            .await
            .map_err(|e| PgError::query("creating the captured tables on the target", e))?;
        tx.commit()
            .await
            .map_err(|e| PgError::query("creating the captured tables on the target", e))?;
        tracing::info!(table = %t, "created the table on the target, from the capture's state record");
    }
    Ok(())
}

/// The statements that create `t` on the target, from the capture's state record: its schema,
/// then a MySQL plan's enum types, table and primary key, or a PostgreSQL table's pg_dump.
fn definition(state: &CaptureState, t: &TableName) -> Option<Vec<String>> {
    let schema_ddl = format!("CREATE SCHEMA IF NOT EXISTS {}", ferry_core::ident::quote_ident(&t.schema));
    if let Some(dump) = state.table_ddl.get(&format!("{}.{}", t.schema, t.name)) {
        return Some(vec![schema_ddl, dump.clone()]);
    }
    let q = t.quoted();
    let create = format!("CREATE TABLE {q} (");
    let table_ddl = state.target_ddl.iter().find(|d| d.starts_with(&create))?;
    // Its enum types (`CREATE TYPE "s"."t" ...` whose name the table's columns use).
    let types = state.target_ddl.iter().filter(|d| {
        d.starts_with("CREATE TYPE ")
            && d.split(" AS ENUM")
                .next()
                .and_then(|h| h.strip_prefix("CREATE TYPE "))
                .is_some_and(|name| table_ddl.contains(name))
    });
    let keys = state.target_ddl.iter().filter(|d| d.starts_with(&format!("ALTER TABLE {q} ")));
    Some(
        std::iter::once(schema_ddl)
            .chain(types.cloned())
            .chain(std::iter::once(table_ddl.clone()))
            .chain(keys.cloned())
            .collect(),
    )
}

/// One session: the snapshot if it is not loaded yet, then the transactions, until a stop or
/// an error.
async fn session(
    opts: &ApplyOptions,
    stop: &mut watch::Receiver<bool>,
    ordered_until: Lsn,
    rejected: &HashSet<(Lsn, u32)>,
    undecodable: &HashSet<(Lsn, u32)>,
) -> Result<(), SessionError> {
    let ep = &opts.kafka;
    let (topics, state) = topics_and_snapshot(ep).await?;
    let consistent = consistent_point(&state)?;
    let mut client = opts.target.connect("kafka-apply").await?;
    let tables: Vec<TableName> = topics.iter().filter_map(|t| table_of(&ep.prefix, t)).collect();
    create_tables(&mut client, &state, &tables).await?;
    // A table created on the source mid-stream, whose topic appeared: created as a direct
    // stream creates it, when the apply can reach the source.
    if let Some(source) = &opts.source {
        for t in tables.iter().filter(|t| source.filter.matches(t)) {
            source.create_on_target(&client, t).await?;
        }
    }
    let store = StateStore::new(&opts.state_schema);
    store.ensure(&client).await?;
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    for (i, t) in topics.iter().enumerate() {
        let table = table_of(&ep.prefix, t).expect("filtered");
        shapes.insert(t.clone(), Shape::new(target_relation(&client, &table, i as u32 + 1).await?));
    }
    if store.phase(&client, &opts.id).await?.is_none() {
        store
            .create_for(&client, &opts.id, ENGINE_POSTGRESQL, &ep.describe(), &ep.prefix, "", "ferry apply")
            .await?;
        let planned: Vec<(TableName, i64)> = shapes.values().map(|s| (s.rel.table.clone(), 0)).collect();
        store.plan_tables(&client, &opts.id, &planned).await?;
        // Debezium's topics: no position before the first transaction is known (0/0).
        store.set_consistent_lsn(&client, &opts.id, Some(consistent)).await?;
        store
            .transition(&client, &opts.id, Phase::Schema, "ferry apply", "tables exist on the target")
            .await?;
        store
            .transition(&client, &opts.id, Phase::FullLoad, "ferry apply", "loading the snapshot from Kafka")
            .await?;
    }
    let records = store.tables(&client, &opts.id).await?;
    // A table whose topic appeared once the snapshot was loaded (created on the source
    // mid-stream): all its rows come as changes, so it counts as loaded, empty.
    if !records.is_empty() && records.iter().all(|t| t.state == ferry_core::TableState::Copied) {
        let known: HashSet<&TableName> = records.iter().map(|t| &t.name).collect();
        let new: Vec<(TableName, i64)> = shapes
            .values()
            .map(|s| s.rel.table.clone())
            .filter(|t| !known.contains(t))
            .map(|t| (t, 0))
            .collect();
        if !new.is_empty() {
            store.plan_tables(&client, &opts.id, &new).await?;
            for (t, _) in &new {
                let txn = client
                    .transaction()
                    .await
                    .map_err(|e| PgError::query(format!("recording {t}"), e))?;
                store.start_table(&txn, &opts.id, t, consistent, 1).await?;
                store.finish_range(&txn, &opts.id, t, 0, 0).await?;
                txn.commit().await.map_err(|e| PgError::query(format!("recording {t}"), e))?;
                tracing::info!(table = %t, "a table created on the source after the snapshot: applying its changes");
            }
        }
    }
    let copied: HashSet<TableName> = store
        .tables(&client, &opts.id)
        .await?
        .into_iter()
        .filter(|t| t.state == ferry_core::TableState::Copied)
        .map(|t| t.name)
        .collect();

    // The offsets the target records with the changes (per partition, the next record).
    crate::offsets::ensure(&mut client, &store).await?;
    let q = store.quoted().to_string();
    let offsets_sql = crate::offsets::record_sql(&store);
    // With every table loaded, the reader starts after the offsets the target recorded, or
    // (none recorded) near the last applied transaction by the broker's time index.
    let start = if shapes.values().all(|sh| copied.contains(&sh.rel.table)) {
        let row = client
            .query_one(
                &format!(
                    "SELECT (extract(epoch FROM last_commit_time) * 1000)::float8, COALESCE(applied_lsn, '0/0')::text
                       FROM {q}.migrations WHERE id = $1"
                ),
                &[&opts.id],
            )
            .await
            .map_err(|e| PgError::query("reading the last applied commit time", e))?;
        let last: Option<f64> = row.get(0);
        let offsets: HashMap<(String, i32), i64> = client
            .query(
                &format!("SELECT topic, partition, next_offset FROM {q}.kafka_offsets WHERE group_id = $1"),
                &[&opts.id],
            )
            .await
            .map_err(|e| PgError::query("reading the Kafka offsets recorded in the target", e))?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        // Every commit records the transaction topic's offset: without it, nothing was.
        let ttopic = transaction_topic(&ep.prefix);
        Start {
            resume_ms: Some(last.map(|ms| ms as i64 - RESUME_MARGIN.as_millis() as i64).unwrap_or(0).max(0)),
            offsets: offsets.keys().any(|(t, _)| *t == ttopic).then_some(offsets),
            applied: row.get::<_, String>(1).parse().unwrap_or_default(),
        }
    } else {
        Start {
            resume_ms: None,
            offsets: None,
            applied: Lsn(0),
        }
    };
    let (tx, mut rx) = mpsc::channel::<Item>(4096);
    let halt = Arc::new(AtomicBool::new(false));
    let reader_thread = {
        let (ep, topics, halt) = (ep.clone(), topics.clone(), halt.clone());
        let snapshot = state.clone();
        let progress = opts.progress.clone();
        std::thread::spawn(move || reader(ep, topics, snapshot, start, tx, halt, progress))
    };
    let result = async {
        // The snapshot, a table per target transaction.
        let mut client = client;
        let mut rows_buf = Vec::with_capacity(1 << 16);
        loop {
            // A stop seen inside a table's load (which ends it, rolled back) is seen here too:
            // `changed()` would not fire again for it, and the next record would arrive here.
            if *stop.borrow() {
                return Ok(());
            }
            let item = tokio::select! {
                i = rx.recv() => i,
                _ = stop.changed() => return Ok(()),
            };
            let Some(item) = item else {
                return Err(PgError::transient("reading from Kafka", "the reader stopped").into());
            };
            match item {
                Item::TableStart(topic) => {
                    let table = shapes[&topic].rel.table.clone();
                    let load = Load {
                        store: &store,
                        id: &opts.id,
                        table: &table,
                        shape: &shapes[&topic],
                        at: consistent,
                        skip: copied.contains(&table),
                    };
                    load.run(&mut client, &mut rx, &mut rows_buf, stop).await?;
                }
                Item::SnapshotDone => break,
                Item::Failed(e) => return Err(e.into()),
                other => {
                    return Err(PgError::config(
                        "applying from Kafka",
                        format!("unexpected record order ({other:?})"),
                        "report this as a bug",
                    )
                    .into())
                }
            }
        }
        if store.phase(&client, &opts.id).await? == Some(Phase::FullLoad) {
            store
                .transition(&client, &opts.id, Phase::PostLoad, "ferry apply", "snapshot loaded")
                .await?;
            store
                .transition(&client, &opts.id, Phase::Cdc, "ferry apply", "applying transactions from Kafka")
                .await?;
        }
        drop(client);
        // The stream, through the PostgreSQL sink.
        let ctx = ApplyContext {
            source: opts.source.clone(),
            target: opts.target.clone(),
            store: store.clone(),
            migration_id: opts.id.clone(),
            direction: Direction::Forward,
        };
        let settings = TextSettings::utc();
        let mut sink = Applier::new(ctx, &settings, rejected.clone(), ordered_until, None).await?;
        // Per partition, the offset after the last record handed to the sink: recorded with the
        // batch that applies it (at transaction boundaries only).
        // Keyed by topic, then partition: the topic is copied once a batch, not once a change.
        let mut read: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        let stage_offsets = |sink: &mut Applier, read: &mut HashMap<String, HashMap<i32, i64>>| {
            for (topic, parts) in read.drain() {
                for (partition, next) in parts {
                    sink.stage(offsets_sql.clone(), vec![opts.id.clone(), topic.clone(), partition.to_string(), next.to_string()]);
                }
            }
        };
        let note_read = |read: &mut HashMap<String, HashMap<i32, i64>>, topic: &str, partition: i32, next: i64| match read.get_mut(topic) {
            Some(parts) => {
                parts.insert(partition, next);
            }
            None => {
                read.insert(topic.to_string(), HashMap::from([(partition, next)]));
            }
        };
        let mut described: HashSet<String> = HashSet::new();
        let mut index = 0u32;
        let mut commit_at = Lsn(0);
        let mut begun = false;
        // Everything that commits before this position is handed to the sink (the last
        // transaction's, or the capture's watermark).
        let lsn = |p: Option<SourcePosition>| p.and_then(|p| p.as_lsn()).unwrap_or_default();
        let mut known_end = lsn(sink.committed());
        let live = opts.cdc.clone().unwrap_or_default();
        live.sessions.fetch_add(1, Ordering::Relaxed);
        live.set_state(StreamState::Streaming);
        live.set_error(None);
        let (_no_pause, never) = watch::channel(false);
        let mut pause = opts.pause.clone().unwrap_or(never);
        // Commits what is open and waits until the target has it durably: a hold, a pause.
        macro_rules! settle_all {
            () => {
                if sink.batch_open() {
                    stage_offsets(&mut sink, &mut read);
                    sink.commit().await?;
                }
                sink.settle().await?;
                sink.flush_now().await?;
                live.flushed_lsn.fetch_max(lsn(Sink::durable(&sink)).0, Ordering::Relaxed);
            };
        }
        loop {
            let item = if *stop.borrow() {
                None
            } else {
                tokio::select! {
                    i = rx.recv() => i,
                    _ = stop.changed() => None,
                }
            };
            let Some(item) = item else {
                if sink.batch_open() && sink.at_boundary() {
                    stage_offsets(&mut sink, &mut read);
                    sink.commit().await?;
                }
                sink.settle().await?;
                sink.flush_now().await?;
                return Ok(());
            };
            match item {
                Item::Begin(commit, xid, ts_ms) => {
                    // Heard from the broker (once a transaction, not once a change: the clock
                    // is read on the applier's hot path otherwise).
                    live.last_message_ms.store(ferry_core::unix_ms(), Ordering::Relaxed);
                    // A hold at or before this transaction's commit: everything before it is
                    // handed over, none of it.
                    if let Some(hold) = opts.hold.as_ref().filter(|h| h.requested().is_some_and(|at| commit >= at)) {
                        settle_all!();
                        live.applied_lsn.fetch_max(lsn(sink.committed()).0, Ordering::Relaxed);
                        hold.hold_at(commit, stop, &live).await;
                    }
                    if live.pending_since_ms.load(Ordering::Relaxed) == 0 {
                        live.pending_since_ms.store(live.last_message_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    commit_at = commit;
                    index = 0;
                    begun = true;
                    sink.apply(ChangeEvent::Begin {
                        commit: SourcePosition::Postgres(commit),
                        commit_time_us: ts_ms * 1000,
                        xid,
                    })
                    .await?;
                }
                Item::Change(topic, raw, partition, offset) => {
                    index += 1;
                    note_read(&mut read, &topic, partition, offset + 1);
                    let shape = shapes.get_mut(&topic).expect("known topic");
                    if undecodable.contains(&(commit_at, index)) {
                        tracing::warn!(table = %shape.rel.table, commit = %commit_at, change = index, "stepping over a dead letter (--skip-dead-letters)");
                        continue;
                    }
                    if described.insert(topic.clone()) {
                        shape.learn(&whole(&raw));
                        sink.apply(ChangeEvent::Relation(shape.rel.clone())).await?;
                    }
                    // An event that does not fit the target's table is a dead letter, named by
                    // its transaction's commit and its place in it, as the sink names the
                    // changes the target rejects.
                    let (grown, event) = change_of(shape, &raw)
                        .map_err(|u| SessionError::Undecodable(u.letter(shape, SourcePosition::Postgres(commit_at), index, &raw)))?;
                    if grown {
                        tracing::info!(table = %shape.rel.table, "the events have columns the table lacks: adding them");
                        sink.apply(ChangeEvent::Relation(shape.rel.clone())).await?;
                    }
                    sink.apply(event).await?;
                    opts.progress.changes.fetch_add(1, Ordering::Relaxed);
                    live.changes.fetch_add(1, Ordering::Relaxed);
                }
                Item::Commit(commit, ts_ms, (ttopic, tpartition, tnext)) => {
                    begun = false;
                    note_read(&mut read, &ttopic, tpartition, tnext);
                    opts.progress.transactions.fetch_add(1, Ordering::Relaxed);
                    live.txns.fetch_add(1, Ordering::Relaxed);
                    known_end = known_end.max(Lsn(commit.0 + 1));
                    live.server_wal_end.fetch_max(known_end.0, Ordering::Relaxed);
                    opts.progress.last_commit_lsn.store(commit.0, Ordering::Relaxed);
                    opts.progress.last_commit_time_us.store(ts_ms * 1000, Ordering::Relaxed);
                    // The position passed once it is applied: just after the commit record
                    // (the sink skips what commits before its durable position; the next
                    // transaction's commit is past this one's record).
                    sink.apply(ChangeEvent::Commit {
                        end: SourcePosition::Postgres(Lsn(commit.0 + 1)),
                        commit_time_us: ts_ms * 1000,
                    })
                    .await?;
                    // A full batch, or one open for BATCH_TIME, commits (in the background): a
                    // stream that never pauses is applied within a fraction of a second too.
                    if sink.batch_len() >= opts.max_batch || sink.batch_age() >= BATCH_TIME {
                        stage_offsets(&mut sink, &mut read);
                        sink.commit().await?;
                    }
                    sink.try_settle().await?;
                    live.applied_lsn.fetch_max(lsn(sink.committed()).0, Ordering::Relaxed);
                }
                quiet @ (Item::Idle | Item::Watermark(_)) => {
                    live.last_message_ms.store(ferry_core::unix_ms(), Ordering::Relaxed);
                    if let Item::Watermark(at) = quiet {
                        known_end = known_end.max(at);
                        live.server_wal_end.fetch_max(at.0, Ordering::Relaxed);
                    }
                    if sink.batch_open() && !begun {
                        stage_offsets(&mut sink, &mut read);
                        sink.commit().await?;
                    }
                    sink.try_settle().await?;
                    if sink.has_unflushed() && !sink.in_flight() {
                        sink.poll_flush().await?;
                    }
                    let committed = lsn(sink.committed());
                    live.flushed_lsn.fetch_max(lsn(Sink::durable(&sink)).0, Ordering::Relaxed);
                    // Nothing open and nothing committing: nothing before the known end is
                    // left to apply.
                    let idle = !begun && !sink.batch_open() && !sink.in_flight();
                    live.applied_lsn.fetch_max(if idle { committed.max(known_end) } else { committed }.0, Ordering::Relaxed);
                    if idle {
                        live.pending_since_ms.store(0, Ordering::Relaxed);
                    }
                    if !begun {
                        if let Some(hold) = opts.hold.as_ref().filter(|h| h.requested().is_some_and(|at| known_end >= at)) {
                            settle_all!();
                            live.applied_lsn.fetch_max(known_end.0, Ordering::Relaxed);
                            hold.hold_at(known_end, stop, &live).await;
                        }
                        if *pause.borrow() && !*stop.borrow() {
                            settle_all!();
                            tracing::info!("applying from Kafka paused; the topics keep the changes until it resumes");
                            live.set_state(StreamState::Paused);
                            tokio::select! {
                                _ = pause.wait_for(|p| !*p) => {}
                                _ = stop.changed() => {}
                            }
                            live.set_state(StreamState::Streaming);
                            tracing::info!("applying from Kafka resumed");
                        }
                    }
                }
                Item::Failed(e) => return Err(e.into()),
                other => {
                    return Err(PgError::config(
                        "applying from Kafka",
                        format!("unexpected record order ({other:?})"),
                        "report this as a bug",
                    )
                    .into())
                }
            }
        }
    }
    .await;
    halt.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = reader_thread.join();
    result
}

/// One table's snapshot load.
struct Load<'a> {
    store: &'a StateStore,
    id: &'a str,
    table: &'a TableName,
    shape: &'a Shape,
    /// The snapshot's position.
    at: Lsn,
    /// Loaded before (a restart): its rows are read past, not loaded again.
    skip: bool,
}

impl Load<'_> {
    /// Loads the table's snapshot rows (until its TableEnd) in one target transaction: the
    /// table emptied first, marked copied last.
    async fn run(
        &self,
        client: &mut tokio_postgres::Client,
        rx: &mut mpsc::Receiver<Item>,
        buf: &mut Vec<u8>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), PgError> {
        let (store, id, table) = (self.store, self.id, self.table);
        if self.skip {
            loop {
                match rx.recv().await {
                    Some(Item::Row(_)) => {}
                    Some(Item::TableEnd) => return Ok(()),
                    Some(Item::Failed(e)) => return Err(e),
                    _ => return Err(PgError::transient("reading from Kafka", "the reader stopped")),
                }
            }
        }
        let txn = client
            .transaction()
            .await
            .map_err(|e| PgError::query(format!("loading {table}"), e))?;
        store.start_table(&txn, id, table, self.at, 1).await?;
        txn.batch_execute(&format!("TRUNCATE {}", table.quoted()))
            .await
            .map_err(|e| PgError::query(format!("emptying {table} before its snapshot"), e))?;
        let cols: Vec<String> = self
            .shape
            .rel
            .columns
            .iter()
            .map(|c| ferry_core::ident::quote_ident(&c.name))
            .collect();
        let copy = txn
            .copy_in::<_, Bytes>(&format!("COPY {} ({}) FROM STDIN", table.quoted(), cols.join(", ")))
            .await
            .map_err(|e| PgError::query(format!("loading {table}"), e))?;
        let mut copy = Box::pin(copy);
        let mut rows = 0i64;
        let mut bytes = 0i64;
        let mut shape = Shape::new(self.shape.rel.clone());
        let mut learned = false;
        loop {
            let item = tokio::select! {
                i = rx.recv() => i,
                _ = stop.changed() => return Ok(()),
            };
            match item {
                Some(Item::Row(raw)) => {
                    if !learned {
                        shape.learn(&whole(&raw));
                        learned = true;
                    }
                    let after = crate::image::decode(&raw, &shape.rel.columns, &shape.kinds)
                        .map_err(|e| {
                            PgError::config(
                                format!("loading {table} from Kafka"),
                                e,
                                "the topic holds a record that is not JSON: report it",
                            )
                        })?
                        .after;
                    let row = crate::image::row(after, Datum::Null, table).map_err(|e| {
                        PgError::config(
                            format!("loading {table} from Kafka"),
                            e,
                            "align the target's table with the source and start again",
                        )
                    })?;
                    for (i, d) in row.iter().enumerate() {
                        if i > 0 {
                            buf.push(b'\t');
                        }
                        match d {
                            Datum::Text(b) | Datum::Binary(b) => copy_escape(buf, b),
                            _ => buf.extend_from_slice(b"\\N"),
                        }
                    }
                    buf.push(b'\n');
                    rows += 1;
                    if buf.len() >= 1 << 20 {
                        bytes += buf.len() as i64;
                        copy.send(Bytes::from(std::mem::take(buf)))
                            .await
                            .map_err(|e| PgError::query(format!("loading {table}"), e))?;
                    }
                }
                Some(Item::TableEnd) => break,
                Some(Item::Failed(e)) => return Err(e),
                Some(other) => {
                    return Err(PgError::config(
                        "applying from Kafka",
                        format!("unexpected record order in the snapshot ({other:?})"),
                        "report this as a bug",
                    ))
                }
                None => return Err(PgError::transient("reading from Kafka", "the reader stopped")),
            }
        }
        if !buf.is_empty() {
            bytes += buf.len() as i64;
            copy.send(Bytes::from(std::mem::take(buf)))
                .await
                .map_err(|e| PgError::query(format!("loading {table}"), e))?;
        }
        copy.as_mut()
            .finish()
            .await
            .map_err(|e| PgError::query(format!("loading {table}"), e))?;
        store.finish_range(&txn, id, table, rows, bytes).await?;
        txn.commit().await.map_err(|e| PgError::query(format!("loading {table}"), e))?;
        tracing::info!(table = %table, rows, "snapshot loaded from Kafka");
        Ok(())
    }
}
