//! `ferry capture`: a PostgreSQL database's rows and changes published to Kafka.
//!
//! The first run creates a publication and a slot with an exported snapshot, publishes every
//! row of every published table as Debezium `op: r` events from that snapshot, waits until the
//! broker holds all of them, records that in the capture's state topic
//! (`<prefix>.ferry.capture`, one JSON record per run), then streams. Every later run streams
//! from the slot. A run killed during the snapshot leaves a slot without the record: the next
//! run drops that slot and takes the snapshot again (consumers see the rows twice, as upserts).
//!
//! The stream is [`ferry_postgres::cdc::run`], the driver every sink shares: retries, dead
//! letters, pauses and the slot's feedback behave as in a migration; the slot is told a
//! position only once the broker has acknowledged every event before it.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::change::Row;
use ferry_core::sink::Sink;
use ferry_core::SourcePosition;
use ferry_postgres::apply::ApplyError;
use ferry_postgres::cdc::{self, CdcOptions, CdcProgress};
use ferry_postgres::export::{self, SnapshotReader};
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::schema::PgTools;
use ferry_postgres::{introspect, slot, Endpoint, PgError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::endpoint::{KafkaEndpoint, REQUEST_TIMEOUT};
use crate::envelope::Engine;
use crate::sink::{kafka_error, producer, KafkaSinks};

/// What a capture needs.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The PostgreSQL database captured.
    pub source: Endpoint,
    /// Where events go.
    pub kafka: KafkaEndpoint,
    /// The slot (and publication) name.
    pub slot: String,
    /// Most changes between two looks at the producer's acknowledgements.
    pub max_batch: usize,
    /// Longest a batch stays open.
    pub max_delay: Duration,
    /// The replication stream's dead-peer timeout.
    pub stream_timeout: Duration,
    /// Record values Kafka cannot carry as dead letters and go on.
    pub skip_dead_letters: bool,
    /// What the capture publishes, counted (`ferry capture --listen`).
    pub stats: Arc<crate::sink::SinkStats>,
}

/// The capture's record in its state topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureState {
    /// The slot the stream reads.
    pub slot: String,
    /// The snapshot is in the topics.
    pub snapshot_complete: bool,
    /// The slot's consistent point: the snapshot's position.
    pub consistent_point: String,
    /// Tables and rows the snapshot published.
    pub tables: u64,
    /// Rows.
    pub rows: u64,
    /// Rows of each table (`schema.table`): a reader of the snapshot knows when it has all.
    #[serde(default)]
    pub table_rows: std::collections::BTreeMap<String, u64>,
    /// A source without a slot (MySQL): the position every event before which the broker has
    /// acknowledged, where a restart resumes (`mysql:file:pos[@gtid]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// The PostgreSQL tables the source's map to, for `ferry apply` to create on an empty
    /// target (MySQL sources; a PostgreSQL source's schema is copied with pg_dump).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_ddl: Vec<String>,
    /// The `source.ts_ms` of every row of the snapshot (when it was opened): a snapshot taken
    /// again at the same position (a MySQL source that wrote nothing meanwhile) is told from
    /// the one abandoned before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_ts_ms: Option<i64>,
    /// The definition (pg_dump: columns, constraints, indexes) of each table created on a
    /// PostgreSQL source after the snapshot (`schema.table`), recorded before its first event
    /// is published: `ferry apply` creates it on the target from there.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub table_ddl: std::collections::BTreeMap<String, String>,
}

/// The state topic (`<prefix>.ferry.capture`).
pub fn state_topic(prefix: &str) -> String {
    format!("{prefix}.ferry.capture")
}

/// The slot and publication name of a capture to `prefix` when none is given.
pub fn default_slot(prefix: &str) -> String {
    let mut s: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    s.truncate(40);
    format!("ferry_capture_{s}")
}

/// The last record of the state topic, if any.
pub async fn read_state(ep: &KafkaEndpoint) -> Result<Option<CaptureState>, PgError> {
    let topic = state_topic(&ep.prefix);
    let consumer: BaseConsumer = ep
        .client_config()
        .set("enable.auto.commit", "false")
        .set("group.id", "ferry-capture-state")
        .create()
        .map_err(|e| kafka_error("reading the capture's state", ep, &e))?;
    let ep2 = ep.clone();
    tokio::task::spawn_blocking(move || {
        let (low, high) = match consumer.fetch_watermarks(&topic, 0, Timeout::After(REQUEST_TIMEOUT)) {
            Ok(w) => w,
            // No such topic (librdkafka says so in one of three ways, by broker).
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                            | rdkafka::types::RDKafkaErrorCode::UnknownTopic
                            | rdkafka::types::RDKafkaErrorCode::UnknownPartition
                    )
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(kafka_error(&format!("reading topic {topic}"), &ep2, &e)),
        };
        if high <= low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(high - 1))
            .map_err(|e| kafka_error("reading the capture's state", &ep2, &e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error("reading the capture's state", &ep2, &e))?;
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let state = m.payload().and_then(|p| serde_json::from_slice::<CaptureState>(p).ok());
                    return Ok(state);
                }
                Some(Err(e)) => return Err(kafka_error(&format!("reading topic {topic}"), &ep2, &e)),
                None => {}
            }
        }
        Err(PgError::transient(
            format!("reading topic {topic}"),
            "the broker sent no record in time",
        ))
    })
    .await
    .map_err(|e| PgError::transient("reading the capture's state", e))?
}

pub(crate) async fn write_state(ep: &KafkaEndpoint, state: &CaptureState) -> Result<(), PgError> {
    write_state_with(&producer(ep)?, ep, state).await
}

/// [`write_state`] through a producer the caller keeps (a capture that records its position
/// every second).
pub(crate) async fn write_state_with(
    p: &rdkafka::producer::FutureProducer,
    ep: &KafkaEndpoint,
    state: &CaptureState,
) -> Result<(), PgError> {
    let topic = state_topic(&ep.prefix);
    let value = serde_json::to_vec(state).expect("json");
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(state.slot.as_str()).payload(value.as_slice());
    p.send(record, Timeout::After(REQUEST_TIMEOUT))
        .await
        .map_err(|(e, _)| kafka_error("recording the capture's state", ep, &e))?;
    Ok(())
}

fn apply_err(e: ApplyError) -> PgError {
    match e {
        ApplyError::Db(e) => e,
        other => PgError::config(
            "publishing the snapshot",
            other.to_string(),
            "fix the value at the source, or leave its table out",
        ),
    }
}

/// Publishes every row of the publication's tables from the slot's snapshot.
async fn snapshot(opts: &CaptureOptions, sinks: &KafkaSinks, tables_hint: &[ferry_core::TableName]) -> Result<CaptureState, PgError> {
    let client = opts.source.connect("capture").await?;
    // FOR ALL TABLES where the user may (a superuser): tables created later are published too,
    // and followed ([`Definitions`]). Otherwise the tables there are now.
    let all_tables = introspect::server_info(&client).await?.superuser;
    if slot::ensure_publication(&client, &opts.slot, all_tables, tables_hint).await? {
        tracing::info!(publication = %opts.slot, all_tables, tables = tables_hint.len(), "created publication on the source");
        if !all_tables {
            tracing::warn!(publication = %opts.slot, "the capture's user is not a superuser: the publication names the tables there are now, and a table created later is not captured");
        }
    }
    let mut repl = ReplicationConnection::connect(&opts.source).await?;
    let created = repl.create_slot_with_snapshot(&opts.slot, false).await?;
    tracing::info!(slot = %created.name, consistent_point = %created.consistent_point, "created replication slot; publishing the snapshot");
    let at = SourcePosition::Postgres(created.consistent_point);
    let tables = export::published_tables(&client, &opts.slot).await?;
    let mut reader = SnapshotReader::open(&opts.source, &created.snapshot, REQUEST_TIMEOUT * 4).await?;
    let mut sink = sinks.sink(Default::default());
    let ts_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut rows: u64 = 0;
    let mut table_rows = std::collections::BTreeMap::new();
    // One row held back, so that the snapshot's last row says "last", as Debezium's does.
    let mut held: Option<(u32, Row)> = None;
    for t in &tables {
        let rel = reader.relation(t).await?;
        sink.describe_table(&rel).await.map_err(apply_err)?;
        reader.start(&rel).await?;
        let mut n = 0u64;
        loop {
            let page = reader.page().await?;
            if page.is_empty() {
                break;
            }
            for row in page {
                n += 1;
                if let Some((id, r)) = held.replace((rel.id, row)) {
                    sink.snapshot_row(id, &r, &at, ts_us, false).await.map_err(apply_err)?;
                    rows += 1;
                }
            }
            sink.try_settle().await.map_err(apply_err)?;
        }
        table_rows.insert(format!("{}.{}", t.schema, t.name), n);
        tracing::info!(table = %t, rows = n, "table published");
    }
    if let Some((id, r)) = held.take() {
        sink.snapshot_row(id, &r, &at, ts_us, true).await.map_err(apply_err)?;
        rows += 1;
    }
    sink.flush().await.map_err(apply_err)?;
    reader.finish().await?;
    repl.close().await;
    let state = CaptureState {
        slot: opts.slot.clone(),
        snapshot_complete: true,
        consistent_point: created.consistent_point.to_string(),
        tables: tables.len() as u64,
        rows,
        table_rows,
        position: None,
        target_ddl: Vec::new(),
        snapshot_ts_ms: Some(ts_us.div_euclid(1000)),
        table_ddl: Default::default(),
    };
    write_state(&opts.kafka, &state).await?;
    tracing::info!(tables = tables.len(), rows, "snapshot published; streaming changes");
    Ok(state)
}

/// Runs a capture until `stop` turns true (Ok) or a definite error.
pub async fn run(opts: CaptureOptions, stop: watch::Receiver<bool>, progress: Arc<CdcProgress>) -> Result<(), PgError> {
    crate::sink::probe(&opts.kafka).await?;
    let db = opts.source.dbname().to_string();
    let sinks = KafkaSinks::connect(opts.kafka.clone(), Engine::Postgres { db })
        .await?
        .with_stats(opts.stats.clone());
    sinks.topics().ensure(&state_topic(&opts.kafka.prefix)).await?;
    let client = opts.source.connect("capture").await?;
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| PgError::query("reading the source's wal_level", e))?
        .get(0);
    if wal_level != "logical" {
        return Err(PgError::config(
            "starting change capture",
            format!("wal_level is {wal_level} on the source"),
            "set wal_level = logical and restart PostgreSQL",
        ));
    }
    let state = read_state(&opts.kafka).await?.filter(|s| s.slot == opts.slot);
    let slot_state = slot::slot_status(&client, &opts.slot).await?;
    // The state record the stream runs under: the one found, or the new snapshot's.
    let state = match (slot_state, state.filter(|s| s.snapshot_complete)) {
        (Some(_), Some(state)) => {
            tracing::info!(slot = %opts.slot, "resuming change capture from the slot");
            state
        }
        (None, Some(_)) => {
            return Err(PgError::config(
                "resuming change capture",
                format!(
                    "the capture's state topic says the snapshot was published, but slot {} is gone from the source: changes since then are lost",
                    opts.slot
                ),
                format!(
                    "start a new capture to another topic prefix (consumers must reload from its snapshot), or delete topic {} to take a new snapshot into the same topics",
                    state_topic(&opts.kafka.prefix)
                ),
            ))
        }
        (Some(active), None) => {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut active = active;
            while active {
                if std::time::Instant::now() > deadline {
                    return Err(PgError::config(
                        "starting change capture",
                        format!("slot {} is in use by another process", opts.slot),
                        "is another `ferry capture` running to the same prefix? stop it first",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                active = slot::slot_status(&client, &opts.slot).await?.unwrap_or(false);
            }
            tracing::warn!(slot = %opts.slot, "an earlier capture stopped during its snapshot: dropping its slot and taking the snapshot again");
            slot::drop_slot(&client, &opts.slot).await?;
            let tables = export::user_tables(&client).await?;
            snapshot(&opts, &sinks, &tables).await?
        }
        (None, None) => {
            let tables = export::user_tables(&client).await?;
            if tables.is_empty() {
                return Err(PgError::config(
                    "starting change capture",
                    format!("database {} has no tables to capture", opts.source.dbname()),
                    "create the tables first",
                ));
            }
            snapshot(&opts, &sinks, &tables).await?
        }
    };
    let known = state.table_rows.keys().chain(state.table_ddl.keys()).cloned().collect();
    let sinks = sinks.with_new_tables(Arc::new(Definitions {
        source: opts.source.clone(),
        kafka: opts.kafka.clone(),
        slot: opts.slot.clone(),
        major: introspect::server_info(&client).await?.major(),
        known: tokio::sync::Mutex::new(known),
    }));
    drop(client);
    let copts = CdcOptions {
        source: opts.source.clone(),
        slot: opts.slot.clone(),
        publication: opts.slot.clone(),
        max_batch: opts.max_batch,
        max_delay: opts.max_delay,
        commit_interval: Duration::from_millis(2),
        skip_dead_letters: opts.skip_dead_letters,
        pause: None,
        hold: None,
        stream_timeout: opts.stream_timeout,
        apply_timeout: cdc::DEFAULT_APPLY_TIMEOUT,
    };
    cdc::run(copts, &sinks, stop, progress).await
}

/// Records the definition of each table created on the source after the snapshot in the
/// capture's state record, before its first event goes out: `ferry apply` cannot reach the
/// source, and creates the table on the target from there (as a direct stream creates it from
/// pg_dump). Tables of the snapshot, and tables already recorded, are known at once.
struct Definitions {
    source: Endpoint,
    kafka: KafkaEndpoint,
    slot: String,
    /// The source's major version (which pg_dump).
    major: i32,
    /// `schema.table` of every table the state record has.
    known: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl Definitions {
    async fn record(&self, table: &ferry_core::TableName) -> Result<(), PgError> {
        let name = format!("{}.{}", table.schema, table.name);
        let mut known = self.known.lock().await;
        if known.contains(&name) {
            return Ok(());
        }
        let context = format!("recording the definition of {table}, created on the source mid-stream");
        let mut state = read_state(&self.kafka).await?.filter(|s| s.slot == self.slot).ok_or_else(|| {
            PgError::config(
                context.clone(),
                format!(
                    "topic {} has no state record of slot {}",
                    state_topic(&self.kafka.prefix),
                    self.slot
                ),
                "report this as a bug",
            )
        })?;
        if !state.table_rows.contains_key(&name) && !state.table_ddl.contains_key(&name) {
            let tools = PgTools::find(self.major, None).await.map_err(|e| {
                PgError::config(
                    context.clone(),
                    e.to_string(),
                    "install pg_dump of the source's version (postgresql-client) where Ferry runs",
                )
            })?;
            match ferry_postgres::schema::dump_table(&tools, &self.source, table).await {
                Ok(ddl) => {
                    state.table_ddl.insert(name.clone(), ddl);
                    write_state(&self.kafka, &state).await?;
                    tracing::info!(table = %table, "a table created on the source mid-stream: its definition is in the state record, for `ferry apply` to create");
                }
                // Created and dropped again before the stream got to it (a job's work table):
                // its changes are still published, and there is no definition to record. The
                // capture goes on (stopping would keep the source's WAL); an apply that meets
                // its topic stops naming the table, for the user to create it on the target.
                Err(e) if !self.exists(table).await? => {
                    tracing::warn!(table = %table, error = %e, "a table created on the source mid-stream is gone from it: its definition cannot be recorded, and `ferry apply` will ask for the table on the target");
                }
                Err(e) => {
                    return Err(PgError::config(
                        context.clone(),
                        e.to_string(),
                        "check that the capture's user may read the table's definition, then start again",
                    ))
                }
            }
        }
        known.insert(name);
        Ok(())
    }
}

impl Definitions {
    /// Whether `table` is on the source now.
    async fn exists(&self, table: &ferry_core::TableName) -> Result<bool, PgError> {
        let c = self.source.connect("capture").await?;
        c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
            .await
            .map(|r| r.get(0))
            .map_err(|e| PgError::query("looking for a new table on the source", e))
    }
}

impl crate::sink::NewTables for Definitions {
    fn described<'a>(&'a self, table: &'a ferry_core::TableName) -> crate::sink::BoxFuture<'a, Result<(), PgError>> {
        Box::pin(self.record(table))
    }
}

/// Drops a capture's slot and publication from the source (the topics stay).
pub async fn drop_capture(source: &Endpoint, slot_name: &str) -> Result<bool, PgError> {
    let client = source.connect("capture").await?;
    let had = slot::slot_status(&client, slot_name).await?.is_some();
    if had {
        slot::drop_slot(&client, slot_name).await?;
    }
    slot::drop_publication(&client, slot_name).await?;
    Ok(had)
}
