//! `ferry status`: where a migration stands, read from the target's state schema and, when the
//! source is given, from the slot (lag and retained WAL).

use std::time::Duration;

use anyhow::Context;
use ferry_core::ident::quote_ident;
use ferry_postgres::Endpoint;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::check_cmd::{human_bytes, human_count};

/// Everything status shows. Served as JSON by `GET /api/status` (with the live fields filled)
/// and printed by `ferry status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Migration id.
    pub migration_id: String,
    /// Phase.
    pub phase: String,
    /// Slot.
    pub slot: String,
    /// Slot's consistent point (start of change capture).
    pub consistent_lsn: Option<String>,
    /// Last source commit applied on the target.
    pub applied_lsn: Option<String>,
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
    /// Source commit LSN.
    pub commit_lsn: String,
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

/// SQL rendering a timestamptz column as RFC 3339 in UTC (milliseconds), for JSON.
pub fn iso_sql(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
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
    let q = quote_ident(schema);
    let exists: bool = t
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{q}.migrations")])
        .await?
        .get(0);
    if !exists {
        anyhow::bail!(
            "no Ferry migration on {}: schema {schema} has no migrations table (wrong target, or --state-schema?)",
            where_
        );
    }
    let rows = t
        .query(
            &format!(
                "SELECT id, phase, slot_name, consistent_lsn::text, applied_lsn::text, applied_txns, events_insert, events_update,
                        events_delete, events_truncate,
                        CASE WHEN last_commit_time IS NULL THEN NULL ELSE extract(epoch FROM now() - last_commit_time)::float8 END,
                        (SELECT count(*) FROM {q}.dead_letters d WHERE d.migration_id = m.id)
                 FROM {q}.migrations m WHERE $1::text IS NULL OR id = $1 ORDER BY updated_at DESC"
            ),
            &[&id],
        )
        .await?;
    let r = match rows.len() {
        0 => anyhow::bail!("no migration {} recorded on {}", id.unwrap_or("at all"), where_),
        1 => &rows[0],
        _ if id.is_none() => anyhow::bail!(
            "{} migrations are recorded on the target; name one with --migration-id ({})",
            rows.len(),
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join(", ")
        ),
        _ => &rows[0],
    };
    let migration_id: String = r.get(0);
    let slot: String = r.get(2);
    let applied_lsn: Option<String> = r.get(4);
    let mut status = Status {
        phase: r.get(1),
        slot: slot.clone(),
        consistent_lsn: r.get(3),
        applied_lsn: applied_lsn.clone(),
        transactions_applied: r.get(5),
        events_applied: EventCounts {
            insert: r.get(6),
            update: r.get(7),
            delete: r.get(8),
            truncate: r.get(9),
        },
        lag_seconds: None,
        lag_bytes: None,
        retained_wal_bytes: None,
        slot_active: None,
        dead_letters: r.get(11),
        tables: Vec::new(),
        warnings: Vec::new(),
        phase_seconds: None,
        last_verification: None,
        verify_rows_compared: 0,
        verify_differences: Vec::new(),
        transitions: Vec::new(),
        recent_dead_letters: Vec::new(),
        live: None,
        migration_id: migration_id.clone(),
    };
    let since_commit: Option<f64> = r.get(10);
    for row in t
        .query(
            &format!("SELECT format('%s.%s', schema_name, table_name), state, rows_copied, rows_estimate, bytes_copied FROM {q}.tables WHERE migration_id = $1 ORDER BY rows_estimate DESC NULLS LAST, 1"),
            &[&migration_id],
        )
        .await?
    {
        status.tables.push(TableStatus {
            table: row.get(0),
            state: row.get(1),
            rows_copied: row.get(2),
            rows_estimate: row.get(3),
            bytes_copied: row.get(4),
        });
    }
    // Older state schemas (before transitions and verification were recorded) lack the tables.
    let exists = |table: &str| {
        let name = format!("{q}.{table}");
        async move {
            t.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await
                .map(|r| r.get::<_, bool>(0))
        }
    };
    if exists("transitions").await? {
        status.phase_seconds = t
            .query_one(
                &format!(
                    "SELECT extract(epoch FROM now() - max(at))::float8 FROM {q}.transitions
                     WHERE migration_id = $1 AND from_phase IS DISTINCT FROM to_phase"
                ),
                &[&migration_id],
            )
            .await?
            .get(0);
        for row in t
            .query(
                &format!(
                    "SELECT * FROM (SELECT id, {}, from_phase, to_phase, actor, reason
                     FROM {q}.transitions WHERE migration_id = $1 ORDER BY id DESC LIMIT 100) x ORDER BY id",
                    iso_sql("at")
                ),
                &[&migration_id],
            )
            .await?
        {
            status.transitions.push(Transition {
                at: row.get(1),
                from: row.get(2),
                to: row.get(3),
                actor: row.get(4),
                reason: row.get(5),
            });
        }
    }
    if exists("verify_runs").await? {
        status.last_verification = t
            .query_opt(
                &format!(
                    "SELECT jsonb_build_object('id', id, 'status', status, 'actor', actor,
                        'started_at', {}, 'finished_at', {},
                        'source_lsn', source_lsn::text, 'tables', tables, 'rows_compared', rows_compared,
                        'differences', differences, 'repaired', repaired, 'error', error)
                     FROM {q}.verify_runs WHERE migration_id = $1 ORDER BY id DESC LIMIT 1",
                    iso_sql("started_at"),
                    iso_sql("finished_at")
                ),
                &[&migration_id],
            )
            .await?
            .map(|r| r.get(0));
        status.verify_rows_compared = t
            .query_one(
                &format!("SELECT COALESCE(sum(rows_compared), 0)::int8 FROM {q}.verify_runs WHERE migration_id = $1"),
                &[&migration_id],
            )
            .await?
            .get(0);
        for row in t
            .query(
                &format!(
                    "SELECT x->>'table', sum((x->>'differences')::int8)::int8 FROM {q}.verify_runs r, jsonb_array_elements(r.report->'tables') x
                     WHERE r.migration_id = $1 GROUP BY 1 ORDER BY 1"
                ),
                &[&migration_id],
            )
            .await?
        {
            status.verify_differences.push((row.get(0), row.get(1)));
        }
    }
    for row in t
        .query(
            &format!(
                "SELECT {}, commit_lsn::text, table_name, operation, key, error, skipped
                 FROM {q}.dead_letters WHERE migration_id = $1 ORDER BY id DESC LIMIT 20",
                iso_sql("at")
            ),
            &[&migration_id],
        )
        .await?
    {
        status.recent_dead_letters.push(DeadLetterRow {
            at: row.get(0),
            commit_lsn: row.get(1),
            table: row.get(2),
            operation: row.get(3),
            key: row.get(4),
            error: row.get(5),
            skipped: row.get(6),
        });
    }
    if let Some(s) = source {
        let row = s
            .query_opt(
                "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, (pg_current_wal_lsn() - restart_lsn)::int8
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        match row {
            Some(row) => {
                status.slot_active = Some(row.get(0));
                status.lag_bytes = row.get(1);
                status.retained_wal_bytes = row.get(2);
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
    o.push_str(&format!("Migration {}: phase {}\n", s.migration_id, s.phase));
    o.push_str(&format!(
        "  slot {} (consistent point {}), applied up to {}\n",
        s.slot,
        s.consistent_lsn.as_deref().unwrap_or("-"),
        s.applied_lsn.as_deref().unwrap_or("-")
    ));
    o.push_str(&format!(
        "  applied: {} transactions; {} inserts, {} updates, {} deletes, {} truncates\n",
        human_count(s.transactions_applied),
        human_count(s.events_applied.insert),
        human_count(s.events_applied.update),
        human_count(s.events_applied.delete),
        human_count(s.events_applied.truncate)
    ));
    let turned = matches!(s.phase.as_str(), "cut_over" | "rollback");
    match (s.lag_bytes, s.lag_seconds) {
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
    if let Some(v) = &s.last_verification {
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

/// Reads the status from a running `ferry migrate`'s API (`GET /api/status`).
pub async fn fetch(api: &str) -> anyhow::Result<Status> {
    let (code, body) = http_get(api, "/api/status").await?;
    if code != 200 {
        let why = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("the Ferry API at {api} answered {code}: {why}");
    }
    serde_json::from_slice(&body).with_context(|| format!("the Ferry API at {api} sent a status this ferry cannot read (another version?)"))
}

/// A minimal HTTP/1.1 GET with hyper: `base` is `http://host:port`.
pub async fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    http_request("GET", base, path, None).await
}

/// A minimal HTTP/1.1 request with hyper (bearer token when given).
pub async fn http_request(method: &str, base: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
    let rest = base.strip_prefix("http://").with_context(|| {
        format!("--api {base}: only http:// URLs are supported (https://: put a TLS proxy in front and use it from the same host)")
    })?;
    let authority = rest.trim_end_matches('/');
    let help = format!("cannot reach the Ferry API at {base}: is `ferry migrate` running with --listen {authority}? To read the state without it, pass --target URL");
    // A cutover or rollback may wait for the lag to drop (--catch-up-timeout) before its pause.
    send(method, authority, path, token, None, &help, Duration::from_secs(15 * 60)).await
}

/// POSTs a JSON document to an http:// URL (a webhook); returns the status code.
pub async fn http_post_json(url: &str, body: &serde_json::Value) -> anyhow::Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("webhook {url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let help = format!("cannot reach the webhook at http://{authority}");
    let json = serde_json::to_vec(body)?;
    Ok(send("POST", authority, path, None, Some(json), &help, Duration::from_secs(10))
        .await?
        .0)
}

async fn send(
    method: &str,
    authority: &str,
    path: &str,
    token: Option<&str>,
    json: Option<Vec<u8>>,
    help: &str,
    deadline: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let exchange = exchange(method, authority, path, token, json, help);
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from http://{authority}{path} within {} s", deadline.as_secs()))?
}

async fn exchange(
    method: &str,
    authority: &str,
    path: &str,
    token: Option<&str>,
    json: Option<Vec<u8>>,
    help: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    let help = || help.to_string();
    let stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within 10 s"))
        .with_context(help)?
        .with_context(help)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .with_context(help)?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if json.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(json.unwrap_or_default())))
        .context("building the request")?;
    let resp = sender.send_request(req).await.with_context(help)?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.with_context(help)?.to_bytes().to_vec();
    Ok((code, body))
}
