//! `ferry verify`: standalone between two databases, or against a running migration at one
//! consistent point while changes flow (through the migration's API, which stores each run).
//!
//! The consistent point: a temporary logical slot created on the source exports a snapshot and
//! names its position P; the running applier is held at P (every source transaction before P
//! applied, none after), the target snapshot is exported there, and the applier goes on. Both
//! snapshots then hold exactly the same source transactions, so nothing in flight can show as a
//! difference, and the applier pauses only while the target snapshot opens.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Lsn, TableFilter};
use ferry_postgres::cdc::Hold;
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::state::StateStore;
use ferry_postgres::verify::{self, DiffKind, Options, Progress, Report, Snapshots, TablePlan};
use ferry_postgres::{Endpoint, PgError};
use tokio_postgres::Client;

/// What a verification needs.
#[derive(Debug, Clone)]
pub struct VerifyCtx {
    /// Source.
    pub source: Endpoint,
    /// Target.
    pub target: Endpoint,
    /// Tables.
    pub filter: TableFilter,
    /// State schema (skipped when listing tables; runs are stored there in API mode).
    pub state_schema: String,
    /// Range readers.
    pub options: Options,
    /// The running applier, when verifying a running migration.
    pub hold: Option<Arc<Hold>>,
}

/// Open snapshots: the transactions (and the temporary slot) that keep them importable.
struct Held {
    snaps: Snapshots,
    source_lsn: Option<Lsn>,
    _source: Option<Client>,
    repl: Option<ReplicationConnection>,
    _target: Client,
}

/// Opens the two snapshots: at one consistent point when an applier can be held, else each
/// side as it is now.
async fn snapshots(ctx: &VerifyCtx) -> Result<Held, PgError> {
    match &ctx.hold {
        Some(hold) => {
            let mut repl = ReplicationConnection::connect(&ctx.source).await?;
            let name = format!("ferry_verify_{}_{}", std::process::id(), rand_suffix());
            // Freeze first: the slot's position P is only known once it exists, and the
            // applier must not have gone past it by then. Everything it applied before the
            // freeze committed before the slot's creation began, hence before P.
            let guard = hold.freeze(Duration::from_secs(120)).await?;
            let slot = consistent_slot(&ctx.source, &mut repl, &name).await?;
            guard.move_to(slot.consistent_point, Duration::from_secs(120)).await?;
            let exported = verify::export_snapshot(&ctx.target, "verify").await;
            drop(guard);
            let (target, tsnap) = exported?;
            tracing::info!(source_lsn = %slot.consistent_point, "verification snapshots open at one source position");
            Ok(Held {
                snaps: Snapshots {
                    source: slot.snapshot,
                    target: tsnap,
                },
                source_lsn: Some(slot.consistent_point),
                _source: None,
                repl: Some(repl),
                _target: target,
            })
        }
        None => {
            let ((source, ssnap), (target, tsnap)) = tokio::try_join!(
                verify::export_snapshot(&ctx.source, "verify"),
                verify::export_snapshot(&ctx.target, "verify")
            )?;
            Ok(Held {
                snaps: Snapshots {
                    source: ssnap,
                    target: tsnap,
                },
                source_lsn: None,
                _source: Some(source),
                repl: None,
                _target: target,
            })
        }
    }
}

/// How long the applier may stay frozen while the source builds the snapshot.
const SLOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates the temporary slot whose snapshot and position the run uses. Building it waits for
/// every transaction running on the source to end, and the applier is frozen meanwhile: past
/// [`SLOT_TIMEOUT`] the attempt is given up (the connection closes, so the server drops it)
/// and the error names the oldest open transaction.
async fn consistent_slot(
    source: &Endpoint,
    repl: &mut ReplicationConnection,
    name: &str,
) -> Result<ferry_postgres::replication::CreatedSlot, PgError> {
    match tokio::time::timeout(SLOT_TIMEOUT, repl.create_slot_with_snapshot(name, true)).await {
        Ok(r) => r,
        Err(_) => {
            let oldest = async {
                let c = source.connect("verify").await.ok()?;
                let o = ferry_postgres::slot::oldest_transaction(&c).await.ok()??;
                Some(format!(
                    "the oldest is pid {} of user {}, open for {}: {}",
                    o.pid, o.user, o.open_for, o.query
                ))
            }
            .await;
            Err(PgError::config(
                "taking a consistent snapshot of the source for verification",
                format!(
                    "a transaction open on the source kept the snapshot from being built for {} s{}",
                    SLOT_TIMEOUT.as_secs(),
                    oldest.map(|o| format!(" ({o})")).unwrap_or_default()
                ),
                "retry when long transactions on the source have ended; change capture went on meanwhile",
            ))
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// One comparison; returns the plans too (repair needs them).
pub async fn verify_once(ctx: &VerifyCtx, progress: Arc<Progress>) -> Result<(Report, Vec<TablePlan>), PgError> {
    let held = snapshots(ctx).await?;
    let (src, tgt) = tokio::try_join!(
        verify::in_snapshot(&ctx.source, "verify plan", &held.snaps.source),
        verify::in_snapshot(&ctx.target, "verify plan", &held.snaps.target)
    )?;
    let plans = verify::plan(&src, &tgt, &ctx.filter, &ctx.state_schema).await?;
    // Large objects (copied at full load, not carried by change capture): count, size and MD5
    // of each, at the same snapshots; an entry only when either side has some.
    let large_objects = ferry_postgres::largeobject::verify(&src, &tgt, ctx.options.max_details).await?;
    drop((src, tgt));
    let mut report = verify::run(&ctx.source, &ctx.target, &held.snaps, &plans, &ctx.options, progress).await?;
    if let Some(lo) = large_objects {
        report.differences += lo.differences;
        report.rows_compared += lo.rows_compared;
        report.tables.push(lo);
    }
    report.source_lsn = held.source_lsn.map(|l| l.to_string());
    if let Some(repl) = held.repl {
        // The temporary slot goes with its connection.
        repl.close().await;
    }
    Ok((report, plans))
}

/// Rewrites the differing rows on the target from the source, at a new consistent point (the
/// applier held there while it writes, so no change applied later is overwritten).
pub async fn repair_once(ctx: &VerifyCtx, plans: &[TablePlan], report: &Report) -> Result<(u64, u64), PgError> {
    let diffs: Vec<_> = report.tables.iter().flat_map(|t| t.details.iter().cloned()).collect();
    match &ctx.hold {
        Some(hold) => {
            let mut repl = ReplicationConnection::connect(&ctx.source).await?;
            let name = format!("ferry_repair_{}_{}", std::process::id(), rand_suffix());
            let guard = hold.freeze(Duration::from_secs(120)).await?;
            let slot = consistent_slot(&ctx.source, &mut repl, &name).await?;
            guard.move_to(slot.consistent_point, Duration::from_secs(120)).await?;
            let r = verify::repair(&ctx.source, &ctx.target, &slot.snapshot, plans, &diffs).await;
            drop(guard);
            repl.close().await;
            r
        }
        None => {
            let (_keep, snap) = verify::export_snapshot(&ctx.source, "repair").await?;
            verify::repair(&ctx.source, &ctx.target, &snap, plans, &diffs).await
        }
    }
}

/// Verify, then (with `repair`) repair and verify again until clean or no progress (at most
/// five rounds: each round describes and fixes up to `max_details` rows per table).
pub async fn verify_and_repair(ctx: &VerifyCtx, repair: bool, progress: Arc<Progress>) -> Result<(Report, u64), PgError> {
    let (mut report, mut plans) = verify_once(ctx, progress.clone()).await?;
    let mut repaired = 0;
    let mut rounds = 0;
    while repair && !report.identical() && rounds < 5 {
        let repairable = report.tables.iter().flat_map(|t| &t.details).any(|d| d.kind != DiffKind::Table);
        if !repairable {
            break;
        }
        let (deleted, inserted) = repair_once(ctx, &plans, &report).await?;
        tracing::info!(deleted, inserted, "repaired differing rows on the target from the source");
        repaired += deleted.max(inserted);
        rounds += 1;
        progress.rows.store(0, Ordering::Relaxed);
        progress.differences.store(0, Ordering::Relaxed);
        let before = report.differences;
        (report, plans) = verify_once(ctx, progress.clone()).await?;
        if report.differences >= before {
            break;
        }
    }
    Ok((report, repaired))
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "Verification{}: {} rows compared in {:.1} s, {} difference(s)\n",
        r.source_lsn
            .as_ref()
            .map(|l| format!(" at source position {l}"))
            .unwrap_or_default(),
        crate::check_cmd::human_count(r.rows_compared as i64),
        r.seconds,
        r.differences
    ));
    o.push_str(&format!(
        "  {:<44} {:>12} {:>12} {:>7} {:>11}\n",
        "table", "source rows", "target rows", "ranges", "differences"
    ));
    for t in &r.tables {
        o.push_str(&format!(
            "  {:<44} {:>12} {:>12} {:>7} {:>11}\n",
            t.table,
            crate::check_cmd::human_count(t.source_rows as i64),
            crate::check_cmd::human_count(t.target_rows as i64),
            t.ranges,
            t.differences
        ));
    }
    for t in r.tables.iter().filter(|t| t.differences > 0) {
        o.push_str(&format!(
            "\n  {} ({} difference(s){}):\n",
            t.table,
            t.differences,
            if (t.details.len() as u64) < t.differences {
                format!(", first {} shown", t.details.len())
            } else {
                String::new()
            }
        ));
        for d in &t.details {
            match d.kind {
                DiffKind::Table => o.push_str(&format!(
                    "    table: {}\n",
                    d.columns.first().and_then(|c| c.target.clone()).unwrap_or_default()
                )),
                DiffKind::MissingOnTarget => o.push_str(&format!("    missing on target: {}\n", d.key)),
                DiffKind::ExtraOnTarget => o.push_str(&format!("    extra on target:   {}\n", d.key)),
                DiffKind::ValueDiffers => {
                    o.push_str(&format!("    value differs:     {}\n", d.key));
                    for c in &d.columns {
                        o.push_str(&format!(
                            "      {}: source {} | target {}\n",
                            c.column,
                            c.source.as_deref().map(|v| format!("{v:?}")).unwrap_or_else(|| "NULL".into()),
                            c.target.as_deref().map(|v| format!("{v:?}")).unwrap_or_else(|| "NULL".into())
                        ));
                    }
                }
            }
        }
    }
    o.push_str(if r.identical() {
        "Result: the target equals the source.\n"
    } else {
        "Result: DIFFERENT.\n"
    });
    o
}

/// A progress bar on a terminal while a comparison runs.
pub fn progress_bar(progress: Arc<Progress>, total_rows: u64) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total_rows.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} verifying [{elapsed_precise}] [{bar:30}] {pos}/{len} rows {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Some(tokio::spawn(async move {
        loop {
            bar.set_position(progress.rows.load(Ordering::Relaxed));
            bar.set_message(format!("{} differences", progress.differences.load(Ordering::Relaxed)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Runs stored in the state schema (API mode)

/// Records a new run; returns its id.
pub async fn start_run(c: &Client, store: &StateStore, id: &str, actor: &str) -> Result<i64, PgError> {
    store.start_verify_run(c, id, actor).await
}

/// Stores a finished run and its described differences, or the error of a failed one.
pub async fn finish_run<E: std::fmt::Display>(
    c: &Client,
    store: &StateStore,
    run: i64,
    outcome: &Result<(Report, u64), E>,
) -> Result<(), PgError> {
    match outcome {
        Ok((report, repaired)) => store.finish_verify_run(c, run, report, *repaired).await,
        Err(e) => store.fail_verify_run(c, run, &e.to_string()).await,
    }
}

// ---------------------------------------------------------------------------------------------
// The command

/// `ferry verify`: exit 0 when identical, 1 when anything differs.
pub async fn command(args: crate::cli::VerifyArgs) -> anyhow::Result<i32> {
    let report = match &args.api {
        Some(_) if args.target_schema.is_some() => {
            return Err(crate::exit::UsageError(crate::settings::TARGET_SCHEMA_NEEDS_SOURCE.into()).into());
        }
        Some(api) => through_api(api, &args).await?,
        None => standalone(&args).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.identical() {
        crate::exit::OK
    } else {
        crate::exit::FOUND_PROBLEM
    })
}

async fn standalone(args: &crate::cli::VerifyArgs) -> anyhow::Result<Report> {
    let (Some(source), Some(target)) = (&args.source, &args.target) else {
        return Err(crate::exit::UsageError("give --source and --target, or --api URL of a running ferry migrate".into()).into());
    };
    let endpoints = crate::cli::Endpoints {
        source: source.clone(),
        target: target.clone(),
        source_password_file: args.source_password_file.clone(),
        target_password_file: args.target_password_file.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        jobs: args.jobs,
        migration_id: None,
        state_schema: args.state_schema.clone(),
        pg_bin_dir: None,
        overwrite: false,
        split_size: 0,
        zero_dates: crate::cli::ZeroDatesArg::Error,
        tinyint1_boolean: false,
        target_schema: args.target_schema.clone(),
    };
    if ferry_mysql::is_mysql_url(source) {
        return mysql(&endpoints, args).await;
    }
    let req = crate::settings::resolve(&endpoints)?;
    // A migration streaming into this target right now makes a standalone comparison race it.
    if let Ok(c) = req.target.connect("verify").await {
        let store = StateStore::new(&req.state_schema);
        if store.exists(&c).await.unwrap_or(false) {
            if let Ok(ids) = store.streaming_migrations(&c).await {
                for id in ids {
                    eprintln!(
                        "warning: migration {id} streams changes into this target: rows changing now may show as differences; \
                         `ferry verify --api URL` compares at one consistent point instead"
                    );
                }
            }
        }
    }
    let ctx = VerifyCtx {
        source: req.source.clone(),
        target: req.target.clone(),
        filter: req.filter.clone(),
        state_schema: req.state_schema.clone(),
        options: Options {
            jobs: req.jobs,
            max_details: args.max_differences,
            hash_ranges: args.range_hash,
            range_rows: if args.range_hash { 100_000 } else { 250_000 },
        },
        hold: None,
    };
    let progress = Arc::new(Progress::default());
    let estimate = estimate_rows(&req.source, &req.filter, &req.state_schema).await.unwrap_or(0);
    let bar = progress_bar(progress.clone(), estimate * 2);
    let outcome = verify_and_repair(&ctx, args.repair, progress).await;
    if let Some(b) = bar {
        b.abort();
    }
    let (report, repaired) = outcome?;
    if args.repair && repaired > 0 {
        eprintln!("repaired {repaired} row(s) on the target; the report below is the verification after the repair");
    }
    Ok(report)
}

/// A MySQL/MariaDB source: every table the migration moves, compared across engines in the
/// canonical value form; tables with differences are compared again after the stream catches
/// up, and only rows that differ every time are reported. The outcome is recorded for the
/// cutover gate.
async fn mysql(endpoints: &crate::cli::Endpoints, args: &crate::cli::VerifyArgs) -> anyhow::Result<Report> {
    if args.repair {
        return Err(crate::exit::UsageError("--repair is not available for MySQL/MariaDB sources yet".into()).into());
    }
    let mut req = crate::settings::resolve_mysql(endpoints)?;
    req.overwrite = true;
    let mut target = req.target.connect("mysql-verify").await?;
    let mut state = crate::mysql_cmd::open_state(
        &mut target,
        &req.source,
        &req.target,
        &args.state_schema,
        None,
        "ferry verify",
        false,
    )
    .await?;
    // The tables are where the migration loaded them.
    if let Some(state) = &mut state {
        req.target_schema = state.choose_target_schema(args.target_schema.as_deref(), false)?;
    }
    // The tables as the stream knows them, else as the source has them now.
    let stored = match &state {
        Some(state) => state.stored_tables(&target).await?,
        None => None,
    };
    let tables = match stored {
        Some(t) => t,
        None => {
            let report = ferry_mysql::preflight::check(&req).await;
            match report.plan {
                Some(p) => p.tables,
                None => {
                    eprint!("{}", crate::check_cmd::render_mysql(&report));
                    anyhow::bail!("cannot list the source's tables (see the checks above)");
                }
            }
        }
    };
    let opts = ferry_mysql::verify::VerifyOptions {
        max_details: args.max_differences,
        state,
    };
    let report = ferry_mysql::verify::verify(&req, &tables, &opts).await?;
    ferry_mysql::verify::record(&target, &opts, &report).await?;
    Ok(report)
}

async fn estimate_rows(source: &Endpoint, filter: &TableFilter, skip: &str) -> Result<u64, PgError> {
    let c = source.connect("verify").await?;
    let tables = ferry_postgres::introspect::list_tables(&c, filter, Some(skip)).await?;
    Ok(tables
        .iter()
        .filter(|t| t.holds_rows())
        .map(|t| t.estimated_rows.max(0) as u64)
        .sum())
}

async fn through_api(api: &str, args: &crate::cli::VerifyArgs) -> anyhow::Result<Report> {
    use anyhow::Context;
    let client = crate::status::ApiClient::new(api, args.api_token_file.as_deref(), args.api_ca.as_deref())?;
    let path = format!("/api/verify?repair={}", args.repair);
    let (code, body) = client.request("POST", &path).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if code != 202 {
        anyhow::bail!(
            "the Ferry API at {api} refused the verification ({code}): {}{}",
            v["error"].as_str().unwrap_or("?"),
            v["fix"].as_str().map(|f| format!("; {f}")).unwrap_or_default()
        );
    }
    let run = v["run"].as_i64().context("the API answered without a run id")?;
    eprintln!("verification run {run} started on {api}");
    let tty = std::io::stderr().is_terminal();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (code, body) = client.request("GET", &format!("/api/verify/{run}")).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if code != 200 {
            anyhow::bail!(
                "the Ferry API at {api} answered {code} for run {run}: {}",
                v["error"].as_str().unwrap_or("?")
            );
        }
        match v["status"].as_str() {
            Some("running") => {
                if tty {
                    eprint!(
                        "\r  {} rows read, {} differences so far   ",
                        v["progress"]["rows"].as_u64().unwrap_or(0),
                        v["progress"]["differences"].as_u64().unwrap_or(0)
                    );
                }
            }
            Some("failed") | Some("interrupted") => {
                anyhow::bail!(
                    "verification run {run} {}: {}",
                    v["status"].as_str().unwrap_or(""),
                    v["error"].as_str().unwrap_or("?")
                )
            }
            _ => {
                if tty {
                    eprintln!();
                }
                if let Some(n) = v["repaired"].as_i64().filter(|n| *n > 0) {
                    eprintln!("repaired {n} row(s) on the target; the report below is the verification after the repair");
                }
                return serde_json::from_value(v["report"].clone()).context("reading the run's report");
            }
        }
    }
}
