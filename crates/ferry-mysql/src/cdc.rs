//! Change capture from the binlog into PostgreSQL, exactly once, through the PostgreSQL sink.
//!
//! This is the MySQL source's driver (see `ferry_core::sink` for the contract it follows): the
//! binlog reader's row events become engine-neutral [`ChangeEvent`]s — relations from the
//! migration's plan, typed as the target's columns are, values rendered in their PostgreSQL
//! input form by the same conversion as the full load ([`crate::value::text_of`]) — and
//! the PostgreSQL sink, `ferry_postgres::apply::Applier`, applies them as it applies a
//! PostgreSQL stream: set-based where changes commute, pipelined commits, the position
//! (`ferry.migrations.applied_position`) committed with each batch, every update and delete
//! bound to find exactly one row, dead letters for what the target rejects.
//!
//! A source transaction is `Begin` at the position where it starts in the binlog (its ordering
//! key, `ferry_postgres::apply::order_key`) and `Commit` at the position after it: after a crash
//! the target holds exactly the transactions before the stored position and the stream resumes
//! there, skipping what is applied. `docs/mysql-cdc.md` has the whole story.
//!
//! A prepared XA transaction's rows are not applied where the binlog has them (at XA PREPARE)
//! but with its XA COMMIT, read again from the binlog on a second connection (`replay_prepared`;
//! where each prepared one starts is in `ferry.mysql_xa_prepared`, or searched for,
//! `find_prepared`); an XA ROLLBACK applies nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::change::ChangeEvent;
use ferry_core::sink::DeadLetter;
use ferry_core::{BinlogPosition, Lsn, SourcePosition, TableName};
use ferry_postgres::apply::{order_key, position_text, Applier, ApplyContext, ApplyError, Direction, TextSettings};
use futures_util::FutureExt;

use crate::binlog::{BinlogReader, Change, Unapplicable};
use crate::error::MyError;
use crate::preflight::{MyCheckRequest, MyPlan, MyTable};
use crate::rows::{convert, ConvError, TableConv, TxnCursor};
use crate::state::{Hold, MyState, XaPrepared};
use crate::statement::xid_key;
use crate::types::ZeroDates;

/// Longest the binlog connection may stay silent: the source sends a heartbeat every
/// [`crate::binlog::HEARTBEAT_PERIOD`] when it has nothing else, so silence this long means the
/// connection (or the server) is dead. The stream then reconnects with backoff.
pub const BINLOG_SILENCE: Duration = Duration::from_secs(10);
/// First wait before reconnecting after a failure; doubles up to [`BACKOFF_MAX`], and starts
/// afresh once a run applied something.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After reading a prepared XA transaction again for this long, the stream's own binlog
/// connection, unread meanwhile, is opened again at the XA COMMIT's end: a busy source gives up
/// on a replica that does not read (`net_write_timeout`, 60 s by default), and the stream would
/// then resume before the XA COMMIT and read the prepared transaction again, as long again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);
/// Deadline of one poll of the hold request on the target (a 50 ms loop, a trivial query).
const HOLD_POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// How the stream runs.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    /// Ferry's replica server id on the source (unique among its replicas).
    pub server_id: u32,
    /// Most row changes in one target transaction (source transactions are never split).
    pub batch_changes: usize,
    /// Longest a batch stays open before committing at the next transaction boundary.
    pub batch_time: Duration,
    /// A schema change the user has applied on the target, or a statement the stream stopped at
    /// that the user has dealt with (`--ddl-applied`): its position.
    pub skip_schema_change: Option<BinlogPosition>,
    /// Record changes the target rejects as dead letters and step over them
    /// (`--skip-dead-letters`), instead of stopping at the first.
    pub skip_dead_letters: bool,
}

/// Counters the command prints and tests read, and what the HTTP API and `/metrics` show of the
/// stream (`crates/ferry/src/live.rs`): all of this process's run, none of it stored.
#[derive(Debug, Default)]
pub struct CdcStats {
    /// Source transactions applied.
    pub transactions: AtomicU64,
    /// Row changes applied.
    pub changes: AtomicU64,
    /// Row changes applied, by operation: insert, update, delete, truncate.
    pub ops: [AtomicU64; 4],
    /// Source commit time (epoch seconds) of the last transaction applied.
    pub last_commit_ts: AtomicU64,
    /// Nothing was waiting in the stream at the last commit.
    pub caught_up: AtomicBool,
    /// Reconnections after a transient failure.
    pub reconnects: AtomicU64,
    /// Dead letters met (recorded; stepped over with `--skip-dead-letters`).
    pub dead_letters: AtomicU64,
    /// Positions: `.0` the last one committed on the target; `.1` the one before which nothing
    /// is left to apply (the committed one, or further: where the reader stood when it had
    /// read and committed everything the source had sent).
    pub positions: std::sync::Mutex<(Option<BinlogPosition>, Option<BinlogPosition>)>,
    /// A run is connected to both sides and reading the binlog.
    pub streaming: AtomicBool,
    /// The stream holds at a position for a verification (or the cutover gate).
    pub holding: AtomicBool,
    /// Why the last run ended with a transient failure (cleared when a run starts streaming).
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl CdcStats {
    /// Seconds the target is behind: 0 when caught up, else the age of the last applied commit.
    pub fn lag_seconds(&self) -> u64 {
        if self.caught_up.load(Ordering::Relaxed) {
            return 0;
        }
        let ts = self.last_commit_ts.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if ts == 0 {
            0
        } else {
            now.saturating_sub(ts)
        }
    }

    /// Nothing is left to apply before `at` (only ever moves forward).
    fn processed_to(&self, at: BinlogPosition) {
        let mut p = self.positions.lock().expect("lock");
        if p.1.as_ref().is_none_or(|cur| at > *cur) {
            p.1 = Some(at);
        }
    }

    /// A batch ending at `at` committed.
    fn committed(&self, at: &BinlogPosition) {
        self.positions.lock().expect("lock").0 = Some(at.clone());
        self.processed_to(at.clone());
    }
}

/// Marks a run as streaming while it lives.
struct Streaming<'a>(&'a CdcStats);

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.streaming.store(false, Ordering::Relaxed);
    }
}

/// Polls the hold request every 50 ms into `tx`, on its own target connection; a connection
/// that dies (or does not answer a poll within [`HOLD_POLL_TIMEOUT`]) is logged and replaced,
/// with backoff.
async fn poll_hold(target: ferry_postgres::Endpoint, state: MyState, tx: tokio::sync::watch::Sender<Hold>) {
    let mut backoff = BACKOFF_START;
    loop {
        let c = match target.connect("mysql-cdc-hold").await {
            Ok(c) => c,
            Err(e) => {
                let wait = next_backoff(&mut backoff);
                tracing::warn!(connection = "hold poller (target)", target = %target.describe(), error = %e, retry_in_ms = wait.as_millis() as u64, "cannot connect; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff = BACKOFF_START;
        loop {
            match tokio::time::timeout(HOLD_POLL_TIMEOUT, state.read_hold(&c)).await {
                Ok(Ok(Some(h))) => {
                    tx.send_if_modified(|cur| {
                        if *cur != h {
                            *cur = h;
                            true
                        } else {
                            false
                        }
                    });
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) if c.is_closed() => {
                    tracing::warn!(connection = "hold poller (target)", target = %target.describe(), error = %e, "connection lost; reconnecting");
                    break;
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(
                        connection = "hold poller (target)",
                        target = %target.describe(),
                        waited_for = "the hold request",
                        "no answer within {}; reconnecting",
                        crate::endpoint::human(HOLD_POLL_TIMEOUT)
                    );
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a session ended.
enum Failure {
    /// Network, restart: reconnect and resume from the stored position.
    Transient(MyError),
    /// Needs a human.
    Fatal(MyError),
    /// The sink replays the batch that failed set-based row by row, up to this key.
    Reapply(Lsn),
    /// A change the target rejected (or that would not convert): recorded; stepped over with
    /// `--skip-dead-letters`.
    DeadLetter(Box<DeadLetter>),
}

impl From<MyError> for Failure {
    /// By the error's class ([`crate::error::error_class`] for the server's error numbers).
    fn from(e: MyError) -> Failure {
        match e.class {
            ferry_core::ErrorClass::Transient => Failure::Transient(e),
            ferry_core::ErrorClass::Definite => Failure::Fatal(e),
        }
    }
}

impl From<ConvError> for Failure {
    fn from(e: ConvError) -> Failure {
        match e {
            ConvError::Fatal(e) => Failure::Fatal(e),
            ConvError::DeadLetter(d) => Failure::DeadLetter(d),
        }
    }
}

/// A table of the plan as the target has it: the sink checks its columns against the
/// target's, and casts every value's text to them.
async fn target_conv(id: u32, t: &MyTable, schema: &str, pg: &tokio_postgres::Client) -> Result<TableConv, MyError> {
    let table = TableName::new(schema, t.name.clone());
    let target: HashMap<String, String> = pg
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| {
            MyError::from(ferry_postgres::PgError::query(
                format!("reading the columns of {table} on the target"),
                e,
            ))
        })?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    TableConv::build(id, t, schema, &target)
}

impl From<ApplyError> for Failure {
    fn from(e: ApplyError) -> Failure {
        match e {
            ApplyError::Db(e) => Failure::from(MyError::from(e)),
            ApplyError::Rejected(d) => Failure::DeadLetter(d),
            ApplyError::Reapply { until } => Failure::Reapply(until),
        }
    }
}

fn pg_failure(what: &str, e: tokio_postgres::Error) -> Failure {
    Failure::from(MyError::from(ferry_postgres::PgError::query(what, e)))
}

/// Streams changes from the stored position until `stop` turns true; reconnects after
/// transient failures; records dead letters (and steps over them with `skip_dead_letters`).
/// Returns the last position committed.
pub async fn stream(
    req: &MyCheckRequest,
    plan: &MyPlan,
    state: &MyState,
    opts: &CdcOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: &CdcStats,
) -> Result<BinlogPosition, MyError> {
    let mut backoff = BACKOFF_START;
    let mut session = Session {
        skip: HashSet::new(),
        ordered_until: Lsn(0),
        stale_pid: None,
    };
    loop {
        let applied_before = stats.transactions.load(Ordering::Relaxed);
        let outcome = run(req, plan, state, opts, &mut session, &mut stop, stats).await;
        if stats.transactions.load(Ordering::Relaxed) > applied_before {
            // That run made progress: the next failure starts the backoff afresh.
            backoff = BACKOFF_START;
        }
        let e = match outcome {
            Ok(p) => return Ok(p),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Reapply(until)) => {
                // Replay the failed batch row by row from the durable position: the change at
                // fault is named (or, if it was a false alarm, simply applied).
                session.ordered_until = session.ordered_until.max(until);
                tracing::info!(until = %until, "replaying a batch row by row");
                continue;
            }
            Err(Failure::DeadLetter(d)) => {
                stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                if opts.skip_dead_letters {
                    tracing::error!(table = %d.table, operation = d.operation, commit = %position_text(&d.commit), change = d.change_index, error = %d.error, "dead letter recorded and skipped");
                    session.skip.insert((order_key(&d.commit), d.change_index));
                    continue;
                }
                return Err(MyError::new(
                    &format!(
                        "applying a change to {} ({}, key {}, source transaction at binlog {}, change {})",
                        d.table,
                        d.operation,
                        d.key,
                        position_text(&d.commit),
                        d.change_index
                    ),
                    &d.error,
                    "the change is recorded in the dead_letters table of Ferry's state schema; fix the cause on the target and rerun, \
                     or rerun with --skip-dead-letters to record such changes and go on",
                ));
            }
            Err(Failure::Transient(e)) => e,
        };
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        *stats.last_error.lock().expect("lock") = Some(e.to_string());
        let wait = next_backoff(&mut backoff);
        // The error names the connection (the binlog connection to the source, or the apply
        // connection to the target) and what it waited for.
        tracing::warn!(
            error = %e,
            retry_in_ms = wait.as_millis() as u64,
            reconnects = stats.reconnects.load(Ordering::Relaxed),
            "change capture interrupted; reconnecting both connections and resuming from the last commit"
        );
        if wait_or_stop(&mut stop, wait).await {
            let committed = stats.positions.lock().expect("lock").0.clone();
            return committed.ok_or(e);
        }
    }
}

/// What one session hands the next.
struct Session {
    /// Dead letters to step over: (ordering key of the transaction, change index).
    skip: HashSet<(Lsn, u32)>,
    /// Transactions up to this key apply row by row (after a set-based failure).
    ordered_until: Lsn,
    /// The target session of a sink whose connection was lost: ended before the next one reads
    /// its position.
    stale_pid: Option<i32>,
}

/// The driver's side of one session: the sink, the target connection for Ferry's own
/// bookkeeping (hold, schema-change stop), and what the counters have seen of the sink.
struct Driver<'a> {
    sink: Applier,
    ctl: tokio_postgres::Client,
    state: &'a MyState,
    stats: &'a CdcStats,
    /// The sink's totals already added to `stats`.
    counted: ferry_postgres::apply::Counts,
    /// Commit time (Unix seconds) of the last transaction handed to the sink, and of the last
    /// one in a batch sent to commit.
    last_ts: u32,
    committing_ts: u32,
    /// The stream stopped before a schema change last time: forget it once past it.
    clear_blocked: bool,
    /// Dead letters stepped over (the sink's list too).
    skip: HashSet<(Lsn, u32)>,
}

impl Driver<'_> {
    /// Counts what the sink committed since the last call.
    fn note_settled(&mut self) {
        let t = self.sink.totals();
        let c = self.counted;
        let changes = (t.inserts - c.inserts) + (t.updates - c.updates) + (t.deletes - c.deletes) + (t.truncates - c.truncates);
        if t == c {
            return;
        }
        self.stats.transactions.fetch_add(t.txns - c.txns, Ordering::Relaxed);
        self.stats.changes.fetch_add(changes, Ordering::Relaxed);
        for (n, counter) in [
            t.inserts - c.inserts,
            t.updates - c.updates,
            t.deletes - c.deletes,
            t.truncates - c.truncates,
        ]
        .iter()
        .zip(&self.stats.ops)
        {
            counter.fetch_add(*n, Ordering::Relaxed);
        }
        self.stats.last_commit_ts.store(u64::from(self.committing_ts), Ordering::Relaxed);
        self.counted = t;
        if let SourcePosition::Mysql(p) = self.sink.durable_position() {
            self.stats.committed(&p);
        }
    }

    /// Commits the open batch (at a boundary) in the background.
    async fn commit(&mut self) -> Result<(), Failure> {
        if self.sink.batch_open() && self.sink.at_boundary() {
            // The previous batch first (the sink would wait for it anyway): its counters and
            // commit time are its own.
            if self.sink.has_inflight() {
                self.sink.settle().await?;
                self.note_settled();
            }
            self.committing_ts = self.last_ts;
            self.sink.commit().await?;
        }
        Ok(())
    }

    /// Commits what is open and waits until it is committed and flushed on the target: for a
    /// position others act on (a hold, the cutover, a stop).
    async fn settle_all(&mut self) -> Result<BinlogPosition, Failure> {
        self.commit().await?;
        self.sink.settle().await?;
        self.sink.flush_now().await?;
        self.note_settled();
        if self.clear_blocked && self.counted.txns > 0 {
            self.state.clear_blocked(&self.ctl).await?;
            self.clear_blocked = false;
        }
        match self.sink.durable_position() {
            SourcePosition::Mysql(p) => Ok(p),
            other => Err(Failure::Fatal(MyError::new(
                "following the binlog",
                &format!("the sink reports position {other}, not a binlog position"),
                "report this as a bug",
            ))),
        }
    }

    /// A settled background commit, if any: counters and position move on.
    async fn poll(&mut self) -> Result<(), Failure> {
        if self.sink.try_settle().await? {
            self.note_settled();
            if self.clear_blocked {
                self.state.clear_blocked(&self.ctl).await?;
                self.clear_blocked = false;
            }
        }
        Ok(())
    }
}

/// Holds the stream at a transaction boundary while a verification asks for it (see [`Hold`]):
/// commits what is complete, says where it stands in `held_at`, and waits for the request to
/// change (at most 120 s, then goes on: a verification that slow fails on its own check).
/// `here` is where the stream stands: everything before it applied (once the open batch
/// commits), nothing after it read; nothing is read while it holds.
async fn hold_if_asked(
    d: &mut Driver<'_>,
    hold_rx: &mut tokio::sync::watch::Receiver<Hold>,
    here: (&str, u64),
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), Failure> {
    let here = binlog_at(here.0, here.1, "")?;
    let mut held = false;
    loop {
        let h = hold_rx.borrow_and_update().clone();
        // Binlog positions compare by file number, then offset (never as text).
        let at = match &h {
            Hold::Run | Hold::CutOver => None,
            Hold::Freeze => Some(&here),
            Hold::Until(p) if here >= *p => Some(&here),
            Hold::Until(..) => None,
        };
        let Some(at) = at else {
            if held {
                d.state
                    .set_held(&d.ctl, None)
                    .await
                    .map_err(|e| pg_failure("recording the end of a hold", e))?;
            }
            return Ok(());
        };
        // What a verification compares must not be lost to a crash of the target.
        d.settle_all().await?;
        d.state
            .set_held(&d.ctl, Some(at))
            .await
            .map_err(|e| pg_failure("recording a hold", e))?;
        held = true;
        tracing::debug!(%at, "holding for a verification");
        d.stats.holding.store(true, Ordering::Relaxed);
        let waited = tokio::select! {
            _ = hold_rx.changed() => None,
            _ = stop.changed() => Some(false),
            _ = tokio::time::sleep(Duration::from_secs(120)) => Some(true),
        };
        d.stats.holding.store(false, Ordering::Relaxed);
        match waited {
            None => {}
            Some(false) => return Ok(()),
            Some(true) => {
                tracing::warn!("a verification held the stream for 120 s; going on");
                d.state
                    .set_held(&d.ctl, None)
                    .await
                    .map_err(|e| pg_failure("recording the end of a hold", e))?;
                return Ok(());
            }
        }
    }
}

/// A position the binlog reader reports, typed.
fn binlog_at(file: &str, pos: u64, gtid: &str) -> Result<BinlogPosition, Failure> {
    BinlogPosition::new(file, pos, gtid).map_err(|e| {
        Failure::Fatal(MyError::new(
            "following the binlog",
            &e.to_string(),
            "report this as a bug: the source named a binlog file or GTID Ferry cannot record",
        ))
    })
}

/// The open source transaction, as the driver numbers its changes (the way the sink does:
/// every row change and every truncated table counts, in stream order).
struct OpenTxn {
    /// Where it starts (the `Begin` position), its key, its changes so far.
    cur: TxnCursor,
    /// Its `Begin` was handed to the sink. It goes with the first change or the commit, not
    /// before: a schema change arrives as a transaction of its own, and the stream stops
    /// before it with the sink at a boundary, so that everything before it commits.
    sent: bool,
    /// It is a prepared XA transaction (this xid): its rows are not applied here but with its
    /// XA COMMIT; its commit only moves the position.
    prepared: Option<String>,
    /// A row change of it is on a migrated table.
    migrated_rows: bool,
}

impl OpenTxn {
    /// Hands the transaction's `Begin` to the sink, once.
    async fn begin(&mut self, sink: &mut Applier) -> Result<(), Failure> {
        if !self.sent {
            self.sent = true;
            sink.handle(ChangeEvent::Begin {
                commit: self.cur.begin.clone(),
                commit_time_us: 0,
                xid: 0,
            })
            .await?;
        }
        Ok(())
    }
}

/// One session: a sink on the target, a binlog reader on the source, until a stop, the
/// cutover, a failure or a dead letter.
async fn run(
    req: &MyCheckRequest,
    plan: &MyPlan,
    state: &MyState,
    opts: &CdcOptions,
    session: &mut Session,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    stats: &CdcStats,
) -> Result<BinlogPosition, Failure> {
    let ctl = req.target.connect("mysql-cdc").await.map_err(|e| Failure::from(MyError::from(e)))?;
    // Type names schema-qualified, as the sink's session (search_path '') reads them.
    ctl.batch_execute("SET search_path = ''")
        .await
        .map_err(|e| pg_failure("preparing the change capture session on the target", e))?;
    let Some((_, blocked)) = state.resume_point(&ctl).await? else {
        return Err(Failure::Fatal(MyError::new(
            "starting change capture",
            "no finished full load of this source is recorded on the target",
            "run ferry migrate without --stop-after (it loads first)",
        )));
    };
    // Values arrive in PostgreSQL's input forms, written for these settings (timestamps with
    // a zone carry +00, intervals are `HH:MM:SS`).
    let settings = TextSettings::utc();
    let ctx = ApplyContext {
        source: None,
        target: req.target.clone(),
        store: state.store().clone(),
        migration_id: state.id().to_string(),
        direction: Direction::Forward,
    };
    let sink = Applier::new(
        ctx,
        &settings,
        session.skip.clone(),
        session.ordered_until,
        session.stale_pid.take(),
    )
    .await
    .map_err(|e| Failure::from(MyError::from(e)))?;
    let mut d = Driver {
        sink,
        ctl,
        state,
        stats,
        counted: Default::default(),
        last_ts: 0,
        committing_ts: 0,
        clear_blocked: blocked.is_some(),
        skip: session.skip.clone(),
    };
    let pid = d.sink.pid();
    // The sink's position, read after it ended what a lost connection may have left open.
    let r = match d.sink.durable_position() {
        SourcePosition::Mysql(start) => stream_session(req, plan, opts, &mut d, &start, stop).await,
        other => Err(Failure::Fatal(MyError::new(
            "starting change capture",
            &format!("the recorded position {other} is not a binlog position"),
            "report this as a bug",
        ))),
    };
    if let Err(f) = &r {
        d.sink.rollback().await;
        match f {
            Failure::DeadLetter(letter) => {
                if let Err(e) = d.sink.record_dead_letter(letter, opts.skip_dead_letters).await {
                    session.stale_pid = Some(pid);
                    return Err(Failure::from(MyError::from(e)));
                }
            }
            Failure::Transient(_) => session.stale_pid = Some(pid),
            _ => {}
        }
    }
    r
}

async fn stream_session(
    req: &MyCheckRequest,
    plan: &MyPlan,
    opts: &CdcOptions,
    d: &mut Driver<'_>,
    start: &BinlogPosition,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<BinlogPosition, Failure> {
    let mut tables = HashMap::new();
    for (i, t) in plan.tables.iter().enumerate() {
        let conv = target_conv(i as u32 + 1, t, &req.target_schema, &d.ctl).await?;
        d.sink.handle(ChangeEvent::Relation(conv.relation.clone())).await?;
        tables.insert(t.name.clone(), conv);
    }
    // Transactions the reverse stream's sink wrote (after a cutover, before a rollback) are
    // Ferry's own: they came from PostgreSQL and are left out (loop prevention). The sink keeps
    // its position in the database named like the state schema (`crates/ferry/src/mysql_cmd.rs`).
    let mut reader = BinlogReader::start(&req.source, opts.server_id, start.file(), start.pos(), &plan.tables)
        .await
        .map_err(Failure::from)?
        .skip_reverse_writes(d.state.store().schema())
        .with_gtid_state(start.gtid());
    tracing::info!(position = %start, "streaming the binlog");
    d.stats.streaming.store(true, Ordering::Relaxed);
    *d.stats.last_error.lock().expect("lock") = None;
    let _streaming = Streaming(d.stats);
    // Not holding (a hold of an earlier run that failed is over).
    let _ = d.state.set_held(&d.ctl, None).await;
    let (hold_tx, mut hold_rx) = tokio::sync::watch::channel(Hold::Run);
    let _poller = AbortOnDrop(tokio::spawn(poll_hold(req.target.clone(), d.state.clone(), hold_tx)));
    let zero = req.map.zero_dates;
    let mut gtid = start.gtid().to_string();
    let mut txn: Option<OpenTxn> = None;
    let mut committed_at = Instant::now();
    // Prepared XA transactions before the start that are not resolved yet (by xid key): the
    // xid as written and where each starts in the binlog.
    let mut prepared = d.state.xa_prepared(&d.ctl).await?;
    // The last XA COMMIT took long to read again: the binlog connection is opened again after it.
    let mut reopen = false;
    loop {
        let ready = reader.next().now_or_never();
        let next = match ready {
            Some(r) => r,
            None => {
                // Nothing waiting: commit what is complete (the previous batch first, so that
                // one larger batch follows a busy target), then wait.
                d.poll().await?;
                if txn.is_none() {
                    if d.sink.batch_open() && !d.sink.has_inflight() {
                        d.commit().await?;
                        committed_at = Instant::now();
                    }
                    if *stop.borrow() || *hold_rx.borrow() == Hold::CutOver {
                        return d.settle_all().await;
                    }
                    if !d.sink.batch_open() && !d.sink.has_inflight() {
                        d.stats.caught_up.store(true, Ordering::Relaxed);
                        // Everything read is applied: the stream stands at the reader's position.
                        let (file, pos) = reader.position();
                        if let Ok(here) = BinlogPosition::new(&file, pos, "") {
                            d.stats.processed_to(here);
                        }
                    }
                    let (file, pos) = reader.position();
                    hold_if_asked(d, &mut hold_rx, (&file, pos), stop).await?;
                }
                let idle = txn.is_none();
                tokio::select! {
                    r = tokio::time::timeout(BINLOG_SILENCE, reader.next()) => match r {
                        Ok(r) => r,
                        Err(_) => {
                            let (file, pos) = reader.position();
                            return Err(Failure::Transient(MyError::transient(
                                &format!("reading the binlog from {} after {file}:{pos}", reader.server()),
                                &format!(
                                    "no event and no heartbeat within {} (an idle source sends one every {}): the binlog connection is presumed dead",
                                    crate::endpoint::human(BINLOG_SILENCE),
                                    crate::endpoint::human(crate::binlog::HEARTBEAT_PERIOD)
                                ),
                                "Ferry reconnects with backoff and resumes from its last commit",
                            )));
                        }
                    },
                    // A batch committing in the background is done: count it, and send what
                    // grew meanwhile.
                    r = d.sink.settle(), if d.sink.has_inflight() => {
                        r?;
                        d.note_settled();
                        continue;
                    }
                    _ = stop.changed(), if idle => continue,
                    _ = hold_rx.changed(), if idle => continue,
                }
            }
        };
        let changes = match next {
            Ok(Some(c)) => c,
            Ok(None) => {
                let (file, pos) = reader.position();
                return Err(Failure::Transient(MyError::transient(
                    &format!("reading the binlog from {} after {file}:{pos}", reader.server()),
                    "the source closed the binlog connection",
                    "Ferry reconnects with backoff and resumes from its last commit",
                )));
            }
            Err(e) => return Err(Failure::from(e)),
        };
        for c in changes {
            match c {
                // `executed`: the GTID state once it commits (MySQL's executed set, MariaDB's
                // last GTID per domain), recorded with the positions after it.
                Change::Begin { executed: g, at, .. } => {
                    let file = reader.file().to_string();
                    hold_if_asked(d, &mut hold_rx, (&file, at), stop).await?;
                    d.stats.caught_up.store(false, Ordering::Relaxed);
                    // Where it starts, with the GTID state before it.
                    let begin = SourcePosition::Mysql(binlog_at(&file, at, &gtid)?);
                    if let Some(g) = g {
                        gtid = g;
                    }
                    txn = Some(OpenTxn {
                        cur: TxnCursor {
                            key: order_key(&begin),
                            begin,
                            changes: 0,
                        },
                        sent: false,
                        prepared: None,
                        migrated_rows: false,
                    });
                }
                Change::XaPrepared { xid } => match txn.as_mut() {
                    Some(open) => open.prepared = Some(xid),
                    None => return Err(outside_transaction()),
                },
                Change::XaResolved { xid, committed } => {
                    let Some(open) = txn.as_mut() else {
                        return Err(outside_transaction());
                    };
                    let key = xid_key(&xid);
                    let began = Instant::now();
                    let mut searched = false;
                    // Where the prepared transaction's group starts (None: unknown), and whether
                    // it changes migrated tables.
                    let (start, migrated_rows) = if open.prepared.as_deref().map(xid_key).as_ref() == Some(&key) {
                        // MySQL's XA COMMIT ... ONE PHASE: prepared and committed in this group.
                        open.prepared = None;
                        (Some(mysql_position(&open.cur.begin)?), true)
                    } else if let Some(p) = prepared.remove(&key) {
                        // Forgotten now, before this transaction commits: should it not (a
                        // crash, a lost connection), the stream meets this XA COMMIT again and
                        // finds the prepare in the binlog instead (below).
                        d.state.forget_xa_prepared(&d.ctl, &key, &p.at).await?;
                        (Some(p.at), p.migrated_rows)
                    } else if committed {
                        // Prepared before the stream's start (while the full load ran), or its
                        // record forgotten by a run that did not commit this: where, the binlog
                        // before it says.
                        searched = true;
                        (find_prepared(req, plan, opts, &xid, &mysql_position(&open.cur.begin)?).await?, true)
                    } else {
                        (None, true)
                    };
                    match (start, committed) {
                        (Some(start), true) if migrated_rows => {
                            tracing::debug!(%xid, prepared_at = %start.file_pos(), "XA COMMIT: applying the prepared transaction's rows");
                            replay_prepared(req, plan, opts, d, &tables, open, &xid, &start, zero).await?;
                        }
                        (Some(start), true) => {
                            tracing::debug!(%xid, prepared_at = %start.file_pos(), "XA COMMIT of a transaction that changes no migrated table");
                        }
                        (Some(start), false) => {
                            tracing::debug!(%xid, prepared_at = %start.file_pos(), "XA ROLLBACK: the prepared transaction's rows are dropped");
                        }
                        (None, true) => {
                            let at = mysql_position(&open.cur.begin)?;
                            if opts
                                .skip_schema_change
                                .as_ref()
                                .is_some_and(|skip| skip.file() == at.file() && skip.pos() == at.pos())
                            {
                                tracing::warn!(%xid, "stepping over an XA COMMIT whose prepared transaction Ferry cannot find (--ddl-applied)");
                                continue;
                            }
                            // Commit what came before it, then stop before it.
                            d.settle_all().await?;
                            let blocked = serde_json::json!({"query": format!("XA COMMIT {xid}"), "file": at.file(), "pos": at.pos(), "kind": "xa_unknown"});
                            if let Err(e) = d.state.set_blocked(&d.ctl, &blocked).await {
                                tracing::warn!(error = %e, "could not record the XA COMMIT the stream stops at");
                            }
                            return Err(Failure::Fatal(MyError::new(
                                &format!("streaming the binlog at {}", at.file_pos()),
                                &format!(
                                    "XA COMMIT of XA transaction {xid}, whose XA PREPARE is in no binlog file the source still has \
                                     (prepared before the oldest one, or its file purged): its rows cannot be read, and Ferry cannot \
                                     tell whether it wrote to the migrated tables"
                                ),
                                "if it did not write to the migrated tables (or you made its changes on the target by hand), run the \
                                 same ferry migrate with --ddl-applied to step over it; otherwise load again with ferry migrate \
                                 --overwrite",
                            )));
                        }
                        (None, false) => {
                            // Prepared before the stream's start: its rows were never applied.
                            tracing::info!(%xid, "XA ROLLBACK of a transaction prepared before the stream started: nothing to undo");
                        }
                    }
                    // (After a search of the binlog too, however short: rare, and so always tested.)
                    reopen = searched || began.elapsed() >= REOPEN_AFTER;
                }
                Change::SchemaChange { query, file, pos } => {
                    if opts
                        .skip_schema_change
                        .as_ref()
                        .is_some_and(|skip| skip.file() == file && skip.pos() == pos)
                    {
                        tracing::warn!(%query, "skipping a schema change applied on the target by hand (--ddl-applied)");
                        continue;
                    }
                    // Commit what came before it, then stop before it.
                    d.settle_all().await?;
                    let blocked = serde_json::json!({"query": query, "file": file, "pos": pos});
                    if let Err(e) = d.state.set_blocked(&d.ctl, &blocked).await {
                        tracing::warn!(error = %e, "could not record the schema change the stream stops at");
                    }
                    return Err(Failure::Fatal(MyError::new(
                        &format!("streaming the binlog at {file}:{pos}"),
                        &format!("the source's schema changed: {}", query.trim()),
                        "make the same change on the target (PostgreSQL syntax, see docs/mysql-types.md for the types), \
                         then run the same ferry migrate with --ddl-applied to continue after it",
                    )));
                }
                Change::Unapplicable { query, why, file, pos } => {
                    if opts
                        .skip_schema_change
                        .as_ref()
                        .is_some_and(|skip| skip.file() == file && skip.pos() == pos)
                    {
                        tracing::warn!(%query, "stepping over a statement dealt with by hand (--ddl-applied)");
                        continue;
                    }
                    // Commit what came before its transaction, then stop before it.
                    d.settle_all().await?;
                    let blocked = serde_json::json!({"query": query, "file": file, "pos": pos, "kind": why.kind()});
                    if let Err(e) = d.state.set_blocked(&d.ctl, &blocked).await {
                        tracing::warn!(error = %e, "could not record the statement the stream stops at");
                    }
                    return Err(Failure::Fatal(unapplicable_error(&query, &why, &file, pos)));
                }
                Change::Commit { file, pos, timestamp } => {
                    // An empty transaction too: its commit moves the position.
                    if let Some(mut open) = txn.take() {
                        if let Some(xid) = open.prepared.take() {
                            // A prepared XA transaction: its rows wait for its XA COMMIT. Where
                            // it starts is recorded before the position passes it, so that the
                            // XA COMMIT finds its rows after any restart.
                            let p = XaPrepared {
                                xid,
                                at: mysql_position(&open.cur.begin)?,
                                migrated_rows: open.migrated_rows,
                            };
                            let key = xid_key(&p.xid);
                            d.state.record_xa_prepared(&d.ctl, &key, &p).await?;
                            tracing::debug!(xid = %p.xid, at = %p.at.file_pos(), migrated_rows = p.migrated_rows, "XA PREPARE: its rows wait for XA COMMIT");
                            prepared.insert(key, p);
                        }
                        open.begin(&mut d.sink).await?;
                    }
                    d.last_ts = timestamp;
                    d.sink
                        .handle(ChangeEvent::Commit {
                            end: SourcePosition::Mysql(binlog_at(&file, pos, &gtid)?),
                            commit_time_us: i64::from(timestamp) * 1_000_000,
                        })
                        .await?;
                    if std::mem::take(&mut reopen) {
                        tracing::info!(position = %format!("{file}:{pos}"), "opening the binlog connection again after a long read of an XA transaction");
                        reader = BinlogReader::start(&req.source, opts.server_id, &file, pos, &plan.tables)
                            .await
                            .map_err(Failure::from)?
                            .skip_reverse_writes(d.state.store().schema())
                            .with_gtid_state(&gtid);
                    }
                    // A stop or a cutover ends the stream at this boundary, busy or not.
                    if *stop.borrow() || *hold_rx.borrow() == Hold::CutOver {
                        return d.settle_all().await;
                    }
                    // Commit when the batch is full or old; otherwise when the stream has
                    // nothing more ready (above), unless the previous batch is still
                    // committing: then this one grows until it is done.
                    if d.sink.batch_len() >= opts.batch_changes
                        || d.sink.batch_age() >= opts.batch_time
                        || (!d.sink.has_inflight() && committed_at.elapsed() >= opts.batch_time)
                    {
                        d.commit().await?;
                        committed_at = Instant::now();
                    }
                }
                other => {
                    let Some(open) = txn.as_mut() else {
                        return Err(outside_transaction());
                    };
                    if open.prepared.is_some() {
                        // Not committed on the source yet: applied with its XA COMMIT.
                        open.migrated_rows |= change_table(&other).is_some_and(|t| tables.contains_key(t));
                        continue;
                    }
                    if let Some(event) = convert(|n| tables.get(n), other, &mut open.cur, zero, &d.skip)? {
                        open.begin(&mut d.sink).await?;
                        d.sink.handle(event).await?;
                    }
                }
            }
        }
    }
}

/// The table a row change is on.
fn change_table(c: &Change) -> Option<&str> {
    match c {
        Change::Insert { table, .. } | Change::Update { table, .. } | Change::Delete { table, .. } | Change::Truncate { table } => {
            Some(table)
        }
        _ => None,
    }
}

/// A row change (or XA marker) without an open transaction: the reader's bug.
fn outside_transaction() -> Failure {
    Failure::Fatal(MyError::new(
        "following the binlog",
        "a row change arrived outside a transaction",
        "report this as a bug",
    ))
}

/// A position of this stream as the binlog position it is.
fn mysql_position(p: &SourcePosition) -> Result<BinlogPosition, Failure> {
    p.as_mysql().cloned().ok_or_else(|| {
        Failure::Fatal(MyError::new(
            "following the binlog",
            &format!("position {p} is not a binlog position"),
            "report this as a bug",
        ))
    })
}

/// The replica server id of the second binlog connection that reads a prepared XA transaction
/// again: the stream's own id would make the source end the stream's connection (a replica
/// that connects again with its id replaces the old one).
fn replay_server_id(server_id: u32) -> u32 {
    server_id ^ 0x0100_0000
}

/// The binlog file before `file` (`binlog.000007` -> `binlog.000006`), if its number can go down.
fn previous_file(file: &str) -> Option<String> {
    let digits = file.len() - file.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (base, number) = file.split_at(digits);
    let n: u64 = number.parse().ok()?;
    (n > 1).then(|| format!("{base}{:0width$}", n - 1, width = number.len()))
}

/// Where the last XA PREPARE of `xid` before `before` starts, when the stream did not pass it
/// (prepared before the stream's start: the full load's snapshot does not have its rows, which
/// are in the binlog before it): the binlog files are read from `before`'s backwards, each from
/// its start, one event at a time (memory stays bounded; the time is that of reading them).
/// None when no file the source still has holds it unresolved.
async fn find_prepared(
    req: &MyCheckRequest,
    plan: &MyPlan,
    opts: &CdcOptions,
    xid: &str,
    before: &BinlogPosition,
) -> Result<Option<BinlogPosition>, Failure> {
    let key = xid_key(xid);
    let mut file = before.file().to_string();
    loop {
        tracing::info!(%xid, file = %file, "XA COMMIT of a transaction prepared before the stream started: looking for its XA PREPARE");
        let what = format!(
            "looking for the XA PREPARE of {xid} in binlog file {file} of {}",
            req.source.describe()
        );
        let mut reader = match BinlogReader::start(&req.source, replay_server_id(opts.server_id), &file, 4, &plan.tables).await {
            Ok(r) => r,
            // No such file (purged, or before the first): not found.
            Err(e) if e.code == Some(crate::error::BINLOG_UNREADABLE) => return Ok(None),
            Err(e) => return Err(Failure::from(e)),
        };
        // The last prepare of the xid in this file, unless resolved after it; or a resolution
        // with no prepare after it (then an earlier one is not the one committed now).
        let mut group: Option<BinlogPosition> = None;
        let mut found: Option<Option<BinlogPosition>> = None;
        'file: loop {
            let changes = match tokio::time::timeout(BINLOG_SILENCE, reader.next()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) | Err(_) => {
                    return Err(Failure::Transient(MyError::transient(
                        &what,
                        "the binlog connection ended or went silent",
                        "Ferry reconnects with backoff and resumes from its last commit",
                    )))
                }
                Ok(Err(e)) => return Err(Failure::from(e)),
            };
            if reader.file() != file {
                break 'file;
            }
            for c in changes {
                match c {
                    Change::Begin { at, .. } => {
                        if file == before.file() && at >= before.pos() {
                            break 'file;
                        }
                        group = Some(binlog_at(&file, at, "")?);
                    }
                    Change::XaPrepared { xid: x } if xid_key(&x) == key => found = Some(group.clone()),
                    Change::XaResolved { xid: x, .. } if xid_key(&x) == key => found = Some(None),
                    _ => {}
                }
            }
        }
        match found {
            Some(at) => return Ok(at),
            None => match previous_file(&file) {
                Some(f) => file = f,
                None => return Ok(None),
            },
        }
    }
}

/// Applies the rows of the prepared XA transaction `xid`, whose group starts at `start`, as
/// changes of `open` (the transaction of its XA COMMIT): read again from the binlog on a
/// connection of their own, one event at a time, so that memory stays bounded whatever the
/// transaction's size; the group must be that XA transaction's.
#[allow(clippy::too_many_arguments)]
async fn replay_prepared(
    req: &MyCheckRequest,
    plan: &MyPlan,
    opts: &CdcOptions,
    d: &mut Driver<'_>,
    tables: &HashMap<String, TableConv>,
    open: &mut OpenTxn,
    xid: &str,
    start: &BinlogPosition,
    zero: ZeroDates,
) -> Result<(), Failure> {
    let what = format!(
        "reading XA transaction {xid} again from the binlog of {} at {} (its XA COMMIT came)",
        req.source.describe(),
        start.file_pos()
    );
    let mut reader = BinlogReader::start(
        &req.source,
        replay_server_id(opts.server_id),
        start.file(),
        start.pos(),
        &plan.tables,
    )
    .await
    .map_err(Failure::from)?;
    let not_it = |why: &str| {
        Failure::Fatal(MyError::new(
            &what,
            why,
            "the recorded start of the prepared transaction is wrong (report this as a bug); load again with ferry migrate --overwrite",
        ))
    };
    let mut begun = false;
    loop {
        let next = match tokio::time::timeout(BINLOG_SILENCE, reader.next()).await {
            Ok(r) => r,
            Err(_) => {
                return Err(Failure::Transient(MyError::transient(
                    &what,
                    &format!("no event within {}", crate::endpoint::human(BINLOG_SILENCE)),
                    "Ferry reconnects with backoff and resumes from its last commit",
                )))
            }
        };
        let changes = match next {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(Failure::Transient(MyError::transient(
                    &what,
                    "the source closed the binlog connection",
                    "Ferry reconnects with backoff and resumes from its last commit",
                )))
            }
            Err(e) => return Err(Failure::from(e)),
        };
        for c in changes {
            match c {
                Change::Begin { at, .. } => {
                    if begun || at != start.pos() {
                        return Err(not_it(&format!("a transaction starts at {at}, not at {}", start.pos())));
                    }
                    begun = true;
                }
                Change::XaPrepared { xid: found } => {
                    if xid_key(&found) != xid_key(xid) {
                        return Err(not_it(&format!("the transaction there is XA transaction {found}")));
                    }
                }
                Change::XaResolved { .. } => {}
                Change::Commit { .. } if begun => return Ok(()),
                Change::Commit { .. } => {}
                Change::SchemaChange { query, .. } | Change::Unapplicable { query, .. } => {
                    return Err(not_it(&format!(
                        "the transaction there has a statement: {}",
                        shorten(query.trim(), 200)
                    )));
                }
                row => {
                    if !begun {
                        return Err(not_it("a row change comes before the transaction starts"));
                    }
                    if let Some(event) = convert(|n| tables.get(n), row, &mut open.cur, zero, &d.skip)? {
                        open.begin(&mut d.sink).await?;
                        d.sink.handle(event).await?;
                    }
                }
            }
        }
    }
}

impl Unapplicable {
    /// How the stop is recorded (`cdc_blocked.kind`; a schema change has none).
    fn kind(&self) -> &'static str {
        match self {
            Unapplicable::StatementFormat(_) => "statement_format",
            Unapplicable::UnreadableTruncate => "unreadable_truncate",
        }
    }
}

/// The error of a stop before a statement the stream cannot apply: what it is, why its changes
/// are not in the binlog as rows, and the ways on.
fn unapplicable_error(query: &str, why: &Unapplicable, file: &str, pos: u64) -> MyError {
    let context = format!("streaming the binlog at {file}:{pos}");
    let statement = shorten(query.trim(), 300);
    match why {
        Unapplicable::StatementFormat(table) => MyError::new(
            &context,
            &format!(
                "a write to {} was logged in STATEMENT format, not as rows: {statement}. A session changed binlog_format \
                 (SET SESSION binlog_format = 'STATEMENT' or 'MIXED'), so the changes of that transaction are not in the binlog \
                 as rows and Ferry cannot apply them",
                table
                    .as_deref()
                    .map(|t| format!("migrated table {t}"))
                    .unwrap_or_else(|| "the migrated database".into())
            ),
            "make the same change on the target by hand (or re-run the writes on the source in a session with \
             binlog_format = 'ROW', where re-running them is safe: their rows then stream), then run the same ferry migrate \
             with --ddl-applied to continue after this statement; or load again with ferry migrate --overwrite. Then keep \
             binlog_format=ROW on the source and revoke from applications what lets a session change it (SUPER, and \
             BINLOG ADMIN on MariaDB or SESSION_VARIABLES_ADMIN / SYSTEM_VARIABLES_ADMIN on MySQL)",
        ),
        Unapplicable::UnreadableTruncate => MyError::new(
            &context,
            &format!("a TRUNCATE whose table Ferry cannot read: {statement}"),
            "if it emptied a migrated table, empty the same table on the target (TRUNCATE), then run the same ferry migrate \
             with --ddl-applied to continue after it; and report the statement as a bug",
        ),
    }
}

/// `s` cut to at most `max` characters, with how much was left out.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    format!("{}... ({n} characters)", s.chars().take(max).collect::<String>())
}

/// The wait before the next attempt, and the one after it (doubling up to [`BACKOFF_MAX`]).
fn next_backoff(backoff: &mut Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    wait
}

/// Sleeps `wait`; true when a stop came meanwhile.
async fn wait_or_stop(stop: &mut tokio::sync::watch::Receiver<bool>, wait: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_binlog_files_keep_their_width() {
        assert_eq!(previous_file("binlog.000007").as_deref(), Some("binlog.000006"));
        assert_eq!(previous_file("mysql-bin.001000").as_deref(), Some("mysql-bin.000999"));
        assert_eq!(previous_file("binlog.000001"), None);
        assert_eq!(previous_file("binlog"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let mut b = BACKOFF_START;
        let waits: Vec<u128> = (0..8).map(|_| next_backoff(&mut b).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }
}
