//! `ferry complete` and `POST /api/complete`: finish a migration after cutover, so that the
//! application depends on nothing of Ferry's any more (docs/operations.md, "Finishing a
//! migration").
//!
//! ```text
//! phase cut_over ─> verify once more (target vs source at one consistent point) ─ difference? stop, name it
//!   ─> phase complete (point of no return: no rollback after this)
//!   ─> reverse replication stops (the running ferry migrate's stream; or none runs)
//!   ─> drop what Ferry made: slot + publication + origin on the source, reverse slot +
//!      publication + origin on the target
//!   ─> the source stays read-only (--source-writable resets it)
//!   ─> the migration's record (phases, transitions, events, tables, positions, verifications)
//!      written to a JSON file, then the state schema dropped (--keep-state keeps it)
//!   ─> how to retire the proxy
//! ```
//! Every step is idempotent: a second run, or a rerun after a crash half-way, finishes what is
//! left (in phase `complete` the verification is not repeated; with the state schema already
//! dropped, the record file the first run wrote says the migration completed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_core::Phase;
use ferry_postgres::complete as cleanup;
use ferry_postgres::preflight::CheckRequest;
use ferry_postgres::state::{Dropped, StateStore};
use ferry_postgres::verify::{DiffKind, Report as VerifyReport};
use ferry_postgres::{slot, PgError};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::live::Live;

/// The record file's format name.
pub const RECORD_FORMAT: &str = "ferry-migration-record/1";
/// How long the running stream has to stop after `complete` asked it to.
const STREAM_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the proxy of a finished `ferry migrate` (and `ferry proxy`) waits for sessions to
/// end when told to stop, before it closes the rest.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What `complete` may do.
#[derive(Debug, Clone)]
pub struct CompleteOptions {
    /// Reset the source's `default_transaction_read_only` (set by the cutover).
    pub source_writable: bool,
    /// Keep Ferry's state schema on the target.
    pub keep_state: bool,
    /// Who asked, for the transitions log.
    pub actor: String,
    /// Where to write the migration's record.
    pub record_file: PathBuf,
    /// Complete without the last verification (`--skip-verify`): for when reverse replication
    /// was lost after cutover, so that the source is known to be behind.
    pub skip_verify: bool,
}

/// Where `complete` runs.
pub enum Mode<'a> {
    /// Inside the running `ferry migrate` (POST /api/complete): the reverse stream runs there.
    Api {
        /// The process's live state.
        live: &'a Arc<Live>,
        /// Its switchboard (one switch, or complete, at a time).
        board: &'a crate::cutover::Switchboard,
    },
    /// From the command line, with `ferry migrate` stopped.
    Cli {
        /// The record an earlier run wrote, if its file exists.
        prior: Option<Value>,
    },
}

/// What `complete` did, for people (`render`) and the API.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always "complete".
    pub kind: &'static str,
    /// "done", "already_complete", "refused", "different" or "failed".
    pub outcome: &'static str,
    /// Migration id.
    pub migration_id: String,
    /// The phase found.
    pub phase: Option<String>,
    /// Why it did not complete.
    pub reason: Option<String>,
    /// What to do about it.
    pub fix: Option<String>,
    /// The last verification: rows compared and differences.
    pub verification: Option<Value>,
    /// Differences found, one line each (first ones).
    pub differences: Vec<String>,
    /// What was dropped (only what existed).
    pub dropped: Vec<String>,
    /// Whether the source database is read-only for new sessions now.
    pub source_read_only: Option<bool>,
    /// What happened to the state schema.
    pub state: Option<String>,
    /// Where the migration's record was written.
    pub record_file: Option<String>,
    /// The migration's record (the file's content).
    pub record: Option<Value>,
    /// The proxy, when one runs in this process.
    pub proxy: Option<String>,
    /// How to retire the proxy and what else is left to do.
    pub next_steps: Vec<String>,
    /// Steps and their milliseconds.
    pub steps: Vec<(String, f64)>,
}

impl Report {
    fn new(id: &str) -> Self {
        Self {
            kind: "complete",
            outcome: "failed",
            migration_id: id.to_string(),
            phase: None,
            reason: None,
            fix: None,
            verification: None,
            differences: Vec::new(),
            dropped: Vec::new(),
            source_read_only: None,
            state: None,
            record_file: None,
            record: None,
            proxy: None,
            next_steps: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn refuse(&mut self, reason: String, fix: &str) {
        self.outcome = "refused";
        self.reason = Some(reason);
        self.fix = Some(fix.to_string());
    }

    fn step(&mut self, name: &str, t: Instant) {
        self.steps.push((name.to_string(), (t.elapsed().as_secs_f64() * 1e6).round() / 1e3));
    }
}

/// What to do in each phase other than `cut_over`.
fn refusal(id: &str, p: Phase) -> (String, &'static str) {
    let reason =
        format!("complete needs phase cut_over (the application switched to the target by ferry cutover); migration {id} is in phase {p}");
    let fix = match p {
        Phase::Assess | Phase::Schema | Phase::FullLoad | Phase::PostLoad => {
            "let ferry migrate finish the full load, verify (ferry verify --api), cut over (ferry cutover), then complete"
        }
        Phase::Cdc | Phase::Verify => {
            "the application still writes to the source: cut over first (ferry cutover), check the application on the target, then run ferry complete"
        }
        Phase::Cutover | Phase::Rollback => "a cutover or rollback is running: wait for it to finish (ferry status), then retry",
        Phase::RolledBack => {
            "the application was switched back to the source: cut over again (ferry cutover) and complete then, or give the migration up with ferry abandon"
        }
        Phase::CutOver | Phase::Complete => "",
    };
    (reason, fix)
}

/// Runs `complete`; never fails: failures are in the report (outcome "failed", with the fix).
pub async fn run(req: &CheckRequest, opts: &CompleteOptions, mode: Mode<'_>) -> Report {
    let mut r = Report::new(&req.migration_id);
    if let Mode::Api { live, board } = &mode {
        // One switch at a time: no rollback (automatic ones included) while complete runs.
        let Some(_busy) = board.try_busy() else {
            r.refuse(
                "a cutover, rollback or complete is running in this ferry migrate".into(),
                "wait for it to finish (ferry status), then retry",
            );
            return r;
        };
        if let Err(e) = inner(req, opts, &mode, &mut r).await {
            r.outcome = "failed";
            r.reason = Some(format!("{e:#}"));
            r.fix
                .get_or_insert_with(|| "fix the cause named above and run ferry complete again: every step is idempotent".into());
        }
        if let Some(p) = live.proxy() {
            r.proxy = Some(p.local_addr().to_string());
        }
        next_steps(req, &mut r, true, live.proxy().is_some());
        return r;
    }
    if let Err(e) = inner(req, opts, &mode, &mut r).await {
        r.outcome = "failed";
        r.reason = Some(format!("{e:#}"));
        r.fix
            .get_or_insert_with(|| "fix the cause named above and run ferry complete again: every step is idempotent".into());
    }
    next_steps(req, &mut r, false, false);
    r
}

async fn inner(req: &CheckRequest, opts: &CompleteOptions, mode: &Mode<'_>, r: &mut Report) -> anyhow::Result<()> {
    let id = &req.migration_id;
    let store = StateStore::new(&req.state_schema);
    let state_c = req.target.connect("complete").await?;
    writable(&state_c).await?;
    let rec = store.load(&state_c, id).await?;
    let already = match &rec {
        None => {
            let prior = match mode {
                Mode::Api { live, .. } => live.completed(),
                Mode::Cli { prior } => prior.clone(),
            };
            match prior.filter(|p| p["migration"]["phase"] == "complete" || p["phase"] == "complete") {
                Some(p) => {
                    r.phase = Some("complete".into());
                    r.record = Some(p);
                    true
                }
                None => {
                    r.refuse(
                        format!(
                            "migration {id} is not recorded on the target (state schema {}); nothing was changed",
                            req.state_schema
                        ),
                        "give the same --source, --target (and --migration-id, --state-schema) as ferry migrate; if ferry complete \
                         finished this migration and dropped its state, its record is in the file it wrote (--record-file)",
                    );
                    return Ok(());
                }
            }
        }
        Some(rec) => {
            r.phase = Some(rec.phase.to_string());
            match rec.phase {
                Phase::Complete => true,
                Phase::CutOver => false,
                p => {
                    let (reason, fix) = refusal(id, p);
                    r.refuse(reason, fix);
                    return Ok(());
                }
            }
        }
    };
    let (slot_name, publication) = rec
        .as_ref()
        .map(|x| (x.slot_name.clone(), x.publication_name.clone()))
        .unwrap_or_else(|| (req.slot.clone(), req.publication.clone()));
    let (rev_slot, _) = crate::cutover::reverse_names(&slot_name, &publication);
    let source_c = req.source.connect("complete").await?;
    writable(&source_c).await?;

    if !already {
        if let Mode::Cli { .. } = mode {
            // The streams belong to ferry migrate: while it runs, it completes (its API).
            for (c, s, side) in [(&state_c, &rev_slot, "target"), (&source_c, &slot_name, "source")] {
                if slot::slot_status(c, s).await? == Some(true) {
                    r.refuse(
                        format!("replication slot {s} on the {side} is in use: ferry migrate is running"),
                        "complete through its API (ferry complete --api URL), or stop it first (SIGTERM) and rerun",
                    );
                    return Ok(());
                }
            }
        }
        if let Mode::Api { live, .. } = mode {
            if live.reverse().is_none() && !opts.skip_verify {
                r.refuse(
                    "reverse replication (target to source) is not running in this ferry migrate right now (starting or reconnecting)"
                        .into(),
                    "retry in a few seconds; ferry status shows it under reverse replication",
                );
                return Ok(());
            }
        }
        store
            .event(
                &state_c,
                id,
                Phase::CutOver,
                "complete",
                &format!("complete requested by {}: verifying", opts.actor),
            )
            .await?;
        // Verify once more. A difference stops here: nothing is changed.
        let t = Instant::now();
        let report = if opts.skip_verify {
            store
                .event(
                    &state_c,
                    id,
                    Phase::CutOver,
                    "complete",
                    &format!("{} completes without the last verification (--skip-verify)", opts.actor),
                )
                .await?;
            VerifyReport::default()
        } else {
            verify(req, mode, &state_c, &store, &opts.actor).await?
        };
        if !opts.skip_verify {
            r.step("verified target against source", t);
        }
        let swapped = matches!(mode, Mode::Api { .. });
        r.verification = Some(json!({
            "rows_compared": report.rows_compared,
            "differences": report.differences,
            "tables": report.tables.len(),
            "target_position": report.source_lsn.as_ref().filter(|_| swapped),
        }));
        if !report.identical() {
            r.differences = describe(&report, swapped);
            r.outcome = "different";
            r.reason = Some(format!(
                "the verification found {} difference(s) between the target and the source; nothing was changed",
                report.differences
            ));
            r.fix = Some(match mode {
                Mode::Api { .. } => "reverse replication keeps the source current: find why they differ (the differences are named), fix them, and run ferry complete again".into(),
                Mode::Cli { .. } => "if the application wrote to the target after ferry migrate stopped, reverse replication has not carried those writes to the source: \
                                     start ferry migrate again (reverse replication catches up) and complete through its API (ferry complete --api URL); \
                                     otherwise find why they differ (the differences are named) and fix them"
                    .into(),
            });
            store
                .event(
                    &state_c,
                    id,
                    Phase::CutOver,
                    "complete",
                    &format!("complete stopped: {} difference(s) between target and source", report.differences),
                )
                .await?;
            return Ok(());
        }
        // The point of no return: no rollback after this.
        let t = Instant::now();
        store
            .transition(
                &state_c,
                id,
                Phase::Complete,
                &opts.actor,
                &if opts.skip_verify {
                    format!(
                        "completed by {} without the last verification (--skip-verify); Ferry's replication is dropped, the application stays on the target",
                        opts.actor
                    )
                } else {
                    format!(
                        "completed by {}: the target equals the source ({} rows compared); Ferry's replication is dropped, the application stays on the target",
                        opts.actor, report.rows_compared
                    )
                },
            )
            .await?;
        r.phase = Some("complete".into());
        r.step("phase complete recorded", t);
    }

    // Reverse replication stops (the running process's stream, if any).
    let t = Instant::now();
    if let Mode::Api { live, .. } = mode {
        live.set_completed(json!({ "migration_id": id, "phase": "complete" }));
        live.redirect();
    }
    let deadline = Instant::now() + STREAM_STOP_TIMEOUT;
    while slot::slot_status(&state_c, &rev_slot).await? == Some(true) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "reverse replication slot {rev_slot} on the target is still in use {} s after complete asked its stream to stop: \
                 another ferry migrate may be streaming it; stop it (SIGTERM) and run ferry complete again",
                STREAM_STOP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.step("reverse replication stopped", t);

    // Drop what Ferry made, on both sides.
    let t = Instant::now();
    drop_all(req, &source_c, &state_c, &slot_name, &publication, r).await?;
    r.step("slots, publications and replication origins dropped", t);

    // The source: read-only stays, unless asked.
    if opts.source_writable {
        ferry_postgres::switch::set_read_only(&source_c, "source", false).await?;
    }
    r.source_read_only = Some(cleanup::database_read_only(&source_c).await?);

    // The state: recorded to a file, then dropped (or kept).
    if rec.is_some() {
        let t = Instant::now();
        let msg = format!(
            "migration complete: replication slots, publications and replication origins dropped on both sides; source {}; state {}",
            if r.source_read_only == Some(true) {
                "left read-only"
            } else {
                "writable"
            },
            if opts.keep_state { "kept" } else { "exported and dropped" }
        );
        store.event(&state_c, id, Phase::Complete, "complete", &msg).await?;
        let record = export(&state_c, &store, id).await?;
        write_record(&opts.record_file, &record)?;
        r.record_file = Some(opts.record_file.display().to_string());
        r.step("record written", t);
        let t = Instant::now();
        r.state = Some(if opts.keep_state {
            format!("kept in schema {} (--keep-state)", req.state_schema)
        } else {
            drop_state(&state_c, &store, id).await?
        });
        r.step("state handled", t);
        if let Mode::Api { live, .. } = mode {
            live.set_completed(record.clone());
        }
        r.record = Some(record);
    } else {
        r.state = Some(format!(
            "already dropped by an earlier ferry complete (schema {} is gone); its record is in the file that run wrote",
            req.state_schema
        ));
    }
    r.outcome = if already { "already_complete" } else { "done" };
    Ok(())
}

/// The comparison: in the running process at one consistent point of the target (the reverse
/// applier held there, the source snapshot taken at it); from the command line, both sides as
/// they are (nothing streams and the application reaches the target only). Stored as a
/// verification run.
async fn verify(req: &CheckRequest, mode: &Mode<'_>, state_c: &Client, store: &StateStore, actor: &str) -> anyhow::Result<VerifyReport> {
    let options = ferry_postgres::verify::Options {
        jobs: req.jobs,
        ..Default::default()
    };
    let ctx = match mode {
        // The target is where changes come from now: it plays the verification's source.
        Mode::Api { live, .. } => crate::verify_cmd::VerifyCtx {
            source: req.target.clone(),
            target: req.source.clone(),
            filter: req.filter.clone(),
            state_schema: req.state_schema.clone(),
            options,
            hold: Some(live.reverse_hold.clone()),
        },
        Mode::Cli { .. } => crate::verify_cmd::VerifyCtx {
            source: req.source.clone(),
            target: req.target.clone(),
            filter: req.filter.clone(),
            state_schema: req.state_schema.clone(),
            options,
            hold: None,
        },
    };
    let run = crate::verify_cmd::start_run(state_c, store, &req.migration_id, &format!("{actor} (complete)")).await?;
    let outcome = crate::verify_cmd::verify_once(&ctx, Arc::new(Default::default()))
        .await
        .map(|(report, _)| (report, 0));
    if let Err(e) = crate::verify_cmd::finish_run(state_c, store, run, &outcome).await {
        tracing::warn!(error = %e, "could not record the verification run of complete");
    }
    let (report, _) = outcome.context("verifying the target against the source")?;
    Ok(report)
}

/// The differences, one line each, with the sides named as they are (in the running process
/// the comparison reads the target as its "source").
fn describe(report: &VerifyReport, swapped: bool) -> Vec<String> {
    let (a, b) = if swapped { ("target", "source") } else { ("source", "target") };
    let mut out = Vec::new();
    for t in report.tables.iter().filter(|t| t.differences > 0) {
        out.push(format!("{}: {} difference(s)", t.table, t.differences));
        for d in &t.details {
            let line = match d.kind {
                DiffKind::Table => format!(
                    "  {}: {}",
                    t.table,
                    d.columns.first().and_then(|c| c.target.clone()).unwrap_or_default()
                ),
                DiffKind::MissingOnTarget => format!("  {} {}: on the {a}, not on the {b}", t.table, d.key),
                DiffKind::ExtraOnTarget => format!("  {} {}: on the {b}, not on the {a}", t.table, d.key),
                DiffKind::ValueDiffers => format!(
                    "  {} {}: {}",
                    t.table,
                    d.key,
                    d.columns
                        .iter()
                        .map(|c| format!(
                            "{} is {} on the {a} and {} on the {b}",
                            c.column,
                            c.source.as_deref().unwrap_or("NULL"),
                            c.target.as_deref().unwrap_or("NULL")
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out.push(line);
        }
    }
    out
}

/// Drops Ferry's slots, publications and replication origins on both sides; lists those that
/// existed. A slot still in use is an error (a stream still runs).
async fn drop_all(
    req: &CheckRequest,
    source: &Client,
    target: &Client,
    slot_name: &str,
    publication: &str,
    r: &mut Report,
) -> anyhow::Result<()> {
    let (rev_slot, rev_pub) = crate::cutover::reverse_names(slot_name, publication);
    let (fwd_origin, rev_origin) = ferry_postgres::apply::origin_names(&req.migration_id);
    for (c, side, s) in [(source, "source", slot_name), (target, "target", rev_slot.as_str())] {
        match slot::slot_status(c, s).await? {
            None => {}
            Some(true) => anyhow::bail!(
                "replication slot {s} on the {side} is in use: a ferry migrate still streams it; stop it (SIGTERM) and run ferry complete again"
            ),
            Some(false) => {
                slot::drop_slot(c, s).await?;
                r.dropped.push(format!("replication slot {s} on the {side}"));
            }
        }
    }
    for (c, side, p) in [(source, "source", publication), (target, "target", rev_pub.as_str())] {
        if cleanup::publication_exists(c, p).await? {
            cleanup::drop_publication(c, p, side).await?;
            r.dropped.push(format!("publication {p} on the {side}"));
        }
    }
    for (c, side, o) in [(target, "target", &fwd_origin), (source, "source", &rev_origin)] {
        if cleanup::origin_exists(c, o).await? {
            cleanup::drop_origin(c, o, side)
                .await
                .map_err(|e| e.with_fix("a session still uses it: stop ferry migrate (SIGTERM) and run ferry complete again"))?;
            r.dropped.push(format!("replication origin {o} on the {side}"));
        }
    }
    Ok(())
}

/// Ferry's own sessions write where it made the database read-only.
async fn writable(c: &Client) -> Result<(), PgError> {
    ferry_postgres::switch::writable_session(c).await
}

/// The migration's record: every table of the state schema, its rows for this migration (rows
/// of tables not keyed by migration are included whole, verification differences by run).
pub async fn export(c: &Client, store: &StateStore, id: &str) -> anyhow::Result<Value> {
    let out = store.export_tables(c, id).await?;
    let migration = out
        .get("migrations")
        .and_then(|m| m.as_array())
        .and_then(|m| m.first())
        .cloned()
        .unwrap_or(Value::Null);
    Ok(json!({
        "format": RECORD_FORMAT,
        "migration_id": id,
        "state_schema": store.schema(),
        "exported_at": chrono_now(),
        "migration": migration,
        "tables": out,
    }))
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs} (unix seconds)")
}

/// Writes the record (mode 0600: events and dead letters may name row keys).
pub fn write_record(path: &Path, record: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {} for the migration's record", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing the migration's record to {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(record)?)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing the migration's record to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving the migration's record to {}", path.display()))?;
    Ok(())
}

/// Reads a record an earlier run wrote, if the file exists and is one.
pub fn read_record(path: &Path) -> Option<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (v["format"] == RECORD_FORMAT).then_some(v)
}

/// Drops the state schema, or only this migration's rows when others are recorded there.
async fn drop_state(c: &Client, store: &StateStore, id: &str) -> anyhow::Result<String> {
    Ok(match store.drop_migration(c, id).await? {
        Dropped::Rows { others } => format!(
            "this migration's rows deleted; schema {} kept: {others} other migration(s) are recorded in it",
            store.schema()
        ),
        Dropped::Schema => format!("schema {} dropped (the record file keeps its content)", store.schema()),
    })
}

/// How to retire the proxy, and the source.
fn next_steps(req: &CheckRequest, r: &mut Report, in_process: bool, proxy_runs: bool) {
    if !matches!(r.outcome, "done" | "already_complete") {
        return;
    }
    let target = req.target.describe();
    if in_process && proxy_runs {
        r.next_steps.push(format!(
            "the proxy at {} keeps serving the target from this ferry migrate process (no migration behind it); \
             point the application's connection string at the target ({target}) and restart it, then stop this process \
             (SIGTERM): the proxy stops accepting connections, waits up to {} s for sessions to end, closes the rest and exits",
            r.proxy.as_deref().unwrap_or("?"),
            DRAIN_TIMEOUT.as_secs()
        ));
        r.next_steps.push(
            "to keep a proxy in front of the target without this process: stop it (SIGTERM), then run \
             `ferry proxy --source URL --target URL --proxy-listen ADDR` with the same --proxy-* options as ferry migrate \
             (same users, same address, TLS); it serves the target only"
                .into(),
        );
    } else if in_process {
        r.next_steps.push(format!(
            "this ferry migrate runs no proxy: it exits now; the application connects to the target ({target}) directly"
        ));
    } else {
        r.next_steps.push(format!(
            "no Ferry proxy runs now (it stopped with ferry migrate): if the application still connects to the proxy's address, \
             run `ferry proxy --source URL --target URL --proxy-listen ADDR` (same --proxy-* options as ferry migrate) until \
             its connection string points at the target ({target})"
        ));
    }
    if r.source_read_only == Some(true) {
        r.next_steps.push(
            "the source database stays read-only for new sessions (ALTER DATABASE ... RESET default_transaction_read_only, \
             or ferry complete --source-writable, makes it writable); retire it when you no longer need it"
                .into(),
        );
    }
}

/// The report for people.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let id = v["migration_id"].as_str().unwrap_or("?");
    match v["outcome"].as_str() {
        Some("done") | Some("already_complete") => {
            o.push_str(&format!(
                "migration {id} {}\n",
                if v["outcome"] == "done" {
                    "complete"
                } else {
                    "was complete already; what was left is done"
                }
            ));
            if let Some(vr) = v["verification"].as_object() {
                o.push_str(&format!(
                    "  verified: the target equals the source ({} rows compared)\n",
                    vr.get("rows_compared").and_then(|x| x.as_u64()).unwrap_or(0)
                ));
            }
            for d in v["dropped"].as_array().into_iter().flatten() {
                o.push_str(&format!("  dropped {}\n", d.as_str().unwrap_or("")));
            }
            if v["dropped"].as_array().is_some_and(|d| d.is_empty()) {
                o.push_str("  nothing of Ferry's was left to drop on either side\n");
            }
            match v["source_read_only"].as_bool() {
                Some(true) => o.push_str("  the source database stays read-only for new sessions\n"),
                Some(false) => o.push_str("  the source database is writable\n"),
                None => {}
            }
            if let Some(s) = v["state"].as_str() {
                o.push_str(&format!("  state: {s}\n"));
            }
            if let Some(f) = v["record_file"].as_str() {
                o.push_str(&format!("  the migration's record (phases, events, tables, positions): {f}\n"));
            }
            for s in v["next_steps"].as_array().into_iter().flatten() {
                o.push_str(&format!("  next: {}\n", s.as_str().unwrap_or("")));
            }
        }
        Some(_) => {
            o.push_str(&format!(
                "complete {}: {}\n",
                match v["outcome"].as_str() {
                    Some("different") => "stopped",
                    Some("refused") => "refused",
                    _ => "failed",
                },
                v["reason"].as_str().unwrap_or("?")
            ));
            for d in v["differences"].as_array().into_iter().flatten() {
                o.push_str(&format!("  {}\n", d.as_str().unwrap_or("")));
            }
            if let Some(f) = v["fix"].as_str() {
                o.push_str(&format!("  fix: {f}\n"));
            }
        }
        None => {
            o.push_str(&format!(
                "complete failed: {}\n",
                v["error"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
            ));
            if let Some(f) = v["fix"].as_str() {
                o.push_str(&format!("  fix: {f}\n"));
            }
        }
    }
    o
}

/// The default record file: `ferry-<id>-record.json` in the current directory (command line),
/// or in `~/.ferry` (the running `ferry migrate`).
pub fn default_record_file(id: &str, in_home: bool) -> PathBuf {
    let name = format!("ferry-{id}-record.json");
    if in_home {
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(home).join(".ferry").join(name);
        }
    }
    PathBuf::from(name)
}

// ---------------------------------------------------------------------------------------------
// The commands

/// `ferry complete`: through the running `ferry migrate`'s API, or directly with --source and
/// --target when it is stopped. Exit 0 done, 1 refused or different, 3 failed.
pub async fn command(args: &crate::cli::CompleteArgs) -> anyhow::Result<i32> {
    let v: Value = match (&args.source, &args.target) {
        (Some(source), Some(target)) => {
            let endpoints = crate::cli::Endpoints {
                source: source.clone(),
                target: target.clone(),
                source_password_file: args.source_password_file.clone(),
                target_password_file: args.target_password_file.clone(),
                include: args.include.clone(),
                exclude: args.exclude.clone(),
                jobs: args.jobs,
                migration_id: args.migration_id.clone(),
                state_schema: args.state_schema.clone(),
                pg_bin_dir: None,
                overwrite: false,
                split_size: 0,
                zero_dates: crate::cli::ZeroDatesArg::Error,
                tinyint1_boolean: false,
                target_schema: None,
            };
            let req = crate::settings::resolve(&endpoints)?;
            let record_file = args
                .record_file
                .clone()
                .unwrap_or_else(|| default_record_file(&req.migration_id, false));
            let opts = CompleteOptions {
                source_writable: args.source_writable,
                keep_state: args.keep_state,
                actor: ACTOR.into(),
                record_file: record_file.clone(),
                skip_verify: args.skip_verify,
            };
            let prior = read_record(&record_file);
            serde_json::to_value(run(&req, &opts, Mode::Cli { prior }).await)?
        }
        (None, None) => {
            let api = args.api.as_deref().unwrap_or("http://127.0.0.1:7117");
            let client = crate::status::ApiClient::new(api, args.api_token_file.as_deref(), args.api_ca.as_deref())?;
            let path = format!(
                "/api/complete?source_writable={}&keep_state={}&skip_verify={}",
                args.source_writable, args.keep_state, args.skip_verify
            );
            let (code, body) = client.request("POST", &path).await?;
            let mut v: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&body) }));
            if code == 401 || code == 403 {
                eprint!("{}", render(&v));
                return Ok(crate::exit::USAGE);
            }
            // The operator keeps the record where they ran the command too.
            if let (Some(record), Some(id)) = (v.get("record").filter(|r| !r.is_null()).cloned(), v["migration_id"].as_str()) {
                let path = args.record_file.clone().unwrap_or_else(|| default_record_file(id, false));
                write_record(&path, &record)?;
                v["record_file_here"] = json!(path.display().to_string());
            }
            v
        }
        _ => {
            return Err(
                crate::exit::UsageError("give both --source and --target (ferry migrate stopped), or neither (--api)".into()).into(),
            );
        }
    };
    if args.json {
        let mut shown = v.clone();
        shown.as_object_mut().map(|o| o.remove("record"));
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print!("{}", render(&v));
        if let Some(p) = v["record_file_here"].as_str() {
            println!("  the record is also written here: {p}");
        }
    }
    Ok(match v["outcome"].as_str() {
        Some("done") | Some("already_complete") => crate::exit::OK,
        Some("refused") | Some("different") => crate::exit::FOUND_PROBLEM,
        _ => crate::exit::RUNTIME,
    })
}

/// Who the command line is in the transitions log.
const ACTOR: &str = "ferry complete";

/// `ferry proxy`: the proxy alone, in front of the target, with the users, address and TLS of
/// `ferry migrate --proxy-listen`; no migration behind it. Until SIGTERM/SIGINT: then it stops
/// accepting connections, waits up to --drain-timeout for sessions to end, closes the rest and
/// exits (a second signal exits at once).
pub async fn proxy_command(args: &crate::cli::ProxyArgs) -> anyhow::Result<i32> {
    if args.source.is_none() && args.proxy_users_file.is_none() {
        return Err(crate::exit::UsageError(
            "give --source (its user and password are the proxy's user, as with ferry migrate) or --proxy-users-file".into(),
        )
        .into());
    }
    let endpoints = crate::cli::Endpoints {
        // Never connected to: only its user and password make the default proxy user.
        source: args.source.clone().unwrap_or_else(|| args.target.clone()),
        target: args.target.clone(),
        source_password_file: args.source_password_file.clone(),
        target_password_file: args.target_password_file.clone(),
        include: Vec::new(),
        exclude: Vec::new(),
        jobs: Some(1),
        migration_id: None,
        state_schema: "ferry".into(),
        pg_bin_dir: None,
        overwrite: false,
        split_size: 0,
        zero_dates: crate::cli::ZeroDatesArg::Error,
        tinyint1_boolean: false,
        target_schema: None,
    };
    let req = crate::settings::resolve(&endpoints)?;
    let (mut config, _source, target) = crate::cutover::proxy_config(&req, args.proxy_listen, args.proxy_users_file.as_deref())?;
    crate::cutover::proxy_listener(
        &mut config,
        args.proxy_tls_cert.as_deref(),
        args.proxy_tls_key.as_deref(),
        args.proxy_require_tls,
        args.proxy_max_connections,
    )?;
    let proxy = ferry_proxy::Proxy::start(config, target)
        .await
        .map_err(|e| crate::exit::UsageError(format!("--proxy-listen {}: {e}", args.proxy_listen)))?;
    tracing::info!(listen = %proxy.local_addr(), upstream = %req.target.describe(), "proxy serving the target (no migration behind it)");
    crate::shutdown_signal().await;
    tracing::info!(
        timeout_s = args.drain_timeout.as_secs_f64(),
        "stop requested: draining the proxy's sessions"
    );
    tokio::select! {
        left = proxy.drain(args.drain_timeout) => {
            tracing::info!(closed = left, "proxy drained and stopped");
        }
        _ = crate::shutdown_signal() => {
            proxy.shutdown().await;
        }
    }
    Ok(crate::exit::OK)
}
