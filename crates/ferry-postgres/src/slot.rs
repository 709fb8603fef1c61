//! What Ferry creates on the source for change capture: one publication and one slot.
//!
//! The publication must exist before the slot: pgoutput looks publications up in the catalog as
//! of each change's position, so a publication created after the slot's consistent point would
//! be missing for the changes in between.

use ferry_core::ident::{quote_ident, quote_literal};
use ferry_core::TableName;
use tokio_postgres::Client;

use crate::error::PgError;

/// Creates the publication if it does not exist: `FOR ALL TABLES` when `all_tables` (superuser,
/// no filter: new tables are published automatically), else for the listed tables.
pub async fn ensure_publication(c: &Client, name: &str, all_tables: bool, tables: &[TableName]) -> Result<bool, PgError> {
    let exists: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", &[&name])
        .await
        .map_err(|e| PgError::query("looking for Ferry's publication on the source", e))?
        .get(0);
    if exists {
        return Ok(false);
    }
    let target = if all_tables || tables.is_empty() {
        "FOR ALL TABLES".to_string()
    } else {
        format!("FOR TABLE {}", tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", "))
    };
    c.batch_execute(&format!("CREATE PUBLICATION {} {target}", quote_ident(name)))
        .await
        .map_err(|e| PgError::query(format!("creating publication {name} on the source"), e))?;
    Ok(true)
}

/// Whether a slot exists, and whether something is connected to it.
pub async fn slot_status(c: &Client, name: &str) -> Result<Option<bool>, PgError> {
    c.query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&name])
        .await
        .map(|r| r.map(|r| r.get(0)))
        .map_err(|e| PgError::query("looking for Ferry's replication slot on the source", e))
}

/// Drops a slot if it exists and nothing uses it.
pub async fn drop_slot(c: &Client, name: &str) -> Result<(), PgError> {
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
        &[&name],
    )
    .await
    .map(|_| ())
    .map_err(|e| PgError::query(format!("dropping replication slot {name} on the source"), e))
}

/// Drops the publication if it exists.
pub async fn drop_publication(c: &Client, name: &str) -> Result<(), PgError> {
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(|e| PgError::query(format!("dropping publication {name} on the source"), e))
}

/// WAL the slot holds back on the source, in bytes.
pub async fn retained_wal_bytes(c: &Client, name: &str) -> Result<Option<i64>, PgError> {
    c.query_opt(
        &format!(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(name)
        ),
        &[],
    )
    .await
    .map(|r| r.and_then(|r| r.get(0)))
    .map_err(|e| PgError::query("measuring WAL retained by Ferry's slot", e))
}

/// A slot as `ferry status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLag {
    /// Whether something is connected to it.
    pub active: bool,
    /// WAL bytes past what the slot's consumer confirmed.
    pub lag_bytes: Option<i64>,
    /// WAL bytes the slot keeps on the server's disk.
    pub retained_bytes: Option<i64>,
}

/// The slot `name` on the server of `c`, if it exists: whether it is in use, how far its
/// consumer is behind and how much WAL it holds back.
pub async fn slot_lag(c: &Client, name: &str) -> Result<Option<SlotLag>, PgError> {
    c.query_opt(
        "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, (pg_current_wal_lsn() - restart_lsn)::int8
         FROM pg_replication_slots WHERE slot_name = $1",
        &[&name],
    )
    .await
    .map(|r| {
        r.map(|row| SlotLag {
            active: row.get(0),
            lag_bytes: row.get(1),
            retained_bytes: row.get(2),
        })
    })
    .map_err(|e| PgError::query("reading Ferry's replication slot on the source", e))
}

/// The server's current WAL position, as a number of bytes; `side` names it for messages.
pub async fn wal_position(c: &Client, side: &str) -> Result<u64, PgError> {
    c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .map_err(|e| PgError::query(format!("reading the {side}'s WAL position"), e))
}

/// The oldest transaction holding a transaction id on the server of `c` (what a new slot's
/// snapshot waits for), other than this session's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestTransaction {
    /// Backend pid.
    pub pid: i32,
    /// Its user.
    pub user: String,
    /// How long it has been open (`interval` text, to the second).
    pub open_for: String,
    /// Its current or last statement, shortened to 80 characters.
    pub query: String,
}

/// The oldest transaction with a transaction id on the server of `c`, if any.
pub async fn oldest_transaction(c: &Client) -> Result<Option<OldestTransaction>, PgError> {
    c.query_opt(
        "SELECT pid, usename::text, date_trunc('second', now() - xact_start)::text, left(query, 80) FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 1",
        &[],
    )
    .await
    .map(|r| {
        r.map(|r| OldestTransaction {
            pid: r.get(0),
            user: r.get::<_, Option<String>>(1).unwrap_or_default(),
            open_for: r.get::<_, Option<String>>(2).unwrap_or_default(),
            query: r.get::<_, Option<String>>(3).unwrap_or_default(),
        })
    })
    .map_err(|e| PgError::query("looking for the oldest open transaction", e))
}
