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
    let phase = apply::phase(target, state_schema, source_id).await?;
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
    let phase = apply::phase(target, state_schema, source_id).await?;
    if phase.as_deref() == Some("cut_over") {
        println!("The migration was cut over (ferry cutover): the stream is done.");
    }
    println!(
        "Stopped at binlog position {end} (GTID {}): {} source transactions, {} row changes applied in this run",
        if end.gtid.is_empty() { "-" } else { &end.gtid },
        stats.transactions.load(Ordering::Relaxed),
        stats.changes.load(Ordering::Relaxed)
    );
    Ok(exit::OK)
}

/// `ferry cutover --source mysql://...`: the gate (see `ferry_mysql::cutover`), then the
/// webhook; exit 0 when the application may switch to the target.
pub async fn cutover(args: &crate::cli::SwitchArgs) -> anyhow::Result<i32> {
    let (Some(source), Some(target)) = (&args.source, &args.target) else {
        return Err(UsageError("give --source and --target".into()).into());
    };
    let endpoints = crate::cli::Endpoints {
        source: source.clone(),
        target: target.clone(),
        source_password_file: args.source_password_file.clone(),
        target_password_file: args.target_password_file.clone(),
        include: Vec::new(),
        exclude: Vec::new(),
        jobs: None,
        migration_id: None,
        state_schema: args.state_schema.clone(),
        pg_bin_dir: None,
        overwrite: false,
        split_size: 0,
        zero_dates: crate::cli::ZeroDatesArg::Error,
        tinyint1_boolean: false,
    };
    let req = crate::settings::resolve_mysql(&endpoints)?;
    // A bad webhook (CA file) is refused before the switch, not after it.
    let hook = args
        .webhook
        .as_deref()
        .map(|u| crate::status::Webhook::new(u, args.webhook_ca.as_deref()))
        .transpose()?;
    let opts = ferry_mysql::cutover::GateOptions {
        state_schema: args.state_schema.clone(),
        source_id: req.source.describe(),
        grace: args.grace,
        max_lag: args.max_lag,
        skip_verify_check: args.skip_verify_check,
    };
    let report = match ferry_mysql::cutover::cutover(&req, &opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cutover refused or aborted: {e}");
            return Ok(exit::FOUND_PROBLEM);
        }
    };
    if let Some(url) = &hook {
        let body = serde_json::json!({
            "event": "cutover",
            "source": req.source.describe(),
            "target": req.target.describe(),
            "report": report,
        });
        // A webhook that hangs must not hold the cutover's exit (the switch is done).
        match tokio::time::timeout(Duration::from_secs(10), url.post(&body)).await {
            Ok(Ok(code)) if (200..300).contains(&code) => eprintln!("webhook {url} answered {code}"),
            Ok(Ok(code)) => eprintln!("warning: webhook {url} answered {code}"),
            Ok(Err(e)) => eprintln!("warning: {e:#}"),
            Err(_) => eprintln!("warning: webhook {url} did not answer within 10 s"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "Cut over from {} to {}: writes stopped on the source for {:.0} ms while the target applied everything up to binlog {}.",
            req.source.describe(),
            req.target.describe(),
            report.write_pause_ms,
            report.final_position
        );
        for i in &report.identities {
            println!("  identity {i}");
        }
        for k in &report.killed {
            println!("  killed after --grace: session {k}");
        }
        if !report.still_connected.is_empty() {
            println!(
                "  still connected to the source (read-only now; users with SUPER or READ ONLY ADMIN could still write): {}",
                report.still_connected.join(", ")
            );
        }
        println!("Point the application at the target now. The source stays read-only; rollback to it is not built yet.");
    }
    Ok(exit::OK)
}

/// `ferry status --source mysql://... --target ...`: the migration's state from the target,
/// and how far behind the source's binlog end the stream is.
pub async fn status(args: &crate::cli::StatusArgs) -> anyhow::Result<i32> {
    let (Some(source), Some(target)) = (&args.source, &args.target) else {
        return Err(UsageError("a MySQL/MariaDB migration's status needs --source and --target".into()).into());
    };
    let source = ferry_mysql::MyEndpoint::parse(source, std::env::var("FERRY_SOURCE_PASSWORD").ok().map(ferry_core::Secret::new))
        .map_err(|e| UsageError(format!("--source: {e}")))?;
    let target = crate::settings::pg_endpoint(target, None, "FERRY_TARGET_PASSWORD", "target")?;
    let source_id = source.describe();
    let t = target.connect("mysql-status").await?;
    if ferry_mysql::load::load_state(&t, &args.state_schema, &source_id).await?.is_none() {
        return Err(UsageError(format!(
            "no migration from {source_id} is recorded in {} (schema {})",
            target.describe(),
            args.state_schema
        ))
        .into());
    }
    apply::ensure_state(&t, &args.state_schema).await?;
    let row = t
        .query_one(
            &format!(
                "SELECT jsonb_build_object(
                    'source', source, 'phase', phase, 'load_started_at', started_at, 'load_finished_at', finished_at,
                    'load', summary, 'applied_file', cdc_file, 'applied_pos', cdc_pos, 'applied_gtid', cdc_gtid,
                    'transactions', cdc_transactions, 'last_apply_at', cdc_applied_at,
                    'seconds_since_last_apply', extract(epoch FROM clock_timestamp() - cdc_applied_at)::float8,
                    'blocked_at', cdc_blocked, 'verified_at', verified_at, 'verify_differences', verify_differences,
                    'cutover', cutover)::text
                 FROM {}.mysql_loads WHERE source = $1",
                ferry_core::ident::quote_ident(&args.state_schema)
            ),
            &[&source_id],
        )
        .await?;
    let mut st: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0))?;
    // The source's end of binlog, when it can be reached.
    if let Ok((file, pos)) = ferry_mysql::cutover::binlog_end(&source).await {
        st["source_file"] = file.clone().into();
        st["source_pos"] = pos.into();
        if st["applied_file"].as_str() == Some(file.as_str()) {
            st["bytes_behind"] = pos.saturating_sub(st["applied_pos"].as_u64().unwrap_or(0)).into();
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(exit::OK);
    }
    let s = |k: &str| st[k].as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    println!("MySQL/MariaDB migration from {source_id} into {}", target.describe());
    println!("  phase          {}", s("phase"));
    if st["load_finished_at"].is_null() {
        println!(
            "  full load      started {}, not finished (ferry migrate loads it again)",
            s("load_started_at")
        );
    } else {
        let tables = st["load"]["tables"].as_array().map(Vec::len).unwrap_or(0);
        let rows: u64 = st["load"]["tables"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t[1].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "  full load      finished {}: {tables} table(s), {} rows, snapshot at binlog {}:{}",
            s("load_finished_at"),
            crate::check_cmd::human_count(rows as i64),
            st["load"]["binlog_file"].as_str().unwrap_or("-"),
            st["load"]["binlog_pos"]
        );
    }
    if st["applied_file"].is_null() && st["phase"] == "cdc" {
        println!("  stream         no source transaction applied yet (it starts at the snapshot's position)");
    }
    if !st["applied_file"].is_null() {
        println!(
            "  stream         applied up to binlog {}:{} (GTID {}), {} source transactions, last commit {:.0} s ago",
            s("applied_file"),
            st["applied_pos"],
            s("applied_gtid"),
            crate::check_cmd::human_count(st["transactions"].as_i64().unwrap_or(0)),
            st["seconds_since_last_apply"].as_f64().unwrap_or(0.0)
        );
    }
    if !st["source_file"].is_null() {
        println!(
            "  source         binlog at {}:{}{}",
            s("source_file"),
            st["source_pos"],
            st["bytes_behind"]
                .as_u64()
                .map(|b| format!(" ({b} bytes not applied yet)"))
                .unwrap_or_default()
        );
    }
    if !st["blocked_at"].is_null() {
        println!(
            "  STOPPED before a schema change at {}:{}: {} (make it on the target, then ferry migrate --ddl-applied)",
            st["blocked_at"]["file"].as_str().unwrap_or("-"),
            st["blocked_at"]["pos"],
            st["blocked_at"]["query"].as_str().unwrap_or("-")
        );
    }
    match st["verify_differences"].as_i64() {
        Some(n) => println!("  verification   {}: {n} difference(s)", s("verified_at")),
        None => println!("  verification   none yet (ferry verify --source ... --target ...)"),
    }
    if !st["cutover"].is_null() {
        println!(
            "  cutover        done at binlog {}; the source is read-only",
            st["cutover"]["final_position"].as_str().unwrap_or("-")
        );
    }
    Ok(exit::OK)
}
