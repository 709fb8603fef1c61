//! What a cutover or rollback of a MySQL/MariaDB source needs besides the sides of the switch
//! ([`crate::switch::MySqlSide`]): whether the migration may be cut over ([`ready`]) or rolled
//! back ([`rollback_ready`]), where the streams of the running `ferry migrate` stand (the
//! binlog stream's position on the target, [`wait_applied`]; the reverse stream's on the source,
//! [`wait_reverse_applied`]), and the report recorded with the phase `cut_over` ([`GateReport`]).
//!
//! The switch itself is the switchboard's (`crates/ferry/src/cutover.rs`), without a proxy (the
//! protocols differ): writes stop on the source (`SET GLOBAL read_only`), sessions still in a
//! transaction are ended after `--grace`, the stream applies up to the source's final binlog
//! position, identities on the target are set past every id the source handed out, the phase
//! `cut_over` is recorded with the report (the running `ferry migrate` sees it and stops), and
//! the caller signals the application. The migration is in phase `cutover` while writes are
//! stopped; any failure before `cut_over` is recorded makes the source writable again and moves
//! it back to `cdc`. After the cutover the target's writes stream back to the source (the
//! reverse stream, `crate::apply`); a rollback is the same pause the other way round
//! (`crates/ferry/src/mysql_switch.rs`).
//!
//! Every statement on either side runs under a deadline (`docs/timeouts-mysql-proxy.md`).

use std::time::{Duration, Instant};

use ferry_core::{BinlogPosition, Lsn, Phase};
use serde::Serialize;

use crate::endpoint::{deadline, MyEndpoint};
use crate::error::MyError;
use crate::preflight::MyTable;
use crate::state::MyState;

/// What a cutover of a MySQL/MariaDB source did: printed, sent to the webhook, and recorded
/// with the phase `cut_over` (`mysql_state.cutover`).
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// The source's final binlog position, applied on the target.
    pub final_position: String,
    /// Milliseconds from writes stopping on the source to the phase recorded.
    pub write_pause_ms: f64,
    /// Sessions killed after the grace period (id, user, host).
    pub killed: Vec<String>,
    /// Other sessions still connected to the source (users with SUPER or READ ONLY ADMIN can
    /// still write).
    pub still_connected: Vec<String>,
    /// Identities set on the target: table.column = next value.
    pub identities: Vec<String>,
}

/// The source's end of binlog (file, position, and MySQL's `Executed_Gtid_Set`), read with the
/// server's statement (`SHOW BINARY LOG STATUS` on MySQL 8.2+, `SHOW MASTER STATUS` elsewhere:
/// [`crate::flavor`]). Bounded: the connect timeout, then the query deadline.
pub async fn binlog_end(source: &MyEndpoint) -> Result<BinlogPosition, MyError> {
    const WHAT: &str = "reading the binlog position";
    let mut my = source.connect().await?;
    let end = source
        .within(WHAT, async {
            let server = crate::flavor::read(&mut my).await?;
            crate::flavor::binlog_status(&mut my, &server).await
        })
        .await
        .and_then(|status| status.position(""));
    if end.is_ok() {
        source.disconnect(my).await;
    }
    end
}

/// Whether the migration recorded in `state` may be cut over: a finished load, a stream
/// (phase `cdc`, or `cutover` left by an interrupted cutover, which this one takes over), and
/// a clean verification since the load unless `skip_verify_check`. Returns the stream's
/// tables. `target`: the target for messages; `limit`: the deadline of its answer.
pub async fn ready(
    state: &MyState,
    pg: &tokio_postgres::Client,
    target: &str,
    limit: Duration,
    skip_verify_check: bool,
) -> Result<Vec<MyTable>, MyError> {
    let gate = deadline(&target_peer(target), limit, "reading Ferry's state", state.gate_state(pg))
        .await?
        .ok_or_else(|| {
            MyError::new(
                "starting the cutover",
                &format!("no finished migration from {} is recorded on this target", state.source()),
                "run ferry migrate first (same --source and --target)",
            )
        })?;
    match gate.phase {
        Phase::CutOver => {
            return Err(MyError::new(
                "starting the cutover",
                "this migration was cut over already",
                "nothing to do; the application writes to the target",
            ))
        }
        Phase::Cdc => {}
        // An earlier cutover was interrupted (kill -9) with writes stopped: this one takes over.
        Phase::Cutover => tracing::warn!("an earlier cutover did not finish; starting it again"),
        other => {
            return Err(MyError::new(
                "starting the cutover",
                &format!("the migration is in phase {other}, not streaming changes"),
                "run ferry migrate (without --stop-after) until it streams, then cut over",
            ))
        }
    }
    // A prepared XA transaction's rows reach the target with its XA COMMIT, which the stream
    // must see before the switch (`docs/mysql-cdc.md`, "XA transactions").
    let prepared = deadline(
        &target_peer(target),
        limit,
        "reading the prepared XA transactions the stream has passed",
        state.xa_prepared(pg),
    )
    .await?;
    let mut open: Vec<&str> = prepared.values().filter(|p| p.migrated_rows).map(|p| p.xid.as_str()).collect();
    if !open.is_empty() {
        open.sort_unstable();
        return Err(MyError::new(
            "starting the cutover",
            &format!(
                "{} prepared XA transaction(s) that change migrated tables are not committed or rolled back on the source yet \
                 ({}): the target gets their rows with their XA COMMIT, which would come after the switch",
                open.len(),
                open.join(", ")
            ),
            "finish them on the source (XA COMMIT or XA ROLLBACK; XA RECOVER lists them), let ferry migrate stream past them, \
             then cut over",
        ));
    }
    let clean = gate.verified && gate.differences == Some(0);
    if !(skip_verify_check || clean) {
        return Err(MyError::new(
            "starting the cutover",
            &match gate.differences {
                Some(n) if gate.verified && n > 0 => format!("the last verification found {n} difference(s)"),
                _ => "no verification since the full load".to_string(),
            },
            "run ferry verify --source ... --target ... until it reports 0 differences (or pass --skip-verify-check)",
        ));
    }
    Ok(gate.tables)
}

/// The target (`Endpoint::describe`), in deadline messages.
fn target_peer(target: &str) -> String {
    format!("the PostgreSQL target {target}")
}

/// How far the target holds the source's changes: the stream's applied position, as it
/// recorded it on the target, or, before it applied any transaction, the full load's snapshot
/// position (an idle source after the load is caught up there). None: no finished load.
/// `target`: the target for messages; `limit`: the deadline of its answer.
pub async fn applied(
    state: &MyState,
    pg: &tokio_postgres::Client,
    target: &str,
    limit: Duration,
) -> Result<Option<BinlogPosition>, MyError> {
    let read = async { Ok(state.resume_point(pg).await?.map(|(at, _)| at)) };
    deadline(&target_peer(target), limit, "reading the stream's position", read).await
}

/// Waits until the stream in the running `ferry migrate` has applied `want` (it records its
/// position on the target with every batch it commits); false after `timeout`. Positions
/// compare by file number, then offset; a position in a file of another base name is never
/// reached. Each read is bounded by `limit` (`target` names the target in its message).
pub async fn wait_applied(
    state: &MyState,
    pg: &tokio_postgres::Client,
    target: &str,
    limit: Duration,
    want: &BinlogPosition,
    timeout: Duration,
) -> Result<bool, MyError> {
    let started = Instant::now();
    loop {
        if applied(state, pg, target, limit).await?.is_some_and(|a| a >= *want) {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the migration recorded in `state` may be rolled back: cut over (phase `cut_over`, or
/// `rollback` left by an interrupted rollback, which this one takes over). Returns the stream's
/// tables. `target`: the target for messages; `limit`: the deadline of its answer.
pub async fn rollback_ready(state: &MyState, pg: &tokio_postgres::Client, target: &str, limit: Duration) -> Result<Vec<MyTable>, MyError> {
    let gate = deadline(&target_peer(target), limit, "reading Ferry's state", state.gate_state(pg))
        .await?
        .ok_or_else(|| {
            MyError::new(
                "starting the rollback",
                &format!("no migration from {} is recorded on this target", state.source()),
                "nothing to roll back",
            )
        })?;
    match gate.phase {
        Phase::CutOver => {}
        // An earlier rollback was interrupted (kill -9): this one takes over.
        Phase::Rollback => tracing::warn!("an earlier rollback did not finish; starting it again"),
        other => {
            return Err(MyError::new(
                "starting the rollback",
                &format!("the migration is in phase {other}, not cut over: the application still writes to the source"),
                "nothing to roll back; ferry cutover moves the application to the target",
            ))
        }
    }
    Ok(gate.tables)
}

/// Waits until the reverse stream (in the running `ferry migrate`) has applied the target's
/// position `want` on the source: its sink records how far it applied, in the same source
/// transaction as the changes, and how far the target has sent while idle
/// ([`crate::apply::applied`]). False after `timeout`. Each read is bounded by the source's
/// query deadline.
pub async fn wait_reverse_applied(
    source: &MyEndpoint,
    state_db: &str,
    migration_id: &str,
    want: Lsn,
    timeout: Duration,
) -> Result<bool, MyError> {
    let started = Instant::now();
    loop {
        if crate::apply::applied(source, state_db, migration_id)
            .await?
            .is_some_and(|a| a >= want)
        {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
