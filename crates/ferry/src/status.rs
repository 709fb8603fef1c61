//! `ferry status`: where a migration stands, read from the target's state schema and, when the
//! source is given, from the slot (lag and retained WAL).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_postgres::state::StateStore;
use ferry_postgres::Endpoint;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::check_cmd::{human_bytes, human_count};

/// Everything status shows. Served as JSON by `GET /api/status` (with the live fields filled)
/// and printed by `ferry status`. One shape for every source engine: for a MySQL/MariaDB source
/// the fields that have no meaning there (LSNs, WAL the slot retains) are null, and its
/// positions are in `snapshot_position`, `applied_position` and `source_position`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Migration id.
    pub migration_id: String,
    /// The source's engine: `postgresql` or `mysql` (MySQL and MariaDB).
    #[serde(default = "postgresql")]
    pub source_engine: String,
    /// Phase.
    pub phase: String,
    /// Slot (MySQL sources: `server_id N`, the replica server id the binlog stream uses).
    pub slot: String,
    /// Slot's consistent point (start of change capture); PostgreSQL sources only.
    pub consistent_lsn: Option<String>,
    /// Last source commit applied on the target; PostgreSQL sources only.
    pub applied_lsn: Option<String>,
    /// Where change capture started (the full load's snapshot), as a source position:
    /// `pg:0/16B3748` or `mysql:mysql-bin.000012:4567[/GTID set]`.
    #[serde(default)]
    pub snapshot_position: Option<String>,
    /// The position after the last source transaction applied on the target (same form).
    #[serde(default)]
    pub applied_position: Option<String>,
    /// The source's current end of log as last read by the running `ferry migrate` (same form).
    #[serde(default)]
    pub source_position: Option<String>,
    /// Source transactions applied.
    pub transactions_applied: i64,
    /// Row events applied, by operation.
    pub events_applied: EventCounts,
    /// Replication lag in seconds, 0 when caught up. From a running `ferry migrate`: the age of
    /// the oldest source WAL position (sampled once a second) the slot has not confirmed. Read
    /// from the databases alone: the age of the last applied commit while WAL is pending.
    pub lag_seconds: Option<f64>,
    /// Bytes of source WAL not yet confirmed by Ferry.
    pub lag_bytes: Option<i64>,
    /// Bytes of WAL the slot keeps on the source's disk.
    pub retained_wal_bytes: Option<i64>,
    /// Slot status on the source: whether Ferry is connected to it.
    pub slot_active: Option<bool>,
    /// Dead letters recorded.
    pub dead_letters: i64,
    /// Tables by state.
    pub tables: Vec<TableStatus>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Seconds since the migration entered its current phase.
    #[serde(default)]
    pub phase_seconds: Option<f64>,
    /// Phase changes, oldest first (the last 100).
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// The latest dead letters (up to 20), newest first.
    #[serde(default)]
    pub recent_dead_letters: Vec<DeadLetterRow>,
    /// The latest verification run of this migration, if any.
    #[serde(default)]
    pub last_verification: Option<serde_json::Value>,
    /// Rows compared by all verification runs of this migration.
    #[serde(default)]
    pub verify_rows_compared: i64,
    /// Differences found by all verification runs, per table.
    #[serde(default)]
    pub verify_differences: Vec<(String, i64)>,
    /// Figures only the running `ferry migrate` knows (absent when read from the database).
    #[serde(default)]
    pub live: Option<LiveFigures>,
    /// For a member of a `ferry apply --group`: every partition of its group, who holds it and
    /// how far behind the broker it is.
    #[serde(default)]
    pub kafka_partitions: Vec<ferry_postgres::state::KafkaPartitionRow>,
}

/// One phase change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    /// When (RFC 3339).
    pub at: String,
    /// Phase left (None for the first).
    pub from: Option<String>,
    /// Phase entered.
    pub to: String,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// One dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// When recorded (RFC 3339).
    pub at: String,
    /// The stream's ordering key of its transaction: the source commit LSN for PostgreSQL (for
    /// another engine the packed key the store orders by; `commit_position` says it plainly).
    pub commit_lsn: String,
    /// Where its transaction is in the source's own terms (`pg:0/16B3748`,
    /// `mysql:binlog.000012:4567/0-1-57`); None when recorded by a Ferry without the column.
    #[serde(default)]
    pub commit_position: Option<String>,
    /// Table.
    pub table: String,
    /// Operation.
    pub operation: String,
    /// Key.
    pub key: Option<String>,
    /// Error.
    pub error: String,
    /// Stepped over (`--skip-dead-letters`).
    pub skipped: bool,
}

/// What the running process adds to the stored state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveFigures {
    /// Seconds since `ferry migrate` started.
    pub uptime_seconds: f64,
    /// Change capture paused through the API.
    pub paused: bool,
    /// Rows copied per second (last 5 s).
    pub rows_per_second: f64,
    /// Bytes copied per second (last 5 s).
    pub bytes_per_second: f64,
    /// Row changes applied per second (last 5 s).
    pub changes_per_second: f64,
    /// Source transactions applied per second (last 5 s).
    pub transactions_per_second: f64,
    /// Apply sessions that failed and were retried, and rejected changes.
    pub apply_errors: u64,
    /// The verification running now: run id, rows read, differences so far.
    pub verification_running: Option<(i64, u64, u64)>,
    /// One sample per second, oldest first (the last 15 minutes).
    pub history: Vec<Sample>,
    /// Reverse replication (target to source), after a cutover.
    #[serde(default)]
    pub reverse: Option<ReverseFigures>,
    /// The wire-protocol proxy, when one runs.
    #[serde(default)]
    pub proxy: Option<ProxyFigures>,
    /// The last cutover or rollback: outcome, pause, steps.
    #[serde(default)]
    pub last_switch: Option<serde_json::Value>,
    /// Change capture's stream: starting, streaming, reconnecting, paused, held or stopped.
    #[serde(default)]
    pub stream_state: Option<String>,
    /// Why the stream is reconnecting (the last session's error).
    #[serde(default)]
    pub stream_error: Option<String>,
    /// Seconds since the last message from the source's WAL sender.
    #[serde(default)]
    pub source_message_age_seconds: Option<f64>,
    /// Source position whose changes are flushed on the target: what the slot was told.
    #[serde(default)]
    pub flushed_lsn: Option<String>,
    /// Age in seconds of the figures read from the databases (the state schema, the slot);
    /// above a few seconds they are stale, and `sample_error` says why.
    #[serde(default)]
    pub sample_age_seconds: f64,
    /// Why the last read of the databases failed.
    #[serde(default)]
    pub sample_error: Option<String>,
    /// Seconds since the source's WAL position was last read: the lag is computed against it,
    /// so a large value means the lag may be understated.
    #[serde(default)]
    pub source_sample_age_seconds: Option<f64>,
    /// The change stream runs through Kafka (`ferry migrate --via kafka://`).
    #[serde(default)]
    pub kafka: Option<KafkaFigures>,
}

/// A change stream through Kafka.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KafkaFigures {
    /// The cluster and topic prefix (no secret).
    pub cluster: String,
    /// Partitions the apply reads.
    pub partitions: usize,
    /// Records in them the apply has not read yet (as of the last high watermarks, every 5 s).
    pub lag_records: i64,
}

/// Reverse replication after a cutover.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReverseFigures {
    /// Last target commit applied on the source.
    pub applied_lsn: String,
    /// Target WAL not yet applied on the source.
    pub unapplied_bytes: Option<i64>,
    /// Age of the oldest target write not yet on the source.
    pub lag_seconds: Option<f64>,
    /// Transactions applied to the source by this process.
    pub transactions: u64,
    /// Row changes applied to the source by this process.
    pub changes: u64,
    /// Reverse sessions that failed (and were retried) and rejected changes.
    pub errors: u64,
}

/// The proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyFigures {
    /// Where applications connect.
    pub listen: String,
    /// Where it forwards now: "source" or "target".
    pub upstream: String,
    /// Client sessions.
    pub sessions: usize,
    /// Sessions inside a transaction or with a request in flight.
    pub busy_sessions: usize,
    /// Requests held now.
    pub held_requests: usize,
    /// Switches done since start.
    pub switches: u64,
    /// Whether the target may take shifted reads and shadow traffic now (its lag under
    /// --max-read-lag).
    #[serde(default)]
    pub target_fit: bool,
    /// The read endpoint, when there is one.
    #[serde(default)]
    pub reads: Option<ReadFigures>,
    /// Shadow traffic, once it has been turned on.
    #[serde(default)]
    pub shadow: Option<ShadowFigures>,
}

/// Shadow traffic in short (`GET /api/shadow` has the report).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShadowFigures {
    pub sample_percent: f64,
    /// Sampled statements run on the target, in how many fingerprints.
    pub statements: u64,
    pub fingerprints: usize,
    pub mismatches: u64,
    pub target_errors: u64,
    pub dropped: u64,
    /// Why shadowing is suspended, if it is.
    pub suspended: Option<String>,
}

/// The proxy's read endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadFigures {
    pub listen: String,
    /// Share of read sessions the target is to serve (`ferry shift --reads`).
    pub share_percent: u8,
    /// Whether the target may serve reads now (its lag under --max-read-lag).
    pub target_ready: bool,
    /// Read sessions, and how many of them the target serves.
    pub sessions: usize,
    pub on_target: usize,
    /// Sessions moved between source and target, and moves that failed (the session stayed).
    pub moves: u64,
    pub move_failures: u64,
    /// Requests of read sessions served by each side since start.
    pub requests_source: u64,
    pub requests_target: u64,
    /// Statements refused because they would have made transactions read-write.
    pub refused_statements: u64,
}

/// One per-second sample, for charts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Unix time, milliseconds.
    pub t: u64,
    /// Rows copied so far (all tables).
    pub rows_copied: i64,
    /// Bytes copied so far.
    pub bytes_copied: i64,
    /// Row changes applied so far.
    pub changes_applied: i64,
    /// Transactions applied so far.
    pub transactions_applied: i64,
    /// Lag in seconds, when known.
    pub lag_seconds: Option<f64>,
    /// Lag in bytes, when known.
    pub lag_bytes: Option<i64>,
}

/// Row events applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventCounts {
    /// Inserts.
    pub insert: i64,
    /// Updates.
    pub update: i64,
    /// Deletes.
    pub delete: i64,
    /// Truncates.
    pub truncate: i64,
}

/// One table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStatus {
    /// Name.
    pub table: String,
    /// State.
    pub state: String,
    /// Rows copied by the full load.
    pub rows_copied: i64,
    /// Estimated rows.
    pub rows_estimate: Option<i64>,
    /// Bytes copied (COPY format).
    #[serde(default)]
    pub bytes_copied: i64,
}

fn postgresql() -> String {
    ferry_postgres::state::ENGINE_POSTGRESQL.into()
}

/// Whether the status is of a migration from a MySQL/MariaDB source.
pub fn is_mysql(s: &Status) -> bool {
    s.source_engine == ferry_postgres::state::ENGINE_MYSQL
}

/// Adds to the status of a MySQL migration what only `ferry.mysql_state` records (`extra`:
/// `MyState::status_json`): the last verification, a schema change the stream stopped before.
pub fn add_mysql(s: &mut Status, extra: Option<&serde_json::Value>) {
    let Some(x) = extra else { return };
    if let Some(n) = x["verify_differences"].as_i64() {
        s.last_verification = Some(serde_json::json!({
            "id": null,
            "status": if n == 0 { "identical" } else { "different" },
            "actor": "ferry verify",
            "finished_at": x["verified_at"],
            "differences": n,
        }));
    }
    if !x["blocked_at"].is_null() {
        let b = &x["blocked_at"];
        let (what, fix) = ferry_mysql::state::blocked_text(b);
        s.warnings.push(format!(
            "the stream stopped before {what} at {}:{}: {}; {fix}",
            b["file"].as_str().unwrap_or("-"),
            b["pos"],
            b["query"].as_str().unwrap_or("-")
        ));
    }
}

/// Reads the status. `wal_warn` is the retained-WAL size past which status warns.
pub async fn read(target: &Endpoint, source: Option<&Endpoint>, id: Option<&str>, schema: &str, wal_warn: i64) -> anyhow::Result<Status> {
    let t = target.connect("status").await?;
    let s = match source {
        Some(src) => Some(src.connect("status").await.context("reading the slot on the source")?),
        None => None,
    };
    read_with(&t, s.as_ref(), &target.describe(), id, schema, wal_warn).await
}

/// Reads the status over open connections (`where_` names the target in errors).
pub async fn read_with(
    t: &Client,
    source: Option<&Client>,
    where_: &str,
    id: Option<&str>,
    schema: &str,
    wal_warn: i64,
) -> anyhow::Result<Status> {
    let store = StateStore::new(schema);
    if !store.has_table(t, "migrations").await? {
        anyhow::bail!(
            "no Ferry migration on {}: schema {schema} has no migrations table (wrong target, or --state-schema?)",
            where_
        );
    }
    let rows = store.migration_summaries(t, id).await?;
    let r = match rows.len() {
        0 => anyhow::bail!("no migration {} recorded on {}", id.unwrap_or("at all"), where_),
        1 => &rows[0],
        _ if id.is_none() => anyhow::bail!(
            "{} migrations are recorded on the target; name one with --migration-id ({})",
            rows.len(),
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
        _ => &rows[0],
    };
    let migration_id = r.id.clone();
    let slot = r.slot_name.clone();
    let consistent_lsn = r.consistent_lsn.clone();
    let applied_lsn = r.applied_lsn.clone();
    let source_engine = r.source_engine.clone();
    let mysql = source_engine == ferry_postgres::state::ENGINE_MYSQL;
    // A PostgreSQL migration records LSNs; a position's text form says which engine it is of.
    let as_position = |stored: Option<String>, lsn: Option<&str>| {
        stored.or_else(|| {
            lsn.and_then(|l| l.parse::<ferry_core::Lsn>().ok())
                .map(|l| ferry_core::SourcePosition::Postgres(l).to_string())
        })
    };
    let mut status = Status {
        phase: r.phase.clone(),
        slot: slot.clone(),
        snapshot_position: as_position(r.snapshot_position.clone(), consistent_lsn.as_deref()),
        applied_position: as_position(r.applied_position.clone(), applied_lsn.as_deref()),
        source_position: None,
        source_engine,
        consistent_lsn,
        applied_lsn: applied_lsn.clone(),
        transactions_applied: r.applied_txns,
        events_applied: EventCounts {
            insert: r.events_insert,
            update: r.events_update,
            delete: r.events_delete,
            truncate: r.events_truncate,
        },
        lag_seconds: None,
        lag_bytes: None,
        retained_wal_bytes: None,
        slot_active: None,
        dead_letters: r.dead_letters,
        tables: Vec::new(),
        warnings: Vec::new(),
        phase_seconds: None,
        last_verification: None,
        verify_rows_compared: 0,
        verify_differences: Vec::new(),
        transitions: Vec::new(),
        recent_dead_letters: Vec::new(),
        live: None,
        kafka_partitions: Vec::new(),
        migration_id: migration_id.clone(),
    };
    let since_commit = r.since_commit_seconds;
    status.tables = store
        .table_summaries(t, &migration_id)
        .await?
        .into_iter()
        .map(|row| TableStatus {
            table: row.table,
            state: row.state,
            rows_copied: row.rows_copied,
            rows_estimate: row.rows_estimate,
            bytes_copied: row.bytes_copied,
        })
        .collect();
    // Older state schemas (before transitions and verification were recorded) lack the tables.
    if store.has_table(t, "transitions").await? {
        status.phase_seconds = store.phase_seconds(t, &migration_id).await?;
        status.transitions = store
            .transitions(t, &migration_id)
            .await?
            .into_iter()
            .map(|row| Transition {
                at: row.at,
                from: row.from,
                to: row.to,
                actor: row.actor,
                reason: row.reason,
            })
            .collect();
    }
    if store.has_table(t, "verify_runs").await? {
        status.last_verification = store.last_verify_run_json(t, &migration_id).await?;
        status.verify_rows_compared = store.verify_rows_compared(t, &migration_id).await?;
        status.verify_differences = store.verify_differences_by_table(t, &migration_id).await?;
    }
    status.recent_dead_letters = store
        .recent_dead_letters(t, &migration_id, 20)
        .await?
        .into_iter()
        .map(|row| DeadLetterRow {
            at: row.at,
            commit_lsn: row.commit_lsn,
            table: row.table,
            operation: row.operation,
            key: row.key,
            error: row.error,
            skipped: row.skipped,
            commit_position: row.commit_position,
        })
        .collect();
    if let Some(s) = source.filter(|_| !mysql) {
        match ferry_postgres::slot::slot_lag(s, &slot).await? {
            Some(row) => {
                status.slot_active = Some(row.active);
                status.lag_bytes = row.lag_bytes;
                status.retained_wal_bytes = row.retained_bytes;
                // Caught up when nothing is pending; otherwise the age of the last applied commit.
                status.lag_seconds = match status.lag_bytes {
                    Some(b) if b <= 0 => Some(0.0),
                    _ => since_commit,
                };
                if status.retained_wal_bytes.unwrap_or(0) > wal_warn {
                    status.warnings.push(format!(
                        "slot {slot} keeps {} of WAL on the source (over {}): keep `ferry migrate` running, or abandon the migration with `ferry abandon` to free it",
                        human_bytes(status.retained_wal_bytes.unwrap_or(0)),
                        human_bytes(wal_warn)
                    ));
                }
                if status.phase == "cdc" && !status.slot_active.unwrap_or(false) {
                    status.warnings.push(format!(
                        "nothing is consuming slot {slot}: `ferry migrate` is not running, so WAL accumulates on the source"
                    ));
                }
            }
            None => status.warnings.push(format!("slot {slot} does not exist on the source")),
        }
    }
    status.kafka_partitions = store.kafka_partitions(t, &migration_id).await?;
    if status.dead_letters > 0 {
        status.warnings.push(format!(
            "{} dead letter(s): changes the target rejected, in {schema}.dead_letters",
            status.dead_letters
        ));
    }
    Ok(status)
}

/// Status for humans.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let mysql = is_mysql(s);
    o.push_str(&format!(
        "Migration {}{}: phase {}\n",
        s.migration_id,
        if mysql { " (MySQL/MariaDB source)" } else { "" },
        s.phase
    ));
    if mysql {
        o.push_str(&format!(
            "  binlog stream as replica {} from the snapshot at {}, applied up to {}{}\n",
            s.slot.replace('_', " "),
            s.snapshot_position.as_deref().unwrap_or("-"),
            s.applied_position.as_deref().unwrap_or("-"),
            s.source_position
                .as_deref()
                .map(|p| format!("; the source's binlog is at {p}"))
                .unwrap_or_default()
        ));
    } else {
        o.push_str(&format!(
            "  slot {} (consistent point {}), applied up to {}\n",
            s.slot,
            s.consistent_lsn.as_deref().unwrap_or("-"),
            s.applied_lsn.as_deref().unwrap_or("-")
        ));
    }
    o.push_str(&format!(
        "  applied: {} transactions; {} inserts, {} updates, {} deletes, {} truncates\n",
        human_count(s.transactions_applied),
        human_count(s.events_applied.insert),
        human_count(s.events_applied.update),
        human_count(s.events_applied.delete),
        human_count(s.events_applied.truncate)
    ));
    let turned = matches!(s.phase.as_str(), "cut_over" | "rollback");
    let fmt_secs = |x: Option<f64>| x.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "- s".into());
    match (s.lag_bytes, s.lag_seconds) {
        _ if mysql && turned => o.push_str("  stream: stopped at the cutover (writes go to the target)\n"),
        (Some(b), secs_) if mysql => o.push_str(&format!(
            "  lag: {} of the source's binlog not applied, {}; {}\n",
            human_bytes(b.max(0)),
            fmt_secs(secs_),
            if s.slot_active == Some(true) {
                "ferry is streaming"
            } else {
                "nothing is streaming"
            }
        )),
        (None, Some(x)) if mysql => o.push_str(&format!(
            "  lag: {} (bytes behind are counted within one binlog file; the stream and the source's end are in different files)\n",
            fmt_secs(Some(x))
        )),
        (None, None) if mysql => {
            o.push_str("  lag: shown by a running ferry migrate's API (--listen), or ferry status --source mysql://... --target ...\n")
        }
        (Some(_), _) if turned => {
            o.push_str("  forward stream: stopped at the cutover (writes go to the target); its slot is kept for a rollback\n")
        }
        (Some(b), secs) => o.push_str(&format!(
            "  lag: {} behind the source, {}; slot retains {} of WAL; {}\n",
            human_bytes(b.max(0)),
            secs.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "- s".into()),
            human_bytes(s.retained_wal_bytes.unwrap_or(0)),
            if s.slot_active == Some(true) {
                "ferry is streaming"
            } else {
                "nothing is streaming"
            }
        )),
        (None, _) => o.push_str("  lag: pass --source to measure lag and retained WAL\n"),
    }
    if let Some(l) = &s.live {
        if let Some(state) = &l.stream_state {
            o.push_str(&format!(
                "  stream: {state}{}{}{}\n",
                l.source_message_age_seconds
                    .map(|a| format!("; last message from the source {a:.1} s ago"))
                    .unwrap_or_default(),
                l.flushed_lsn
                    .as_deref()
                    .map(|f| format!("; durable on the target up to {f}"))
                    .unwrap_or_default(),
                l.stream_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default(),
            ));
        }
        if let Some(k) = &l.kafka {
            o.push_str(&format!(
                "  through Kafka: {}; {} record(s) not yet read in {} partition(s)\n",
                k.cluster, k.lag_records, k.partitions
            ));
        }
        if l.sample_age_seconds > 3.0 || l.sample_error.is_some() {
            o.push_str(&format!(
                "  STALE: figures from the databases are {:.0} s old{}\n",
                l.sample_age_seconds,
                l.sample_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        if let Some(a) = l.source_sample_age_seconds.filter(|a| *a > 3.0) {
            o.push_str(&format!(
                "  STALE: the source's WAL position was last read {a:.0} s ago; the lag shown may be understated\n"
            ));
        }
    }
    o.push_str(&format!("  dead letters: {}\n", s.dead_letters));
    if let Some(r) = s.live.as_ref().and_then(|l| l.reverse.as_ref()) {
        o.push_str(&format!(
            "  reverse replication (target to source): applied up to {}, {} behind, {}; {} transactions, {} changes, {} errors\n",
            r.applied_lsn,
            r.unapplied_bytes.map(|b| human_bytes(b.max(0))).unwrap_or_else(|| "-".into()),
            r.lag_seconds.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "- s".into()),
            human_count(r.transactions as i64),
            human_count(r.changes as i64),
            r.errors
        ));
    }
    if let Some(p) = s.live.as_ref().and_then(|l| l.proxy.as_ref()) {
        o.push_str(&format!(
            "  proxy on {}: {} session(s) to the {}, {} busy, {} switch(es)\n",
            p.listen, p.sessions, p.upstream, p.busy_sessions, p.switches
        ));
    }
    // A `ferry apply --group` member: every member of its group, with its partitions and lag.
    let mut groups: std::collections::BTreeMap<(&str, &str), (usize, i64, f64, bool)> = Default::default();
    for p in &s.kafka_partitions {
        let e = groups
            .entry((p.group.as_str(), p.member.as_str()))
            .or_insert((0, 0, f64::MAX, true));
        e.0 += 1;
        e.1 += p.lag_records.unwrap_or(0);
        e.2 = e.2.min(p.idle_seconds);
        e.3 &= p.lag_records.is_some();
    }
    for ((group, member), (parts, lag, idle, known)) in &groups {
        if *member == ferry_kafka::offsets::SINGLE_APPLIER {
            o.push_str(&format!(
                "  Kafka apply {group}: {parts} partition(s), their offsets recorded with the changes\n"
            ));
            continue;
        }
        o.push_str(&format!(
            "  apply group {group}, member {member}: {parts} partition(s), {}{}\n",
            if *known {
                format!("{lag} record(s) behind")
            } else {
                "lag not recorded yet".to_string()
            },
            if *lag > 0 && *idle > 60.0 {
                format!("; idle {idle:.0} s with records waiting (is the member running?)")
            } else {
                String::new()
            }
        ));
    }
    if let Some(l) = &s.live {
        o.push_str(&format!(
            "  now: {:.0} rows/s copied, {:.0} changes/s and {:.0} transactions/s applied; {} apply errors{}\n",
            l.rows_per_second,
            l.changes_per_second,
            l.transactions_per_second,
            l.apply_errors,
            if l.paused { "; change capture PAUSED" } else { "" }
        ));
    }
    if let Some(v) = s.last_verification.as_ref().filter(|v| v["id"].is_null()) {
        // A MySQL source's verification (ferry verify --source ... --target ...) records its result only.
        o.push_str(&format!(
            "  last verification: {} ({} differences), finished {}\n",
            v["status"].as_str().unwrap_or("-"),
            v["differences"],
            v["finished_at"].as_str().unwrap_or("-")
        ));
    } else if let Some(v) = &s.last_verification {
        o.push_str(&format!(
            "  last verification: run {} {} ({} rows compared, {} differences{})\n",
            v["id"],
            v["status"].as_str().unwrap_or("-"),
            v["rows_compared"],
            v["differences"],
            v["source_lsn"]
                .as_str()
                .map(|l| format!(", at source position {l}"))
                .unwrap_or_default()
        ));
    }
    if let Some(t) = s.transitions.last() {
        o.push_str(&format!(
            "  last phase change: {} {} -> {} by {}: {}\n",
            t.at,
            t.from.as_deref().unwrap_or("-"),
            t.to,
            t.actor,
            t.reason
        ));
    }
    let copied = s.tables.iter().filter(|t| t.state == "copied").count();
    o.push_str(&format!("  tables: {copied} of {} copied\n", s.tables.len()));
    for t in s.tables.iter().filter(|t| t.state != "copied") {
        o.push_str(&format!(
            "    {:<40} {:<8} {} of ~{} rows\n",
            t.table,
            t.state,
            human_count(t.rows_copied),
            human_count(t.rows_estimate.unwrap_or(-1))
        ));
    }
    for w in &s.warnings {
        o.push_str(&format!("  WARNING: {w}\n"));
    }
    o
}

/// Reads the status from a running `ferry migrate`'s API (`GET /api/status`), with the token
/// found by [`ApiClient::new`]'s rules.
pub async fn fetch(api: &str) -> anyhow::Result<Status> {
    fetch_with(&ApiClient::new(api, None, None)?).await
}

/// Reads the status through `api`.
pub async fn fetch_with(api: &ApiClient) -> anyhow::Result<Status> {
    let (code, body) = api.request("GET", "/api/status").await?;
    if code != 200 {
        anyhow::bail!("the Ferry API at {} answered {code}: {}", api.base, api_error(&body));
    }
    serde_json::from_slice(&body).with_context(|| {
        format!(
            "the Ferry API at {} sent a status this ferry cannot read (another version?)",
            api.base
        )
    })
}

/// The `error` and `fix` of an API refusal, or its body.
pub fn api_error(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v["error"].is_string() => format!(
            "{}{}",
            v["error"].as_str().unwrap_or(""),
            v["fix"].as_str().map(|f| format!("; {f}")).unwrap_or_default()
        ),
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

/// Where a URL points: scheme, host, port, path; parsed once, at startup.
#[derive(Clone, Debug)]
struct Target {
    https: bool,
    /// `host:port` as given (the Host header).
    authority: String,
    /// The host alone (TLS server name), brackets kept for IPv6.
    host: String,
    /// Path and query.
    path: String,
    /// Decoded `user:password` of the URL, sent as basic authentication.
    userinfo: Option<String>,
}

impl Target {
    fn parse(url: &str, what: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{what} {} is not a URL such as https://host:port/path", redact(url)))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "{what} {}: unknown scheme {other:?} (use http:// or https://)",
                    redact(url)
                ))
            }
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], &rest[i..]),
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = path.split('#').next().unwrap_or("");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(percent_decode(u)), h),
            None => (None, authority),
        };
        let default = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("{what} {}: unclosed [ in the host", redact(url)))?;
            let port = match &v6[end + 1..] {
                "" => default,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("{what} {}: bad port", redact(url)))?,
            };
            (format!("[{}]", &v6[..end]), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse::<u16>().map_err(|_| format!("{what} {}: bad port {p:?}", redact(url)))?,
                ),
                None => (hostport.to_string(), default),
            }
        };
        if host.is_empty() || host.contains(['/', ' ', '\\']) {
            return Err(format!("{what} {}: no host", redact(url)));
        }
        if path.contains([' ', '\r', '\n']) {
            return Err(format!("{what} {}: spaces and line breaks must be percent-encoded", redact(url)));
        }
        if https {
            ferry_tls::server_name(&host).map_err(|e| format!("{what} {}: {e}", redact(url)))?;
        }
        Ok(Target {
            https,
            authority: format!("{host}:{port}"),
            host,
            path,
            userinfo,
        })
    }

    /// Whether the host is this machine's loopback (`localhost`, 127.0.0.0/8, ::1).
    fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn port(&self) -> u16 {
        self.authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)
    }
}

/// `url` with its user information, path and query masked (they may hold a secret: Slack-style
/// webhooks keep theirs in the path): `https://****@hooks.example.com:443/****`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "****".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, h)) => format!("****@{h}"),
        None => authority.to_string(),
    };
    let tail = if tail.is_empty() || tail == "/" { tail } else { "/****" };
    format!("{scheme}://{authority}{tail}")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A client of a running `ferry migrate`'s API: where it is, the token, TLS.
#[derive(Debug)]
pub struct ApiClient {
    /// The URL given (`http://host:port` or `https://host:port`).
    pub base: String,
    target: Target,
    /// Bearer token sent with every request.
    pub token: Option<ferry_core::Secret>,
    tls: Option<Arc<ferry_tls::rustls::ClientConfig>>,
}

impl ApiClient {
    /// `base` is the API's URL. The token: `token_file`, else `FERRY_API_TOKEN`, else, for a
    /// loopback URL, the file a `ferry migrate` on this host wrote for that port
    /// (`~/.ferry/api-PORT.token`), if there is one. `ca`: the CA file an https:// API's
    /// certificate must chain to (default: the system's trust store).
    pub fn new(base: &str, token_file: Option<&Path>, ca: Option<&Path>) -> anyhow::Result<Self> {
        let target = Target::parse(base.trim_end_matches('/'), "--api").map_err(crate::exit::UsageError)?;
        let token = match crate::api_token(token_file)? {
            Some(t) => Some(t),
            None if target.is_loopback() => {
                let path = crate::server::auto_token_path(target.port()).ok();
                match path.filter(|p| p.exists()) {
                    Some(p) => Some(ferry_core::Secret::new(
                        crate::server::read_token_file(&p).map_err(|e| crate::exit::UsageError(format!("the API token: {e:#}")))?,
                    )),
                    None => None,
                }
            }
            None => None,
        };
        let tls = if target.https {
            let roots = match ca {
                Some(f) => ferry_tls::Roots::File(f.to_path_buf()),
                None => ferry_tls::Roots::System,
            };
            let o = ferry_tls::ClientOptions {
                verify: ferry_tls::Verify::Full,
                roots: Some(roots),
                alpn: vec![b"http/1.1".to_vec()],
                ..Default::default()
            };
            Some(ferry_tls::client_config(&o).map_err(|e| crate::exit::UsageError(format!("--api-ca: {e}")))?)
        } else {
            if ca.is_some() {
                return Err(crate::exit::UsageError(format!("--api-ca is for https:// APIs, and {base} is http://")).into());
            }
            None
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            target,
            token,
            tls,
        })
    }

    /// One request; `path` includes the query.
    pub async fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let help = format!(
            "cannot reach the Ferry API at {}: is `ferry migrate` running with --listen {}? To read the state without it, pass --target URL",
            self.base, self.target.authority
        );
        // A cutover or rollback may wait for the lag to drop (--catch-up-timeout) before its pause.
        send(
            method,
            &self.target,
            path,
            self.token.as_ref().map(|t| t.expose()),
            None,
            self.tls.as_ref(),
            &help,
            Duration::from_secs(15 * 60),
        )
        .await
    }
}

/// `ferry pause` / `ferry resume`: asks the running `ferry migrate`.
pub async fn pause_cmd(args: &crate::cli::ApiArgs, paused: bool) -> anyhow::Result<i32> {
    let api = ApiClient::new(&args.api, args.api_token_file.as_deref(), args.api_ca.as_deref())?;
    let (code, body) = api.request("POST", if paused { "/api/pause" } else { "/api/resume" }).await?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
    }
    match code {
        200 => {
            if !args.json {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let what = if paused { "paused" } else { "resumed" };
                if v["changed"] == true {
                    println!("change capture {what}");
                } else {
                    println!("change capture was {what} already");
                }
            }
            Ok(crate::exit::OK)
        }
        401 | 403 => Err(crate::exit::UsageError(format!("the Ferry API at {} refused ({code}): {}", api.base, api_error(&body))).into()),
        409 => {
            eprintln!("ferry: {}", api_error(&body));
            Ok(crate::exit::FOUND_PROBLEM)
        }
        _ => anyhow::bail!("the Ferry API at {} answered {code}: {}", api.base, api_error(&body)),
    }
}

/// `ferry shift --reads N%`: sets the read endpoint's share through the API.
pub async fn shift_cmd(args: &crate::cli::ShiftArgs) -> anyhow::Result<i32> {
    let a = &args.api;
    let api = ApiClient::new(&a.api, a.api_token_file.as_deref(), a.api_ca.as_deref())?;
    let (code, body) = api.request("POST", &format!("/api/shift?reads={}", args.reads)).await?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&body));
    }
    match code {
        200 => {
            if !a.json {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                println!("reads: {}% of read sessions to the target (was {}%)", v["reads"], v["previous"]);
                match v["target_ready"].as_bool() {
                    Some(true) => println!("the target serves them now (lag {:.3} s)", v["lag_seconds"].as_f64().unwrap_or(0.0)),
                    _ => println!(
                        "the target does not serve reads now ({}); they stay on the source until it does",
                        v["why_not"].as_str().unwrap_or("its lag is above --max-read-lag")
                    ),
                }
            }
            Ok(crate::exit::OK)
        }
        401 | 403 => Err(crate::exit::UsageError(format!("the Ferry API at {} refused ({code}): {}", api.base, api_error(&body))).into()),
        409 => {
            eprintln!("ferry: {}", api_error(&body));
            Ok(crate::exit::FOUND_PROBLEM)
        }
        _ => anyhow::bail!("the Ferry API at {} answered {code}: {}", api.base, api_error(&body)),
    }
}

/// Where to POST a JSON document after a switch, checked at startup: http:// or https://
/// (verified against the system's CAs, or a CA file), user information sent as basic
/// authentication. Shown (logs, errors) with its secrets masked.
#[derive(Clone)]
pub struct Webhook {
    url: String,
    target: Target,
    tls: Option<Arc<ferry_tls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Webhook({})", redact(&self.url))
    }
}

impl std::fmt::Display for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

/// How long a webhook may take in all: connect, TLS handshake, request and answer.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl Webhook {
    /// Parses `url` and, for https://, builds the TLS client (`ca`: a CA file instead of the
    /// system's trust store).
    pub fn new(url: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let target = Target::parse(url, "--webhook").map_err(crate::exit::UsageError)?;
        let tls = if target.https {
            let o = ferry_tls::ClientOptions {
                verify: ferry_tls::Verify::Full,
                roots: Some(match ca {
                    Some(f) => ferry_tls::Roots::File(f.to_path_buf()),
                    None => ferry_tls::Roots::System,
                }),
                alpn: vec![b"http/1.1".to_vec()],
                ..Default::default()
            };
            Some(ferry_tls::client_config(&o).map_err(|e| crate::exit::UsageError(format!("--webhook-ca: {e}")))?)
        } else {
            if ca.is_some() {
                return Err(crate::exit::UsageError("--webhook-ca is for https:// webhooks".into()).into());
            }
            None
        };
        Ok(Self {
            url: url.to_string(),
            target,
            tls,
        })
    }

    /// POSTs `body`; the status code, within [`WEBHOOK_TIMEOUT`] in all.
    pub async fn post(&self, body: &serde_json::Value) -> anyhow::Result<u16> {
        let help = format!("cannot reach the webhook at {self}");
        let json = serde_json::to_vec(body)?;
        let basic = self.target.userinfo.as_ref().map(|u| format!("Basic {}", base64(u.as_bytes())));
        Ok(send_auth(
            "POST",
            &self.target,
            &self.target.path,
            basic.as_deref(),
            Some(json),
            self.tls.as_ref(),
            &help,
            WEBHOOK_TIMEOUT,
        )
        .await
        .map_err(|e| anyhow::anyhow!("webhook {self}: {e:#}"))?
        .0)
    }
}

impl Webhook {
    /// POSTs `body` announcing a `what` (cutover, rollback, switch) and logs the answer. Never
    /// fails: the switch is done whatever the webhook says (at most [`WEBHOOK_TIMEOUT`]).
    pub async fn announce(&self, what: &str, body: &serde_json::Value) {
        match self.post(body).await {
            Ok(code) if (200..300).contains(&code) => tracing::info!(url = %self, code, "{what} announced to the webhook"),
            Ok(code) => tracing::warn!(url = %self, code, "the webhook answered with an error"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not reach the webhook"),
        }
    }

    /// [`Self::announce`] in the background: the switch's answer (and whatever lock it holds)
    /// never waits for the webhook.
    pub fn announce_in_background(&self, what: &'static str, body: serde_json::Value) {
        let hook = self.clone();
        tokio::spawn(async move { hook.announce(what, &body).await });
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
    method: &str,
    target: &Target,
    path: &str,
    token: Option<&str>,
    json: Option<Vec<u8>>,
    tls: Option<&Arc<ferry_tls::rustls::ClientConfig>>,
    help: &str,
    deadline: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    send_auth(method, target, path, auth.as_deref(), json, tls, help, deadline).await
}

#[allow(clippy::too_many_arguments)]
async fn send_auth(
    method: &str,
    target: &Target,
    path: &str,
    auth: Option<&str>,
    json: Option<Vec<u8>>,
    tls: Option<&Arc<ferry_tls::rustls::ClientConfig>>,
    help: &str,
    deadline: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let exchange = exchange(method, target, path, auth, json, tls, help, deadline.min(Duration::from_secs(10)));
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {} s", target.authority, deadline.as_secs()))?
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    method: &str,
    target: &Target,
    path: &str,
    auth: Option<&str>,
    json: Option<Vec<u8>>,
    tls: Option<&Arc<ferry_tls::rustls::ClientConfig>>,
    help: &str,
    connect_timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let help = || help.to_string();
    let addr = target.authority.as_str();
    let secs = connect_timeout.as_secs();
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {secs} s"))
        .with_context(help)?
        .with_context(help)?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host_header(target));
    if let Some(a) = auth {
        req = req.header(hyper::header::AUTHORIZATION, a);
    }
    if json.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(json.unwrap_or_default())))
        .context("building the request")?;
    match tls {
        None => exchange_on(stream, req, &help()).await,
        Some(cfg) => {
            let stream = tokio::time::timeout(connect_timeout, ferry_tls::connect(cfg, &target.host, stream))
                .await
                .map_err(|_| anyhow::anyhow!("no TLS handshake within {secs} s"))
                .with_context(help)?
                .map_err(|e| {
                    let why = ferry_tls::explain(&e, &target.host)
                        .unwrap_or_else(|| format!("TLS handshake failed ({e}); if this address serves plain HTTP, use http://"));
                    anyhow::anyhow!("{why}")
                })
                .with_context(help)?;
            exchange_on(stream, req, &help()).await
        }
    }
}

/// The Host header: the authority without the scheme's default port.
fn host_header(t: &Target) -> String {
    let default = if t.https { ":443" } else { ":80" };
    t.authority.strip_suffix(default).unwrap_or(&t.authority).to_string()
}

async fn exchange_on<S>(stream: S, req: hyper::Request<http_body_util::Full<bytes::Bytes>>, help: &str) -> anyhow::Result<(u16, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let help = || help.to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .with_context(help)?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.with_context(help)?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.with_context(help)?.to_bytes().to_vec();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        let parse = |s: &str| Target::parse(s, "webhook").map(|_| ());
        assert!(parse("ftp://x/y").unwrap_err().contains("unknown scheme"));
        assert!(parse("not a url").is_err());
        assert!(parse("http:///path").unwrap_err().contains("no host"));
        assert!(parse("https://h:99999/").unwrap_err().contains("bad port"));
        assert!(!parse("gopher://u:hunter2@h/?t=zzz").unwrap_err().contains("hunter2"));
        let t = Target::parse("https://u:p%40ss@hooks.example.com/services/SECRET?key=abc", "w").unwrap();
        assert_eq!(t.authority, "hooks.example.com:443");
        assert_eq!(t.path, "/services/SECRET?key=abc");
        assert_eq!(t.userinfo.as_deref(), Some("u:p@ss"));
        let r = redact("https://u:p@hooks.example.com/services/SECRET?key=abc");
        assert_eq!(r, "https://****@hooks.example.com/****");
        assert!(!format!("{}", Webhook::new("http://a:b@h:1/x?token=zz", None).unwrap()).contains("zz"));
        let t = Target::parse("http://[::1]:7117", "w").unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str(), t.path.as_str()),
            ("[::1]", "[::1]:7117", "/")
        );
        assert!(t.is_loopback());
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn a_mysql_status_renders_its_positions_and_verification() {
        let mut s: Status = serde_json::from_value(serde_json::json!({
            "migration_id": "shop", "source_engine": "mysql", "phase": "cdc", "slot": "server_id 1174405121",
            "consistent_lsn": null, "applied_lsn": null, "snapshot_position": "mysql:binlog.000002:345",
            "applied_position": "mysql:binlog.000002:9000/0-1-57", "source_position": "mysql:binlog.000002:9100",
            "transactions_applied": 12, "events_applied": {"insert": 3, "update": 2, "delete": 1, "truncate": 0},
            "lag_seconds": 0.5, "lag_bytes": 100, "retained_wal_bytes": null, "slot_active": true, "dead_letters": 0,
            "tables": [], "warnings": []
        }))
        .unwrap();
        add_mysql(
            &mut s,
            Some(&serde_json::json!({"verify_differences": 0, "verified_at": "2026-12-06T21:00:00Z", "blocked_at": null})),
        );
        assert!(is_mysql(&s));
        let text = render(&s);
        for needle in [
            "Migration shop (MySQL/MariaDB source): phase cdc",
            "binlog stream as replica server id 1174405121 from the snapshot at mysql:binlog.000002:345, applied up to mysql:binlog.000002:9000/0-1-57; the source's binlog is at mysql:binlog.000002:9100",
            "lag: 100 B of the source's binlog not applied, 0.5 s; ferry is streaming",
            "last verification: identical (0 differences), finished 2026-12-06T21:00:00Z",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
        assert!(!text.contains("slot server_id"), "{text}");
        // An older API's status (no engine) is a PostgreSQL one.
        let old: Status = serde_json::from_value(serde_json::json!({
            "migration_id": "m", "phase": "cdc", "slot": "ferry_m", "consistent_lsn": "0/1", "applied_lsn": null,
            "transactions_applied": 0, "events_applied": {"insert": 0, "update": 0, "delete": 0, "truncate": 0},
            "lag_seconds": null, "lag_bytes": null, "retained_wal_bytes": null, "slot_active": null, "dead_letters": 0,
            "tables": [], "warnings": []
        }))
        .unwrap();
        assert_eq!(old.source_engine, "postgresql");
        assert!(render(&old).contains("slot ferry_m (consistent point 0/1)"));
    }
}
