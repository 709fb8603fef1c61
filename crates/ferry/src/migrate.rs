//! `ferry migrate`: the orchestrator of the schema and full-load phases.
//!
//! ```text
//! check ─> publication ─> slot + exported snapshot ─> pre-data (pg_dump) ─> copy (N workers)
//!       ─> indexes/keys (parallel) ─> attach ─> foreign keys ─> validate ─> rest of post-data
//!       ─> sequences ─> ANALYZE
//! ```
//! Resume: every step is recorded on the target or checked against the target's catalog, so
//! rerunning the same command after a crash (kill -9 included) continues where it stopped. A
//! table interrupted mid-copy is truncated and copied again from a new snapshot taken with a
//! temporary slot; its `snapshot_lsn` records that snapshot's position so that change capture
//! skips, for that table, changes the new snapshot already contains. See docs/full-load.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_core::{Lsn, Phase, TableState};
use ferry_postgres::introspect::{self, SourceTable, TableKind};
use ferry_postgres::preflight::{self, CheckRequest};
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::schema::{self, PgTools, Step};
use ferry_postgres::snapshot::{self, CopyJob, TableProgress};
use ferry_postgres::state::StateStore;
use ferry_postgres::{sequences, slot};
use serde::Serialize;

use crate::exit::Blocked;
use crate::progress::LoadProgress;

/// Options beyond the check request.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Record rejected changes and continue instead of stopping.
    pub skip_dead_letters: bool,
    /// Most changes in one target transaction.
    pub max_batch: usize,
    /// Longest a batch stays open, in milliseconds.
    pub max_delay_ms: u64,
    /// Replication stream silence that means a dead connection.
    pub stream_timeout: std::time::Duration,
    /// Least time between two target commits while changes stream densely.
    pub commit_interval: std::time::Duration,
    /// Database call wait after which the watchdog checks the apply session.
    pub apply_timeout: std::time::Duration,
    /// maintenance_work_mem for index builds.
    pub maintenance_work_mem: String,
    /// Run ANALYZE after the load.
    pub analyze: bool,
    /// Print the check report even when nothing blocks.
    pub quiet_check: bool,
    /// Live state for the HTTP API and metrics, when served.
    pub live: Option<std::sync::Arc<crate::live::Live>>,
    /// Stream changes through this Kafka cluster and prefix (`--via kafka://`) instead of
    /// directly (the full load and the reverse stream stay direct).
    pub via: Option<ferry_kafka::KafkaEndpoint>,
}

/// One table in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    /// Table name.
    pub table: String,
    /// Rows on the target.
    pub rows: i64,
    /// COPY bytes moved.
    pub bytes: i64,
    /// Seconds from its first range starting to its last finishing (0 when copied earlier).
    pub seconds: f64,
    /// Whether this run copied it (false: an earlier run did).
    pub copied_now: bool,
}

/// What migrate did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Migration id.
    pub migration_id: String,
    /// Replication slot left on the source for change capture.
    pub slot: String,
    /// The slot's consistent point.
    pub consistent_lsn: String,
    /// Tables.
    pub tables: Vec<TableSummary>,
    /// Rows copied by this run.
    pub rows: i64,
    /// Bytes copied by this run.
    pub bytes: i64,
    /// Seconds creating the schema.
    pub schema_seconds: f64,
    /// Seconds copying data.
    pub data_seconds: f64,
    /// Seconds building indexes, constraints, the rest of post-data, sequences, ANALYZE.
    pub post_seconds: f64,
    /// Whole run.
    pub total_seconds: f64,
    /// Post-data objects built by this run.
    pub objects_built: usize,
    /// Sequences set.
    pub sequences: usize,
    /// Whether this run resumed an earlier one.
    pub resumed: bool,
}

/// Runs schema and full load; returns the summary.
/// Who `ferry migrate` is in the transitions log.
const ACTOR: &str = "ferry migrate";

pub async fn run(req: &CheckRequest, opts: &MigrateOptions) -> anyhow::Result<Option<Summary>> {
    let started = Instant::now();
    let report = preflight::check(req).await;
    if report.blocked() || !opts.quiet_check {
        eprintln!("{}", crate::check_cmd::render(&report));
    }
    if report.blocked() {
        return Err(Blocked.into());
    }
    let source_info = report.source.clone().context("source not read")?;
    let tools = PgTools::find(source_info.major(), req.pg_bin_dir.as_deref()).await?;
    let store = StateStore::new(&req.state_schema);
    let id = req.migration_id.clone();

    let target = req.target.connect("control").await?;
    let source = req.source.connect("control").await?;
    store.ensure(&target).await?;
    let mut rec = match store.load(&target, &id).await? {
        Some(r) => {
            // A restart is a transition too (to the same phase): the log shows every one.
            store
                .transition(
                    &target,
                    &id,
                    r.phase,
                    ACTOR,
                    &format!("ferry migrate restarted in phase {}", r.phase),
                )
                .await?;
            r
        }
        None => {
            store
                .create(&target, &id, req.source.redacted(), &req.slot, &req.publication)
                .await?;
            store.load(&target, &id).await?.context("migration record vanished")?
        }
    };
    let resumed = rec.consistent_lsn.is_some();
    if rec.phase == Phase::Verify {
        // A verification was running when the process stopped: it is gone with the process.
        store
            .interrupt_verify_runs(&target, &id, "ferry migrate stopped during the verification")
            .await?;
        store
            .transition(
                &target,
                &id,
                Phase::Cdc,
                ACTOR,
                "a verification was interrupted by the restart; streaming changes",
            )
            .await?;
        return Ok(None);
    }
    if rec.phase == Phase::Complete {
        return Err(crate::exit::UsageError(format!(
            "migration {id} is complete (`ferry complete` ran): there is nothing left to migrate or stream; \
             to keep a proxy in front of the target run `ferry proxy` (docs/operations.md, \"Finishing a migration\")"
        ))
        .into());
    }
    // Change capture (either way) picks up from here; an interrupted cutover or rollback is
    // settled by `cdc` (cutover::recover).
    if matches!(
        rec.phase,
        Phase::Cdc | Phase::Cutover | Phase::CutOver | Phase::Rollback | Phase::RolledBack
    ) {
        return Ok(None);
    }

    // Tables in scope.
    let all = introspect::list_tables(&source, &ferry_core::TableFilter::default(), Some(&req.state_schema)).await?;
    let tables: Vec<SourceTable> = all.iter().filter(|t| req.filter.matches(t.filter_name())).cloned().collect();
    let excluded: Vec<ferry_core::TableName> = all
        .iter()
        .filter(|t| !req.filter.matches(t.filter_name()))
        .map(|t| t.name.clone())
        .collect();
    let copyable: Vec<&SourceTable> = tables.iter().filter(|t| t.holds_rows()).collect();

    // The slot and its snapshot; on resume, a temporary slot gives a fresh snapshot.
    let mut repl = None;
    let (snapshot_name, snapshot_lsn): (Option<String>, Lsn) = match rec.consistent_lsn {
        None => {
            if slot::slot_status(&source, &req.slot).await?.is_some() {
                // A killed predecessor's WAL sender may take a moment to notice and let go.
                let deadline = Instant::now() + std::time::Duration::from_secs(15);
                while slot::slot_status(&source, &req.slot).await? == Some(true) {
                    if Instant::now() > deadline {
                        anyhow::bail!(
                            "replication slot {} is in use by another process; is another `ferry migrate` running for this migration?",
                            req.slot
                        );
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                tracing::warn!(slot = %req.slot, "dropping a replication slot left by an attempt that never recorded it");
                slot::drop_slot(&source, &req.slot).await?;
            }
            let all_tables = source_info.superuser && req.filter.is_everything();
            let published: Vec<_> = tables
                .iter()
                .filter(|t| t.kind != TableKind::Foreign && !t.unlogged && t.kind != TableKind::MaterializedView)
                .map(|t| t.name.clone())
                .collect();
            if slot::ensure_publication(&source, &req.publication, all_tables, &published).await? {
                tracing::info!(publication = %req.publication, "created publication on the source");
            }
            let mut r = ReplicationConnection::connect(&req.source).await?;
            let created = r.create_slot_with_snapshot(&req.slot, false).await?;
            tracing::info!(slot = %created.name, consistent_point = %created.consistent_point, snapshot = %created.snapshot, "created replication slot with exported snapshot");
            store.set_consistent_lsn(&target, &id, Some(created.consistent_point)).await?;
            store
                .transition(
                    &target,
                    &id,
                    Phase::Schema,
                    ACTOR,
                    &format!("slot {} created at {}", created.name, created.consistent_point),
                )
                .await?;
            rec.consistent_lsn = Some(created.consistent_point);
            repl = Some(r);
            (Some(created.snapshot), created.consistent_point)
        }
        Some(lsn) => {
            if slot::slot_status(&source, &rec.slot_name).await?.is_none() {
                anyhow::bail!(
                    "the replication slot {} of migration {id} is gone from the source, so changes since {lsn} cannot be streamed; \
                     drop the target's tables and the {} schema (or use another target database) and start over",
                    rec.slot_name,
                    req.state_schema
                );
            }
            if rec.phase == Phase::Assess {
                // The slot was recorded, but the process stopped before it recorded the phase
                // (a kill -9 between the two): record it now, or every later step is refused.
                store
                    .transition(
                        &target,
                        &id,
                        Phase::Schema,
                        ACTOR,
                        &format!("slot {} created at {lsn} by an earlier run", rec.slot_name),
                    )
                    .await?;
                rec.phase = Phase::Schema;
            }
            let records = store.tables(&target, &id).await?;
            let pending = copyable.iter().any(|t| {
                records
                    .iter()
                    .find(|r| r.name == t.name)
                    .is_none_or(|r| r.state != TableState::Copied)
            });
            if pending || !rec.schema_done {
                let mut r = ReplicationConnection::connect(&req.source).await?;
                let temp = format!("{}_resume_{}", req.slot, std::process::id());
                let created = r.create_slot_with_snapshot(&temp, true).await?;
                tracing::info!(consistent_point = %created.consistent_point, "resuming: took a new snapshot for the tables not yet copied");
                store
                    .event(
                        &target,
                        &id,
                        rec.phase,
                        "resume",
                        &format!(
                            "resumed; unfinished tables are copied again from a snapshot at {}",
                            created.consistent_point
                        ),
                    )
                    .await?;
                repl = Some(r);
                (Some(created.snapshot), created.consistent_point)
            } else {
                (None, lsn)
            }
        }
    };

    // Pre-data, with owners and grants (docs/roles.md); with --roles create, the missing roles
    // are created in the same transaction.
    let t_schema = Instant::now();
    let rewrite = ferry_postgres::roles::rewrite_for(&source, &target, &req.roles).await?;
    if !rec.schema_done {
        let snap = snapshot_name.as_deref();
        let pre = schema::dump_pre_data(&tools, &req.source, snap, &excluded, req.overwrite, &rewrite).await?;
        let ddl = req.target.connect("schema").await?;
        let roles_plan = report.plan.as_ref().and_then(|p| p.roles.clone()).unwrap_or_default();
        ferry_postgres::roles::require_on_target(&ddl, &pre.roles, &roles_plan.created(), "the schema's owners and grants").await?;
        let script = format!("{}\n{}", roles_plan.setup_sql.join("\n"), pre.sql);
        let done = store.schema_done_sql(&id);
        if let Err(err) = schema::restore_in_one_transaction(&ddl, &script, &done, "creating the schema on the target").await {
            anyhow::bail!(
                "{err}\nhint: if objects of the source already exist on the target, drop them, use an empty target database, or pass --overwrite; \
                 a permission error on OWNER TO or GRANT means Ferry's target user lacks a membership `ferry check` names (docs/roles.md)"
            );
        }
        store.transition(&target, &id, Phase::FullLoad, ACTOR, "schema created").await?;
        rec.phase = Phase::FullLoad;
        tracing::info!(seconds = t_schema.elapsed().as_secs_f64(), "schema created on the target");
    }
    if rec.phase == Phase::Schema {
        // The schema committed, but the process stopped before it recorded the next phase.
        store
            .transition(&target, &id, Phase::FullLoad, ACTOR, "schema already created by an earlier run")
            .await?;
        rec.phase = Phase::FullLoad;
    }
    let schema_seconds = t_schema.elapsed().as_secs_f64();

    // Everything read inside the snapshot: post-data plan, the rest of post-data, sequences.
    let reader = req.source.connect("catalog").await?;
    if let Some(s) = &snapshot_name {
        snapshot::import_for_catalog(&reader, s).await?;
    }
    let oids: Vec<u32> = tables
        .iter()
        .filter(|t| matches!(t.kind, TableKind::Ordinary | TableKind::Partitioned))
        .map(|t| t.oid)
        .collect();
    let plan = schema::plan_post_data(&reader, &oids).await?;
    for s in &plan.skipped {
        tracing::warn!("not created: {s}");
    }
    let rest_sql = if rec.post_data_done {
        None
    } else {
        let workdir = ferry_postgres::schema::WorkDir::create(&id).context("creating a private work directory for pg_dump (mode 0700)")?;
        Some(
            schema::dump_remaining_post_data(
                &tools,
                &req.source,
                snapshot_name.as_deref(),
                &excluded,
                &plan.handled,
                workdir.path(),
                &rewrite,
            )
            .await?,
        )
    };
    let seqs = sequences::read(&reader, Some(&req.state_schema)).await?;

    // The copy.
    let t_data = Instant::now();
    let estimates: Vec<_> = copyable.iter().map(|t| (t.name.clone(), t.estimated_rows)).collect();
    store.plan_tables(&target, &id, &estimates).await?;
    let records = store.tables(&target, &id).await?;
    let done = |t: &SourceTable| records.iter().any(|r| r.name == t.name && r.state == TableState::Copied);
    let to_copy: Vec<&SourceTable> = copyable.iter().copied().filter(|t| !done(t)).collect();
    let progress: Arc<Vec<TableProgress>> = Arc::new(to_copy.iter().map(|_| TableProgress::default()).collect());
    if !to_copy.is_empty() {
        let snap = snapshot_name.clone().context("no snapshot for the copy")?;
        let input: Vec<_> = to_copy.iter().map(|t| (t.name.clone(), t.columns.clone(), t.heap_bytes)).collect();
        let items = snapshot::plan_items(&input, req.split_bytes, source_info.major() >= 14);
        for (i, t) in to_copy.iter().enumerate() {
            let ranges = items.iter().filter(|it| it.table_index == i).count() as i32;
            if ranges > 1 {
                // Ranges load concurrently, so no single transaction can truncate for FREEZE:
                // clear leftovers of an interrupted run once, up front.
                snapshot::truncate_for_ranges(&target, &t.name).await?;
            }
            store.start_table(&target, &id, &t.name, snapshot_lsn, ranges).await?;
        }
        tracing::info!(tables = to_copy.len(), items = items.len(), jobs = req.jobs, snapshot_lsn = %snapshot_lsn, "copying");
        let bar = LoadProgress::start(
            to_copy
                .iter()
                .map(|t| (t.name.to_string(), t.heap_bytes.max(0) as u64, t.estimated_rows))
                .collect(),
            progress.clone(),
        );
        let job = CopyJob {
            source: req.source.clone(),
            target: req.target.clone(),
            snapshot: snap,
            jobs: req.jobs,
            store: store.clone(),
            migration_id: id.clone(),
            started: t_data,
        };
        if let Some(live) = &opts.live {
            live.set_load(to_copy.iter().map(|t| t.name.to_string()).collect(), progress.clone());
        }
        let result = snapshot::copy_items(job, items, progress.clone()).await;
        bar.finish();
        result?;
    }
    // Large objects: left out by pg_dump --schema-only and not carried by change capture, so
    // copied once, here, from the same snapshot (a rerun after a crash copies them again).
    if !ferry_postgres::largeobject::copied_already(&target, &store, &id).await? {
        use ferry_postgres::largeobject;
        let fresh = match snapshot_name {
            Some(_) => None,
            None => {
                let c = req.source.connect("large-objects").await?;
                snapshot::begin_consistent_read(&c, "large objects").await?;
                Some(c)
            }
        };
        let lo_src = fresh.as_ref().unwrap_or(&reader);
        if largeobject::count(lo_src).await? > 0 {
            let lo_tgt = req.target.connect("large-objects").await?;
            let r = largeobject::copy_all(lo_src, &lo_tgt).await?;
            largeobject::record(&target, &store, &id, Phase::FullLoad, &r).await?;
        } else {
            largeobject::record(&target, &store, &id, Phase::FullLoad, &Default::default()).await?;
        }
    }
    let data_seconds = t_data.elapsed().as_secs_f64();
    let _ = snapshot::end_read(&reader).await;
    if let Some(r) = repl.take() {
        r.close().await;
    }
    if rec.phase != Phase::PostLoad {
        store
            .transition(&target, &id, Phase::PostLoad, ACTOR, "all table data copied")
            .await?;
    }

    // Post-data. A previous run killed while building (kill -9) leaves its statements running
    // on the target until the server notices the client is gone (client_connection_check_interval,
    // about a second): building the same index alongside would collide in the catalog.
    wait_for_orphans(&target).await?;
    let t_post = Instant::now();
    let mut built = 0;
    let mwm = &opts.maintenance_work_mem;
    let groups: [(&str, Vec<Step>, usize); 5] = [
        ("indexes on partitioned tables", plan.instant.clone(), 1),
        ("indexes and keys", plan.parallel.clone(), req.jobs),
        ("partition index attachments", plan.attach.clone(), 1),
        ("foreign keys", plan.foreign_keys.clone(), 1),
        ("foreign key validation", plan.validate.clone(), req.jobs),
    ];
    for (label, steps, jobs) in groups {
        if steps.is_empty() {
            continue;
        }
        let t = Instant::now();
        let n = steps.len();
        let outcomes = schema::run_steps(&req.target, steps, jobs, mwm).await?;
        built += outcomes.iter().filter(|o| o.ran).count();
        tracing::info!(seconds = t.elapsed().as_secs_f64(), count = n, "built {label}");
    }
    if let Some(rest) = rest_sql {
        let ddl = req.target.connect("post-data").await?;
        ferry_postgres::roles::require_on_target(&ddl, &rest.roles, &Default::default(), "policies and default privileges").await?;
        schema::restore_in_one_transaction(
            &ddl,
            &rest.sql,
            &store.post_data_done_sql(&id),
            "restoring triggers, rules, policies and other post-data objects on the target",
        )
        .await?;
    }
    let nseq = sequences::apply(&target, &seqs).await?;
    if opts.analyze && !to_copy.is_empty() {
        let steps: Vec<Step> = to_copy.iter().map(|t| Step::analyze(&t.name)).collect();
        schema::run_steps(&req.target, steps, req.jobs, mwm).await?;
    }
    let post_seconds = t_post.elapsed().as_secs_f64();
    store
        .event(
            &target,
            &id,
            Phase::PostLoad,
            "full_load_complete",
            &format!("full load complete: {built} objects built, {nseq} sequences set"),
        )
        .await?;

    // Summary.
    let records = store.tables(&target, &id).await?;
    let mut summary_tables = Vec::new();
    for r in &records {
        let idx = to_copy.iter().position(|t| t.name == r.name);
        let seconds = idx
            .map(|i| {
                let p = &progress[i];
                let (s, f) = (
                    p.started_ms.load(std::sync::atomic::Ordering::Relaxed),
                    p.finished_ms.load(std::sync::atomic::Ordering::Relaxed),
                );
                if f >= s && s > 0 {
                    (f - s) as f64 / 1000.0
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0);
        summary_tables.push(TableSummary {
            table: r.name.to_string(),
            rows: r.rows_copied,
            bytes: r.bytes_copied,
            seconds,
            copied_now: idx.is_some(),
        });
    }
    summary_tables.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let (rows, bytes) = summary_tables
        .iter()
        .filter(|t| t.copied_now)
        .fold((0, 0), |(r, b), t| (r + t.rows, b + t.bytes));
    Ok(Some(Summary {
        migration_id: id,
        slot: req.slot.clone(),
        consistent_lsn: rec.consistent_lsn.map(|l| l.to_string()).unwrap_or_default(),
        tables: summary_tables,
        rows,
        bytes,
        schema_seconds,
        data_seconds,
        post_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        objects_built: built,
        sequences: nseq,
        resumed,
    }))
}

/// Streams changes after the full load until `stop` (SIGTERM/SIGINT): returns at a checkpoint.
/// Before cutover (and after a rollback) changes flow from the source to the target; after a
/// cutover from the target back to the source. A switch tells the running stream to stop at
/// the final position (`Live::redirect`) and the loop starts the other direction.
pub async fn cdc(req: &CheckRequest, opts: &MigrateOptions, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = StateStore::new(&req.state_schema);
    loop {
        // `ferry complete` through the API ran in this process: the phase `complete` is
        // recorded (it is set only after), and its state schema may be being dropped right now,
        // so there is nothing to read and nothing left to stream. (Reading the state here raced
        // with that drop, and a failed read ended the process and its proxy: CI saw it.)
        if opts.live.as_ref().is_some_and(|l| l.completed().is_some()) {
            return Ok(());
        }
        let target = req.target.connect("control").await?;
        let rec = match store.load(&target, &req.migration_id).await? {
            Some(r) => r,
            None => anyhow::bail!("the migration is not recorded on the target"),
        };
        drop(target);
        let phase = crate::cutover::recover(req, &store, rec.phase, ACTOR).await?;
        if phase == Phase::Complete {
            return Ok(());
        }
        // This run ends when the process stops or change capture must turn around.
        let (run_tx, run_stop) = tokio::sync::watch::channel(false);
        let mut outer = stop.clone();
        let mut redirect = opts.live.as_ref().map(|l| l.redirect_receiver());
        let relay = tokio::spawn(async move {
            match redirect.as_mut() {
                Some(r) => tokio::select! {
                    _ = outer.wait_for(|v| *v) => {}
                    _ = r.changed() => {}
                },
                None => {
                    let _ = outer.wait_for(|v| *v).await;
                }
            }
            let _ = run_tx.send(true);
        });
        let result = if phase == Phase::CutOver {
            reverse(req, opts, run_stop).await
        } else {
            forward(req, opts, run_stop, phase).await
        };
        relay.abort();
        if let Some(l) = &opts.live {
            l.release_kept();
        }
        let applied = result?;
        if *stop.borrow() {
            let note = format!("stopped at a checkpoint: applied up to {applied}");
            match req.target.connect("control").await {
                Ok(c) => {
                    if let Err(e) = store.event(&c, &req.migration_id, phase, "stopped", &note).await {
                        tracing::warn!(error = %e, "could not record the stop in the event log");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not record the stop in the event log"),
            }
            eprintln!("ferry: stopped at a checkpoint (changes applied up to {applied}); run the same command to resume");
            return Ok(());
        }
        tracing::info!("change capture turns around");
    }
}

/// Reverse replication after a cutover: target to source, until `stop`. Returns the applied
/// target position.
async fn reverse(req: &CheckRequest, opts: &MigrateOptions, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Lsn> {
    use ferry_postgres::cdc::{self, CdcOptions, CdcProgress};
    use std::sync::atomic::Ordering;
    let store = StateStore::new(&req.state_schema);
    let target = req.target.connect("control").await?;
    let info = introspect::server_info(&target).await?;
    let tools = PgTools::find(info.major(), req.pg_bin_dir.as_deref()).await?;
    drop(target);
    let (slot, publication) = crate::cutover::reverse_names(&req.slot, &req.publication);
    let progress = std::sync::Arc::new(CdcProgress::default());
    if let Some(live) = &opts.live {
        live.set_reverse(Some(progress.clone()));
    }
    tracing::info!(%slot, "reverse replication: target to source");
    let sinks = cdc::PgSinks {
        ctx: ferry_postgres::apply::ApplyContext {
            source: Some(ferry_postgres::apply::PgSource {
                endpoint: req.target.clone(),
                filter: req.filter.clone(),
                tools,
            }),
            target: req.source.clone(),
            store,
            migration_id: req.migration_id.clone(),
            direction: ferry_postgres::apply::Direction::Reverse,
        },
    };
    let copts = CdcOptions {
        source: req.target.clone(),
        slot,
        publication,
        max_batch: opts.max_batch,
        max_delay: std::time::Duration::from_millis(opts.max_delay_ms),
        stream_timeout: opts.stream_timeout,
        commit_interval: opts.commit_interval,
        apply_timeout: opts.apply_timeout,
        skip_dead_letters: false,
        pause: None,
        hold: opts.live.as_ref().map(|l| l.reverse_hold.clone()),
    };
    let mut stop = stop;
    let result = cdc::run(copts, &sinks, stop.clone(), progress.clone()).await;
    if let Some(live) = &opts.live {
        live.set_reverse(None);
    }
    if let Err(e) = result {
        // The application runs on the target through this process's proxy: losing the way
        // back must not take its traffic down. Say so loudly, record it, and keep serving.
        tracing::error!(
            error = %e,
            "reverse replication stopped: writes on the target no longer reach the source, so a rollback would lose them; \
             the application keeps running on the target. Fix the cause and restart ferry migrate to resume the reverse stream, \
             or run ferry complete (docs/runbook.md)"
        );
        if let Ok(c) = req.target.connect("control").await {
            let note = format!("reverse replication stopped: {e}");
            if let Err(e) = StateStore::new(&req.state_schema)
                .event(&c, &req.migration_id, Phase::CutOver, "reverse_stopped", &note)
                .await
            {
                tracing::warn!(error = %e, "could not record the stop of reverse replication");
            }
        }
        let _ = stop.wait_for(|v| *v).await;
    }
    Ok(Lsn(progress.applied_lsn.load(Ordering::Relaxed)))
}

/// Forward change capture, source to target, until `stop`. Returns the applied source position.
async fn forward(req: &CheckRequest, opts: &MigrateOptions, stop: tokio::sync::watch::Receiver<bool>, phase: Phase) -> anyhow::Result<Lsn> {
    use ferry_postgres::cdc::{self, CdcOptions, CdcProgress};
    use std::sync::atomic::Ordering;
    let store = StateStore::new(&req.state_schema);
    let target = req.target.connect("control").await?;
    let source = req.source.connect("control").await?;
    let info = introspect::server_info(&source).await?;
    let tools = PgTools::find(info.major(), req.pg_bin_dir.as_deref()).await?;
    let rec = store
        .load(&target, &req.migration_id)
        .await?
        .context("the migration is not recorded on the target")?;
    if phase != Phase::Cdc {
        store
            .transition(
                &target,
                &req.migration_id,
                Phase::Cdc,
                ACTOR,
                "full load complete; streaming changes from the slot",
            )
            .await?;
    }
    let progress = std::sync::Arc::new(CdcProgress::default());
    if let Some(live) = &opts.live {
        live.set_cdc(progress.clone());
    }
    let p = progress.clone();
    let logger = tokio::spawn(async move {
        let (mut last_txns, mut last_changes) = (0u64, 0u64);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let applied = p.applied_lsn.load(Ordering::Relaxed);
            let end = p.server_wal_end.load(Ordering::Relaxed);
            let (txns, changes) = (p.txns.load(Ordering::Relaxed), p.changes.load(Ordering::Relaxed));
            tracing::info!(
                state = p.state().as_str(),
                applied_lsn = %Lsn(applied),
                flushed_lsn = %Lsn(p.flushed_lsn.load(Ordering::Relaxed)),
                // Sent by the WAL sender but not yet applied; the lag behind the source itself is
                // in `ferry status` (age of the oldest source WAL not applied).
                unapplied_bytes = end.saturating_sub(applied),
                txns_per_s = (txns - last_txns) / 10,
                changes_per_s = (changes - last_changes) / 10,
                source_silent_s = p.source_silence().unwrap_or_default().as_secs(),
                error = p.last_error().unwrap_or_default(),
                "change capture"
            );
            (last_txns, last_changes) = (txns, changes);
        }
    });
    let pg_source = ferry_postgres::apply::PgSource {
        endpoint: req.source.clone(),
        filter: req.filter.clone(),
        tools,
    };
    let sinks = cdc::PgSinks {
        ctx: ferry_postgres::apply::ApplyContext {
            source: Some(pg_source.clone()),
            target: req.target.clone(),
            store: store.clone(),
            migration_id: req.migration_id.clone(),
            direction: ferry_postgres::apply::Direction::Forward,
        },
    };
    if let Some(kafka) = &opts.via {
        let tables = store
            .tables(&target, &req.migration_id)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        let kafka_progress = std::sync::Arc::new(ferry_kafka::apply::ApplyProgress::default());
        if let Some(live) = &opts.live {
            live.set_kafka(kafka_progress.clone(), kafka.describe());
        }
        let vopts = ferry_kafka::via::ViaOptions {
            kafka: kafka.clone(),
            source: req.source.clone(),
            target: req.target.clone(),
            state_schema: req.state_schema.clone(),
            migration_id: req.migration_id.clone(),
            slot: rec.slot_name.clone(),
            publication: rec.publication_name.clone(),
            consistent_lsn: rec.consistent_lsn.unwrap_or_default(),
            tables,
            pg_source,
            max_batch: opts.max_batch,
            max_delay: std::time::Duration::from_millis(opts.max_delay_ms),
            stream_timeout: opts.stream_timeout,
            skip_dead_letters: opts.skip_dead_letters,
            pause: opts.live.as_ref().map(|l| l.pause_receiver()),
            hold: opts.live.as_ref().map(|l| l.hold.clone()),
            progress: progress.clone(),
            kafka_progress,
        };
        drop((target, source));
        let result = ferry_kafka::via::forward(vopts, stop).await;
        logger.abort();
        result?;
        return Ok(Lsn(progress.applied_lsn.load(Ordering::Relaxed)));
    }
    let opts = CdcOptions {
        source: req.source.clone(),
        slot: rec.slot_name.clone(),
        publication: rec.publication_name.clone(),
        max_batch: opts.max_batch,
        max_delay: std::time::Duration::from_millis(opts.max_delay_ms),
        stream_timeout: opts.stream_timeout,
        commit_interval: opts.commit_interval,
        apply_timeout: opts.apply_timeout,
        skip_dead_letters: opts.skip_dead_letters,
        pause: opts.live.as_ref().map(|l| l.pause_receiver()),
        hold: opts.live.as_ref().map(|l| l.hold.clone()),
    };
    let result = cdc::run(opts, &sinks, stop, progress.clone()).await;
    logger.abort();
    result?;
    Ok(Lsn(progress.applied_lsn.load(Ordering::Relaxed)))
}

pub fn render(s: &Summary) -> String {
    use crate::check_cmd::{human_bytes, human_count};
    let mut o = String::new();
    o.push_str(&format!(
        "\nFull load of migration {}{}:\n",
        s.migration_id,
        if s.resumed { " (resumed)" } else { "" }
    ));
    o.push_str(&format!(
        "  {:<44} {:>12} {:>10} {:>8} {:>12}\n",
        "table", "rows", "bytes", "seconds", "rows/s"
    ));
    for t in &s.tables {
        let rate = if t.seconds > 0.0 {
            human_count((t.rows as f64 / t.seconds) as i64)
        } else {
            "-".into()
        };
        let secs = if t.copied_now {
            format!("{:.2}", t.seconds)
        } else {
            "earlier".into()
        };
        o.push_str(&format!(
            "  {:<44} {:>12} {:>10} {:>8} {:>12}\n",
            t.table,
            human_count(t.rows),
            human_bytes(t.bytes),
            secs,
            rate
        ));
    }
    let rate = if s.data_seconds > 0.0 {
        human_count((s.rows as f64 / s.data_seconds) as i64)
    } else {
        "-".into()
    };
    o.push_str(&format!(
        "  {:<44} {:>12} {:>10} {:>8.2} {:>12}\n",
        "total (this run)",
        human_count(s.rows),
        human_bytes(s.bytes),
        s.data_seconds,
        rate
    ));
    o.push_str(&format!(
        "  schema {:.2}s, data {:.2}s, indexes/constraints/sequences {:.2}s ({} objects, {} sequences), whole run {:.2}s\n",
        s.schema_seconds, s.data_seconds, s.post_seconds, s.objects_built, s.sequences, s.total_seconds
    ));
    o.push_str(&format!(
        "  Replication slot {} on the source holds changes since {} for change data capture.\n  It retains WAL until consumed: if you abandon this migration, run `ferry abandon` with the same --source/--target.\n",
        s.slot, s.consistent_lsn
    ));
    o
}

/// Drops the migration's slot and publication on the source (with `yes`), and records it.
pub async fn abandon(req: &CheckRequest, yes: bool) -> anyhow::Result<()> {
    let store = StateStore::new(&req.state_schema);
    let target = req.target.connect("control").await?;
    let rec = store.load(&target, &req.migration_id).await?;
    let (slot_name, publication) = match &rec {
        Some(r) => (r.slot_name.clone(), r.publication_name.clone()),
        None => (req.slot.clone(), req.publication.clone()),
    };
    let source = req.source.connect("control").await?;
    let read_only = ferry_postgres::complete::session_read_only(&source, "source").await?;
    // After a cutover the source is read-only by default; dropping what Ferry made is allowed.
    ferry_postgres::switch::writable_session(&source).await?;
    let state = slot::slot_status(&source, &slot_name).await?;
    let (rev_slot, _) = crate::cutover::reverse_names(&slot_name, &publication);
    let rev_state = slot::slot_status(&target, &rev_slot).await?;
    if state == Some(true) || rev_state == Some(true) {
        anyhow::bail!("slot {slot_name} (or {rev_slot} on the target) is in use: stop `ferry migrate` first (SIGTERM), then abandon");
    }
    if !yes {
        println!(
            "Would drop on {}: replication slot {slot_name} ({}), publication {publication}; and on the target: reverse slot {rev_slot} ({}) and its publication, and Ferry's replication origins on both. Rerun with --yes to drop them.",
            req.source.describe(),
            if state.is_some() { "exists" } else { "already gone" },
            if rev_state.is_some() { "exists" } else { "none" }
        );
        return Ok(());
    }
    slot::drop_slot(&source, &slot_name).await?;
    slot::drop_publication(&source, &publication).await?;
    // What a cutover left: the reverse stream's slot and publication on the target, and the
    // replication origins both appliers mark their writes with.
    ferry_postgres::switch::drop_reverse(&req.target, &ferry_postgres::switch::ReverseStream::of(&req.slot, &req.publication)).await?;
    let (fwd, rev) = ferry_postgres::apply::origin_names(&req.migration_id);
    for (c, origin, side) in [(&target, &fwd, "target"), (&source, &rev, "source")] {
        ferry_postgres::complete::drop_origin(c, origin, side).await?;
    }
    if read_only {
        println!(
            "Note: the source database is read-only for new sessions (set by the cutover); \
             ALTER DATABASE ... RESET default_transaction_read_only makes it writable again."
        );
    }
    if let Some(r) = rec {
        store
            .event(
                &target,
                &r.id,
                r.phase,
                "abandoned",
                &format!("slot {slot_name} and publication {publication} dropped on the source"),
            )
            .await?;
    }
    println!(
        "Dropped replication slot {slot_name} and publication {publication} on {}, and any reverse slot, publication and replication origins Ferry made. The target's data and Ferry's state schema are left as they are.",
        req.source.describe()
    );
    Ok(())
}

/// Waits (up to 30 s) until no other Ferry session is building an index or altering a table in
/// the target database: the orphans of a killed run end within about a second.
async fn wait_for_orphans(target: &tokio_postgres::Client) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let n = schema::earlier_builds(target).await?;
        if n == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "{n} statement(s) of an earlier Ferry run are still building indexes or constraints on the target: \
                 stop the other ferry migrate, or end them (pg_stat_activity, application_name 'ferry ...'), and rerun"
            );
        }
        tracing::info!(sessions = n, "waiting for statements of an earlier run to end on the target");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
