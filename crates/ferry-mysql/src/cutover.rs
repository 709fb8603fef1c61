//! The cutover gate for a MySQL/MariaDB source (no proxy: the protocols differ). Writes stop on
//! the source (`SET GLOBAL read_only`), the stream applies up to the source's final binlog
//! position, identities on the target are set past every id the source handed out, the phase
//! `cut_over` is recorded (the running `ferry migrate` stops), and the caller signals the
//! application. Any failure before the phase is recorded makes the source writable again.
//! Rollback to MySQL after that point is not built (`ferry check` says so).

use std::time::{Duration, Instant};

use ferry_core::ident::{quote_ident, quote_literal};
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::error::MyError;
use crate::preflight::{MyCheckRequest, MyTable};

/// How the gate runs.
#[derive(Debug, Clone)]
pub struct GateOptions {
    /// Ferry's state schema on the target.
    pub state_schema: String,
    /// The source's id in that state.
    pub source_id: String,
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

async fn master_position(my: &mut mysql_async::Conn) -> Result<(String, u64), MyError> {
    let row: Option<mysql_async::Row> = my
        .query_first("SHOW MASTER STATUS")
        .await
        .map_err(|e| MyError::query("reading the binlog position", e))?;
    let row = row.ok_or_else(|| MyError::new("reading the binlog position", "the binary log is off", "enable log_bin"))?;
    Ok((row.get(0).unwrap_or_default(), row.get(1).unwrap_or_default()))
}

/// The source's end of binlog (file, position).
pub async fn binlog_end(source: &crate::MyEndpoint) -> Result<(String, u64), MyError> {
    let mut my = source.connect().await?;
    let end = master_position(&mut my).await;
    let _ = my.disconnect().await;
    end
}

async fn applied(pg: &tokio_postgres::Client, opts: &GateOptions) -> Result<(String, u64), MyError> {
    let row = pg
        .query_one(
            &format!(
                "SELECT coalesce(cdc_file, ''), coalesce(cdc_pos, 0) FROM {}.mysql_loads WHERE source = $1",
                quote_ident(&opts.state_schema)
            ),
            &[&opts.source_id],
        )
        .await
        .map_err(pg_err("reading the stream's position"))?;
    Ok((row.get(0), row.get::<_, i64>(1) as u64))
}

/// Waits until the stream has applied `want`; false after `timeout`.
async fn wait_applied(pg: &tokio_postgres::Client, opts: &GateOptions, want: &(String, u64), timeout: Duration) -> Result<bool, MyError> {
    let started = Instant::now();
    loop {
        if applied(pg, opts).await? >= *want {
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
    let pg = req
        .target
        .connect("mysql-cutover")
        .await
        .map_err(|e| MyError::new("connecting to the target", &e.to_string(), "check the target URL"))?;
    crate::apply::ensure_state(&pg, &opts.state_schema).await?;
    let row = pg
        .query_opt(
            &format!(
                "SELECT phase, verified_at IS NOT NULL AND verified_at > coalesce(finished_at, '-infinity'), verify_differences,
                        cdc_tables::text
                 FROM {}.mysql_loads WHERE source = $1 AND finished_at IS NOT NULL",
                quote_ident(&opts.state_schema)
            ),
            &[&opts.source_id],
        )
        .await
        .map_err(pg_err("reading Ferry's state"))?
        .ok_or_else(|| {
            MyError::new(
                "starting the cutover",
                &format!("no finished migration from {} is recorded on this target", opts.source_id),
                "run ferry migrate first (same --source and --target)",
            )
        })?;
    let (phase, verified, differences, tables): (String, bool, Option<i64>, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    match phase.as_str() {
        "cut_over" => {
            return Err(MyError::new(
                "starting the cutover",
                "this migration was cut over already",
                "nothing to do; the application writes to the target",
            ))
        }
        "cdc" => {}
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
    let tables: Vec<MyTable> = tables.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();

    let mut my = req.source.connect().await?;
    let now = master_position(&mut my).await?;
    if !wait_applied(&pg, opts, &now, opts.max_lag).await? {
        let at = applied(&pg, opts).await?;
        return Err(MyError::new(
            "starting the cutover",
            &format!(
                "the stream is behind: applied up to {}:{}, the source is at {}:{} (waited {:?})",
                at.0, at.1, now.0, now.1, opts.max_lag
            ),
            "make sure ferry migrate is running and caught up (ferry status), then cut over",
        ));
    }

    // Writes stop here.
    my.query_drop("SET GLOBAL read_only = ON").await.map_err(|e| {
        MyError::new(
            "stopping writes on the source (SET GLOBAL read_only = ON)",
            &e.to_string(),
            "Ferry's user needs SUPER (MySQL) or READ_ONLY ADMIN (MariaDB 10.11: GRANT READ_ONLY ADMIN ON *.* TO ...)",
        )
    })?;
    // MySQL 8 also stops users with SUPER; MariaDB has no such variable (the error is ignored).
    let _ = my.query_drop("SET GLOBAL super_read_only = ON").await;
    let paused = Instant::now();
    let result: Result<GateReport, MyError> = async {
        // Open transactions get the grace period, then their sessions are killed (their
        // writes can no longer commit anyway).
        let deadline = Instant::now() + opts.grace;
        let mut killed = Vec::new();
        loop {
            // Sessions using the migrated database: the application. Other databases' sessions
            // are stopped by read_only as well, but are not Ferry's to kill.
            let open: Vec<(u64, String, String)> = my
                .exec(
                    "SELECT t.trx_mysql_thread_id, p.USER, p.HOST FROM information_schema.INNODB_TRX t
                     JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
                     WHERE t.trx_mysql_thread_id <> CONNECTION_ID() AND p.DB = ?",
                    (req.source.database(),),
                )
                .await
                .map_err(|e| MyError::query("listing open transactions", e))?;
            if open.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for (id, user, host) in open {
                    let _ = my.query_drop(format!("KILL {id}")).await;
                    killed.push(format!("{id} ({user}@{host})"));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let final_pos = master_position(&mut my).await?;
        if !wait_applied(&pg, opts, &final_pos, Duration::from_secs(60)).await? {
            return Err(MyError::new(
                "reaching the final position",
                &format!("the stream did not apply up to {}:{} within 60 s", final_pos.0, final_pos.1),
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
                let auto: Option<Option<u64>> = my
                    .exec_first(
                        "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                        (req.source.database(), &t.name),
                    )
                    .await
                    .map_err(|e| MyError::query("reading AUTO_INCREMENT", e))?;
                let next = auto.flatten().unwrap_or(1).min(i64::MAX as u64);
                let tq = format!("public.{}", quote_ident(&t.name));
                let row = pg
                    .query_one(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence({}, {}), GREATEST(COALESCE(max({}), 0) + 1, {next}), false) FROM {tq}",
                            quote_literal(&tq),
                            quote_literal(col),
                            quote_ident(col)
                        ),
                        &[],
                    )
                    .await
                    .map_err(pg_err("setting an identity past the source's ids"))?;
                identities.push(format!("{}.{col} = {}", t.name, row.get::<_, i64>(0)));
            }
        }
        let others: Vec<(u64, String, String)> = my
            .query(
                "SELECT ID, USER, HOST FROM information_schema.PROCESSLIST
                 WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Binlog Dump GTID') AND USER <> 'system user'",
            )
            .await
            .map_err(|e| MyError::query("listing sessions", e))?;
        let report = GateReport {
            final_position: format!("{}:{}", final_pos.0, final_pos.1),
            write_pause_ms: 0.0,
            killed,
            still_connected: others.into_iter().map(|(id, u, h)| format!("{id} ({u}@{h})")).collect(),
            identities,
        };
        pg.execute(
            &format!(
                "UPDATE {}.mysql_loads SET phase = 'cut_over', cutover = $2::text::jsonb WHERE source = $1",
                quote_ident(&opts.state_schema)
            ),
            &[&opts.source_id, &serde_json::to_string(&report).unwrap_or_default()],
        )
        .await
        .map_err(pg_err("recording the cutover"))?;
        Ok(report)
    }
    .await;
    match result {
        Ok(mut r) => {
            r.write_pause_ms = paused.elapsed().as_secs_f64() * 1000.0;
            Ok(r)
        }
        Err(e) => {
            let _ = my.query_drop("SET GLOBAL super_read_only = OFF").await;
            let _ = my.query_drop("SET GLOBAL read_only = OFF").await;
            Err(MyError {
                reason: format!("{} (the source is writable again)", e.reason),
                ..e
            })
        }
    }
}
