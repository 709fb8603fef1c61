//! `ferry migrate` with a MySQL/MariaDB source: the checks, the full load from one consistent
//! snapshot, then change capture from the binlog until SIGTERM/SIGINT (`docs/mysql-cdc.md`).
//! Every step is resumable: the same command after a crash reloads an unfinished load, or
//! resumes the stream from the last position committed on the target. The migration is
//! recorded in Ferry's state schema like a PostgreSQL one (`ferry_mysql::state`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{BinlogPosition, Phase};
use ferry_mysql::cdc::{self, CdcOptions, CdcStats};
use ferry_mysql::preflight;
use ferry_mysql::state::{LoadState, MyState};

use crate::cli::{MigrateArgs, StopAfter};
use crate::exit::{self, UsageError};
use crate::mysql_control::{ApiControl, MYSQL_FINAL_WAIT};

/// Who moves the phases here.
const ACTOR: &str = "ferry migrate";

/// Opens the migration from `source` into `target_ep` in Ferry's state on the target (see
/// `MyState::open`: the id is `given_id` sanitized, else the one recorded for this source, else
/// derived from the target as for PostgreSQL sources; state of an earlier version is converted).
/// None: nothing recorded and `create` not asked.
pub async fn open_state(
    c: &mut tokio_postgres::Client,
    source: &ferry_mysql::MyEndpoint,
    target_ep: &ferry_postgres::Endpoint,
    schema: &str,
    given_id: Option<&str>,
    actor: &str,
    create: bool,
) -> anyhow::Result<Option<MyState>> {
    let given = crate::settings::given_migration_id(given_id)?;
    let default = crate::settings::default_migration_id(target_ep);
    Ok(MyState::open(
        c,
        schema,
        given.as_deref(),
        &default,
        &source.describe(),
        source.database(),
        &target_ep.describe(),
        actor,
        create,
    )
    .await?)
}

/// The HTTP API asked for (`--listen`): where, the token, TLS and host names.
type ApiSettings = (std::net::SocketAddr, Option<ferry_core::Secret>, crate::server::ListenOptions);

/// Reads and checks the API's settings, as for a PostgreSQL source (token file, TLS files, a
/// non-loopback address without a token refused), before anything is changed.
fn api_settings(args: &MigrateArgs) -> anyhow::Result<Option<ApiSettings>> {
    let crate::cli::Listen::At(addr) = args.listen else {
        return Ok(None);
    };
    let token = crate::api_token(args.api_token_file.as_deref())?;
    crate::server::check_exposure(addr, token.is_some()).map_err(|e| UsageError(format!("--listen: {e:#}")))?;
    let listen = crate::server::ListenOptions::new(args.api_tls_cert.as_deref(), args.api_tls_key.as_deref(), &args.api_allowed_host)
        .map_err(|e| UsageError(format!("{e:#}")))?;
    Ok(Some((addr, token, listen)))
}

/// Serves the HTTP API, `/metrics` and the dashboard for this migration (the server of
/// PostgreSQL sources: `crate::server`), fed by a sampler of its state and source.
async fn serve_api(
    (addr, token, listen): ApiSettings,
    req: &preflight::MyCheckRequest,
    state: &MyState,
    webhook: Option<crate::status::Webhook>,
) -> anyhow::Result<Arc<crate::live::Live>> {
    let live = Arc::new(crate::live::Live::for_mysql());
    let api = crate::server::Api {
        live: live.clone(),
        metrics: Arc::new(crate::metrics::Metrics::new()),
        token: token.map(Arc::new),
        target: req.target.clone(),
        store: state.store().clone(),
        migration_id: state.id().to_string(),
        // Verification and cutover of a MySQL source: `ApiControl`; rollback and complete
        // are refused (`server::mysql_not_yet`).
        verify: None,
        switchboard: None,
        mysql: Some(Arc::new(ApiControl::new(req.clone(), state.clone(), webhook))),
    };
    crate::server::serve(addr, api, &listen)
        .await
        .map_err(|e| UsageError(format!("--listen: {e:#}")))?;
    tokio::spawn(
        live.clone()
            .sample_mysql_forever(req.target.clone(), req.source.clone(), state.clone()),
    );
    Ok(live)
}

/// Runs it; returns the exit code.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<i32> {
    let api = api_settings(args)?;
    // Checked at start, not at cutover time.
    let webhook = args
        .webhook
        .as_deref()
        .map(|u| crate::status::Webhook::new(u, args.webhook_ca.as_deref()))
        .transpose()?;
    if webhook.is_some() && api.is_none() {
        return Err(UsageError(
            "--webhook with a MySQL/MariaDB source is for cutovers through the API (--listen); ferry cutover --source ... --webhook URL \
             sends it for a cutover made from the command line"
                .into(),
        )
        .into());
    }
    let mut req = crate::settings::resolve_mysql(&args.endpoints)?;
    let stream_after = args.stop_after != Some(StopAfter::FullLoad);
    let source_id = req.source.describe();
    let state_schema = &args.endpoints.state_schema;
    let mut target = req.target.connect("mysql-state").await?;
    let mut state = open_state(
        &mut target,
        &req.source,
        &req.target,
        state_schema,
        args.endpoints.migration_id.as_deref(),
        ACTOR,
        true,
    )
    .await?
    .expect("created when missing");
    // A migration already loaded stays in the schema it was loaded into; a new load goes where
    // --target-schema says (public by default).
    let reload = req.overwrite || state.load_state(&target).await? != LoadState::Finished;
    req.target_schema = state.choose_target_schema(args.endpoints.target_schema.as_deref(), reload)?;
    let live = match api {
        Some(settings) => Some(serve_api(settings, &req, &state, webhook).await?),
        None => None,
    };
    // A load of this source into this target that started and did not finish (a crash, a kill)
    // left tables that are Ferry's own: they are dropped and copied again from a new snapshot.
    // A finished one is resumed (the stream), or refused when only a load was asked for.
    let load = match state.load_state(&target).await? {
        LoadState::Unfinished => {
            eprintln!("An earlier full load from {source_id} did not finish: its tables are dropped and copied again from a new snapshot");
            req.overwrite = true;
            true
        }
        LoadState::Finished if req.overwrite => true,
        LoadState::Finished if !stream_after => {
            return Err(UsageError(format!(
                "the full load from {source_id} into {} already finished; pass --overwrite to load it again (its tables are replaced)",
                req.target.describe()
            ))
            .into());
        }
        LoadState::Finished => false,
        LoadState::None => true,
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
        state.start_load(&target, &plan.tables, ACTOR).await?;
        let summary = ferry_mysql::snapshot::full_load(&req, &plan, jobs, args.endpoints.split_size, &state).await?;
        state.finish_load(&target, &serde_json::to_value(&summary)?, ACTOR).await?;
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
        print!("{}", render_objects(&summary));
        if let Some(path) = &args.summary_json {
            std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
        }
        if !stream_after {
            return Ok(exit::OK);
        }
    }
    stream(args, &req, &plan, &target, &state, !load, live.as_deref()).await
}

/// The load summary's lines about objects besides tables: the target schema, views created,
/// indexes translated, and every object to port by hand with why and its MySQL definition.
fn render_objects(summary: &ferry_mysql::snapshot::LoadSummary) -> String {
    let o = &summary.objects;
    let mut out = format!("  tables in schema {}\n", summary.target_schema);
    if !o.views_created.is_empty() {
        out.push_str(&format!("  views created: {}\n", o.views_created.join(", ")));
    }
    for i in &o.indexes_translated {
        out.push_str(&format!("  index translated: {i}\n"));
    }
    if !o.port_by_hand.is_empty() {
        out.push_str(&format!(
            "  {} object(s) NOT migrated, to port by hand before the cutover:\n",
            o.port_by_hand.len()
        ));
        for p in &o.port_by_hand {
            out.push_str(&format!("    {} {}: {}\n", p.kind, p.name, p.reason));
            if let Some(d) = &p.definition {
                for line in d.lines() {
                    out.push_str(&format!("        {line}\n"));
                }
            }
        }
    }
    out
}

/// Change capture until SIGTERM/SIGINT, in the direction the phase says: the binlog stream into
/// the target until a cutover, then the target's writes back to the source (the reverse
/// stream) until a rollback, then forward again.
#[allow(clippy::too_many_arguments)]
async fn stream(
    args: &MigrateArgs,
    req: &preflight::MyCheckRequest,
    plan: &preflight::MyPlan,
    target: &tokio_postgres::Client,
    state: &MyState,
    restarted: bool,
    live: Option<&crate::live::Live>,
) -> anyhow::Result<i32> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stats = Arc::new(CdcStats::default());
    if let Some(live) = live {
        live.set_mysql(stats.clone());
    }
    let mut first = true;
    loop {
        // A session of its own for each direction: a rollback ends every session on the target
        // that could write, this process's too (it runs in `ferry rollback`).
        let fresh;
        let target = if first {
            target
        } else {
            fresh = req.target.connect("mysql-state").await?;
            &fresh
        };
        match state.phase(target).await? {
            Some(Phase::CutOver | Phase::Rollback) => {
                // A cutover by an earlier version made no reverse stream: nothing can stream back.
                let rev = state.reverse_stream();
                if ferry_postgres::slot::slot_status(target, &rev.slot).await?.is_none() {
                    return Err(UsageError(format!(
                        "the migration from {} was cut over without reverse replication (no slot {} on the target): the application \
                         writes to the target, and there is nothing to stream",
                        state.source(),
                        rev.slot
                    ))
                    .into());
                }
                reverse(args, req, plan, state, &stop_rx, live).await?
            }
            Some(Phase::RolledBack) => {
                after_rollback(req, state, target).await?;
                first = false;
                continue;
            }
            phase => forward(args, req, plan, target, state, restarted && first, phase, live, &stop_rx, &stats).await?,
        }
        first = false;
        if *stop_rx.borrow() {
            return Ok(exit::OK);
        }
    }
}

/// The binlog stream into the target, until SIGTERM/SIGINT or the cutover.
#[allow(clippy::too_many_arguments)]
async fn forward(
    args: &MigrateArgs,
    req: &preflight::MyCheckRequest,
    plan: &preflight::MyPlan,
    target: &tokio_postgres::Client,
    state: &MyState,
    restarted: bool,
    phase: Option<Phase>,
    live: Option<&crate::live::Live>,
    stop_rx: &tokio::sync::watch::Receiver<bool>,
    stats: &Arc<CdcStats>,
) -> anyhow::Result<()> {
    let source_id = state.source();
    let Some((start, blocked)) = state.resume_point(target).await? else {
        anyhow::bail!("no finished full load is recorded for {source_id}");
    };
    if restarted {
        if let Some(p) = phase {
            state
                .restarted(
                    target,
                    ACTOR,
                    &format!("ferry migrate restarted in phase {p}; streaming from {start}"),
                )
                .await?;
        }
    }
    let skip_schema_change = match (&blocked, args.ddl_applied) {
        (Some(b), true) => Some(
            BinlogPosition::new(b["file"].as_str().unwrap_or_default(), b["pos"].as_u64().unwrap_or_default(), "")
                .map_err(|e| anyhow::anyhow!("the schema change the stream stopped at has no readable position: {e}"))?,
        ),
        (None, true) => {
            return Err(UsageError(
                "--ddl-applied: the stream did not stop at a schema change or a statement it cannot apply; nothing to skip".into(),
            )
            .into());
        }
        _ => None,
    };
    let tables = state.stream_tables(target, &plan.tables, args.ddl_applied, ACTOR).await?;
    let plan = &preflight::MyPlan { tables, ..plan.clone() };
    let opts = CdcOptions {
        server_id: ferry_mysql::state::replica_server_id(source_id, &req.target.describe()),
        batch_changes: args.max_batch.max(1),
        batch_time: Duration::from_millis(args.max_delay_ms),
        skip_schema_change,
        skip_dead_letters: args.skip_dead_letters,
    };
    eprintln!(
        "Streaming changes from {source_id} (binlog {}, replica server id {}) into {}; SIGTERM or Ctrl-C stops at a transaction boundary",
        start.file_pos(),
        opts.server_id,
        req.target.describe()
    );
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
    // Runs until SIGTERM/SIGINT or the cutover. A pause through the API ends the current run at
    // a transaction boundary (the source's binlog keeps the changes, as a slot does for a
    // PostgreSQL source); a resume starts the next run from the stored position.
    let mut paused = live.map(|l| l.pause_receiver());
    let mut end = start.clone();
    let result = loop {
        if let Some(p) = paused.as_mut().filter(|p| *p.borrow()) {
            eprintln!(
                "Change capture paused through the API at binlog {}; POST /api/resume (ferry resume) continues from there",
                end.file_pos()
            );
            if !wait_paused(p, stop_rx, state, target).await {
                break Ok(end);
            }
            eprintln!("Change capture resumed through the API");
        }
        // This run ends at a transaction boundary on SIGTERM/SIGINT, and on a pause.
        let (run_tx, run_rx) = tokio::sync::watch::channel(false);
        let forward = {
            let mut stop = stop_rx.clone();
            let mut pause = paused.clone();
            tokio::spawn(async move {
                match pause.as_mut() {
                    Some(p) => tokio::select! {
                        _ = stop.wait_for(|v| *v) => {}
                        _ = p.wait_for(|v| *v) => {}
                    },
                    None => {
                        let _ = stop.wait_for(|v| *v).await;
                    }
                }
                let _ = run_tx.send(true);
            })
        };
        let run = cdc::stream(req, plan, state, &opts, run_rx, stats).await;
        forward.abort();
        match run {
            Ok(p) => end = p,
            Err(e) => break Err(e),
        }
        if *stop_rx.borrow() || paused.is_none() {
            break Ok(end);
        }
        match state.phase(target).await {
            Ok(Some(Phase::CutOver)) => break Ok(end),
            Err(e) => break Err(e),
            // Paused (or paused and resumed already): the loop waits for the resume.
            _ => {}
        }
    };
    printer.abort();
    let end = result?;
    if state.phase(target).await? == Some(Phase::CutOver) {
        println!(
            "The migration was cut over (ferry cutover): the binlog stream is done; the target's writes now stream back to the source."
        );
    }
    println!(
        "Stopped at binlog position {} (GTID {}): {} source transactions, {} row changes applied in this run",
        end.file_pos(),
        if end.gtid().is_empty() { "-" } else { end.gtid() },
        stats.transactions.load(Ordering::Relaxed),
        stats.changes.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Reverse replication after the cutover: the target's writes back to the source, so that
/// `ferry rollback` loses nothing, until SIGTERM/SIGINT or a rollback is recorded (the phase
/// leaves `cut_over`/`rollback`). The PostgreSQL stream's driver feeds the MySQL sink
/// (`ferry_mysql::apply`), from the slot the cutover created before writes moved. A failure
/// the driver does not retry is logged loudly and recorded, and the process keeps serving:
/// the application runs on the target, and a rollback would now lose writes (it is refused
/// until the stream has caught up again).
async fn reverse(
    args: &MigrateArgs,
    req: &preflight::MyCheckRequest,
    plan: &preflight::MyPlan,
    state: &MyState,
    stop: &tokio::sync::watch::Receiver<bool>,
    live: Option<&crate::live::Live>,
) -> anyhow::Result<()> {
    use ferry_postgres::cdc::{self as pg_cdc, CdcProgress};
    let rev = state.reverse_stream();
    let sinks = ferry_mysql::apply::MySinks {
        endpoint: req.source.clone(),
        tables: plan.tables.iter().map(|t| t.name.clone()).collect(),
        target_schema: state.target_schema().to_string(),
        state_db: state.store().schema().to_string(),
        migration_id: state.id().to_string(),
        state: req.target.clone(),
        state_schema: state.store().schema().to_string(),
    };
    let copts = pg_cdc::CdcOptions {
        source: req.target.clone(),
        slot: rev.slot.clone(),
        publication: rev.publication,
        max_batch: args.max_batch.max(1),
        max_delay: Duration::from_millis(args.max_delay_ms),
        commit_interval: args.commit_interval,
        skip_dead_letters: false,
        pause: None,
        hold: None,
        stream_timeout: args.stream_timeout,
        apply_timeout: args.apply_timeout,
    };
    // This run ends on SIGTERM/SIGINT, or when the phase leaves cut_over/rollback (read on a
    // session of its own, five times a second: a rollback waits for nothing else).
    let (run_tx, run_rx) = tokio::sync::watch::channel(false);
    let watcher = {
        let mut stop = stop.clone();
        let (target, state) = (req.target.clone(), state.clone());
        tokio::spawn(async move {
            let mut c = None;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|v| *v) => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                if c.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
                    c = target.connect("reverse-phase").await.ok();
                }
                let Some(client) = &c else { continue };
                match state.phase(client).await {
                    Ok(Some(Phase::CutOver | Phase::Rollback)) => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the migration's phase; reverse replication goes on");
                        c = None;
                    }
                }
            }
            let _ = run_tx.send(true);
        })
    };
    eprintln!(
        "Reverse replication: changes on {} stream back to {} (slot {}), so that ferry rollback loses nothing; SIGTERM or Ctrl-C stops at a transaction boundary",
        req.target.describe(),
        req.source.describe(),
        rev.slot
    );
    let progress = Arc::new(CdcProgress::default());
    // The status, /metrics and the dashboard show the reverse stream as for a PostgreSQL source.
    if let Some(live) = live {
        live.set_reverse(Some(progress.clone()));
    }
    let result = pg_cdc::run(copts, &sinks, run_rx.clone(), progress.clone()).await;
    if let Err(e) = result {
        tracing::error!(
            error = %e,
            "reverse replication stopped: writes on the target no longer reach the source, so a rollback would lose them; \
             the application keeps running on the target. Fix the cause and restart ferry migrate to resume the reverse stream"
        );
        let note = format!("reverse replication stopped: {e}");
        if let Ok(c) = req.target.connect("control").await {
            if let Err(e) = state.store().event(&c, state.id(), Phase::CutOver, "reverse_stopped", &note).await {
                tracing::warn!(error = %e, "could not record the stop of reverse replication");
            }
        }
        let mut run_rx = run_rx;
        let _ = run_rx.wait_for(|v| *v).await;
    }
    watcher.abort();
    if let Some(live) = live {
        live.set_reverse(None);
    }
    eprintln!(
        "Reverse replication stopped: {} target transactions applied on the source in this run",
        progress.txns.load(Ordering::Relaxed)
    );
    Ok(())
}

/// After a rollback (phase `rolled_back`, recorded by `ferry rollback` with the binlog position
/// the forward stream resumes at): drops the reverse stream's slot and publication on the
/// target and moves the migration back to `cdc`. Idempotent: a crash in between does it again.
async fn after_rollback(req: &preflight::MyCheckRequest, state: &MyState, target: &tokio_postgres::Client) -> anyhow::Result<()> {
    use ferry_core::switch::SwitchSide;
    let c = req.target.connect("switch").await?;
    let side = ferry_postgres::switch::PgSide::new(&c, &req.target, "target").with_reverse(state.reverse_stream());
    // The reverse stream's WAL sender outlives its closed connection by a moment, and the slot
    // cannot be dropped while it is active: try again for a while (CI saw it).
    let started = std::time::Instant::now();
    loop {
        match side.drop_reverse().await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "the reverse slot is still in use; dropping it again shortly");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    state
        .gate_phase(
            target,
            Phase::Cdc,
            ACTOR,
            "rolled back: the reverse stream is dropped; the binlog stream resumes",
        )
        .await?;
    eprintln!("The migration was rolled back: the binlog stream into the target resumes");
    Ok(())
}

/// While change capture is paused through the API: true when it is resumed, false on
/// SIGTERM/SIGINT or when the migration was cut over meanwhile (read once a second).
async fn wait_paused(
    paused: &mut tokio::sync::watch::Receiver<bool>,
    stop: &tokio::sync::watch::Receiver<bool>,
    state: &MyState,
    target: &tokio_postgres::Client,
) -> bool {
    let mut stop = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return false,
            _ = paused.wait_for(|v| !*v) => return true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if matches!(state.phase(target).await, Ok(Some(Phase::CutOver))) {
                    return false;
                }
            }
        }
    }
}

/// The migration a `ferry cutover`/`ferry rollback --source mysql://...` switches (`actor` in
/// its messages); None when none is recorded (said on stderr).
async fn switch_request(args: &crate::cli::SwitchArgs, actor: &str) -> anyhow::Result<Option<(preflight::MyCheckRequest, MyState)>> {
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
        target_schema: args.target_schema.clone(),
    };
    let mut req = crate::settings::resolve_mysql(&endpoints)?;
    let mut t = req.target.connect("mysql-switch").await?;
    let Some(mut state) = open_state(&mut t, &req.source, &req.target, &args.state_schema, None, actor, false).await? else {
        eprintln!(
            "ferry: {} refused or aborted: no finished migration from {} is recorded on this target (fix: run ferry migrate first (same --source and --target))",
            actor.trim_start_matches("ferry "),
            req.source.describe()
        );
        return Ok(None);
    };
    req.target_schema = state.choose_target_schema(args.target_schema.as_deref(), false)?;
    drop(t);
    Ok(Some((req, state)))
}

/// `ferry cutover --source mysql://...`: the switchboard without a proxy
/// (`crate::mysql_switch::mysql_cutover`), then the webhook; exit 0 when the application may switch
/// to the target.
pub async fn cutover(args: &crate::cli::SwitchArgs) -> anyhow::Result<i32> {
    if args.require_shadow_clean.is_some() {
        return Err(exit::UsageError(
            "--require-shadow-clean does not apply to a MySQL/MariaDB source: shadow traffic runs through the PostgreSQL proxy".into(),
        )
        .into());
    }
    let Some((req, state)) = switch_request(args, "ferry cutover").await? else {
        return Ok(exit::FOUND_PROBLEM);
    };
    // A bad webhook (CA file) is refused before the switch, not after it.
    let hook = args
        .webhook
        .as_deref()
        .map(|u| crate::status::Webhook::new(u, args.webhook_ca.as_deref()))
        .transpose()?;
    let opts = crate::cutover::SwitchOptions {
        // --max-pause is the proxy's pause: without one, the stream gets this long to apply
        // the final position once writers are gone, as the gate always gave it.
        max_pause: MYSQL_FINAL_WAIT,
        max_lag: args.max_lag,
        catch_up: std::time::Duration::ZERO,
        allow_direct_sessions: true,
        no_proxy: true,
        grace: args.grace,
        skip_verify_check: args.skip_verify_check,
        shadow_clean_for: None,
        actor: "ferry cutover".into(),
    };
    let report = match crate::mysql_switch::mysql_cutover(&req, &state, &opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cutover refused or aborted: {e}");
            return Ok(exit::FOUND_PROBLEM);
        }
    };
    if let Some(hook) = &hook {
        // Awaited (the process exits next), at most `status::WEBHOOK_TIMEOUT`: a webhook that
        // hangs does not hold the exit long, and the switch is done whatever it answers.
        hook.announce("cutover", &crate::mysql_control::cutover_webhook_body(&req, &report))
            .await;
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
        println!(
            "Point the application at the target now. The source stays read-only; ferry migrate streams the target's writes back to it, so that ferry rollback loses nothing."
        );
    }
    Ok(exit::OK)
}

/// `ferry rollback --source mysql://...`: the switchboard without a proxy, the other way round
/// (`crate::mysql_switch::mysql_rollback`), then the webhook; exit 0 when the application may
/// switch back to the source.
pub async fn rollback(args: &crate::cli::SwitchArgs) -> anyhow::Result<i32> {
    let Some((req, state)) = switch_request(args, "ferry rollback").await? else {
        return Ok(exit::FOUND_PROBLEM);
    };
    let hook = args
        .webhook
        .as_deref()
        .map(|u| crate::status::Webhook::new(u, args.webhook_ca.as_deref()))
        .transpose()?;
    let opts = crate::mysql_control::rollback_options(args.max_lag, args.grace, "ferry rollback");
    let report = match crate::mysql_switch::mysql_rollback(&req, &state, &opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: rollback refused or aborted: {e}");
            return Ok(exit::FOUND_PROBLEM);
        }
    };
    if let Some(hook) = &hook {
        // Awaited (the process exits next), at most `status::WEBHOOK_TIMEOUT`: a webhook that
        // hangs does not hold the exit long, and the switch is done whatever it answers.
        hook.announce("rollback", &crate::mysql_control::rollback_webhook_body(&req, &report))
            .await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "Rolled back from {} to {}: writes stopped on the target for {:.0} ms while the source applied everything up to {}.",
            req.target.describe(),
            req.source.describe(),
            report.pause_ms.unwrap_or(0.0),
            report.final_lsn.as_deref().unwrap_or("?")
        );
        for i in &report.identities {
            println!("  AUTO_INCREMENT {i}");
        }
        for k in &report.ended {
            println!("  ended after --grace: session {k}");
        }
        println!(
            "Point the application at the source now. ferry migrate streams the source's changes to the target again; a later cutover works as the first did."
        );
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
    let mut t = target.connect("mysql-status").await?;
    let mut state = open_state(
        &mut t,
        &source,
        &target,
        &args.state_schema,
        args.migration_id.as_deref(),
        "ferry status",
        false,
    )
    .await?;
    if let Some(state) = &mut state {
        crate::settings::target_schema(args.target_schema.as_deref(), &args.state_schema)?;
        state.choose_target_schema(args.target_schema.as_deref(), false)?;
    }
    let recorded = match &state {
        Some(state) => state.status_json(&t).await?,
        None => None,
    };
    let Some(mut st) = recorded else {
        return Err(UsageError(format!(
            "no migration from {source_id} is recorded in {} (schema {})",
            target.describe(),
            args.state_schema
        ))
        .into());
    };
    // The source's end of binlog, when it can be reached.
    if let Ok(end) = ferry_mysql::cutover::binlog_end(&source).await {
        st["source_file"] = end.file().into();
        st["source_pos"] = end.pos().into();
        if st["applied_file"].as_str() == Some(end.file()) {
            st["bytes_behind"] = end.pos().saturating_sub(st["applied_pos"].as_u64().unwrap_or(0)).into();
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(exit::OK);
    }
    let s = |k: &str| st[k].as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    println!("MySQL/MariaDB migration from {source_id} into {}", target.describe());
    println!("  migration id   {}", s("migration_id"));
    println!("  phase          {}", s("phase"));
    println!("  target schema  {}", s("target_schema"));
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
        let (what, fix) = ferry_mysql::state::blocked_text(&st["blocked_at"]);
        println!(
            "  STOPPED before {what} at {}:{}: {} ({fix})",
            st["blocked_at"]["file"].as_str().unwrap_or("-"),
            st["blocked_at"]["pos"],
            st["blocked_at"]["query"].as_str().unwrap_or("-")
        );
    }
    if let Some(n) = st["dead_letters"].as_i64().filter(|n| *n > 0) {
        println!(
            "  dead letters   {n}: changes the target rejected, in {}.dead_letters",
            args.state_schema
        );
        for d in st["recent_dead_letters"].as_array().into_iter().flatten().take(5) {
            let f = |k: &str| d[k].as_str().unwrap_or("-").to_string();
            println!(
                "    {} {} {} at {} (change {}): {}{}",
                f("operation"),
                f("table"),
                f("key"),
                f("commit_position"),
                d["change_index"],
                f("error"),
                if d["skipped"].as_bool() == Some(true) { " (skipped)" } else { "" }
            );
        }
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
