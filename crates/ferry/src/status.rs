//! `ferry status`: where a migration stands, read from the target's state schema and, when the
//! source is given, from the slot (lag and retained WAL).

use anyhow::Context;
use ferry_core::ident::quote_ident;
use ferry_postgres::Endpoint;
use serde::Serialize;

use crate::check_cmd::{human_bytes, human_count};

/// Everything status shows.
#[derive(Debug, Serialize)]
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
    /// Seconds between the last applied source commit and now (0 when caught up).
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
}

/// Row events applied.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
pub struct TableStatus {
    /// Name.
    pub table: String,
    /// State.
    pub state: String,
    /// Rows copied by the full load.
    pub rows_copied: i64,
    /// Estimated rows.
    pub rows_estimate: Option<i64>,
}

/// Reads the status. `wal_warn` is the retained-WAL size past which status warns.
pub async fn read(target: &Endpoint, source: Option<&Endpoint>, id: Option<&str>, schema: &str, wal_warn: i64) -> anyhow::Result<Status> {
    let t = target.connect("status").await?;
    let q = quote_ident(schema);
    let exists: bool = t
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{q}.migrations")])
        .await?
        .get(0);
    if !exists {
        anyhow::bail!(
            "no Ferry migration on {}: schema {schema} has no migrations table (wrong target, or --state-schema?)",
            target.describe()
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
        0 => anyhow::bail!("no migration {} recorded on {}", id.unwrap_or("at all"), target.describe()),
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
        migration_id: migration_id.clone(),
    };
    let since_commit: Option<f64> = r.get(10);
    for row in t
        .query(
            &format!("SELECT format('%s.%s', schema_name, table_name), state, rows_copied, rows_estimate FROM {q}.tables WHERE migration_id = $1 ORDER BY rows_copied DESC, 1"),
            &[&migration_id],
        )
        .await?
    {
        status.tables.push(TableStatus { table: row.get(0), state: row.get(1), rows_copied: row.get(2), rows_estimate: row.get(3) });
    }
    if let Some(src) = source {
        let s = src.connect("status").await.context("reading the slot on the source")?;
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
    match (s.lag_bytes, s.lag_seconds) {
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
    o.push_str(&format!("  dead letters: {}\n", s.dead_letters));
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
