//! The cutover gate for a MySQL/MariaDB source (no proxy: the protocols differ). Writes stop on
//! the source (`SET GLOBAL read_only`), the stream applies up to the source's final binlog
//! position, identities on the target are set past every id the source handed out, the phase
//! `cut_over` is recorded (the running `ferry migrate` stops), and the caller signals the
//! application. The migration is in phase `cutover` while writes are stopped; any failure
//! before `cut_over` is recorded makes the source writable again and moves it back to `cdc`.
//! Rollback to MySQL after that point is not built (`ferry check` says so).
//!
//! Every statement on either side runs under a deadline (`docs/timeouts-mysql-proxy.md`): a
//! server that stops answering while the source is read-only ends the gate with an error that
//! names it, and the source is made writable again on a fresh connection (the old one is in an
//! unknown state after an abandoned statement).

use std::time::{Duration, Instant};

use ferry_core::ident::{quote_ident, quote_literal};
use ferry_core::{BinlogPosition, Phase};
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::endpoint::{deadline, timed_out, MyEndpoint};
use crate::error::MyError;
use crate::preflight::MyCheckRequest;
use crate::state::MyState;

/// Who moves the phases of the gate.
const ACTOR: &str = "ferry cutover";

/// How the gate runs.
#[derive(Debug, Clone)]
pub struct GateOptions {
    /// The migration's state on the target.
    pub state: MyState,
    /// How long open transactions in the migrated database may finish after writes stop,
    /// before their sessions are killed.
    pub grace: Duration,
    /// Refuse to start when the stream is further behind than this.
    pub max_lag: Duration,
    /// Cut over without a clean last verification.
    pub skip_verify_check: bool,
}

/// What the gate did.
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

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> MyError + '_ {
    move |e| MyError::new(what, &e.to_string(), "check the target")
}

async fn master_position(source: &MyEndpoint, my: &mut mysql_async::Conn) -> Result<BinlogPosition, MyError> {
    const WHAT: &str = "reading the binlog position";
    let row: Option<mysql_async::Row> = source
        .within(WHAT, async {
            my.query_first("SHOW MASTER STATUS").await.map_err(|e| MyError::query(WHAT, e))
        })
        .await?;
    let row = row.ok_or_else(|| MyError::new(WHAT, "the binary log is off", "enable log_bin"))?;
    let (file, pos): (String, u64) = (row.get(0).unwrap_or_default(), row.get(1).unwrap_or_default());
    BinlogPosition::new(&file, pos, "").map_err(|e| MyError::new(WHAT, &e.to_string(), "report this as a bug"))
}

/// The source's end of binlog (file, position). Bounded: the connect timeout, then the query
/// deadline.
pub async fn binlog_end(source: &crate::MyEndpoint) -> Result<BinlogPosition, MyError> {
    let mut my = source.connect().await?;
    let end = master_position(source, &mut my).await;
    if end.is_ok() {
        source.disconnect(my).await;
    }
    end
}

/// The target, in deadline messages.
fn target_peer(req: &MyCheckRequest) -> String {
    format!("the PostgreSQL target {}", req.target.describe())
}

/// Runs a target query of the gate under the source's query deadline.
async fn on_target<T>(req: &MyCheckRequest, what: &str, fut: impl std::future::Future<Output = Result<T, MyError>>) -> Result<T, MyError> {
    deadline(&target_peer(req), req.source.query_timeout(), what, fut).await
}

/// The stream's applied position (None: no source transaction applied yet).
async fn applied(req: &MyCheckRequest, pg: &tokio_postgres::Client, opts: &GateOptions) -> Result<Option<BinlogPosition>, MyError> {
    on_target(req, "reading the stream's position", opts.state.applied(pg)).await
}

/// Waits until the stream has applied `want`; false after `timeout`.
async fn wait_applied(
    req: &MyCheckRequest,
    pg: &tokio_postgres::Client,
    opts: &GateOptions,
    want: &BinlogPosition,
    timeout: Duration,
) -> Result<bool, MyError> {
    let started = Instant::now();
    loop {
        // By file number, then offset; positions in files of another base name never reach.
        if applied(req, pg, opts).await?.is_some_and(|a| a >= *want) {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the gate.
pub async fn cutover(req: &MyCheckRequest, opts: &GateOptions) -> Result<GateReport, MyError> {
    let mut pg = req.target.connect("mysql-cutover").await.map_err(MyError::from)?;
    let gate = opts.state.gate_state(&pg).await?.ok_or_else(|| {
        MyError::new(
            "starting the cutover",
            &format!("no finished migration from {} is recorded on this target", opts.state.source()),
            "run ferry migrate first (same --source and --target)",
        )
    })?;
    let (verified, differences, tables) = (gate.verified, gate.differences, gate.tables);
    match gate.phase {
        Phase::CutOver => {
            return Err(MyError::new(
                "starting the cutover",
                "this migration was cut over already",
                "nothing to do; the application writes to the target",
            ))
        }
        Phase::Cdc => {}
        // An earlier gate was interrupted (kill -9) with writes stopped: this one takes over.
        Phase::Cutover => tracing::warn!("an earlier cutover did not finish; starting it again"),
        other => {
            return Err(MyError::new(
                "starting the cutover",
                &format!("the migration is in phase {other}, not streaming changes"),
                "run ferry migrate (without --stop-after) until it streams, then cut over",
            ))
        }
    }
    let clean = verified && differences == Some(0);
    if !(opts.skip_verify_check || clean) {
        return Err(MyError::new(
            "starting the cutover",
            &match differences {
                Some(n) if verified && n > 0 => format!("the last verification found {n} difference(s)"),
                _ => "no verification since the full load".to_string(),
            },
            "run ferry verify --source ... --target ... until it reports 0 differences (or pass --skip-verify-check)",
        ));
    }

    let source = &req.source;
    let mut my = source.connect().await?;
    let now = master_position(source, &mut my).await?;
    if !wait_applied(req, &pg, opts, &now, opts.max_lag).await? {
        let at = applied(req, &pg, opts).await?;
        return Err(MyError::new(
            "starting the cutover",
            &format!(
                "the stream is behind: applied up to {}, the source is at {} (waited {:?})",
                at.map(|a| a.file_pos()).unwrap_or_else(|| "nothing yet".into()),
                now.file_pos(),
                opts.max_lag
            ),
            "make sure ferry migrate is running and caught up (ferry status), then cut over",
        ));
    }

    // SET GLOBAL read_only waits for the global read lock (behind LOCK TABLES, FLUSH TABLES WITH
    // READ LOCK, commits in progress): the server gives up on that wait after lock_wait_timeout,
    // well inside the client's deadline, so that an expired deadline means a dead server, never
    // a statement that might still set read_only after Ferry gave up on it.
    let lock_wait = read_only_lock_wait(source.query_timeout());
    source
        .within("limiting the lock wait of the gate's session", async {
            my.query_drop(format!("SET SESSION lock_wait_timeout = {lock_wait}"))
                .await
                .map_err(|e| MyError::query("limiting the lock wait of the gate's session", e))
        })
        .await?;
    on_target(
        req,
        "recording the cutover's start",
        opts.state
            .gate_phase(&pg, Phase::Cutover, ACTOR, "cutover gate: stopping writes on the source"),
    )
    .await?;
    // Writes stop here.
    const READ_ONLY: &str = "stopping writes on the source (SET GLOBAL read_only = ON)";
    match tokio::time::timeout(source.query_timeout(), my.query_drop("SET GLOBAL read_only = ON")).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Refused: the source stays writable.
            let fix = match &e {
                mysql_async::Error::Server(s) if s.code == 1205 => format!(
                    "a session held a lock (LOCK TABLES, FLUSH TABLES WITH READ LOCK, a long commit) for more than {lock_wait} s: retry when it is done"
                ),
                _ => "Ferry's user needs SUPER (MySQL) or READ_ONLY ADMIN (MariaDB 10.11: GRANT READ_ONLY ADMIN ON *.* TO ...)".into(),
            };
            let e = MyError::new(READ_ONLY, &e.to_string(), &fix);
            return Err(back_to_cdc(req, &pg, opts, e).await);
        }
        Err(_) => {
            // No answer: the statement may still take effect on a server that comes back.
            let e = timed_out(&source.peer(), source.query_timeout(), READ_ONLY);
            let e = restore_writable(source, None, e).await;
            return Err(back_to_cdc(req, &pg, opts, e).await);
        }
    }
    let paused = Instant::now();
    let result: Result<GateReport, MyError> = async {
        // MySQL 8 also stops users with SUPER; MariaDB has no such variable (its error is
        // ignored, not an expired deadline).
        source
            .within("stopping writes of SUPER users (SET GLOBAL super_read_only = ON)", async {
                let _ = my.query_drop("SET GLOBAL super_read_only = ON").await;
                Ok(())
            })
            .await?;
        // Open transactions get the grace period, then their sessions are killed (their
        // writes can no longer commit anyway).
        let grace_end = Instant::now() + opts.grace;
        let mut killed = Vec::new();
        loop {
            // Sessions using the migrated database: the application. Other databases' sessions
            // are stopped by read_only as well, but are not Ferry's to kill.
            let open: Vec<(u64, String, String)> = source
                .within("listing open transactions", async {
                    my.exec(
                        "SELECT t.trx_mysql_thread_id, p.USER, p.HOST FROM information_schema.INNODB_TRX t
                         JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
                         WHERE t.trx_mysql_thread_id <> CONNECTION_ID() AND p.DB = ?",
                        (source.database(),),
                    )
                    .await
                    .map_err(|e| MyError::query("listing open transactions", e))
                })
                .await?;
            if open.is_empty() {
                break;
            }
            if Instant::now() >= grace_end {
                for (id, user, host) in open {
                    // A session that ended meanwhile is an error to ignore; silence is not.
                    source
                        .within(&format!("ending session {id} ({user}@{host}) after the grace period"), async {
                            let _ = my.query_drop(format!("KILL {id}")).await;
                            Ok(())
                        })
                        .await?;
                    killed.push(format!("{id} ({user}@{host})"));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let final_pos = master_position(source, &mut my).await?;
        if !wait_applied(req, &pg, opts, &final_pos, Duration::from_secs(60)).await? {
            return Err(MyError::new(
                "reaching the final position",
                &format!("the stream did not apply up to {} within 60 s", final_pos.file_pos()),
                "check ferry migrate's log; the source is writable again",
            ));
        }
        // Identities: past every id the source handed out.
        let mut identities = Vec::new();
        for t in &tables {
            for (col, _) in t
                .columns
                .iter()
                .filter(|(_, m)| m.identity && matches!(m.target.as_str(), "smallint" | "integer" | "bigint"))
            {
                let auto: Option<Option<u64>> = source
                    .within("reading AUTO_INCREMENT", async {
                        my.exec_first(
                            "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                            (source.database(), &t.name),
                        )
                        .await
                        .map_err(|e| MyError::query("reading AUTO_INCREMENT", e))
                    })
                    .await?;
                let next = auto.flatten().unwrap_or(1).min(i64::MAX as u64);
                let tq = format!("public.{}", quote_ident(&t.name));
                // max() over the primary key: an index lookup, a control query.
                const SETVAL: &str = "setting an identity past the source's ids";
                let row = on_target(req, SETVAL, async {
                    pg.query_one(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence({}, {}), GREATEST(COALESCE(max({}), 0) + 1, {next}), false) FROM {tq}",
                            quote_literal(&tq),
                            quote_literal(col),
                            quote_ident(col)
                        ),
                        &[],
                    )
                    .await
                    .map_err(pg_err(SETVAL))
                })
                .await?;
                identities.push(format!("{}.{col} = {}", t.name, row.get::<_, i64>(0)));
            }
        }
        let others: Vec<(u64, String, String)> = source
            .within("listing sessions", async {
                my.query(
                    "SELECT ID, USER, HOST FROM information_schema.PROCESSLIST
                     WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Binlog Dump GTID') AND USER <> 'system user'",
                )
                .await
                .map_err(|e| MyError::query("listing sessions", e))
            })
            .await?;
        let report = GateReport {
            final_position: final_pos.file_pos(),
            write_pause_ms: 0.0,
            killed,
            still_connected: others.into_iter().map(|(id, u, h)| format!("{id} ({u}@{h})")).collect(),
            identities,
        };
        Ok(report)
    }
    .await;
    // The phase `cut_over` and the report, in one target transaction: the running stream
    // stops when it sees the phase.
    let result = match result {
        Ok(r) => {
            let json = serde_json::to_value(&r).unwrap_or_default();
            let target_peer = target_peer(req);
            deadline(
                &target_peer,
                source.query_timeout(),
                "recording the cutover",
                opts.state.record_cutover(&mut pg, &json, ACTOR),
            )
            .await
            .map(|()| r)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(mut r) => {
            r.write_pause_ms = paused.elapsed().as_secs_f64() * 1000.0;
            Ok(r)
        }
        Err(e) => {
            // After an expired deadline the gate's connection may be in the middle of an
            // abandoned statement: it is not used again.
            let usable = !e.reason.starts_with(&format!("no answer from {}", source.peer()));
            let e = restore_writable(source, usable.then_some(my), e).await;
            Err(back_to_cdc(req, &pg, opts, e).await)
        }
    }
}

/// After an aborted gate: the migration goes back to `cdc` (traffic stays on the source). A
/// failure to record that is added to `e`.
async fn back_to_cdc(req: &MyCheckRequest, pg: &tokio_postgres::Client, opts: &GateOptions, e: MyError) -> MyError {
    let reason = format!("cutover aborted: {}", e.reason);
    match on_target(
        req,
        "recording the aborted cutover",
        opts.state.gate_phase(pg, Phase::Cdc, ACTOR, &reason),
    )
    .await
    {
        Ok(()) => e,
        Err(w) => MyError {
            reason: format!("{}; and recording the abort failed ({w}): ferry cutover again takes over", e.reason),
            ..e
        },
    }
}

/// `lock_wait_timeout` (seconds) of the gate's session: two thirds of the query deadline, so
/// that the server ends a wait for the global read lock before the client gives up on it.
fn read_only_lock_wait(query_timeout: Duration) -> u64 {
    (query_timeout * 2 / 3).as_secs().max(1)
}

/// Makes the source writable again after the gate failed with `e`: on the gate's connection
/// when it is usable, else (or when that fails) on a fresh one, every step bounded. The error
/// says whether it worked.
async fn restore_writable(source: &MyEndpoint, gate: Option<mysql_async::Conn>, e: MyError) -> MyError {
    async fn writable(source: &MyEndpoint, my: &mut mysql_async::Conn) -> Result<(), MyError> {
        const WHAT: &str = "making the source writable again (SET GLOBAL read_only = OFF)";
        source
            .within(WHAT, async {
                // MariaDB has no super_read_only: that error is expected.
                let _ = my.query_drop("SET GLOBAL super_read_only = OFF").await;
                my.query_drop("SET GLOBAL read_only = OFF")
                    .await
                    .map_err(|e| MyError::query(WHAT, e))
            })
            .await
    }
    let on_gate = match gate {
        Some(mut my) => {
            let r = writable(source, &mut my).await;
            if r.is_ok() {
                source.disconnect(my).await;
            }
            r
        }
        None => Err(e.clone()),
    };
    let restored = match on_gate {
        Ok(()) => Ok(()),
        Err(_) => {
            async {
                let mut my = source.connect().await?;
                writable(source, &mut my).await?;
                source.disconnect(my).await;
                Ok::<_, MyError>(())
            }
            .await
        }
    };
    match restored {
        Ok(()) => MyError {
            reason: format!("{} (the source is writable again)", e.reason),
            ..e
        },
        Err(w) => {
            tracing::error!(error = %w, "the source could not be made writable again");
            MyError {
                reason: format!(
                    "{}; and the source may still be READ-ONLY: making it writable again failed ({w})",
                    e.reason
                ),
                fix: Some(format!(
                    "run SET GLOBAL read_only = OFF (and super_read_only = OFF on MySQL) on the source now; then {}",
                    e.fix.as_deref().unwrap_or("cut over again")
                )),
                ..e
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_gives_up_on_the_read_only_lock_before_the_client() {
        assert_eq!(read_only_lock_wait(Duration::from_secs(30)), 20);
        assert_eq!(read_only_lock_wait(Duration::from_millis(200)), 1);
    }
}
