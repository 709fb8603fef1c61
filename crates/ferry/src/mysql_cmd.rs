//! `ferry migrate` with a MySQL/MariaDB source: the checks, the full load from one consistent
//! snapshot, then change capture from the binlog until SIGTERM/SIGINT (`docs/mysql-cdc.md`).
//! Every step is resumable: the same command after a crash reloads an unfinished load, or
//! resumes the stream from the last position committed on the target.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_mysql::apply::{self, CdcOptions, CdcStats};
use ferry_mysql::preflight;

use crate::cli::{MigrateArgs, StopAfter};
use crate::exit::{self, UsageError};

/// Ferry's replica server id on a source: stable per migration, away from small ids people use.
fn server_id(source: &str, target: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in source.bytes().chain(target.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    0x4600_0000 | (h & 0x00ff_ffff)
}

/// Runs it; returns the exit code.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<i32> {
    let mut req = crate::settings::resolve_mysql(&args.endpoints)?;
    let stream_after = args.stop_after != Some(StopAfter::FullLoad);
    let source_id = req.source.describe();
    let state_schema = &args.endpoints.state_schema;
    let target = req.target.connect("mysql-state").await?;
    // A load of this source into this target that started and did not finish (a crash, a kill)
    // left tables that are Ferry's own: they are dropped and copied again from a new snapshot.
    // A finished one is resumed (the stream), or refused when only a load was asked for.
    let load = match ferry_mysql::load::load_state(&target, state_schema, &source_id).await? {
        Some(false) => {
            eprintln!("An earlier full load from {source_id} did not finish: its tables are dropped and copied again from a new snapshot");
            req.overwrite = true;
            true
        }
        Some(true) if req.overwrite => true,
        Some(true) if !stream_after => {
            return Err(UsageError(format!(
                "the full load from {source_id} into {} already finished; pass --overwrite to load it again (its tables are replaced)",
                req.target.describe()
            ))
            .into());
        }
        Some(true) => false,
        None => true,
    };
    // Checks: on a resume the target's tables are ours and full.
    let mut check_req = req.clone();
    if !load {
        check_req.overwrite = true;
    }
    let report = preflight::check(&check_req).await;
    if report.blocked() {
        eprint!("{}", crate::check_cmd::render_mysql(&report));
        eprintln!("ferry: the checks above found blockers; nothing was changed");
        return Ok(exit::FOUND_PROBLEM);
    }
    let plan = report.plan.expect("a report without blockers has a plan");
    if load {
        let jobs = args
            .endpoints
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        eprintln!(
            "Full load of {} ({} tables) into {} with {jobs} connection(s)",
            req.source.describe(),
            plan.tables.len(),
            req.target.describe()
        );
        ferry_mysql::load::mark_started(&target, state_schema, &source_id).await?;
        let summary = ferry_mysql::load::full_load(&req, &plan, jobs, args.endpoints.split_size).await?;
        ferry_mysql::load::mark_finished(&target, state_schema, &source_id, &summary).await?;
        println!(
            "Full load from {} done at binlog position {}:{} (GTID {}):",
            req.source.describe(),
            summary.binlog_file,
            summary.binlog_pos,
            if summary.gtid.is_empty() { "-" } else { &summary.gtid }
        );
        println!(
            "  {} table(s) copied in {} piece(s) (large tables split into key ranges)",
            summary.tables.len(),
            summary.pieces
        );
        for (t, n) in &summary.tables {
            println!("  {:<44} {:>14} rows", t, crate::check_cmd::human_count(*n as i64));
        }
        println!(
            "  schema {:.2}s, data {:.2}s, keys/indexes/foreign keys/identities {:.2}s",
            summary.seconds.0, summary.seconds.1, summary.seconds.2
        );
        if let Some(path) = &args.summary_json {
            std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
        }
        if !stream_after {
            return Ok(exit::OK);
        }
    }
    stream(args, &req, &plan, &target, &source_id).await
}

/// Change capture until SIGTERM/SIGINT.
async fn stream(
    args: &MigrateArgs,
    req: &preflight::MyCheckRequest,
    plan: &preflight::MyPlan,
    target: &tokio_postgres::Client,
    source_id: &str,
) -> anyhow::Result<i32> {
    let state_schema = &args.endpoints.state_schema;
    apply::ensure_state(target, state_schema).await?;
    let phase: Option<String> = target
        .query_opt(
            &format!(
                "SELECT phase FROM {}.mysql_loads WHERE source = $1",
                ferry_core::ident::quote_ident(state_schema)
            ),
            &[&source_id],
        )
        .await?
        .map(|r| r.get(0));
    if phase.as_deref() == Some("cut_over") {
        return Err(UsageError(format!(
            "the migration from {source_id} was cut over: the application writes to the target now, and there is nothing to stream"
        ))
        .into());
    }
    let Some((start, blocked)) = apply::state(target, state_schema, source_id).await? else {
        anyhow::bail!("no finished full load is recorded for {source_id}");
    };
    let skip_schema_change = match (&blocked, args.ddl_applied) {
        (Some(b), true) => Some((
            b["file"].as_str().unwrap_or_default().to_string(),
            b["pos"].as_u64().unwrap_or_default(),
        )),
        (None, true) => {
            return Err(UsageError("--ddl-applied: the stream did not stop at a schema change; nothing to skip".into()).into());
        }
        _ => None,
    };
    let tables = apply::stream_tables(target, state_schema, source_id, &plan.tables, args.ddl_applied).await?;
    let plan = &preflight::MyPlan { tables, ..plan.clone() };
    let opts = CdcOptions {
        server_id: server_id(source_id, &req.target.describe()),
        batch_changes: args.max_batch.max(1),
        batch_time: Duration::from_millis(args.max_delay_ms),
        skip_schema_change,
    };
    eprintln!(
        "Streaming changes from {source_id} (binlog {start}, replica server id {}) into {}; SIGTERM or Ctrl-C stops at a transaction boundary",
        opts.server_id,
        req.target.describe()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stats = Arc::new(CdcStats::default());
    let printer = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = stats.transactions.load(Ordering::Relaxed);
                eprintln!(
                    "CDC: {} transactions applied ({:.0}/s), {} row changes, lag {} s{}",
                    n,
                    (n - last) as f64 / 10.0,
                    stats.changes.load(Ordering::Relaxed),
                    stats.lag_seconds(),
                    match stats.reconnects.load(Ordering::Relaxed) {
                        0 => String::new(),
                        r => format!(", {r} reconnect(s)"),
                    }
                );
                last = n;
            }
        })
    };
    let result = apply::stream(req, plan, state_schema, source_id, &opts, stop_rx, &stats).await;
    printer.abort();
    let end = result?;
    println!(
        "Stopped at binlog position {end} (GTID {}): {} source transactions, {} row changes applied in this run",
        if end.gtid.is_empty() { "-" } else { &end.gtid },
        stats.transactions.load(Ordering::Relaxed),
        stats.changes.load(Ordering::Relaxed)
    );
    Ok(exit::OK)
}
