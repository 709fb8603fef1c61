//! Change data capture: stream the slot, apply, confirm; reconnect and resume on failures.
//!
//! ```text
//! slot ──START_REPLICATION──> reader task ──bounded channel──> decode ──> Applier ──> target
//!   ^                                                                       │ commit batch
//!   └────────────── standby status: flush = durably applied LSN <───────────┘ (+ applied_lsn)
//! ```
//! A batch commits at a transaction boundary when the stream has nothing more ready, or it holds
//! `max_batch` changes, or it is older than `max_delay`; it commits (asynchronously on the
//! target) in the background while the next batch is decoded. The source is told, after every
//! commit that completes and at least once a second, how far changes are applied (write and
//! apply positions) and how far they are flushed on the target (flush position: the slot keeps
//! everything after it). Transient failures (either server restarting, a cut connection, a
//! network that stopped answering) end the session; the next one starts again from the durable
//! position after a backoff. A dead letter stops the stream (default) or, with
//! `skip_dead_letters`, is recorded and stepped over.
//!
//! Dead connections: the stream must bring a message within `stream_timeout` (after a third of
//! it in silence Ferry asks the server for a keepalive); a database call of the applier that
//! waits longer than `apply_timeout` makes a watchdog look at the target's apply session from
//! a second connection: a statement still running is waited for, anything else (no answer,
//! the session idle while Ferry waits for it) ends the session and reconnects.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::{unix_ms, ErrorClass, Lsn};
use tokio::sync::watch;

use ferry_core::sink::Sink;
use ferry_core::switch::SessionId;
use ferry_core::SourcePosition;

use crate::apply::{order_key, Applier, ApplyContext, ApplyError, TextSettings};
use crate::error::PgError;
use crate::pgoutput;
use crate::replication::ReplicationConnection;
use crate::stream::StreamEvent;

pub mod relations;

use relations::Relations;

/// Depth of the channel from the stream reader, in batches of up to `stream::BATCH` events.
const CHANNEL_BATCHES: usize = 8;

/// Settings for a CDC run.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    /// The PostgreSQL database the stream reads (where the slot is).
    pub source: crate::Endpoint,
    /// Slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Most changes in one target transaction (a larger source transaction is never split).
    pub max_batch: usize,
    /// Longest a batch stays open before it commits at the next boundary.
    pub max_delay: Duration,
    /// While changes stream densely, batches commit at most this often: one target
    /// transaction then carries every source transaction of the interval, which costs the
    /// target (and the CPU it shares with the source on a small machine) far less than one
    /// each. A transaction arriving after a quiet spell commits at once.
    pub commit_interval: Duration,
    /// Record dead letters and continue instead of stopping.
    pub skip_dead_letters: bool,
    /// While true, change capture stops at a checkpoint, closes the stream (the slot keeps the
    /// changes) and waits.
    pub pause: Option<watch::Receiver<bool>>,
    /// Lets verification stop the applier at an exact source position.
    pub hold: Option<Arc<Hold>>,
    /// No message on the replication stream for this long (not even a keepalive Ferry asked
    /// for) means the connection is dead. Never shorter than half the server's
    /// `wal_sender_timeout` plus 5 s: a WAL sender busy decoding may only answer then.
    pub stream_timeout: Duration,
    /// A database call of the applier waiting longer than this makes the watchdog check the
    /// target's apply session (see the module documentation).
    pub apply_timeout: Duration,
}

impl CdcOptions {
    fn source(&self) -> &crate::Endpoint {
        &self.source
    }
}

/// Where a PostgreSQL change stream goes: a sink for each session of the stream. The
/// PostgreSQL sink ([`PgSinks`]) and the MySQL one (`ferry_mysql::apply`) are driven by the
/// same loop ([`run`]), so retries, dead letters, holds, pauses and pipelined commits behave
/// the same whatever the stream feeds.
#[allow(async_fn_in_trait)]
pub trait SinkFactory {
    /// The sink.
    type Sink: Sink<Error = ApplyError>;

    /// The database written, for messages (no secret).
    fn describe(&self) -> String;

    /// Opens a sink for one session of the stream: it reads its durable position (the stream
    /// resumes there). `settings` are the stream's text settings (its values are in those
    /// forms); `skip` lists dead letters (commit order key, change index) to step over;
    /// `ordered_until`: apply row by row up to there (a set-based batch failed); `stale` is the
    /// session of an earlier sink whose connection was lost, to end first so that the position
    /// read is final.
    async fn open(
        &self,
        settings: &TextSettings,
        skip: &HashSet<(Lsn, u32)>,
        ordered_until: Lsn,
        stale: Option<SessionId>,
    ) -> Result<Self::Sink, PgError>;

    /// Resolves when the sink's session is found dead or hung while a call of the sink waits
    /// longer than `limit` (see the module documentation); never otherwise. Owns what it
    /// needs: it runs beside the stream, which holds the sink.
    fn watchdog(&self, sink: &Self::Sink, limit: Duration) -> impl std::future::Future<Output = PgError> + 'static;
}

/// The PostgreSQL sink: an [`Applier`] per session.
#[derive(Debug, Clone)]
pub struct PgSinks {
    /// The applier's context.
    pub ctx: ApplyContext,
}

impl SinkFactory for PgSinks {
    type Sink = Applier;

    fn describe(&self) -> String {
        self.ctx.target.describe()
    }

    async fn open(
        &self,
        settings: &TextSettings,
        skip: &HashSet<(Lsn, u32)>,
        ordered_until: Lsn,
        stale: Option<SessionId>,
    ) -> Result<Applier, PgError> {
        let stale = stale.and_then(|s| i32::try_from(s).ok());
        Applier::new(self.ctx.clone(), settings, skip.clone(), ordered_until, stale).await
    }

    fn watchdog(&self, sink: &Applier, limit: Duration) -> impl std::future::Future<Output = PgError> + 'static {
        watchdog(self.ctx.target.clone(), sink.pid(), sink.busy_since(), limit)
    }
}

/// Default of `stream_timeout`.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `commit_interval`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(2);
/// Default of `apply_timeout`.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(15);

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

    /// The position a hold is requested at (None: no hold).
    pub fn requested(&self) -> Option<Lsn> {
        *self.request.borrow()
    }

    /// For a driver other than [`run`] (an apply from Kafka): it stands at a transaction
    /// boundary, everything that commits before `reached` applied and durable, nothing at or
    /// after it. While a hold is requested at or before `reached`, it holds there (reported as
    /// held) until the hold is released or moved past `reached`, or `stop` changes.
    pub async fn hold_at(&self, reached: Lsn, stop: &mut watch::Receiver<bool>, progress: &CdcProgress) {
        let mut request = self.request.subscribe();
        let before = progress.state();
        loop {
            let at = *request.borrow_and_update();
            match at {
                Some(at) if reached >= at => {
                    progress.set_state(StreamState::Held);
                    self.held.send_replace(Some(at));
                    let released = tokio::select! {
                        r = request.changed() => r.is_err(),
                        _ = stop.changed() => true,
                    };
                    if released {
                        break;
                    }
                }
                _ => break,
            }
        }
        progress.set_state(before);
        self.held.send_replace(None);
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

/// What change capture is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamState {
    /// Connecting (the first time).
    Starting = 0,
    /// Streaming and applying.
    Streaming = 1,
    /// A connection was lost or refused: waiting to reconnect (see `last_error`).
    Reconnecting = 2,
    /// Paused through the API.
    Paused = 3,
    /// Held at a position (verification, cutover).
    Held = 4,
    /// Stopped.
    Stopped = 5,
}

impl StreamState {
    /// Lower-case name for status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Starting => "starting",
            StreamState::Streaming => "streaming",
            StreamState::Reconnecting => "reconnecting",
            StreamState::Paused => "paused",
            StreamState::Held => "held",
            StreamState::Stopped => "stopped",
        }
    }
}

/// Live CDC figures, for logs, status and metrics.
#[derive(Debug, Default)]
pub struct CdcProgress {
    /// Nothing before this source position is left to apply: what is committed (visible) on
    /// the target, or while nothing is open the server's WAL end (WAL of other databases, or
    /// of tables not replicated). Lag is measured from it.
    pub applied_lsn: AtomicU64,
    /// Source position durable (flushed) on the target: what the slot was told it may forget.
    pub flushed_lsn: AtomicU64,
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
    /// [`StreamState`] as its number.
    state: AtomicU8,
    /// Unix ms of the last message from the source's WAL sender (0: none yet).
    pub last_message_ms: AtomicU64,
    /// Unix ms of the last status update sent to the source.
    pub last_feedback_ms: AtomicU64,
    /// Unix ms when the oldest transaction received but not yet applied arrived (0: none):
    /// the part of the lag spent in Ferry, at millisecond resolution.
    pub pending_since_ms: AtomicU64,
    /// Why the last session ended, while reconnecting.
    last_error: Mutex<Option<String>>,
}

impl CdcProgress {
    /// What change capture is doing now.
    pub fn state(&self) -> StreamState {
        match self.state.load(Ordering::Relaxed) {
            1 => StreamState::Streaming,
            2 => StreamState::Reconnecting,
            3 => StreamState::Paused,
            4 => StreamState::Held,
            5 => StreamState::Stopped,
            _ => StreamState::Starting,
        }
    }

    /// Sets what change capture is doing (for drivers other than [`run`]).
    pub fn set_state(&self, s: StreamState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Since the last message from the source's WAL sender (None before the first).
    pub fn source_silence(&self) -> Option<Duration> {
        let heard = self.last_message_ms.load(Ordering::Relaxed);
        (heard > 0).then(|| Duration::from_millis(unix_ms().saturating_sub(heard)))
    }

    /// How long the oldest transaction received but not yet applied has waited inside Ferry
    /// (zero when every transaction received is applied).
    pub fn waiting_inside(&self) -> Duration {
        match self.pending_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(unix_ms().saturating_sub(since)),
        }
    }

    /// Why the last session ended (kept until a session streams again).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("lock").clone()
    }

    /// Sets why the last session ended (None: streaming again).
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().expect("lock") = e;
    }
}

enum SessionEnd {
    Stopped,
    Paused,
    Reapply(Lsn),
    /// A failure; the target session a lost connection may have left behind.
    Failed(PgError, Option<SessionId>),
    DeadLetter(Box<crate::apply::DeadLetter>),
}

/// Runs CDC until `stop` turns true (returns Ok at a checkpoint) or a definite error.
pub async fn run<F: SinkFactory>(
    opts: CdcOptions,
    sinks: &F,
    mut stop: watch::Receiver<bool>,
    progress: Arc<CdcProgress>,
) -> Result<(), PgError> {
    let mut skip: HashSet<(Lsn, u32)> = HashSet::new();
    let mut ordered_until = Lsn(0);
    let mut backoff = Duration::from_millis(250);
    let mut stale_pid = None;
    // Without a pause control, a receiver whose sender lives as long as this run (a dropped
    // sender would make `changed()` return at once, forever).
    let (_no_pause, never) = watch::channel(false);
    let mut pause = opts.pause.clone().unwrap_or(never);
    let result = loop {
        if *pause.borrow() {
            tracing::info!("change capture paused; the slot keeps the changes until it resumes");
            progress.set_state(StreamState::Paused);
            loop {
                tokio::select! {
                    r = pause.changed() => if r.is_err() || !*pause.borrow() { break },
                    _ = stop.changed() => { progress.set_state(StreamState::Stopped); return Ok(()) },
                }
            }
            tracing::info!("change capture resumed");
        }
        progress.sessions.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match session(
            &opts,
            sinks,
            &skip,
            ordered_until,
            stale_pid.take(),
            &mut stop,
            &mut pause,
            &progress,
        )
        .await
        {
            SessionEnd::Stopped => break Ok(()),
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
                    tracing::error!(table = %d.table, operation = d.operation, commit = %crate::apply::position_text(&d.commit), error = %d.error, "dead letter recorded and skipped");
                    skip.insert((crate::apply::order_key(&d.commit), d.change_index));
                    continue;
                }
                break Err(PgError::config(
                    format!("applying a change to {} ({}, key {}, source commit {})", d.table, d.operation, d.key, crate::apply::position_text(&d.commit)),
                    d.error.clone(),
                    "the change is recorded in the dead_letters table of Ferry's state schema; fix the cause on the target and rerun, or rerun with --skip-dead-letters to record such changes and go on",
                ));
            }
            SessionEnd::Failed(e, pid) if e.class == ErrorClass::Transient => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                progress.set_state(StreamState::Reconnecting);
                progress.set_error(Some(e.to_string()));
                stale_pid = pid;
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change capture interrupted; resuming from the last applied position");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            SessionEnd::Failed(e, _) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                break Err(e);
            }
        }
    };
    progress.set_state(StreamState::Stopped);
    result
}

#[allow(clippy::too_many_arguments)]
async fn session<F: SinkFactory>(
    opts: &CdcOptions,
    sinks: &F,
    skip: &HashSet<(Lsn, u32)>,
    ordered_until: Lsn,
    stale_pid: Option<SessionId>,
    stop: &mut watch::Receiver<bool>,
    pause: &mut watch::Receiver<bool>,
    progress: &CdcProgress,
) -> SessionEnd {
    // Connecting is bounded by each connection's own timeout, but a server that accepts and
    // then hangs a query must not hang us either.
    let limit = opts.apply_timeout.max(Duration::from_secs(5)) * 2;
    let connecting = async {
        let relations = Relations::connect(opts.source(), limit).await?;
        let sink = sinks.open(relations.settings(), skip, ordered_until, stale_pid).await?;
        Ok::<_, PgError>((relations, sink))
    };
    let (mut relations, mut sink) = match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return SessionEnd::Failed(e, stale_pid),
        Err(_) => {
            return SessionEnd::Failed(
                PgError::transient(
                    format!("preparing the apply session on {}", sinks.describe()),
                    format!("no answer within {} s", limit.as_secs()),
                ),
                stale_pid,
            )
        }
    };
    let id = sink.session();
    let watch = sinks.watchdog(&sink, opts.apply_timeout);
    let end = tokio::select! {
        r = stream(opts, &mut relations, &mut sink, stop, pause, progress) => Ok(r),
        e = watch => Err(e),
    };
    let end = match end {
        Ok(r) => r,
        // The watchdog found the apply connection dead: a ROLLBACK on it would only wait out
        // its own bound. The next session ends the old one on the server (its id is passed
        // on), which rolls back whatever it had open.
        Err(e) => {
            sink.abandon();
            return SessionEnd::Failed(e, id);
        }
    };
    match end {
        Ok(()) if *pause.borrow() && !*stop.borrow() => SessionEnd::Paused,
        Ok(()) => SessionEnd::Stopped,
        Err(ApplyError::Rejected(d)) => {
            sink.rollback().await;
            let skipped = opts.skip_dead_letters;
            if let Err(e) = sink.record_dead_letter(&d, skipped).await {
                return SessionEnd::Failed(into_pg(e), id);
            }
            SessionEnd::DeadLetter(d)
        }
        Err(ApplyError::Db(e)) => {
            sink.rollback().await;
            SessionEnd::Failed(e, id)
        }
        Err(ApplyError::Reapply { until }) => {
            sink.rollback().await;
            SessionEnd::Reapply(until)
        }
    }
}

/// A sink's error where only a database failure can come (recording a dead letter).
fn into_pg(e: ApplyError) -> PgError {
    match e {
        ApplyError::Db(e) => e,
        other => PgError::config("recording a dead letter", other.to_string(), "report this as a bug"),
    }
}

/// The position of a sink's report as the stream's LSN (0/0: none yet).
fn lsn_of(p: Option<SourcePosition>) -> Lsn {
    p.map(|p| order_key(&p)).unwrap_or_default()
}

/// A duration as `SHOW` prints it: `60s`, `1min`, `500ms`, `2h`, `0`.
fn parse_pg_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

/// Watches the applier's database calls: one that has waited longer than `limit` is checked
/// from a second connection to the target, every `limit / 3` (at least 500 ms), each probe
/// bounded by 2 s (or the step if longer); a probe without an answer is repeated at once on a
/// new connection. Detection takes at most `limit` + a step + two probes: 24 s by default,
/// 12 s with `--apply-timeout 6s`. Returns (ending the session) when the target does
/// not answer, when the apply session is gone, or when it is idle while Ferry waits for it
/// (the connection lost what was sent). A statement still running is waited for.
async fn watchdog(target: crate::Endpoint, pid: i32, busy: Arc<AtomicU64>, limit: Duration) -> PgError {
    let step = (limit / 3).max(Duration::from_millis(500));
    let mut probe: Option<tokio_postgres::Client> = None;
    // Probes in a row that got no answer.
    let mut failures = 0u32;
    let mut reported = Instant::now();
    loop {
        if failures == 0 {
            tokio::time::sleep(step).await;
        }
        let since = busy.load(Ordering::Relaxed);
        let waited = Duration::from_millis(unix_ms().saturating_sub(since));
        if since == 0 || waited < limit {
            failures = 0;
            continue;
        }
        let look = async {
            if probe.as_ref().is_none_or(|c| c.is_closed()) {
                probe = Some(target.connect("watchdog").await?);
            }
            let c = probe.as_ref().expect("connected above");
            c.query_opt(
                "SELECT state, COALESCE(wait_event_type || ':' || wait_event, ''), left(query, 80) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .map_err(|e| PgError::query("watching the apply session", e))
        };
        match tokio::time::timeout(step.max(Duration::from_secs(2)), look).await {
            Ok(Ok(None)) => {
                return PgError::transient(
                    format!("applying changes on {}", target.describe()),
                    format!(
                        "the apply session (pid {pid}) is gone from the target while Ferry waited {} s for it",
                        waited.as_secs()
                    ),
                )
            }
            Ok(Ok(Some(row))) => {
                failures = 0;
                let state: Option<String> = row.get(0);
                let wait: String = row.get(1);
                let query: Option<String> = row.get(2);
                if state.as_deref() == Some("active") {
                    if reported.elapsed() >= Duration::from_secs(30) {
                        tracing::info!(pid, waited_s = waited.as_secs(), wait_event = %wait, query = query.as_deref().unwrap_or(""), "the target is still running an apply statement");
                        reported = Instant::now();
                    }
                    continue;
                }
                // Re-read the clock: the answer may have arrived while we looked.
                if busy.load(Ordering::Relaxed) != since {
                    continue;
                }
                return PgError::transient(
                    format!("applying changes on {}", target.describe()),
                    format!(
                        "Ferry waited {} s for the target's answer while its apply session (pid {pid}) is {} ({wait}): the connection lost what was sent (apply timeout {} s, --apply-timeout)",
                        waited.as_secs(),
                        state.as_deref().unwrap_or("in an unknown state"),
                        limit.as_secs()
                    ),
                );
            }
            Ok(Err(_)) | Err(_) => {
                // Two in a row, the second on a new connection: one refused connection
                // (max_connections, say) does not end a healthy session that is merely slow.
                probe = None;
                failures += 1;
                if failures >= 2 {
                    return PgError::transient(
                        format!("applying changes on {}", target.describe()),
                        format!(
                            "no answer from the target for {} s, on the apply connection nor on a new one (apply timeout {} s, --apply-timeout): the network or the server is down",
                            waited.as_secs(),
                            limit.as_secs()
                        ),
                    );
                }
            }
        }
    }
}

/// Status updates to the source: sent whenever the applied or flushed position moves, and
/// at least once a second (so that its `pg_stat_replication` lag figures stay current).
struct Reporter {
    fb: crate::stream::FeedbackSender,
    sent: (Lsn, Lsn),
    at: Instant,
}

impl Reporter {
    /// Reports where `a` stands: sends a status update when a position moved or a second
    /// has passed, and keeps the live figures current.
    async fn tell<S: Sink>(&mut self, pos: &Positions, a: &S, progress: &CdcProgress) -> Result<(), PgError> {
        let (applied, flushed) = (pos.applied(a), pos.flushed(a).min(pos.applied(a)));
        let pending_ms = a
            .waiting_since()
            .map(|t| unix_ms().saturating_sub(t.elapsed().as_millis() as u64))
            .unwrap_or(0);
        progress.pending_since_ms.store(pending_ms, Ordering::Relaxed);
        progress.applied_lsn.fetch_max(applied.0, Ordering::Relaxed);
        progress.flushed_lsn.fetch_max(flushed.0, Ordering::Relaxed);
        progress.txns.store(a.transactions(), Ordering::Relaxed);
        if (applied, flushed) != self.sent || self.at.elapsed() >= FEEDBACK_EVERY {
            self.fb.send(applied, flushed, false).await?;
            self.sent = (applied, flushed);
            self.at = Instant::now();
            progress.last_feedback_ms.store(unix_ms(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Asks the server to answer at once (a liveness probe).
    async fn ping(&mut self) -> Result<(), PgError> {
        self.fb.send(self.sent.0, self.sent.1, true).await?;
        self.at = Instant::now();
        Ok(())
    }
}

/// The longest the source goes without a status update.
const FEEDBACK_EVERY: Duration = Duration::from_secs(1);

/// How often an idle stream asks the server how far it has sent.
const IDLE_PING: Duration = Duration::from_millis(500);

/// Where the stream stands: applied (and flushed) positions, or, with nothing open, the
/// server's WAL end when it last said so.
struct Positions {
    /// The server's WAL end at a keepalive that found nothing of ours open or uncommitted.
    idle_end: Lsn,
}

impl Positions {
    fn applied<S: Sink>(&self, a: &S) -> Lsn {
        lsn_of(a.committed()).max(self.idle_end)
    }

    fn flushed<S: Sink>(&self, a: &S) -> Lsn {
        let flushed = lsn_of(a.durable());
        if a.has_unflushed() {
            flushed
        } else {
            flushed.max(self.idle_end)
        }
    }
}

async fn stream<S: Sink<Error = ApplyError>>(
    opts: &CdcOptions,
    relations: &mut Relations,
    applier: &mut S,
    stop: &mut watch::Receiver<bool>,
    pause: &mut watch::Receiver<bool>,
    progress: &CdcProgress,
) -> Result<(), ApplyError> {
    let start = lsn_of(applier.committed());
    progress.applied_lsn.store(start.0, Ordering::Relaxed);
    progress.flushed_lsn.store(lsn_of(applier.durable()).0, Ordering::Relaxed);
    let mut conn = ReplicationConnection::connect(opts.source()).await?;
    // A WAL sender busy decoding (a large transaction of tables not replicated, say) may answer
    // a keepalive request only when half its own timeout has passed.
    let sender_timeout = conn
        .simple_query("SHOW wal_sender_timeout")
        .await
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r.first().cloned().flatten()))
        .and_then(|v| parse_pg_duration(&v))
        .unwrap_or(Duration::ZERO);
    let dead_after = if sender_timeout.is_zero() {
        opts.stream_timeout
    } else {
        opts.stream_timeout.max(sender_timeout / 2 + Duration::from_secs(5))
    };
    let ping_after = (dead_after / 3).max(Duration::from_secs(1));
    let (mut rx, feedback) = conn.start_logical(&opts.slot, start, &opts.publication, CHANNEL_BATCHES).await?;
    tracing::info!(slot = %opts.slot, from = %start, stream_timeout_s = dead_after.as_secs(), "streaming changes");
    progress.set_state(StreamState::Streaming);
    progress.set_error(None);
    let mut rep = Reporter {
        fb: feedback,
        sent: (start, lsn_of(applier.durable())),
        at: Instant::now(),
    };
    let mut pos = Positions { idle_end: start };
    let mut heard = Instant::now();
    let mut pinged = Instant::now() - ping_after;
    let mut flush_polled = Instant::now();
    // When the last batch was sent: the next one goes no sooner than `commit_interval` after.
    let mut committed = Instant::now() - opts.commit_interval;
    // Events of the batch being worked through: they are handled without waiting on anything
    // else; stop, pause, finished commits and the clock are looked at between batches.
    let mut queue = Vec::new().into_iter();
    loop {
        let event = match queue.next() {
            Some(e) => Some(e),
            None => {
                if *stop.borrow() || *pause.borrow() {
                    return finish(applier, &mut rep, &pos, progress).await;
                }
                applier.try_settle().await?;
                // Asynchronous commits reach the disk within the WAL writer's delay: ask how
                // far, so the slot moves on (never past what a crash of the target would keep).
                if applier.has_unflushed() && !applier.in_flight() && flush_polled.elapsed() >= Duration::from_millis(200) {
                    applier.poll_flush().await?;
                    flush_polled = Instant::now();
                }
                rep.tell(&pos, applier, progress).await?;
                // A hold waits for a position the stream may never bring a transaction past (an
                // idle source): ask the server for a keepalive, which tells how far it has sent.
                if opts.hold.as_ref().is_some_and(|h| h.requested().is_some()) && applier.at_boundary() && rx.is_empty() {
                    if applier.batch_open() {
                        applier.commit().await?;
                    }
                    rep.ping().await?;
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => continue,
                    _ = pause.changed() => continue,
                    // A batch committing in the background is done: tell the source at once, and
                    // send the batch that grew meanwhile.
                    r = applier.settle(), if applier.in_flight() => {
                        r?;
                        if applier.batch_open() && applier.at_boundary() && committed.elapsed() >= opts.commit_interval {
                            applier.commit().await?;
                            committed = Instant::now();
                        }
                        rep.tell(&pos, applier, progress).await?;
                        continue;
                    }
                    // A batch held back by the commit interval: its time has come.
                    _ = tokio::time::sleep_until((committed + opts.commit_interval).into()),
                        if applier.batch_open() && applier.at_boundary() && !applier.in_flight() =>
                    {
                        applier.commit().await?;
                        committed = Instant::now();
                        continue;
                    }
                    r = tokio::time::timeout(Duration::from_millis(100), rx.recv()) => match r {
                        Ok(Some(batch)) => {
                            heard = Instant::now();
                            progress.last_message_ms.store(unix_ms(), Ordering::Relaxed);
                            queue = batch.into_iter();
                            continue;
                        }
                        Ok(None) => return Err(PgError::transient("replication stream", "the stream ended").into()),
                        // Nothing arrived for a while.
                        Err(_) => {
                            let quiet = heard.elapsed();
                            if quiet >= dead_after {
                                return Err(PgError::transient(
                                    format!("streaming changes from {}", opts.source().describe()),
                                    format!(
                                        "no message from the WAL sender for {} s, not even the keepalive Ferry asked for: the network or the server is not answering (stream timeout {} s, --stream-timeout)",
                                        quiet.as_secs(),
                                        dead_after.as_secs()
                                    ),
                                )
                                .into());
                            }
                            if quiet >= ping_after && pinged.elapsed() >= ping_after {
                                rep.ping().await?;
                                pinged = Instant::now();
                            }
                            // A sink that records how far the source has sent while idle asks
                            // for keepalives that say so; so does an idle stream twice a second,
                            // so that WAL the source writes with nothing of ours in it (VACUUM,
                            // ANALYZE, checkpoints, tables not replicated) reads as applied, not
                            // as lag (the read endpoint, shadow traffic and cutover judge it).
                            let every = applier.watermark_every().unwrap_or(IDLE_PING).min(IDLE_PING);
                            if !applier.batch_open() && applier.at_boundary() && !applier.in_flight() && pinged.elapsed() >= every {
                                rep.ping().await?;
                                pinged = Instant::now();
                            }
                            None
                        }
                    },
                }
            }
        };
        match event {
            None => {
                // Nothing arrived for a while: commit what is complete.
                if applier.batch_open() && applier.at_boundary() {
                    applier.commit().await?;
                    committed = Instant::now();
                }
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(StreamEvent::Data { wal_end, data, .. })) => {
                progress.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                let msg = pgoutput::decode(&data)
                    .map_err(|e| PgError::config("decoding the change stream", e.to_string(), "report this as a bug"))?;
                if let (pgoutput::Message::Begin { final_lsn, .. }, Some(hold)) = (&msg, &opts.hold) {
                    if hold.requested().is_some_and(|at| *final_lsn >= at) {
                        hold_here(applier, hold, &mut rep, &pos, progress, stop, *final_lsn).await?;
                    }
                }
                if let Some(event) = relations.event(msg).await? {
                    let is_row = event.is_row_change();
                    applier.apply(event).await?;
                    if is_row {
                        progress.changes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Commit at a boundary when the stream has nothing more ready, unless the previous
                // batch is still committing: then the open batch keeps growing until it is done
                // (the target is busy anyway, and one larger batch costs it less than several
                // small ones), up to `max_batch` changes or `max_delay`.
                if applier.batch_open()
                    && applier.at_boundary()
                    && ((queue.as_slice().is_empty()
                        && rx.is_empty()
                        && !applier.in_flight()
                        && committed.elapsed() >= opts.commit_interval)
                        || applier.batch_len() >= opts.max_batch
                        || applier.batch_age() >= opts.max_delay)
                {
                    applier.commit().await?;
                    committed = Instant::now();
                }
            }
            Some(Ok(StreamEvent::Keepalive { wal_end, reply })) => {
                progress.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                // The server has sent everything up to wal_end. Commit what is complete (within
                // the commit interval: a busy WAL sender sends a keepalive after every burst),
                // and if no source transaction is open, nothing before wal_end is still ours to
                // apply: confirm it, so the slot moves on even when no change of ours comes along
                // (an idle database, a server shutting down and waiting for us).
                if applier.batch_open() && applier.at_boundary() && !applier.in_flight() && committed.elapsed() >= opts.commit_interval {
                    applier.commit().await?;
                    committed = Instant::now();
                }
                // Only with nothing in flight: a batch committing in the background may still fail.
                let idle = !applier.batch_open() && applier.at_boundary() && !applier.in_flight();
                if let Some(hold) = &opts.hold {
                    // Everything before wal_end is sent: a hold at or before it is reached when
                    // nothing is left to apply.
                    if hold.requested().is_some_and(|at| wal_end >= at) && applier.at_boundary() {
                        hold_here(applier, hold, &mut rep, &pos, progress, stop, wal_end).await?;
                        continue;
                    }
                }
                if idle {
                    if wal_end > pos.idle_end && applier.watermark_every().is_some() {
                        applier.watermark(SourcePosition::Postgres(wal_end)).await?;
                    }
                    pos.idle_end = pos.idle_end.max(wal_end);
                }
                tracing::trace!(%wal_end, reply, idle, "keepalive");
                if reply {
                    // Answer now, whatever changed.
                    rep.at = Instant::now() - FEEDBACK_EVERY;
                }
                rep.tell(&pos, applier, progress).await?;
            }
        }
    }
}

/// Commits what is open, makes it durable, reports the hold reached, and waits until it is
/// released, moved past `next` (the commit position of the next transaction, or how far the
/// server has sent when idle), or the run stops. The source keeps getting status updates
/// meanwhile.
async fn hold_here<S: Sink<Error = ApplyError>>(
    applier: &mut S,
    hold: &Hold,
    rep: &mut Reporter,
    pos: &Positions,
    progress: &CdcProgress,
    stop: &mut watch::Receiver<bool>,
    next: Lsn,
) -> Result<(), ApplyError> {
    if applier.batch_open() {
        applier.commit().await?;
    }
    applier.settle().await?;
    // What cutover switches to, or verification compares, must not be lost to a crash.
    applier.flush_now().await?;
    let lsn = lsn_of(applier.committed());
    rep.tell(pos, applier, progress).await?;
    let mut request = hold.request.subscribe();
    let before = progress.state();
    loop {
        let at = *request.borrow_and_update();
        match at {
            Some(at) if next >= at => {
                tracing::debug!(%at, applied = %lsn, "change capture held");
                progress.set_state(StreamState::Held);
                hold.held.send_replace(Some(at));
                let mut tick = tokio::time::interval(FEEDBACK_EVERY);
                let released = loop {
                    tokio::select! {
                        r = request.changed() => break r.is_err(),
                        _ = stop.changed() => break true,
                        _ = tick.tick() => rep.tell(pos, applier, progress).await?,
                    }
                };
                if released {
                    break;
                }
            }
            // Released, or moved to a position the next transaction is before: go on.
            _ => break,
        }
    }
    progress.set_state(before);
    hold.held.send_replace(None);
    Ok(())
}

/// Stops at a checkpoint: commits a batch that ends at a boundary, else rolls back the partial
/// source transaction (it is streamed again next time).
async fn finish<S: Sink<Error = ApplyError>>(
    applier: &mut S,
    rep: &mut Reporter,
    pos: &Positions,
    progress: &CdcProgress,
) -> Result<(), ApplyError> {
    if applier.batch_open() && applier.at_boundary() {
        applier.commit().await?;
        applier.settle().await?;
    } else {
        applier.settle().await?;
        applier.rollback().await;
    }
    // The next run starts from the applied position; tell the source all of it is durable.
    applier.flush_now().await?;
    let lsn = lsn_of(applier.committed());
    let _ = rep.tell(pos, applier, progress).await;
    tracing::info!(applied_lsn = %lsn, "change capture stopped at a checkpoint");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_as_show_prints_them() {
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_pg_duration("soon"), None);
    }
}
