//! Change data capture: stream the slot, apply, confirm; reconnect and resume on failures.
//!
//! ```text
//! slot ──START_REPLICATION──> reader task ──bounded channel──> decode ──> Applier ──> target
//!   ^                                                                       │ commit batch
//!   └────────────── standby status: flush = durably applied LSN <───────────┘ (+ applied_lsn)
//! ```
//! A batch commits at a transaction boundary when the stream has nothing more ready, or it holds
//! `max_batch` changes, or it is older than `max_delay`; it commits in the background while the
//! next batch is decoded, and its position is confirmed once its COMMIT succeeded. Transient failures (either server
//! restarting, a cut connection) end the session; the next one starts again from the durable
//! position after a backoff. A dead letter stops the stream (default) or, with
//! `skip_dead_letters`, is recorded and stepped over.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{ErrorClass, Lsn};
use tokio::sync::watch;

use crate::apply::{Applier, ApplyContext, ApplyError};
use crate::error::PgError;
use crate::pgoutput;
use crate::replication::ReplicationConnection;
use crate::stream::StreamEvent;

/// Depth of the channel from the stream reader, in batches of up to `stream::BATCH` events.
const CHANNEL_BATCHES: usize = 8;

/// Settings for a CDC run.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    /// Applier context.
    pub ctx: ApplyContext,
    /// Slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Most changes in one target transaction (a larger source transaction is never split).
    pub max_batch: usize,
    /// Longest a batch stays open before it commits at the next boundary.
    pub max_delay: Duration,
    /// Record dead letters and continue instead of stopping.
    pub skip_dead_letters: bool,
    /// While true, change capture stops at a checkpoint, closes the stream (the slot keeps the
    /// changes) and waits.
    pub pause: Option<watch::Receiver<bool>>,
    /// Lets verification stop the applier at an exact source position.
    pub hold: Option<Arc<Hold>>,
}

/// Stops the applier at an exact source position, for as long as a guard lives: every source
/// transaction that commits before the position is applied and durable on the target, none at
/// or after it is. Verification opens its target snapshot there (the source snapshot of a slot
/// created at that position sees exactly the same transactions), and repair writes there.
#[derive(Debug)]
pub struct Hold {
    request: watch::Sender<Option<Lsn>>,
    held: watch::Sender<Option<Lsn>>,
}

impl Default for Hold {
    fn default() -> Self {
        Self::new()
    }
}

impl Hold {
    /// No hold requested.
    pub fn new() -> Self {
        Self {
            request: watch::channel(None).0,
            held: watch::channel(None).0,
        }
    }

    /// Stops the applier at its next transaction boundary and waits (at most `timeout`) until
    /// it holds there: nothing it applies from now on committed before a position taken after
    /// this returns. Dropping the guard lets it go on.
    pub async fn freeze(self: &Arc<Self>, timeout: Duration) -> Result<HoldGuard, PgError> {
        let guard = HoldGuard { hold: self.clone() };
        guard.move_to(Lsn(0), timeout).await?;
        Ok(guard)
    }

    /// Lets the applier go on up to `at` (every transaction that commits before it), waits (at
    /// most `timeout`) until it holds there, and keeps it there while the guard lives. Cutover
    /// and rollback use it for the final position of the side writes stopped on.
    pub async fn stop_at(self: &Arc<Self>, at: Lsn, timeout: Duration) -> Result<HoldGuard, PgError> {
        let guard = HoldGuard { hold: self.clone() };
        guard.move_to(at, timeout).await?;
        Ok(guard)
    }

    fn requested(&self) -> Option<Lsn> {
        *self.request.borrow()
    }
}

impl HoldGuard {
    /// Lets the applier go on up to `at` (every transaction that commits before it) and waits
    /// (at most `timeout`) until it holds there. `at` must not be behind the position it holds.
    pub async fn move_to(&self, at: Lsn, timeout: Duration) -> Result<(), PgError> {
        let mut held = self.hold.held.subscribe();
        self.hold.request.send_replace(Some(at));
        let reached = tokio::time::timeout(timeout, held.wait_for(|h| *h == Some(at)))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(PgError::config(
                format!("stopping change capture at source position {at}"),
                format!("change capture did not reach it within {} ms", timeout.as_millis()),
                "check that ferry migrate is streaming (ferry status) and that lag is low, then retry",
            ))
        }
    }
}

/// Keeps the applier held; dropping it releases it.
#[derive(Debug)]
pub struct HoldGuard {
    hold: Arc<Hold>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.hold.request.send_replace(None);
    }
}

/// Live CDC figures, for logs, status and metrics.
#[derive(Debug, Default)]
pub struct CdcProgress {
    /// Durably applied LSN.
    pub applied_lsn: AtomicU64,
    /// Latest WAL end the server reported.
    pub server_wal_end: AtomicU64,
    /// Transactions applied by this process.
    pub txns: AtomicU64,
    /// Row changes applied by this process.
    pub changes: AtomicU64,
    /// Sessions started (1 + reconnects).
    pub sessions: AtomicU64,
    /// Sessions that failed (and were retried or ended the run) and changes the target rejected.
    pub errors: AtomicU64,
}

enum SessionEnd {
    Stopped,
    Paused,
    Reapply(Lsn),
    Failed(PgError),
    DeadLetter(Box<crate::apply::DeadLetter>),
}

/// Runs CDC until `stop` turns true (returns Ok at a checkpoint) or a definite error.
pub async fn run(opts: CdcOptions, mut stop: watch::Receiver<bool>, progress: Arc<CdcProgress>) -> Result<(), PgError> {
    let mut skip: HashSet<(Lsn, u32)> = HashSet::new();
    let mut ordered_until = Lsn(0);
    let mut backoff = Duration::from_millis(250);
    // Without a pause control, a receiver whose sender lives as long as this run (a dropped
    // sender would make `changed()` return at once, forever).
    let (_no_pause, never) = watch::channel(false);
    let mut pause = opts.pause.clone().unwrap_or(never);
    loop {
        if *pause.borrow() {
            tracing::info!("change capture paused; the slot keeps the changes until it resumes");
            loop {
                tokio::select! {
                    r = pause.changed() => if r.is_err() || !*pause.borrow() { break },
                    _ = stop.changed() => return Ok(()),
                }
            }
            tracing::info!("change capture resumed");
        }
        progress.sessions.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match session(&opts, &skip, ordered_until, &mut stop, &mut pause, &progress).await {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Paused => continue,
            SessionEnd::Reapply(until) => {
                // Replay the failed batch row by row, from the durable position: the change at
                // fault will be named (or, if it was a false alarm, simply applied).
                ordered_until = ordered_until.max(until);
                tracing::info!(until = %until, "replaying a batch row by row");
                continue;
            }
            SessionEnd::DeadLetter(d) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if opts.skip_dead_letters {
                    tracing::error!(table = %d.table, operation = d.operation, commit_lsn = %d.commit_lsn, error = %d.error, "dead letter recorded and skipped");
                    skip.insert((d.commit_lsn, d.change_index));
                    continue;
                }
                return Err(PgError::config(
                    format!("applying a change to {} ({}, key {}, source commit {})", d.table, d.operation, d.key, d.commit_lsn),
                    d.error.clone(),
                    "the change is recorded in the dead_letters table of Ferry's state schema; fix the cause on the target and rerun, or rerun with --skip-dead-letters to record such changes and go on",
                ));
            }
            SessionEnd::Failed(e) if e.class == ErrorClass::Transient => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change capture interrupted; resuming from the last applied position");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            SessionEnd::Failed(e) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
}

async fn session(
    opts: &CdcOptions,
    skip: &HashSet<(Lsn, u32)>,
    ordered_until: Lsn,
    stop: &mut watch::Receiver<bool>,
    pause: &mut watch::Receiver<bool>,
    progress: &CdcProgress,
) -> SessionEnd {
    let mut applier = match Applier::new(opts.ctx.clone(), skip.clone(), ordered_until).await {
        Ok(a) => a,
        Err(e) => return SessionEnd::Failed(e),
    };
    let end = stream(opts, &mut applier, stop, pause, progress).await;
    match end {
        Ok(()) if *pause.borrow() && !*stop.borrow() => SessionEnd::Paused,
        Ok(()) => SessionEnd::Stopped,
        Err(ApplyError::Rejected(d)) => {
            applier.rollback().await;
            let skipped = opts.skip_dead_letters;
            if let Err(e) = applier.record_dead_letter(&d, skipped).await {
                return SessionEnd::Failed(e);
            }
            SessionEnd::DeadLetter(d)
        }
        Err(ApplyError::Db(e)) => {
            applier.rollback().await;
            SessionEnd::Failed(e)
        }
        Err(ApplyError::Reapply { until }) => {
            applier.rollback().await;
            SessionEnd::Reapply(until)
        }
    }
}

async fn stream(
    opts: &CdcOptions,
    applier: &mut Applier,
    stop: &mut watch::Receiver<bool>,
    pause: &mut watch::Receiver<bool>,
    progress: &CdcProgress,
) -> Result<(), ApplyError> {
    let start = applier.durable();
    progress.applied_lsn.store(start.0, Ordering::Relaxed);
    let conn = ReplicationConnection::connect(&opts.ctx.source).await?;
    let (mut rx, mut feedback) = conn.start_logical(&opts.slot, start, &opts.publication, CHANNEL_BATCHES).await?;
    tracing::info!(slot = %opts.slot, from = %start, "streaming changes");
    let mut last_feedback = Instant::now();
    let mut confirmed = start;
    // Events of the batch being worked through: they are handled without waiting on anything
    // else; stop, pause, finished commits and the clock are looked at between batches.
    let mut queue = Vec::new().into_iter();
    loop {
        let event = match queue.next() {
            Some(e) => Some(e),
            None => {
                if *stop.borrow() || *pause.borrow() {
                    return finish(applier, &mut feedback, progress).await;
                }
                if last_feedback.elapsed() > Duration::from_secs(10) {
                    feedback.send(confirmed, false).await?;
                    last_feedback = Instant::now();
                }
                // A hold waits for a position the stream may never bring a transaction past (an
                // idle source): ask the server for a keepalive, which tells how far it has sent.
                if opts.hold.as_ref().is_some_and(|h| h.requested().is_some()) && applier.at_boundary() && rx.is_empty() {
                    if applier.batch_open() {
                        applier.commit().await?;
                    }
                    feedback.send(confirmed, true).await?;
                    last_feedback = Instant::now();
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => continue,
                    _ = pause.changed() => continue,
                    // A batch committing in the background is done: confirm it to the source.
                    r = applier.settle(), if applier.has_inflight() => {
                        confirmed = confirm(&mut feedback, r?, progress, applier).await?;
                        last_feedback = Instant::now();
                        continue;
                    }
                    r = tokio::time::timeout(Duration::from_millis(100), rx.recv()) => match r {
                        Ok(Some(batch)) => {
                            queue = batch.into_iter();
                            continue;
                        }
                        Ok(None) => return Err(PgError::config("replication stream", "the stream ended", "rerun").into()),
                        // Nothing arrived for a while.
                        Err(_) => None,
                    },
                }
            }
        };
        match event {
            None => {
                // Nothing arrived for a while: commit what is complete.
                if applier.batch_open() && applier.at_boundary() {
                    applier.commit().await?;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(StreamEvent::Data { wal_end, data, .. })) => {
                progress.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                let msg = pgoutput::decode(&data)
                    .map_err(|e| PgError::config("decoding the change stream", e.to_string(), "report this as a bug"))?;
                if let (pgoutput::Message::Begin { final_lsn, .. }, Some(hold)) = (&msg, &opts.hold) {
                    if hold.requested().is_some_and(|at| *final_lsn >= at) {
                        confirmed = hold_here(applier, hold, &mut feedback, progress, stop, *final_lsn).await?;
                        last_feedback = Instant::now();
                    }
                }
                let is_row = matches!(
                    msg,
                    pgoutput::Message::Insert { .. } | pgoutput::Message::Update { .. } | pgoutput::Message::Delete { .. }
                );
                applier.handle(msg).await?;
                if is_row {
                    progress.changes.fetch_add(1, Ordering::Relaxed);
                }
                if applier.batch_open()
                    && applier.at_boundary()
                    && ((queue.as_slice().is_empty() && rx.is_empty())
                        || applier.batch_len() >= opts.max_batch
                        || applier.batch_age() >= opts.max_delay)
                {
                    applier.commit().await?;
                }
            }
            Some(Ok(StreamEvent::Keepalive { wal_end, reply })) => {
                progress.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                // The server has sent everything up to wal_end. Commit what is complete, and if
                // no source transaction is open, nothing before wal_end is still ours to apply:
                // confirm it, so the slot moves on even when no change of ours comes along
                // (an idle database, a server shutting down and waiting for us).
                if applier.batch_open() && applier.at_boundary() {
                    applier.commit().await?;
                }
                // Only with nothing in flight: a batch committing in the background may still fail.
                let idle = !applier.batch_open() && applier.at_boundary() && !applier.has_inflight();
                if let Some(hold) = &opts.hold {
                    // Everything before wal_end is sent: a hold at or before it is reached when
                    // nothing is left to apply.
                    if hold.requested().is_some_and(|at| wal_end >= at) && applier.at_boundary() {
                        confirmed = hold_here(applier, hold, &mut feedback, progress, stop, wal_end).await?;
                        last_feedback = Instant::now();
                        continue;
                    }
                }
                let position = if idle { confirmed.max(wal_end) } else { confirmed };
                tracing::trace!(%wal_end, reply, idle, %position, "keepalive");
                if reply || position > confirmed || last_feedback.elapsed() > Duration::from_secs(10) {
                    feedback.send(position, false).await?;
                    confirmed = position;
                    last_feedback = Instant::now();
                }
            }
        }
    }
}

/// Commits what is open, waits until it is durable, reports the hold reached, and waits until
/// it is released, moved past `next` (the commit position of the next transaction, or how far
/// the server has sent when idle), or the run stops. Returns the confirmed position.
async fn hold_here(
    applier: &mut Applier,
    hold: &Hold,
    feedback: &mut crate::stream::FeedbackSender,
    progress: &CdcProgress,
    stop: &mut watch::Receiver<bool>,
    next: Lsn,
) -> Result<Lsn, ApplyError> {
    if applier.batch_open() {
        applier.commit().await?;
    }
    let lsn = applier.settle().await?;
    let confirmed = confirm(feedback, lsn, progress, applier).await?;
    let mut request = hold.request.subscribe();
    loop {
        let at = *request.borrow_and_update();
        match at {
            Some(at) if next >= at => {
                tracing::debug!(%at, applied = %lsn, "change capture held");
                hold.held.send_replace(Some(at));
                tokio::select! {
                    r = request.changed() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
            }
            // Released, or moved to a position the next transaction is before: go on.
            _ => break,
        }
    }
    hold.held.send_replace(None);
    Ok(confirmed)
}

async fn confirm(
    feedback: &mut crate::stream::FeedbackSender,
    lsn: Lsn,
    progress: &CdcProgress,
    applier: &Applier,
) -> Result<Lsn, PgError> {
    feedback.send(lsn, false).await?;
    progress.applied_lsn.store(lsn.0, Ordering::Relaxed);
    progress.txns.store(applier.totals().txns, Ordering::Relaxed);
    Ok(lsn)
}

/// Stops at a checkpoint: commits a batch that ends at a boundary, else rolls back the partial
/// source transaction (it is streamed again next time).
async fn finish(applier: &mut Applier, feedback: &mut crate::stream::FeedbackSender, progress: &CdcProgress) -> Result<(), ApplyError> {
    if applier.batch_open() && applier.at_boundary() {
        applier.commit().await?;
        applier.settle().await?;
    } else {
        applier.settle().await?;
        applier.rollback().await;
    }
    let lsn = applier.durable();
    let _ = feedback.send(lsn, false).await;
    progress.applied_lsn.store(lsn.0, Ordering::Relaxed);
    tracing::info!(applied_lsn = %lsn, "change capture stopped at a checkpoint");
    Ok(())
}
