//! MySQL/MariaDB as a source for sinks that are not a PostgreSQL database (Kafka,
//! `ferry_kafka::mycapture`): a consistent snapshot read as pages of change-stream rows, and
//! the binlog driven into any [`Sink`] from a position.
//!
//! The driver follows `ferry_core::sink`'s contract as [`crate::cdc`] does for the PostgreSQL
//! applier: whole source transactions in binlog order, `Begin` at the position where a
//! transaction starts (its ordering key), `Commit` at the position after it, a batch closed when
//! full or old, and only ever [`Sink::durable`] reported as what the source may forget. What
//! needs a PostgreSQL target (holds for verification, XA transactions kept in the target's
//! state) is not here: a prepared XA transaction stops the stream with the reason; a schema
//! change ends the session once everything before it is durable, so that the caller reads
//! the tables again and resumes after it ([`Outcome::SchemaChanged`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry_core::change::{ChangeEvent, Row};
use ferry_core::sink::Sink;
use ferry_core::{BinlogPosition, SourcePosition};
use ferry_postgres::apply::{order_key, ApplyError};
use futures_util::FutureExt;
use mysql_async::prelude::Queryable;
use tokio::sync::{mpsc, watch};

use crate::binlog::{BinlogReader, Change};
use crate::error::MyError;
use crate::preflight::MyPlan;
use crate::rows::{convert, ConvError, TableConv, TxnCursor};
use crate::types::ZeroDates;
use crate::MyEndpoint;

/// Rows per page of a snapshot.
const PAGE: usize = 1000;

/// What the snapshot reader hands over, in order: a table, then pages of its rows.
#[derive(Debug)]
pub enum SnapshotItem {
    /// The rows of this table (its index in the plan) follow.
    Table(usize),
    /// Rows of the current table.
    Rows(Vec<Row>),
}

/// Each table of the plan as the stream sees it (relation ids 1, 2, ... in plan order), typed as
/// the plan maps it, in PostgreSQL schema `schema`.
pub fn tables(plan: &MyPlan, schema: &str) -> Result<Vec<TableConv>, MyError> {
    plan.tables
        .iter()
        .enumerate()
        .map(|(i, t)| TableConv::from_plan(i as u32 + 1, t, schema))
        .collect()
}

/// Opens a consistent snapshot of the plan's tables and reads it in the background: the
/// snapshot's binlog position, and the rows as they come (a bounded channel: a slow sink slows
/// the reader, never fills memory). A value that does not convert ends the reading with an error
/// naming the row and column.
pub async fn read_snapshot(
    source: &MyEndpoint,
    plan: &MyPlan,
    convs: std::sync::Arc<Vec<TableConv>>,
    zero: ZeroDates,
) -> Result<(BinlogPosition, mpsc::Receiver<Result<SnapshotItem, MyError>>), MyError> {
    let (mut conns, at) = crate::snapshot::open_snapshot(source, 1).await?;
    let mut conn = conns.pop().expect("one connection");
    let (tx, rx) = mpsc::channel(4);
    let source = source.clone();
    let plan = plan.clone();
    tokio::spawn(async move {
        let db = source.database().to_string();
        for (i, t) in plan.tables.iter().enumerate() {
            if tx.send(Ok(SnapshotItem::Table(i))).await.is_err() {
                return;
            }
            let conv = &convs[i];
            let select = format!(
                "SELECT {} FROM {}.{}",
                t.columns.iter().map(|(c, _)| my_q(c)).collect::<Vec<_>>().join(", "),
                my_q(&db),
                my_q(&t.name)
            );
            let ctx = format!("reading {} for the snapshot", t.name);
            let mut result = match conn.exec_iter(select, ()).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(MyError::query(&ctx, e))).await;
                    return;
                }
            };
            let mut page = Vec::with_capacity(PAGE);
            loop {
                let row = match result.next().await {
                    Ok(Some(r)) => r.unwrap(),
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(MyError::query(&ctx, e))).await;
                        return;
                    }
                };
                match conv.row(&row, zero) {
                    Ok(r) => page.push(r),
                    Err(why) => {
                        let e = MyError::new(
                            &format!("{ctx}, row {}", conv.key_text(&row)),
                            &why,
                            "see docs/mysql-types.md (zero dates: --zero-dates), or leave the table out",
                        );
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if page.len() >= PAGE && tx.send(Ok(SnapshotItem::Rows(std::mem::take(&mut page)))).await.is_err() {
                    return;
                }
            }
            drop(result);
            if !page.is_empty() && tx.send(Ok(SnapshotItem::Rows(page))).await.is_err() {
                return;
            }
        }
        source.cleanup(&mut conn, "COMMIT").await;
        source.disconnect(conn).await;
    });
    Ok((at, rx))
}

fn my_q(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// How a stream session runs.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The replica server id of the binlog connection.
    pub server_id: u32,
    /// Most changes in a batch.
    pub max_batch: usize,
    /// Longest a batch stays open.
    pub max_delay: Duration,
    /// Longest the binlog connection may stay silent (the source sends heartbeats).
    pub silence: Duration,
}

/// How a stream session ended (errors aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop: everything read is durable at this position.
    Stopped(BinlogPosition),
    /// A statement changed the schema: everything before it is durable, and the stream goes on
    /// at this position (after the statement) once the caller has read the tables again.
    SchemaChanged {
        /// Where to go on.
        resume: BinlogPosition,
        /// The statement.
        query: String,
    },
}

/// Why a stream session failed.
#[derive(Debug)]
pub enum StreamError {
    /// The source, the sink or a value: its class says whether to retry.
    Failed(MyError),
    /// A change the sink refused (a value it cannot carry): where and why.
    DeadLetter(Box<ferry_core::sink::DeadLetter>),
}

impl From<MyError> for StreamError {
    fn from(e: MyError) -> Self {
        StreamError::Failed(e)
    }
}

impl From<ApplyError> for StreamError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Db(e) => StreamError::Failed(MyError::from(e)),
            ApplyError::Rejected(d) => StreamError::DeadLetter(d),
            ApplyError::Reapply { .. } => StreamError::Failed(MyError::new(
                "publishing changes",
                "the sink asked for a row-by-row replay, which only a database sink does",
                "report this as a bug",
            )),
        }
    }
}

impl From<ConvError> for StreamError {
    fn from(e: ConvError) -> Self {
        match e {
            ConvError::Fatal(e) => StreamError::Failed(e),
            ConvError::DeadLetter(d) => StreamError::DeadLetter(d),
        }
    }
}

/// Streams the binlog from `start` into `sink` until `stop` turns true or a schema change.
/// Every time [`Sink::durable`] moves, `durable` is told (the caller records it where a restart
/// finds it). `skip`: changes to step over (dead letters the operator accepted).
#[allow(clippy::too_many_arguments)]
pub async fn stream_to<S: Sink<Error = ApplyError>>(
    source: &MyEndpoint,
    plan: &MyPlan,
    convs: &[TableConv],
    zero: ZeroDates,
    start: &BinlogPosition,
    sink: &mut S,
    opts: &StreamOptions,
    skip: &HashSet<(ferry_core::Lsn, u32)>,
    stop: &mut watch::Receiver<bool>,
    durable: &watch::Sender<Option<BinlogPosition>>,
) -> Result<Outcome, StreamError> {
    let tables: HashMap<&str, &TableConv> = plan.tables.iter().map(|t| t.name.as_str()).zip(convs.iter()).collect();
    for c in convs {
        sink.apply(ChangeEvent::Relation(c.relation.clone())).await?;
    }
    let mut reader = BinlogReader::start(source, opts.server_id, start.file(), start.pos(), &plan.tables)
        .await?
        .with_gtid_state(start.gtid());
    tracing::info!(position = %start, "streaming the binlog");
    let mut gtid = start.gtid().to_string();
    let mut txn: Option<(TxnCursor, bool, i64)> = None;
    let mut last_durable: Option<SourcePosition> = sink.durable();
    let note = |sink: &S, last: &mut Option<SourcePosition>| {
        let d = sink.durable();
        if d != *last {
            if let Some(SourcePosition::Mysql(p)) = &d {
                let _ = durable.send(Some(p.clone()));
            }
            *last = d;
        }
    };
    loop {
        let next = match reader.next().now_or_never() {
            Some(r) => r,
            None => {
                // Nothing waiting: close the batch, see what the sink has made durable, wait.
                sink.try_settle().await?;
                if txn.is_none() {
                    if sink.batch_open() {
                        sink.commit().await?;
                    }
                    if *stop.borrow() {
                        sink.settle().await?;
                        note(sink, &mut last_durable);
                        let (file, pos) = reader.position();
                        return Ok(Outcome::Stopped(at(&file, pos, &gtid)?));
                    }
                }
                note(sink, &mut last_durable);
                let idle = txn.is_none();
                tokio::select! {
                    r = tokio::time::timeout(opts.silence, reader.next()) => match r {
                        Ok(r) => r,
                        Err(_) => {
                            let (file, pos) = reader.position();
                            return Err(StreamError::Failed(MyError::transient(
                                &format!("reading the binlog from {} after {file}:{pos}", reader.server()),
                                &format!("no event and no heartbeat within {}: the binlog connection is presumed dead", crate::endpoint::human(opts.silence)),
                                "Ferry reconnects with backoff and resumes from the last position the sink made durable",
                            )));
                        }
                    },
                    _ = tokio::time::sleep(Duration::from_millis(200)), if sink.in_flight() => continue,
                    _ = stop.changed(), if idle => continue,
                }
            }
        };
        let changes = match next {
            Ok(Some(c)) => c,
            Ok(None) => {
                let (file, pos) = reader.position();
                return Err(StreamError::Failed(MyError::transient(
                    &format!("reading the binlog from {} after {file}:{pos}", reader.server()),
                    "the source closed the binlog connection",
                    "Ferry reconnects with backoff and resumes from the last position the sink made durable",
                )));
            }
            Err(e) => return Err(StreamError::Failed(e)),
        };
        for c in changes {
            match c {
                Change::Begin {
                    executed: g,
                    at: begin_at,
                    timestamp,
                    ..
                } => {
                    let begin = SourcePosition::Mysql(at(reader.file(), begin_at, &gtid)?);
                    if let Some(g) = g {
                        gtid = g;
                    }
                    txn = Some((
                        TxnCursor {
                            key: order_key(&begin),
                            begin,
                            changes: 0,
                        },
                        false,
                        i64::from(timestamp) * 1_000_000,
                    ));
                }
                Change::XaPrepared { xid } | Change::XaResolved { xid, .. } => {
                    let (file, pos) = reader.position();
                    return Err(StreamError::Failed(MyError::new(
                        &format!("streaming the binlog at {file}:{pos}"),
                        &format!("XA transaction {xid}: its rows are logged at XA PREPARE and made real at XA COMMIT, which Ferry's capture to Kafka does not follow yet"),
                        "migrate this database with ferry migrate (direct to PostgreSQL follows XA transactions), or stop using XA on the captured tables",
                    )));
                }
                Change::SchemaChange { query, file, pos } => {
                    // Everything before it, made durable; the caller reads the tables again.
                    if sink.batch_open() {
                        sink.commit().await?;
                    }
                    sink.settle().await?;
                    note(sink, &mut last_durable);
                    return Ok(Outcome::SchemaChanged {
                        resume: at(&file, pos, &gtid)?,
                        query,
                    });
                }
                Change::Unapplicable { query, file, pos, .. } => {
                    return Err(StreamError::Failed(MyError::new(
                        &format!("streaming the binlog at {file}:{pos}"),
                        &format!("a statement whose changes are not in the binlog as rows: {}", query.trim()),
                        "set binlog_format=ROW on the source (docs/mysql-cdc.md), then start the capture again from a new snapshot",
                    )));
                }
                Change::Commit { file, pos, timestamp } => {
                    if let Some((cur, sent, _)) = txn.take() {
                        if !sent {
                            // An empty transaction (or one on other tables) still moves the
                            // position: begin and commit it.
                            sink.apply(ChangeEvent::Begin {
                                commit: cur.begin.clone(),
                                commit_time_us: i64::from(timestamp) * 1_000_000,
                                xid: 0,
                            })
                            .await?;
                        }
                    }
                    sink.apply(ChangeEvent::Commit {
                        end: SourcePosition::Mysql(at(&file, pos, &gtid)?),
                        commit_time_us: i64::from(timestamp) * 1_000_000,
                    })
                    .await?;
                    if *stop.borrow() {
                        sink.commit().await?;
                        sink.settle().await?;
                        note(sink, &mut last_durable);
                        return Ok(Outcome::Stopped(at(&file, pos, &gtid)?));
                    }
                    if sink.batch_len() >= opts.max_batch || sink.batch_age() >= opts.max_delay {
                        sink.commit().await?;
                        sink.try_settle().await?;
                        note(sink, &mut last_durable);
                    }
                }
                other => {
                    let Some((cur, sent, began_us)) = txn.as_mut() else {
                        return Err(StreamError::Failed(MyError::new(
                            "following the binlog",
                            "a row change arrived outside a transaction",
                            "report this as a bug",
                        )));
                    };
                    if let Some(event) = convert(|n| tables.get(n).copied(), other, cur, zero, skip)? {
                        if !*sent {
                            *sent = true;
                            sink.apply(ChangeEvent::Begin {
                                commit: cur.begin.clone(),
                                commit_time_us: *began_us,
                                xid: 0,
                            })
                            .await?;
                        }
                        sink.apply(event).await?;
                    }
                }
            }
        }
    }
}

/// A position the binlog reader reports, typed.
fn at(file: &str, pos: u64, gtid: &str) -> Result<BinlogPosition, StreamError> {
    BinlogPosition::new(file, pos, gtid).map_err(|e| {
        StreamError::Failed(MyError::new(
            "following the binlog",
            &e.to_string(),
            "report this as a bug: the source named a binlog file or GTID Ferry cannot record",
        ))
    })
}

/// The wait between a failed stream session and the next.
#[derive(Debug, Default)]
pub struct Backoff {
    wait: Option<Duration>,
    since: Option<Instant>,
}

impl Backoff {
    /// The wait before the next attempt (250 ms, doubling up to 10 s; afresh after a session
    /// that ran a minute).
    pub fn next_wait(&mut self) -> Duration {
        let fresh = self.since.is_some_and(|t| t.elapsed() > Duration::from_secs(60));
        let w = match self.wait {
            Some(w) if !fresh => (w * 2).min(crate::cdc::BACKOFF_MAX),
            _ => crate::cdc::BACKOFF_START,
        };
        self.wait = Some(w);
        self.since = Some(Instant::now());
        w
    }
}

/// The source's `server_id` (the `source.server_id` of every event).
pub async fn source_server_id(source: &MyEndpoint) -> Result<u64, MyError> {
    let mut c = source.connect().await?;
    const WHAT: &str = "reading the source's server_id";
    let id: Option<u64> = source
        .within(WHAT, async {
            c.query_first("SELECT @@server_id").await.map_err(|e| MyError::query(WHAT, e))
        })
        .await?;
    source.disconnect(c).await;
    Ok(id.unwrap_or(0))
}
