//! Change capture from the binlog into PostgreSQL, exactly once.
//!
//! Source transactions are applied whole, in binlog order; several may share one target
//! transaction (a batch), which also moves Ferry's position (`ferry.migrations.applied_position`,
//! see [`crate::state`]) in the same commit: after a crash the target holds exactly the
//! transactions up to the stored position, and the stream resumes there. A transaction's statements are sent
//! as they arrive, in chunks, inside the open target transaction: a large source transaction is
//! never held in memory.
//!
//! Statements are plain SQL with literals in PostgreSQL's input form (`value::text_of`, the
//! same conversion as the full load) and one round trip per chunk. Each UPDATE and DELETE must
//! touch exactly one row, each INSERT must insert one: anything else means the target drifted
//! from the source, and the stream stops naming the row rather than go on silently.
//! `docs/mysql-cdc.md` has the whole story.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::ident::{quote_ident, quote_literal};
use ferry_core::BinlogPosition;
use futures_util::FutureExt;
use tokio_postgres::SimpleQueryMessage;

use crate::binlog::{BinlogReader, Change};
use crate::error::MyError;
use crate::load::kinds_of;
use crate::preflight::{MyCheckRequest, MyPlan, MyTable};
use crate::state::{Hold, MyState};
use crate::types::ZeroDates;
use crate::value::{text_of, Kind};

/// Longest the binlog connection may stay silent: the source sends a heartbeat every
/// [`crate::binlog::HEARTBEAT_PERIOD`] when it has nothing else, so silence this long means the
/// connection (or the server) is dead. The stream then reconnects with backoff.
pub const BINLOG_SILENCE: Duration = Duration::from_secs(10);
/// First wait before reconnecting after a failure; doubles up to [`BACKOFF_MAX`], and starts
/// afresh once a run applied something.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
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
    /// A schema change the user has applied on the target (`--ddl-applied`): its position.
    pub skip_schema_change: Option<BinlogPosition>,
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

/// One table's statement shapes.
struct TableInfo {
    qname: String,
    cols: Vec<String>,
    names: Vec<String>,
    kinds: Vec<Kind>,
    /// Primary-key column indexes; empty: the table has none (all columns identify a row).
    key: Vec<usize>,
}

impl TableInfo {
    fn new(t: &MyTable) -> TableInfo {
        TableInfo {
            qname: format!("public.{}", quote_ident(&t.name)),
            cols: t.columns.iter().map(|(n, _)| quote_ident(n)).collect(),
            names: t.columns.iter().map(|(n, _)| n.clone()).collect(),
            kinds: kinds_of(t),
            key: t
                .primary_key
                .iter()
                .filter_map(|k| t.columns.iter().position(|(n, _)| n == k))
                .collect(),
        }
    }
}

/// Why a run ended.
enum Failure {
    /// Network, restart: reconnect and resume from the stored position.
    Transient(MyError),
    /// Needs a human.
    Fatal(MyError),
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

/// A statement waiting in the chunk and what it must report.
struct Expect {
    /// Rows it must touch (None: any, for TRUNCATE and Ferry's own statements).
    rows: Option<u64>,
    /// For the error: table and key.
    what: String,
}

/// The open target transaction.
struct Batch {
    open: bool,
    sql: String,
    expect: Vec<Expect>,
    changes: usize,
    transactions: u64,
    started: Instant,
    /// Position after the last complete source transaction in it.
    position: Option<BinlogPosition>,
    last_ts: u32,
    /// Row changes by operation (insert, update, delete, truncate).
    ops: [u64; 4],
}

impl Batch {
    fn new() -> Batch {
        Batch {
            open: false,
            sql: String::new(),
            expect: Vec::new(),
            changes: 0,
            transactions: 0,
            started: Instant::now(),
            position: None,
            last_ts: 0,
            ops: [0; 4],
        }
    }
}

/// The stream's applier for one run (one source and one target connection).
struct Applier<'a> {
    pg: tokio_postgres::Client,
    /// The target, for messages.
    target: String,
    tables: HashMap<String, TableInfo>,
    zero: ZeroDates,
    state: &'a MyState,
    /// The stream stopped before a schema change last time: the first commit forgets it.
    clear_blocked: bool,
    batch: Batch,
    stats: &'a CdcStats,
    gtid: String,
    /// The position the target holds (the last batch committed).
    committed: BinlogPosition,
}

const CHUNK_BYTES: usize = 1 << 20;
const CHUNK_STATEMENTS: usize = 2000;

impl Applier<'_> {
    fn pg_failure(&self, what: &str, e: tokio_postgres::Error) -> Failure {
        // PostgreSQL's one retry table (ferry_postgres::error::sqlstate_class): reconnect and
        // retry from the last commit. Anything else is the data's problem.
        let transient = e.is_closed()
            || e.as_db_error()
                .is_none_or(|d| ferry_postgres::error::sqlstate_class(d.code().code()) == ferry_core::ErrorClass::Transient);
        let text = match e.as_db_error() {
            Some(d) => format!("{}{}", d.message(), d.detail().map(|x| format!(" ({x})")).unwrap_or_default()),
            None => e.to_string(),
        };
        if transient {
            Failure::Transient(MyError::transient(
                &format!("{what} on the target {}", self.target),
                &text,
                "Ferry reconnects with backoff and resumes from its last commit",
            ))
        } else {
            Failure::Fatal(MyError::new(
                what,
                &text,
                "the target rejected a change from the source: fix the target (or the row on the source) and run ferry migrate again; nothing after the last commit was applied",
            ))
        }
    }

    async fn set_held(&self, at: Option<&BinlogPosition>) -> Result<u64, tokio_postgres::Error> {
        self.state.set_held(&self.pg, at).await
    }

    fn begin_if_needed(&mut self) {
        if !self.batch.open {
            self.batch.open = true;
            self.batch.started = Instant::now();
            self.batch.sql.push_str("BEGIN;\n");
        }
    }

    /// A literal in PostgreSQL's input form, or NULL.
    fn literal(&self, t: &TableInfo, row: &[mysql_async::Value], i: usize) -> Result<String, Failure> {
        let v = &row[i];
        match text_of(v, &t.kinds[i], self.zero) {
            Ok(Some(s)) => Ok(quote_literal(&s)),
            Ok(None) => Ok("NULL".into()),
            Err(why) => Err(Failure::Fatal(MyError::new(
                &format!(
                    "applying a change to {}, row {}, column {}",
                    t.names.join(","),
                    key_text(t, row),
                    t.names[i]
                ),
                &why,
                "see docs/mysql-types.md",
            ))),
        }
    }

    /// `WHERE` identifying the row by its key (all columns for a table without one).
    fn condition(&self, t: &TableInfo, row: &[mysql_async::Value]) -> Result<String, Failure> {
        if t.key.is_empty() {
            let mut parts = Vec::with_capacity(t.cols.len());
            for i in 0..t.cols.len() {
                parts.push(format!("{} IS NOT DISTINCT FROM {}", t.cols[i], self.literal(t, row, i)?));
            }
            // One row of possibly several identical ones.
            return Ok(format!(
                "ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)",
                t.qname,
                parts.join(" AND ")
            ));
        }
        let mut parts = Vec::with_capacity(t.key.len());
        for &i in &t.key {
            parts.push(format!("{} = {}", t.cols[i], self.literal(t, row, i)?));
        }
        Ok(parts.join(" AND "))
    }

    fn statement(&mut self, sql: String, rows: Option<u64>, what: String, op: usize) {
        self.begin_if_needed();
        self.batch.sql.push_str(&sql);
        self.batch.sql.push_str(";\n");
        self.batch.expect.push(Expect { rows, what });
        self.batch.changes += 1;
        self.batch.ops[op] += 1;
    }

    async fn change(&mut self, c: Change) -> Result<(), Failure> {
        let (table, sql, rows, what, op) = match c {
            Change::Insert { table, row } => {
                let Some(t) = self.tables.get(&table) else { return Ok(()) };
                check_width(t, &table, &row)?;
                let mut vals = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    vals.push(self.literal(t, &row, i)?);
                }
                let sql = format!("INSERT INTO {} ({}) VALUES ({})", t.qname, t.cols.join(", "), vals.join(", "));
                let what = format!("insert into {table} of {}", key_text(t, &row));
                (table, sql, Some(1), what, 0)
            }
            Change::Update { table, before, after } => {
                let Some(t) = self.tables.get(&table) else { return Ok(()) };
                check_width(t, &table, &before)?;
                check_width(t, &table, &after)?;
                let mut sets = Vec::new();
                for i in 0..after.len() {
                    if before[i] != after[i] {
                        sets.push(format!("{} = {}", t.cols[i], self.literal(t, &after, i)?));
                    }
                }
                if sets.is_empty() {
                    return Ok(());
                }
                let sql = format!("UPDATE {} SET {} WHERE {}", t.qname, sets.join(", "), self.condition(t, &before)?);
                let what = format!("update of {table} row {}", key_text(t, &before));
                (table, sql, Some(1), what, 1)
            }
            Change::Delete { table, row } => {
                let Some(t) = self.tables.get(&table) else { return Ok(()) };
                check_width(t, &table, &row)?;
                let sql = format!("DELETE FROM {} WHERE {}", t.qname, self.condition(t, &row)?);
                let what = format!("delete from {table} of row {}", key_text(t, &row));
                (table, sql, Some(1), what, 2)
            }
            Change::Truncate { table } => {
                let Some(t) = self.tables.get(&table) else { return Ok(()) };
                let sql = format!("TRUNCATE {}", t.qname);
                (table.clone(), sql, None, format!("truncate of {table}"), 3)
            }
            _ => return Ok(()),
        };
        let _ = table;
        self.statement(sql, rows, what, op);
        if self.batch.sql.len() >= CHUNK_BYTES || self.batch.expect.len() >= CHUNK_STATEMENTS {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Sends the chunk; with `commit`, also moves the position and commits.
    async fn flush(&mut self, commit: bool) -> Result<(), Failure> {
        if commit {
            let Some(p) = self.batch.position.clone() else {
                // Nothing complete in the batch: nothing to commit.
                return Ok(());
            };
            self.begin_if_needed();
            // Position and changes commit together: exactly once.
            for sql in self
                .state
                .batch_commit_sql(&p, self.batch.transactions, u64::from(self.batch.last_ts), self.clear_blocked)
            {
                self.batch.sql.push_str(&sql);
                self.batch.sql.push_str(";\n");
                self.batch.expect.push(Expect {
                    rows: Some(1),
                    what: "moving Ferry's position".into(),
                });
            }
            self.batch.sql.push_str("COMMIT");
            self.batch.expect.push(Expect {
                rows: None,
                what: "commit".into(),
            });
        }
        if self.batch.sql.is_empty() {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.batch.sql);
        let expect = std::mem::take(&mut self.batch.expect);
        let result = self.pg.simple_query(&sql).await;
        let messages = match result {
            Ok(m) => m,
            Err(e) => {
                let first = expect.first().map(|x| x.what.clone()).unwrap_or_default();
                return Err(self.pg_failure(&format!("applying source changes (chunk starting with the {first})"), e));
            }
        };
        let counts: Vec<u64> = messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .collect();
        // BEGIN reports a CommandComplete too.
        let offset = counts.len().saturating_sub(expect.len());
        for (e, n) in expect.iter().zip(&counts[offset..]) {
            if let Some(want) = e.rows {
                if *n != want {
                    let _ = self.pg.batch_execute("ROLLBACK").await;
                    return Err(Failure::Fatal(MyError::new(
                        &format!("applying the {}", e.what),
                        &format!("it touched {n} row(s) on the target, the source changed {want}: the target no longer matches the source"),
                        "find out what wrote to the target table (only Ferry may until cutover), then reload it: ferry migrate --overwrite",
                    )));
                }
            }
        }
        if commit {
            let p = self.batch.position.take().expect("checked above");
            self.stats.transactions.fetch_add(self.batch.transactions, Ordering::Relaxed);
            self.stats.changes.fetch_add(self.batch.changes as u64, Ordering::Relaxed);
            self.stats.last_commit_ts.store(u64::from(self.batch.last_ts), Ordering::Relaxed);
            for (n, counter) in self.batch.ops.iter().zip(&self.stats.ops) {
                counter.fetch_add(*n, Ordering::Relaxed);
            }
            self.stats.committed(&p);
            tracing::debug!(position = %p, transactions = self.batch.transactions, changes = self.batch.changes, "batch committed");
            self.committed = p;
            self.clear_blocked = false;
            self.batch = Batch::new();
        }
        Ok(())
    }
}

fn check_width(t: &TableInfo, table: &str, row: &[mysql_async::Value]) -> Result<(), Failure> {
    if row.len() != t.cols.len() {
        return Err(Failure::Fatal(MyError::new(
            &format!("applying a change to {table}"),
            &format!(
                "the row has {} values, the table {} columns: its schema changed on the source",
                row.len(),
                t.cols.len()
            ),
            "make the same change on the target, then run ferry migrate again (docs/mysql-cdc.md)",
        )));
    }
    Ok(())
}

/// The key of a row as `col=value`, for messages.
fn key_text(t: &TableInfo, row: &[mysql_async::Value]) -> String {
    let idx: Vec<usize> = if t.key.is_empty() {
        (0..t.cols.len().min(3)).collect()
    } else {
        t.key.clone()
    };
    idx.iter()
        .filter(|&&i| i < row.len())
        .map(|&i| format!("{}={}", t.names[i], row[i].as_sql(true)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Streams changes from `start` (or the stored position) until `stop` turns true; reconnects
/// after transient failures. Returns the last position committed.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    req: &MyCheckRequest,
    plan: &MyPlan,
    state: &MyState,
    opts: &CdcOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: &CdcStats,
) -> Result<BinlogPosition, MyError> {
    let mut backoff = BACKOFF_START;
    loop {
        let target = req.target.connect("mysql-cdc").await.map_err(MyError::from);
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                let wait = next_backoff(&mut backoff);
                tracing::warn!(connection = "apply (target)", target = %req.target.describe(), error = %e, retry_in_ms = wait.as_millis() as u64, "target unavailable; retrying");
                if wait_or_stop(&mut stop, wait).await {
                    return Err(e);
                }
                continue;
            }
        };
        let Some((start, blocked)) = state.resume_point(&target).await? else {
            return Err(MyError::new(
                "starting change capture",
                "no finished full load of this source is recorded on the target",
                "run ferry migrate without --stop-after (it loads first)",
            ));
        };
        let applied_before = stats.transactions.load(Ordering::Relaxed);
        let outcome = run(req, plan, state, opts, target, &start, blocked.is_some(), &mut stop, stats).await;
        if stats.transactions.load(Ordering::Relaxed) > applied_before {
            // That run made progress: the next failure starts the backoff afresh.
            backoff = BACKOFF_START;
        }
        match outcome {
            Ok(p) => return Ok(p),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                *stats.last_error.lock().expect("lock") = Some(e.to_string());
                let wait = next_backoff(&mut backoff);
                // The error names the connection (the binlog connection to the source, or the
                // apply connection to the target) and what it waited for.
                tracing::warn!(
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    reconnects = stats.reconnects.load(Ordering::Relaxed),
                    "change capture interrupted; reconnecting both connections and resuming from the last commit"
                );
                if wait_or_stop(&mut stop, wait).await {
                    return state
                        .resume_point(&req.target.connect("mysql-cdc").await.map_err(MyError::from)?)
                        .await?
                        .map(|s| s.0)
                        .ok_or(e);
                }
            }
        }
    }
}

/// Holds the stream at a transaction boundary while a verification asks for it (see [`Hold`]):
/// commits what is complete, says where it stands in `held_at`, and waits for the request to
/// change (at most 120 s, then goes on: a verification that slow fails on its own check).
/// `here` is where the stream stands: everything before it applied (once the open batch
/// commits), nothing after it read; nothing is read while it holds.
async fn hold_if_asked(
    applier: &mut Applier<'_>,
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
                applier
                    .set_held(None)
                    .await
                    .map_err(|e| applier.pg_failure("recording the end of a hold", e))?;
            }
            return Ok(());
        };
        applier.flush(true).await?;
        applier
            .set_held(Some(at))
            .await
            .map_err(|e| applier.pg_failure("recording a hold", e))?;
        held = true;
        tracing::debug!(%at, "holding for a verification");
        applier.stats.holding.store(true, Ordering::Relaxed);
        let waited = tokio::select! {
            _ = hold_rx.changed() => None,
            _ = stop.changed() => Some(false),
            _ = tokio::time::sleep(Duration::from_secs(120)) => Some(true),
        };
        applier.stats.holding.store(false, Ordering::Relaxed);
        match waited {
            None => {}
            Some(false) => return Ok(()),
            Some(true) => {
                tracing::warn!("a verification held the stream for 120 s; going on");
                applier
                    .set_held(None)
                    .await
                    .map_err(|e| applier.pg_failure("recording the end of a hold", e))?;
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

#[allow(clippy::too_many_arguments)]
async fn run(
    req: &MyCheckRequest,
    plan: &MyPlan,
    state: &MyState,
    opts: &CdcOptions,
    pg: tokio_postgres::Client,
    start: &BinlogPosition,
    blocked: bool,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    stats: &CdcStats,
) -> Result<BinlogPosition, Failure> {
    pg.batch_execute("SET session_replication_role = replica; SET standard_conforming_strings = on; SET synchronous_commit = on")
        .await
        .map_err(|e| {
            Failure::Fatal(MyError::new(
                "disabling triggers for the apply session (session_replication_role = replica)",
                &e.to_string(),
                "connect to the target as a superuser (or a role allowed to set session_replication_role)",
            ))
        })?;
    let mut reader = BinlogReader::start(&req.source, opts.server_id, start.file(), start.pos(), &plan.tables)
        .await
        .map_err(Failure::from)?;
    tracing::info!(position = %start, "streaming the binlog");
    stats.streaming.store(true, Ordering::Relaxed);
    *stats.last_error.lock().expect("lock") = None;
    let _streaming = Streaming(stats);
    // Not holding (a hold of an earlier run that failed is over).
    let _ = state.set_held(&pg, None).await;
    let mut applier = Applier {
        pg,
        target: req.target.describe(),
        tables: plan.tables.iter().map(|t| (t.name.clone(), TableInfo::new(t))).collect(),
        zero: req.map.zero_dates,
        state,
        clear_blocked: blocked,
        batch: Batch::new(),
        stats,
        gtid: start.gtid().to_string(),
        committed: start.clone(),
    };
    let (hold_tx, mut hold_rx) = tokio::sync::watch::channel(Hold::Run);
    let _poller = AbortOnDrop(tokio::spawn(poll_hold(req.target.clone(), state.clone(), hold_tx)));
    let mut in_tx = false;
    loop {
        let ready = reader.next().now_or_never();
        let next = match ready {
            Some(r) => r,
            None => {
                // Nothing waiting: commit what is complete, then wait.
                if !in_tx {
                    applier.flush(true).await?;
                }
                if !in_tx {
                    stats.caught_up.store(true, Ordering::Relaxed);
                    if *stop.borrow() || *hold_rx.borrow() == Hold::CutOver {
                        return Ok(applier.committed.clone());
                    }
                    // Everything read is applied: the stream stands at the reader's position.
                    let (file, pos) = reader.position();
                    if let Ok(here) = BinlogPosition::new(&file, pos, "") {
                        stats.processed_to(here);
                    }
                    hold_if_asked(&mut applier, &mut hold_rx, (&file, pos), stop).await?;
                }
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
                    _ = stop.changed(), if !in_tx => {
                        return Ok(applier.committed.clone());
                    }
                    _ = hold_rx.changed(), if !in_tx => continue,
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
                Change::Begin { gtid, at } => {
                    let file = reader.file().to_string();
                    hold_if_asked(&mut applier, &mut hold_rx, (&file, at), stop).await?;
                    in_tx = true;
                    stats.caught_up.store(false, Ordering::Relaxed);
                    if let Some(g) = gtid {
                        applier.gtid = g;
                    }
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
                    applier.flush(true).await?;
                    let blocked = serde_json::json!({"query": query, "file": file, "pos": pos});
                    if let Err(e) = state.set_blocked(&applier.pg, &blocked).await {
                        tracing::warn!(error = %e, "could not record the schema change the stream stops at");
                    }
                    return Err(Failure::Fatal(MyError::new(
                        &format!("streaming the binlog at {file}:{pos}"),
                        &format!("the source's schema changed: {}", query.trim()),
                        "make the same change on the target (PostgreSQL syntax, see docs/mysql-types.md for the types), \
                         then run the same ferry migrate with --ddl-applied to continue after it",
                    )));
                }
                Change::Commit { file, pos, timestamp } => {
                    in_tx = false;
                    applier.batch.position = Some(binlog_at(&file, pos, &applier.gtid)?);
                    applier.batch.transactions += 1;
                    applier.batch.last_ts = timestamp;
                    let full = applier.batch.changes >= opts.batch_changes || applier.batch.started.elapsed() >= opts.batch_time;
                    // A stop or a cutover ends the stream at this boundary, busy or not.
                    let end = *stop.borrow() || *hold_rx.borrow() == Hold::CutOver;
                    if full || end {
                        applier.flush(true).await?;
                        if end {
                            return Ok(applier.committed.clone());
                        }
                    }
                }
                other => applier.change(other).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let mut b = BACKOFF_START;
        let waits: Vec<u128> = (0..8).map(|_| next_backoff(&mut b).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }
}
