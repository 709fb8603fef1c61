//! The change applier: pgoutput messages in, target transactions out, exactly once.
//!
//! Contract:
//! - Changes apply in source commit order. Several source transactions may share one target
//!   transaction (a batch); a source transaction is never split across two.
//! - Each batch commits `ferry.migrations.applied_lsn` (the last source commit's end LSN) in the
//!   same target transaction as its changes. After any crash, streaming restarts from the
//!   committed `applied_lsn`, and any transaction at or before it is skipped: exactly once.
//! - A table copied from a later snapshot (a resumed full load) ignores changes that committed
//!   before its `snapshot_lsn`: they are in its rows already.
//! - Rows are matched by replica identity: the key, or under REPLICA IDENTITY FULL the whole old
//!   row (one row, by ctid, so duplicate rows stay duplicates). An update or delete that finds
//!   no row, and any change the target rejects, is a dead letter: recorded, never silent.
//! - An unchanged TOASTed column is left out of the UPDATE, so the target keeps its value.
//! - Triggers and foreign-key checks do not fire (`session_replication_role = replica`), as in
//!   PostgreSQL's own apply: the source already ran them.
//!
//! Statements are prepared once per relation and shape, take every value as text and cast it to
//! the column's type (the text forms pgoutput sends are the types' input forms), and are sent
//! pipelined, up to 200 at a time, in order. A batch's set statements, its position and its
//! COMMIT go out together and are checked by a background task while the next batch is
//! decoded; nothing of the next batch is sent before that outcome is known (`settle`).

mod compact;
mod relation;
mod sql;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::ident::quote_literal;
use ferry_core::{ErrorClass, Lsn, TableFilter, TableName};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::endpoint::Endpoint;
use crate::error::PgError;
use crate::pgoutput::Value;
use crate::schema::PgTools;
use crate::state::StateStore;
use ferry_core::change::ChangeEvent;
use ferry_core::SourcePosition;

pub use relation::Rel;

/// The settings that shape the text form of a stream's values: the apply session reads them
/// with the same ones (a PostgreSQL source's own; a MySQL stream's are UTC and ISO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSettings {
    /// `TimeZone`.
    pub time_zone: String,
    /// `DateStyle`.
    pub date_style: String,
    /// `IntervalStyle`.
    pub interval_style: String,
}

impl TextSettings {
    /// The forms a stream Ferry renders itself writes (a MySQL source's values, Debezium's
    /// events decoded): timestamps with a zone in UTC (+00), ISO dates, `HH:MM:SS` intervals.
    pub fn utc() -> Self {
        TextSettings {
            time_zone: "UTC".into(),
            date_style: "ISO, MDY".into(),
            interval_style: "postgres".into(),
        }
    }
}

/// Where the applier stands and what it may do.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    /// The PostgreSQL database the stream comes from, when it comes from one. None for a
    /// stream of another engine (a MySQL binlog): its relations name only the migration's
    /// tables, so there is nothing to look up or create mid-stream.
    pub source: Option<PgSource>,
    /// Target.
    pub target: Endpoint,
    /// State store.
    pub store: StateStore,
    /// Migration id.
    pub migration_id: String,
    /// Which way changes flow, and where the applied position is kept.
    pub direction: Direction,
}

/// A PostgreSQL source of a stream, for what the applier does with it beyond applying.
#[derive(Debug, Clone)]
pub struct PgSource {
    /// The source (catalog look-ups, new tables; the state schema's side in reverse).
    pub endpoint: Endpoint,
    /// Which tables belong to the migration (new tables are created when they match).
    pub filter: TableFilter,
    /// pg_dump, for tables created on the source mid-stream.
    pub tools: PgTools,
}

impl PgSource {
    /// Creates `table` on the target through `c` from its definition on this source (pg_dump:
    /// columns, indexes, constraints) unless the target has it; whether it created it. Every
    /// stream that meets a table created on the source mid-stream (the direct applier, an
    /// apply from Kafka) creates it here.
    pub async fn create_on_target(&self, c: &Client, table: &TableName) -> Result<bool, PgError> {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
            .await
            .map_err(|e| PgError::query("looking for a new table on the target", e))?
            .get(0);
        if exists {
            return Ok(false);
        }
        let ddl = crate::schema::dump_table(&self.tools, &self.endpoint, table).await.map_err(|e| {
            PgError::config(
                format!("creating the new source table {table} on the target"),
                e.to_string(),
                "create it on the target by hand, then rerun",
            )
        })?;
        c.batch_execute(&ddl)
            .await
            .map_err(|e| PgError::query(format!("creating the new source table {table} on the target"), e))?;
        tracing::info!(table = %table, "table created on the source mid-stream: created on the target, streaming its rows");
        Ok(true)
    }
}

/// Which way changes flow. Both directions mark what they write with their own replication
/// origin and skip transactions that carry the other direction's origin: a change Ferry
/// applied is never streamed back to where it came from (loop prevention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Source to target (before cutover, and again after a rollback). The applied position is
    /// `applied_lsn` in the state schema, committed in the same target transaction.
    Forward,
    /// Target back to the source after cutover (`ctx.source` is then the migration's target
    /// and `ctx.target` its source). The applied position is the progress of the reverse
    /// replication origin on the source, set in the same source transaction
    /// (`pg_replication_origin_xact_setup`), as PostgreSQL's own apply worker does: nothing of
    /// Ferry is written to the source but the changes themselves.
    Reverse,
}

/// Replication origin names of a migration: (forward, reverse).
pub fn origin_names(migration_id: &str) -> (String, String) {
    (format!("ferry_fwd_{migration_id}"), format!("ferry_rev_{migration_id}"))
}

/// A change the target rejected (or that found no row), described for `ferry.dead_letters`.
pub use ferry_core::sink::DeadLetter;

/// A position's ordering key ([`SourcePosition::order_key`]): the applier compares, skips and
/// keys dead letters by it, the same way for every engine.
pub fn order_key(p: &SourcePosition) -> Lsn {
    p.order_key()
}

/// A source position as messages show it: an LSN bare (as PostgreSQL prints it), a binlog
/// position as `file:offset`.
pub fn position_text(p: &SourcePosition) -> String {
    match p {
        SourcePosition::Postgres(l) => l.to_string(),
        SourcePosition::Mysql(b) => b.file_pos(),
    }
}

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A database or protocol failure; its class says whether to retry.
    #[error(transparent)]
    Db(#[from] PgError),
    /// The target rejected a change.
    #[error("the target rejected a change to {} ({}, commit {}, change {}): {}", .0.table, .0.operation, position_text(&.0.commit), .0.change_index, .0.error)]
    Rejected(Box<DeadLetter>),
    /// A set-based statement failed or missed rows: replay up to `until` row by row, which
    /// names the change at fault.
    #[error("set-based apply must be replayed row by row up to {until}")]
    Reapply {
        /// Commit LSN of the last transaction to replay row by row.
        until: Lsn,
    },
}

struct Pending {
    stmt: Statement,
    params: Vec<Option<String>>,
    /// 0 rows affected is an error for updates and deletes.
    must_hit: bool,
    /// Who to blame if it fails; described only then (formatting every change is costly).
    blame: Blame,
}

struct Blame {
    rel: Arc<Rel>,
    txn: Txn,
    operation: &'static str,
    /// Index of the first key parameter in `params`, and whether keys follow (updates,
    /// deletes) or are picked from the row (inserts).
    keys_from: usize,
    /// Which columns' values open `params` (the SET list of an update; None: every column).
    mask: Option<Vec<bool>>,
}

impl Pending {
    fn letter(&self, error: String) -> DeadLetter {
        let b = &self.blame;
        let key_names: Vec<String> = b.rel.key_columns().map(|c| c.name.clone()).collect();
        let keys: Vec<Option<String>> = if b.operation == "insert" {
            b.rel
                .columns
                .iter()
                .zip(&self.params)
                .filter(|(c, _)| c.key)
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            self.params[b.keys_from..].to_vec()
        };
        DeadLetter {
            commit: SourcePosition::Postgres(b.txn.commit_lsn),
            change_index: b.txn.changes,
            table: b.rel.table.clone(),
            operation: b.operation,
            key: describe(&key_names, &keys),
            payload: describe(
                &b.rel
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| b.mask.as_ref().is_none_or(|m| m[*i]))
                    .map(|(_, c)| c.name.clone())
                    .collect::<Vec<_>>(),
                &self.params[..b.keys_from.min(self.params.len())],
            ),
            error,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Txn {
    commit_lsn: Lsn,
    changes: u32,
    skip: bool,
    /// Written by Ferry's other direction: skipped, but its position counts as applied.
    foreign: bool,
}

/// Counts of applied work, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Source transactions.
    pub txns: u64,
    /// Inserts.
    pub inserts: u64,
    /// Updates.
    pub updates: u64,
    /// Deletes.
    pub deletes: u64,
    /// Truncates.
    pub truncates: u64,
}

/// A statement sent to the target, as a future for its answer (rows affected).
type Op<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Sends every operation's request now, in order, and returns a future for their answers in
/// the same order. A tokio-postgres request leaves on its future's first poll, so polling each
/// once here puts them all on the connection, pipelined, before anything else is sent.
fn send_in_order<'a>(ops: Vec<Op<'a>>) -> impl std::future::Future<Output = Vec<Result<u64, tokio_postgres::Error>>> + Send + 'a {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let sent: Vec<Result<Result<u64, tokio_postgres::Error>, Op<'a>>> = ops
        .into_iter()
        .map(|mut op| match op.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => Err(op),
        })
        .collect();
    async move {
        let mut out = Vec::with_capacity(sent.len());
        for s in sent {
            out.push(match s {
                Ok(r) => r,
                Err(op) => op.await,
            });
        }
        out
    }
}

/// Where the target's WAL stood right after a batch committed: (insert position, flush
/// position). The batch is durable once the flush position reaches the insert position.
type LocalWal = (Lsn, Lsn);

/// A batch whose statements are on their way: the next batch is decoded meanwhile.
struct InFlight {
    task: tokio::task::JoinHandle<Result<LocalWal, ApplyError>>,
    end: Lsn,
    /// When its first source transaction arrived.
    started: Instant,
    counts: Counts,
}

/// Applies a pgoutput stream to the target.
pub struct Applier {
    ctx: ApplyContext,
    tgt: Arc<Client>,
    /// In reverse: a connection to the stream's side, where the state schema is.
    state_side: Option<Client>,
    rels: HashMap<u32, Arc<Rel>>,
    stmts: HashMap<String, Statement>,
    snapshots: HashMap<TableName, Lsn>,
    durable: Lsn,
    /// The whole positions behind ordering keys (see [`order_key`]), for a stream whose keys
    /// do not say everything (a binlog position's file name and GTID); None for PostgreSQL,
    /// whose key is its position. Holds the keys from the flushed position on.
    positions: Option<std::collections::BTreeMap<Lsn, SourcePosition>>,
    batch_open: bool,
    /// BEGIN sent for the open batch (it is sent lazily, with the batch's first statement).
    begun: bool,
    /// The previous batch, committing in the background.
    inflight: Option<InFlight>,
    /// Statement that records the applied position.
    state_stmt: Option<Statement>,
    batch_started: Instant,
    batch_end: Lsn,
    batch_commit_time: i64,
    batch_changes: usize,
    batch_counts: Counts,
    totals: Counts,
    pending: Vec<Pending>,
    txn: Option<Txn>,
    skip: HashSet<(Lsn, u32)>,
    /// Buffered changes of the open batch, per relation (set-based apply).
    buffered: HashMap<u32, compact::Buffered>,
    buffered_changes: usize,
    buffered_bytes: usize,
    /// Transactions committed at or before this apply row by row (after a set-based failure).
    ordered_until: Lsn,
    /// Transactions from this origin are the other direction's own writes.
    skip_origin: String,
    /// Batches committed (asynchronously) but not known flushed on the target: (target WAL
    /// position after the commit, source position they bring the stream to).
    unflushed: VecDeque<(Lsn, Lsn)>,
    /// Source position whose changes are durable (flushed) on the target: what the source
    /// may forget.
    flushed: Lsn,
    /// Statements that record another stream's state with the open batch (`Applier::stage`):
    /// SQL and its text parameters, run in the batch's transaction before it commits.
    staged: Vec<(String, Vec<String>)>,
    /// Process id of the target session, for the watchdog and for ending it if it is left
    /// behind by a lost connection.
    pid: i32,
    /// Unix milliseconds since which a request to a database has been waiting for its answer
    /// (0: none is). Read by the watchdog, which tells a long statement from a dead network.
    busy: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").field("durable", &self.durable).finish()
    }
}

/// Buffered changes (all tables) before they are applied mid-batch.
const BUFFER_CHANGES: usize = 20_000;
/// Buffered value bytes before they are applied mid-batch.
const BUFFER_BYTES: usize = 16 << 20;

/// Statements in flight at once: deep enough that round trips stop mattering, small enough
/// that memory stays trivially bounded.
const PIPELINE: usize = 200;
const PG_EPOCH_UNIX_SECS: f64 = 946_684_800.0;

impl Applier {
    /// Connects, reads the durable position and per-table snapshot positions, and prepares the
    /// target session. `skip` lists dead letters (commit LSN, change index) to step over.
    /// `stale_pid` is the target session of an earlier applier whose connection was lost: it
    /// is ended first (its transaction rolls back, or had committed) so that the position read
    /// here is final. `settings` are the stream's: its text values are read with them.
    pub async fn new(
        ctx: ApplyContext,
        settings: &TextSettings,
        skip: HashSet<(Lsn, u32)>,
        ordered_until: Lsn,
        stale_pid: Option<i32>,
    ) -> Result<Self, PgError> {
        // In reverse the state schema is on the stream's side (the migration's target).
        let state_side = match ctx.direction {
            Direction::Forward => None,
            Direction::Reverse => {
                let source = ctx
                    .source
                    .as_ref()
                    .ok_or_else(|| PgError::config("reverse replication", "the stream's side is not PostgreSQL", "report this as a bug"))?;
                Some(source.endpoint.connect("cdc-state").await?)
            }
        };
        let tgt = ctx.target.connect("apply").await?;
        if let Some(pid) = stale_pid {
            end_stale_session(&tgt, pid).await?;
        }
        let pid: i32 = tgt
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| PgError::query("preparing the apply session on the target", e))?
            .get(0);
        // Values arrive in the source's text forms: read them in the same time zone and styles.
        let (tz, ds, is) = (&settings.time_zone, &settings.date_style, &settings.interval_style);
        tgt.batch_execute(&format!(
            // Statements are prepared once and run with a generic plan: re-planning every
            // execution (the default for the first few, and for set statements whose arrays
            // make custom plans look cheaper) cost the target more than executing them.
            // Commits are asynchronous, as in PostgreSQL's own apply worker: the source is only
            // told a position once the target's WAL is flushed past its commit (`flushed`), so
            // exactly-once holds across a crash of either side, and the apply rate does not
            // wait on a disk flush per batch.
            "SET TimeZone = {}; SET DateStyle = {}; SET IntervalStyle = {}; SET search_path = ''; SET statement_timeout = 0;
             SET synchronous_commit = off;
             SET plan_cache_mode = force_generic_plan",
            quote_literal(tz),
            quote_literal(ds),
            quote_literal(is)
        ))
        .await
        .map_err(|e| PgError::query("preparing the apply session on the target", e))?;
        tgt.batch_execute("SET session_replication_role = replica").await.map_err(|e| {
            PgError::query("disabling triggers for the apply session (session_replication_role = replica)", e)
                .with_fix("connect as a superuser, or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role TO <Ferry's user>; `ferry check` names the grant for managed services (docs/privileges.md)")
        })?;
        let (forward_origin, reverse_origin) = origin_names(&ctx.migration_id);
        let (own_origin, skip_origin) = match ctx.direction {
            Direction::Forward => (forward_origin, reverse_origin),
            Direction::Reverse => (reverse_origin, forward_origin),
        };
        // Mark everything this session writes with its origin (loop prevention), and write even
        // where Ferry made the database read-only for everyone else (the source after cutover).
        tgt.batch_execute(&format!(
            "SET default_transaction_read_only = off;
             SELECT pg_replication_origin_create({o}) WHERE NOT EXISTS (SELECT FROM pg_replication_origin WHERE roname = {o});
             SELECT pg_replication_origin_session_setup({o})",
            o = quote_literal(&own_origin)
        ))
        .await
        .map_err(|e| {
            PgError::query(format!("marking the apply session with replication origin {own_origin}"), e).with_fix(
                "connect as a superuser, or (PostgreSQL 14+) GRANT EXECUTE on the pg_replication_origin_* functions (docs/privileges.md lists them); \
                 if another Ferry process is applying, stop it; \"could not find free replication state\" means every origin slot is taken: \
                 each replication origin in use takes one of max_replication_slots on this server, so raise it (and restart) or drop \
                 origins nothing uses any more (SELECT roname FROM pg_replication_origin; pg_replication_origin_drop(name))",
            )
        })?;
        let (durable, snapshots, positions) = match ctx.direction {
            Direction::Forward => Self::forward_position(&ctx, &tgt).await?,
            // Streaming from 0/0 starts at the slot's confirmed position. The migration's tables
            // (listed in the state schema, on the stream's side here) take every change.
            Direction::Reverse => {
                let row = tgt
                    .query_one(
                        "SELECT COALESCE(pg_replication_origin_progress($1, true), '0/0')::text",
                        &[&own_origin],
                    )
                    .await
                    .map_err(|e| PgError::query("reading the reverse replication position", e))?;
                let q = ctx.store.quoted().to_string();
                let src = state_side.as_ref().expect("connected in reverse");
                let tables = src
                    .query(
                        &format!("SELECT schema_name, table_name FROM {q}.tables WHERE migration_id = $1"),
                        &[&ctx.migration_id],
                    )
                    .await
                    .map_err(|e| PgError::query("reading the migration's tables", e))?;
                let snapshots = tables
                    .iter()
                    .map(|r| (TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)), Lsn(0)))
                    .collect();
                (row.get::<_, String>(0).parse().unwrap_or_default(), snapshots, None)
            }
        };
        // What an earlier process committed asynchronously may not be flushed yet: flush it, so
        // the position read is one the source may be told.
        force_flush(&tgt).await?;
        Ok(Self {
            ctx,
            tgt: Arc::new(tgt),
            state_side,
            rels: HashMap::new(),
            stmts: HashMap::new(),
            snapshots,
            durable,
            positions,
            batch_open: false,
            begun: false,
            inflight: None,
            state_stmt: None,
            batch_started: Instant::now(),
            batch_end: durable,
            batch_commit_time: 0,
            batch_changes: 0,
            batch_counts: Counts::default(),
            totals: Counts::default(),
            pending: Vec::new(),
            txn: None,
            skip,
            buffered: HashMap::new(),
            buffered_changes: 0,
            buffered_bytes: 0,
            ordered_until,
            skip_origin,
            unflushed: VecDeque::new(),
            flushed: durable,
            staged: Vec::new(),
            pid,
            busy: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// Runs `sql` (its parameters given as text, `$1::text::bigint` where another type is
    /// meant) in the open batch's target transaction, just before the batch's position is
    /// recorded: a stream that keeps positions of its own (a Kafka consumer's offsets per
    /// partition) commits them atomically with the changes. A statement that fails fails the
    /// commit. Staged statements are dropped with the batch on rollback.
    pub fn stage(&mut self, sql: String, params: Vec<String>) {
        self.staged.push((sql, params));
    }

    /// Since when (unix ms) a database request of this applier has waited (0: none waits).
    pub fn busy_since(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.busy)
    }

    fn mark_busy(&self) {
        // Already waiting (a batch committing in the background): no clock read on this path.
        if self.busy.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            self.busy.store(ferry_core::unix_ms(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Nothing is waiting any more, unless a batch is still committing in the background.
    fn mark_answered(&self) {
        if self.inflight.is_none() {
            self.busy.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// When the oldest source transaction received and not yet committed on the target
    /// arrived (None: every transaction received is applied).
    pub fn pending_since(&self) -> Option<Instant> {
        match &self.inflight {
            Some(f) => Some(f.started),
            None => self.batch_open.then_some(self.batch_started),
        }
    }

    /// The target session's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The source position whose changes are flushed on the target (never ahead of
    /// [`Applier::durable`]).
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// True while some committed batch is not known flushed on the target.
    pub fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    fn note_flush(&mut self, flush: Lsn) {
        while let Some(&(local, remote)) = self.unflushed.front() {
            if local > flush {
                break;
            }
            self.flushed = self.flushed.max(remote);
            self.unflushed.pop_front();
        }
        self.forget_positions();
    }

    /// Asks the target how far its WAL is flushed (the WAL writer flushes asynchronous
    /// commits within a few hundred milliseconds). Call with nothing in flight.
    pub async fn poll_flush(&mut self) -> Result<Lsn, ApplyError> {
        if self.unflushed.is_empty() || self.inflight.is_some() {
            return Ok(self.flushed);
        }
        self.mark_busy();
        let row = self.tgt.query_one("SELECT pg_current_wal_flush_lsn()::text", &[]).await;
        self.mark_answered();
        let row = row.map_err(|e| PgError::query("reading the target's WAL flush position", e))?;
        let flush: Lsn = row.get::<_, String>(0).parse().unwrap_or_default();
        self.note_flush(flush);
        Ok(self.flushed)
    }

    /// Makes everything committed so far durable now (one synchronous commit flushes the WAL
    /// before it), for positions that must not wait for the WAL writer: a hold that cutover
    /// or verification relies on. Call with nothing in flight and no batch open.
    pub async fn flush_now(&mut self) -> Result<Lsn, ApplyError> {
        if self.unflushed.is_empty() {
            return Ok(self.flushed);
        }
        self.settle().await?;
        self.mark_busy();
        let r = force_flush(&self.tgt).await;
        self.mark_answered();
        r?;
        self.unflushed.clear();
        self.flushed = self.durable;
        self.forget_positions();
        Ok(self.flushed)
    }

    /// Settles the batch committing in the background if it has finished, without waiting.
    /// Returns true if the durable position moved.
    pub async fn try_settle(&mut self) -> Result<bool, ApplyError> {
        if self.inflight.as_ref().is_some_and(|f| f.task.is_finished()) {
            let before = self.durable;
            self.settle().await?;
            return Ok(self.durable > before);
        }
        Ok(false)
    }

    /// The durable position and per-table snapshot positions of a forward apply, as ordering
    /// keys; for a stream whose keys are not its positions (MySQL), the whole durable position
    /// behind its key.
    #[allow(clippy::type_complexity)]
    async fn forward_position(
        ctx: &ApplyContext,
        tgt: &Client,
    ) -> Result<
        (
            Lsn,
            HashMap<TableName, Lsn>,
            Option<std::collections::BTreeMap<Lsn, SourcePosition>>,
        ),
        PgError,
    > {
        let q = ctx.store.quoted().to_string();
        let row = tgt
            .query_one(
                &format!(
                    "SELECT source_engine, COALESCE(applied_lsn, consistent_lsn)::text, COALESCE(applied_position, snapshot_position)
                     FROM {q}.migrations WHERE id = $1"
                ),
                &[&ctx.migration_id],
            )
            .await
            .map_err(|e| PgError::query("reading the applied position", e))?;
        let engine: String = row.get(0);
        let postgres = engine == crate::state::ENGINE_POSTGRESQL;
        let no_position = || PgError::config("change capture", "the migration has no stream position", "run the full load first");
        let (durable, positions) = if postgres {
            let lsn: Lsn = row
                .get::<_, Option<String>>(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(no_position)?;
            (lsn, None)
        } else {
            let at: SourcePosition = row
                .get::<_, Option<String>>(2)
                .ok_or_else(no_position)?
                .parse()
                .map_err(|e| PgError::config("reading the applied position", format!("{e}"), "report this as a bug"))?;
            let key = order_key(&at);
            (key, Some(std::collections::BTreeMap::from([(key, at)])))
        };
        let mut snapshots = HashMap::new();
        for r in tgt
            .query(
                &format!("SELECT schema_name, table_name, snapshot_lsn::text, snapshot_position FROM {q}.tables WHERE migration_id = $1"),
                &[&ctx.migration_id],
            )
            .await
            .map_err(|e| PgError::query("reading per-table snapshot positions", e))?
        {
            let key = if postgres {
                r.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()).unwrap_or_default()
            } else {
                r.get::<_, Option<String>>(3)
                    .and_then(|s| s.parse::<SourcePosition>().ok())
                    .map(|p| order_key(&p))
                    .unwrap_or_default()
            };
            snapshots.insert(TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)), key);
        }
        Ok((durable, snapshots, positions))
    }

    /// The whole source position behind an ordering key of this stream.
    pub fn position(&self, key: Lsn) -> SourcePosition {
        match &self.positions {
            None => SourcePosition::Postgres(key),
            // Every key the applier hands out or records was remembered when it arrived; the
            // nearest one at or before it is the safe answer should that ever not hold.
            Some(m) => m
                .get(&key)
                .or_else(|| m.range(..=key).next_back().map(|(_, p)| p))
                .or_else(|| m.values().next())
                .cloned()
                .unwrap_or(SourcePosition::Postgres(key)),
        }
    }

    /// The ordering key of a position of this stream, remembering the position behind it.
    fn remember(&mut self, p: &SourcePosition) -> Lsn {
        let key = order_key(p);
        if let Some(m) = self.positions.as_mut() {
            m.entry(key).or_insert_with(|| p.clone());
        }
        key
    }

    /// Forgets positions nothing can ask about any more (before the flushed one).
    fn forget_positions(&mut self) {
        let flushed = self.flushed;
        if let Some(m) = self.positions.as_mut() {
            if m.len() > 64 {
                *m = m.split_off(&flushed);
            }
        }
    }

    /// The position whose changes are durable on the target (see [`Applier::flushed`]).
    pub fn flushed_position(&self) -> SourcePosition {
        self.position(self.flushed)
    }

    /// The position committed on the target (see [`Applier::durable`]).
    pub fn durable_position(&self) -> SourcePosition {
        self.position(self.durable)
    }

    /// The position durably applied on the target.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Work applied by this applier since it started.
    pub fn totals(&self) -> Counts {
        self.totals
    }

    /// True between source transactions.
    pub fn at_boundary(&self) -> bool {
        self.txn.is_none()
    }

    /// True when a target transaction holds uncommitted work.
    pub fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// Changes in the open batch.
    pub fn batch_len(&self) -> usize {
        self.batch_changes
    }

    /// When the open batch started.
    pub fn batch_age(&self) -> std::time::Duration {
        self.batch_started.elapsed()
    }

    fn begin_batch(&mut self) {
        if !self.batch_open {
            self.batch_open = true;
            self.begun = false;
            self.batch_started = Instant::now();
            self.batch_changes = 0;
            self.batch_counts = Counts::default();
        }
    }

    /// True while a committed batch's outcome is not known yet.
    pub fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Waits for the batch committing in the background; returns the durable position.
    /// Cancel-safe: dropped before the batch is done, it leaves it in flight.
    pub async fn settle(&mut self) -> Result<Lsn, ApplyError> {
        let r = self.settle_inner().await;
        self.mark_answered();
        r
    }

    async fn settle_inner(&mut self) -> Result<Lsn, ApplyError> {
        if self.inflight.is_some() {
            self.mark_busy();
        }
        if let Some(f) = self.inflight.as_mut() {
            let r = (&mut f.task).await;
            let f = self.inflight.take().expect("checked above");
            match r {
                Ok(Ok((insert, flush))) => {
                    self.durable = self.durable.max(f.end);
                    self.unflushed.push_back((insert, f.end));
                    self.note_flush(flush);
                    let c = f.counts;
                    self.totals.txns += c.txns;
                    self.totals.inserts += c.inserts;
                    self.totals.updates += c.updates;
                    self.totals.deletes += c.deletes;
                    self.totals.truncates += c.truncates;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(PgError::config("committing applied changes", e.to_string(), "report this as a bug").into()),
            }
        }
        Ok(self.durable)
    }

    /// Makes sure the open batch's transaction has started on the target, after the previous
    /// batch settled: call before sending anything that belongs to the batch.
    async fn ensure_begun(&mut self) -> Result<(), ApplyError> {
        self.settle_inner().await?;
        if self.batch_open && !self.begun {
            self.tgt
                .batch_execute("BEGIN")
                .await
                .map_err(|e| PgError::query("starting an apply transaction", e))?;
            self.begun = true;
        }
        Ok(())
    }

    /// Applies one event of the stream.
    pub async fn handle(&mut self, msg: ChangeEvent) -> Result<(), ApplyError> {
        self.mark_busy();
        let r = self.handle_inner(msg).await;
        self.mark_answered();
        r
    }

    async fn handle_inner(&mut self, msg: ChangeEvent) -> Result<(), ApplyError> {
        match msg {
            ChangeEvent::Begin { commit, .. } => {
                let final_lsn = self.remember(&commit);
                // Anything that committed before the durable position is on the target already.
                let skip = final_lsn < self.durable;
                self.txn = Some(Txn {
                    commit_lsn: final_lsn,
                    changes: 0,
                    skip,
                    foreign: false,
                });
                if !skip {
                    self.begin_batch();
                }
            }
            ChangeEvent::Commit { end, commit_time_us } => {
                let txn = self.txn.take();
                if let Some(t) = txn.filter(|t| !t.skip || t.foreign) {
                    self.batch_end = self.remember(&end);
                    self.batch_commit_time = commit_time_us;
                    if !t.foreign {
                        self.batch_counts.txns += 1;
                    }
                }
            }
            ChangeEvent::Relation(r) => {
                // Buffered changes were decoded with the previous description. Schema changes
                // the description brings run inside the batch, so its transaction starts now.
                self.flush_all().await?;
                self.ensure_begun().await?;
                self.relation(r).await?
            }
            ChangeEvent::Insert { relation, new } => {
                if let Some((rel, txn)) = self.target_of(relation)? {
                    if self.set_based(txn) {
                        self.buffer(rel, txn, compact::Change::Insert(new), |c| c.inserts += 1).await?;
                    } else {
                        let p = relation::insert(self, &rel, txn, new).await?;
                        self.push(p, |c| c.inserts += 1).await?;
                    }
                }
            }
            ChangeEvent::Update { relation, old, new } => {
                if let Some((rel, txn)) = self.target_of(relation)? {
                    // An update that moves its key is applied on its own, after what came before.
                    let moves_key = old.is_some();
                    if self.set_based(txn) && !(rel.compactable && moves_key) {
                        self.buffer(rel, txn, compact::Change::Update { old, new }, |c| c.updates += 1)
                            .await?;
                    } else {
                        self.flush_table(rel.id).await?;
                        let p = relation::update(self, &rel, txn, old, new).await?;
                        self.push(p, |c| c.updates += 1).await?;
                        if rel.compactable {
                            self.flush().await?;
                        }
                    }
                }
            }
            ChangeEvent::Delete { relation, old } => {
                if let Some((rel, txn)) = self.target_of(relation)? {
                    if self.set_based(txn) {
                        self.buffer(rel, txn, compact::Change::Delete(old), |c| c.deletes += 1).await?;
                    } else {
                        let p = relation::delete(self, &rel, txn, old).await?;
                        self.push(p, |c| c.deletes += 1).await?;
                    }
                }
            }
            ChangeEvent::Truncate {
                relations,
                cascade,
                restart_identity,
            } => self.truncate(cascade, restart_identity, &relations).await?,
            ChangeEvent::Origin { name } => {
                // Sent right after BEGIN for a transaction replayed from elsewhere.
                if name == self.skip_origin {
                    if let Some(t) = self.txn.as_mut() {
                        if !t.skip {
                            t.skip = true;
                            t.foreign = true;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The relation and transaction a row change applies to, or None when it is skipped (an
    /// already-applied transaction, a table outside the migration, a change its table's
    /// snapshot already holds, or a dead letter being stepped over).
    fn target_of(&mut self, relation: u32) -> Result<Option<(Arc<Rel>, Txn)>, PgError> {
        let Some(txn) = self.txn.as_mut() else {
            return Err(PgError::config(
                "change capture",
                "a row change arrived outside a transaction",
                "report this as a bug",
            ));
        };
        if txn.skip {
            return Ok(None);
        }
        txn.changes += 1;
        let txn = *txn;
        let rel = self.rels.get(&relation).cloned().ok_or_else(|| {
            PgError::config(
                "change capture",
                format!("a change arrived for relation {relation} before its description"),
                "report this as a bug",
            )
        })?;
        if !rel.in_scope || txn.commit_lsn < rel.snapshot_lsn || self.skip.contains(&(txn.commit_lsn, txn.changes)) {
            return Ok(None);
        }
        Ok(Some((rel, txn)))
    }

    /// Whether a change is buffered for set-based apply (its table's net effect when the
    /// table is compactable, runs of inserts in order otherwise), or applied row by row now.
    fn set_based(&self, txn: Txn) -> bool {
        txn.commit_lsn > self.ordered_until
    }

    async fn buffer(
        &mut self,
        rel: Arc<Rel>,
        txn: Txn,
        change: compact::Change,
        count: impl FnOnce(&mut Counts),
    ) -> Result<(), ApplyError> {
        count(&mut self.batch_counts);
        self.batch_changes += 1;
        let bytes: usize = match &change {
            compact::Change::Insert(v) | compact::Change::Update { new: v, .. } | compact::Change::Delete(v) => v
                .iter()
                .map(|x| match x {
                    Value::Text(b) | Value::Binary(b) => b.len() + 8,
                    _ => 8,
                })
                .sum(),
        };
        self.buffered_bytes += bytes;
        self.buffered_changes += 1;
        let id = rel.id;
        self.buffered
            .entry(id)
            .or_insert_with(|| compact::Buffered { rel, changes: Vec::new() })
            .changes
            .push((change, txn));
        // Memory stays bounded whatever the transaction size: apply what is buffered so far.
        if self.buffered_changes >= BUFFER_CHANGES || self.buffered_bytes >= BUFFER_BYTES {
            self.flush_all().await?;
        }
        Ok(())
    }

    /// Applies one table's buffered changes.
    async fn flush_table(&mut self, id: u32) -> Result<(), ApplyError> {
        if let Some(b) = self.buffered.remove(&id) {
            self.buffered_changes -= b.changes.len();
            self.flush().await?;
            self.apply_buffered(b).await?;
        }
        Ok(())
    }

    /// Applies everything queued: row-by-row statements first (they precede buffered ones of
    /// the same table), then each table's buffered changes.
    async fn flush_all(&mut self) -> Result<(), ApplyError> {
        self.flush().await?;
        let tables: Vec<compact::Buffered> = self.buffered.drain().map(|(_, b)| b).collect();
        self.buffered_changes = 0;
        self.buffered_bytes = 0;
        for b in tables {
            self.apply_buffered(b).await?;
        }
        Ok(())
    }

    async fn push(&mut self, p: Pending, count: impl FnOnce(&mut Counts)) -> Result<(), ApplyError> {
        count(&mut self.batch_counts);
        self.batch_changes += 1;
        self.queue(p).await
    }

    /// Queues a statement for the pipeline (already counted).
    async fn queue(&mut self, p: Pending) -> Result<(), ApplyError> {
        self.pending.push(p);
        if self.pending.len() >= PIPELINE {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the queued statements, pipelined in order, and checks each result.
    async fn flush(&mut self) -> Result<(), ApplyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.ensure_begun().await?;
        let pending = std::mem::take(&mut self.pending);
        let tgt = &self.tgt;
        let ops: Vec<Op<'_>> = pending
            .iter()
            .map(|p| {
                let f: Op<'_> = Box::pin(async move {
                    let refs: Vec<&(dyn ToSql + Sync)> = p.params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    tgt.execute(&p.stmt, &refs).await
                });
                f
            })
            .collect();
        let results = send_in_order(ops).await;
        for (p, r) in pending.into_iter().zip(results) {
            match r {
                Ok(0) if p.must_hit => {
                    let mut letter = p.letter(format!("the row to {} was not found on the target", p.blame.operation));
                    letter.commit = self.position(p.blame.txn.commit_lsn);
                    return Err(ApplyError::Rejected(Box::new(letter)));
                }
                Ok(_) => {}
                Err(e) => {
                    let err = PgError::query("applying a change", e);
                    if err.class == ErrorClass::Transient || err.code.is_none() {
                        return Err(err.into());
                    }
                    let mut letter = p.letter(format!("{} (SQLSTATE {})", err.reason, err.code.unwrap_or_default()));
                    letter.commit = self.position(p.blame.txn.commit_lsn);
                    return Err(ApplyError::Rejected(Box::new(letter)));
                }
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, cascade: bool, restart: bool, relations: &[u32]) -> Result<(), ApplyError> {
        let mut names = Vec::new();
        for id in relations {
            if let Some((rel, _)) = self.target_of(*id)? {
                names.push(rel.table.quoted());
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        self.flush_all().await?;
        self.ensure_begun().await?;
        let sql = format!(
            "TRUNCATE ONLY {}{}{}",
            names.join(", "),
            if restart { " RESTART IDENTITY" } else { "" },
            if cascade { " CASCADE" } else { "" }
        );
        self.tgt
            .batch_execute(&sql)
            .await
            .map_err(|e| PgError::query(format!("applying {sql}"), e))?;
        self.batch_counts.truncates += 1;
        self.batch_changes += 1;
        Ok(())
    }

    /// Commits the open batch with its position, in the background: the batch's set
    /// statements, the position and COMMIT go out pipelined, and a task checks the answers
    /// while the caller decodes the next batch. `settle` tells the outcome; nothing of the
    /// next batch reaches the target before it is known. Call only at a transaction boundary.
    pub async fn commit(&mut self) -> Result<(), ApplyError> {
        if !self.batch_open {
            return Ok(());
        }
        self.mark_busy();
        let r = self.commit_inner().await;
        self.mark_answered();
        r
    }

    async fn commit_inner(&mut self) -> Result<(), ApplyError> {
        // Row-by-row statements and tables applied in order go now; compactable tables'
        // net effects go with the commit.
        self.flush().await?;
        let mut sets = Vec::new();
        let tables: Vec<compact::Buffered> = self.buffered.drain().map(|(_, b)| b).collect();
        self.buffered_changes = 0;
        self.buffered_bytes = 0;
        for b in tables {
            if b.rel.compactable {
                sets.extend(self.plan_set(b).await?);
            } else {
                self.apply_in_order(b).await?;
            }
        }
        let state_stmt = match &self.state_stmt {
            Some(s) => s.clone(),
            None if self.ctx.direction == Direction::Reverse => {
                self.settle_inner().await?;
                let s = self
                    .tgt
                    .prepare("SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, to_timestamp($2::float8))")
                    .await
                    .map_err(|e| PgError::query("preparing the statement that records the applied position", e))?;
                self.state_stmt = Some(s.clone());
                s
            }
            None => {
                let q = self.ctx.store.quoted().to_string();
                // A PostgreSQL stream's position is an LSN; another engine's is kept as the
                // text of its SourcePosition.
                let set_position = if self.positions.is_none() {
                    "applied_lsn = $2::text::pg_lsn"
                } else {
                    "applied_position = $2"
                };
                let sql = format!(
                    "UPDATE {q}.migrations SET {set_position}, applied_txns = applied_txns + $3,
                        events_insert = events_insert + $4, events_update = events_update + $5,
                        events_delete = events_delete + $6, events_truncate = events_truncate + $7,
                        last_commit_time = CASE WHEN $8::float8 > {PG_EPOCH_UNIX_SECS} THEN to_timestamp($8::float8) ELSE last_commit_time END,
                        applied_at = now(), updated_at = now()
                     WHERE id = $1"
                );
                self.settle_inner().await?;
                let s = self
                    .tgt
                    .prepare(&sql)
                    .await
                    .map_err(|e| PgError::query("preparing the statement that records the applied position", e))?;
                self.state_stmt = Some(s.clone());
                s
            }
        };
        // The previous batch must be known committed before this one starts.
        self.settle_inner().await?;
        let mut staged = Vec::with_capacity(self.staged.len());
        for (sql, params) in std::mem::take(&mut self.staged) {
            let stmt = match self.stmts.get(&sql) {
                Some(s) => s.clone(),
                None => {
                    let s = self
                        .tgt
                        .prepare(&sql)
                        .await
                        .map_err(|e| PgError::query("preparing a statement recorded with the batch", e))?;
                    self.stmts.insert(sql, s.clone());
                    s
                }
            };
            staged.push((stmt, params));
        }
        let c = self.batch_counts;
        let commit_time = self.batch_commit_time as f64 / 1e6;
        let mut ops: Vec<Op<'static>> = Vec::new();
        let mut checks: Vec<Result<compact::SetCheck, &'static str>> = Vec::new();
        if !self.begun {
            let t = Arc::clone(&self.tgt);
            ops.push(Box::pin(async move { t.batch_execute("BEGIN").await.map(|_| 0) }));
            checks.push(Err("starting an apply transaction"));
        }
        for set in sets {
            let (op, check) = set.op(&self.tgt);
            ops.push(op);
            checks.push(Ok(check));
        }
        for (stmt, params) in staged {
            let t = Arc::clone(&self.tgt);
            ops.push(Box::pin(async move {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                t.execute(&stmt, &refs).await
            }));
            checks.push(Err("recording state with the batch"));
        }
        let t = Arc::clone(&self.tgt);
        let id = self.ctx.migration_id.clone();
        let end = match &self.positions {
            None => self.batch_end.to_string(),
            Some(_) => self.position(self.batch_end).to_string(),
        };
        let reverse = self.ctx.direction == Direction::Reverse;
        ops.push(Box::pin(async move {
            if reverse {
                return t.execute(&state_stmt, &[&end, &commit_time]).await;
            }
            t.execute(
                &state_stmt,
                &[
                    &id,
                    &end,
                    &(c.txns as i64),
                    &(c.inserts as i64),
                    &(c.updates as i64),
                    &(c.deletes as i64),
                    &(c.truncates as i64),
                    &commit_time,
                ],
            )
            .await
        }));
        checks.push(Err("recording the applied position"));
        let answers = send_in_order(ops);
        let t = Arc::clone(&self.tgt);
        let task = tokio::spawn(async move {
            let mut outcome = Ok(());
            for (r, check) in answers.await.into_iter().zip(checks) {
                let r = match check {
                    Ok(set) => set.check(r),
                    Err(what) => r.map(|_| ()).map_err(|e| PgError::query(what, e).into()),
                };
                if let Err(e) = r {
                    outcome = Err(e);
                    break;
                }
            }
            match outcome {
                // The target's WAL positions right after the commit, in the same round trip:
                // the batch is durable once the flush position passes the insert position.
                Ok(()) => {
                    let msgs = t
                        .simple_query("COMMIT; SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text")
                        .await
                        .map_err(|e| ApplyError::from(PgError::query("committing applied changes", e)))?;
                    let row = msgs.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                        _ => None,
                    });
                    let lsn = |i: usize| row.and_then(|r| r.get(i)).and_then(|v| v.parse::<Lsn>().ok());
                    match (lsn(0), lsn(1)) {
                        (Some(insert), Some(flush)) => Ok((insert, flush)),
                        _ => Err(PgError::config(
                            "committing applied changes",
                            "the target did not report its WAL positions after the commit",
                            "report this as a bug",
                        )
                        .into()),
                    }
                }
                Err(e) => {
                    let _ = t.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        });
        self.inflight = Some(InFlight {
            task,
            started: self.batch_started,
            end: self.batch_end,
            counts: c,
        });
        self.batch_open = false;
        self.begun = false;
        Ok(())
    }

    /// Gives up on a connection found dead: stops the batch committing in the background and
    /// sends nothing (a ROLLBACK would only wait out its bound). The server rolls back what
    /// the session had open when it is ended.
    pub fn abandon(&mut self) {
        if let Some(f) = self.inflight.take() {
            f.task.abort();
        }
    }

    /// Abandons the open batch (after an error, or when stopping inside a transaction).
    pub async fn rollback(&mut self) {
        self.staged.clear();
        self.pending.clear();
        self.buffered.clear();
        self.buffered_changes = 0;
        self.buffered_bytes = 0;
        let mut sent = self.begun;
        if let Some(f) = self.inflight.take() {
            // Its outcome no longer matters: the next session reads the durable position
            // from the target. Whatever it left open is rolled back below.
            f.task.abort();
            let _ = f.task.await;
            sent = true;
        }
        if sent {
            // Bounded: after a lost connection it would never answer; the session is ended
            // (and its transaction rolled back) by the next applier instead.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.tgt.batch_execute("ROLLBACK")).await;
        }
        self.batch_open = false;
        self.begun = false;
        self.txn = None;
    }

    /// Records a dead letter in its own transaction (idempotent across replays).
    pub async fn record_dead_letter(&self, d: &DeadLetter, skipped: bool) -> Result<(), PgError> {
        // The state schema lives on the migration's target: the stream's side in reverse.
        let c = match self.ctx.direction {
            Direction::Forward => &*self.tgt,
            Direction::Reverse => self.state_side.as_ref().unwrap_or(&*self.tgt),
        };
        self.ctx.store.record_dead_letter(c, &self.ctx.migration_id, d, skipped).await
    }
}

/// Commits with a synchronous flush: a transaction that takes a transaction id writes a
/// commit record, and with `synchronous_commit = on` its commit waits until the WAL before it
/// (every earlier asynchronous commit included) is on disk.
async fn force_flush(tgt: &Client) -> Result<(), PgError> {
    tgt.batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT")
        .await
        .map_err(|e| PgError::query("flushing the target's WAL", e))
}

/// Ends the target session an earlier applier left behind when its connection was lost (a
/// network black hole leaves it open, maybe with a transaction whose COMMIT is still on the
/// way) and waits until it is gone, so that the applied position read next is final. Only a
/// session of Ferry's apply connections is touched.
async fn end_stale_session(tgt: &Client, pid: i32) -> Result<(), PgError> {
    let alive = "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND application_name LIKE '%apply')";
    let ended = tgt
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND application_name LIKE '%apply'
             UNION ALL SELECT false LIMIT 1",
            &[&pid],
        )
        .await
        .map_err(|e| PgError::query("ending the apply session a lost connection left on the target", e))?
        .get::<_, bool>(0);
    if ended {
        tracing::warn!(pid, "ended the target session a lost apply connection left behind");
    }
    for _ in 0..100 {
        let row = tgt
            .query_one(alive, &[&pid])
            .await
            .map_err(|e| PgError::query("waiting for the old apply session to end", e))?;
        if !row.get::<_, bool>(0) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(PgError::transient(
        "ending the apply session a lost connection left on the target",
        format!("session {pid} is still there 5 s after pg_terminate_backend"),
    ))
}

impl ferry_core::Fault for ApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Db(e) => e.class,
            // The driver records it and stops, or steps over it with the operator's consent.
            ApplyError::Rejected(_) => ErrorClass::Definite,
            // A new session replays row by row from the durable position.
            ApplyError::Reapply { .. } => ErrorClass::Transient,
        }
    }
}

/// The PostgreSQL sink: the applier, under the engine-neutral contract of
/// [`ferry_core::sink`] (set-based apply, pipelined commits, exactly once through the position
/// committed with each batch, unchanged TOAST kept, duplicates without a key kept, origins).
impl ferry_core::sink::Sink for Applier {
    type Error = ApplyError;

    async fn apply(&mut self, event: ChangeEvent) -> Result<(), ApplyError> {
        self.handle(event).await
    }

    fn at_boundary(&self) -> bool {
        Applier::at_boundary(self)
    }

    fn batch_open(&self) -> bool {
        Applier::batch_open(self)
    }

    fn batch_len(&self) -> usize {
        Applier::batch_len(self)
    }

    fn batch_age(&self) -> std::time::Duration {
        Applier::batch_age(self)
    }

    async fn commit(&mut self) -> Result<(), ApplyError> {
        Applier::commit(self).await
    }

    async fn settle(&mut self) -> Result<Option<SourcePosition>, ApplyError> {
        let key = Applier::settle(self).await?;
        Ok(Some(self.position(key)))
    }

    fn in_flight(&self) -> bool {
        self.has_inflight()
    }

    async fn try_settle(&mut self) -> Result<(), ApplyError> {
        Applier::try_settle(self).await.map(|_| ())
    }

    fn committed(&self) -> Option<SourcePosition> {
        Some(self.durable_position())
    }

    fn durable(&self) -> Option<SourcePosition> {
        Some(self.flushed_position())
    }

    fn has_unflushed(&self) -> bool {
        Applier::has_unflushed(self)
    }

    async fn poll_flush(&mut self) -> Result<(), ApplyError> {
        Applier::poll_flush(self).await.map(|_| ())
    }

    async fn flush_now(&mut self) -> Result<(), ApplyError> {
        Applier::flush_now(self).await.map(|_| ())
    }

    async fn rollback(&mut self) {
        Applier::rollback(self).await
    }

    fn abandon(&mut self) {
        Applier::abandon(self)
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.pending_since()
    }

    fn transactions(&self) -> u64 {
        self.totals().txns
    }

    fn session(&self) -> Option<ferry_core::switch::SessionId> {
        u64::try_from(self.pid()).ok()
    }

    async fn record_dead_letter(&self, letter: &DeadLetter, skipped: bool) -> Result<(), ApplyError> {
        Applier::record_dead_letter(self, letter, skipped).await.map_err(ApplyError::Db)
    }
}

/// Text of a value for statements: None for NULL. Unchanged values never get here.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null | Value::Unchanged => None,
        Value::Text(b) | Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// Short description of values for dead letters: `col=value` with long values cut.
fn describe(names: &[String], values: &[Option<String>]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| match v {
            None => format!("{n}=NULL"),
            Some(s) if s.chars().count() > 200 => {
                format!("{n}={}...({} chars)", s.chars().take(200).collect::<String>(), s.chars().count())
            }
            Some(s) => format!("{n}={s}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
