//! The sink contract: what applies a change stream ([`crate::change`]) to a database.
//!
//! A pipeline is a source (PostgreSQL logical replication, a MySQL binlog), a driver and a
//! sink. The driver reads the source, hands every event to the sink in stream order, decides
//! when to commit (at transaction boundaries: a batch size, a delay, an idle stream, a hold),
//! and tells the source what it may forget: only ever [`Sink::durable`]. The same driver logic
//! holds the stream at a position (cutover, verification): it stops handing over transactions
//! that commit after the hold's position, commits, and waits for release; a sink needs nothing
//! more than [`Sink::at_boundary`] and [`Sink::commit`] for that, so holding works the same for
//! every sink.
//!
//! # Contract
//!
//! **Ordering.** Events arrive as whole source transactions in source commit order. A sink may
//! group several source transactions into one target transaction (a batch) but never splits a
//! source transaction across two, and applies a batch's changes with the effect of applying
//! them one by one in order (set-based apply is allowed where changes to different rows
//! commute).
//!
//! **Durability and exactly once.** [`Sink::commit`] commits the open batch together with the
//! `end` position of its last [`ChangeEvent::Commit`](crate::change::ChangeEvent::Commit), in
//! the same target transaction: after a crash of anything at any moment, the position the sink
//! reads back on restart ([`Sink::durable`] of a new sink) is exactly that of the changes the
//! target holds. A commit may complete in the background (pipelining); [`Sink::settle`] waits
//! for it and reports its outcome. [`Sink::durable`] only moves once the target has made the
//! batch durable (for PostgreSQL: its WAL flushed), so a source told that position never needs
//! to send it again.
//!
//! **Idempotence.** On restart the source resends from [`Sink::durable`] (or earlier); the sink
//! skips every transaction that commits at or before it. Replaying a transaction the target
//! already holds never applies it twice.
//!
//! **Rows.** An update or delete must find exactly the row its identity names (one row, even
//! when a table without a key holds duplicates); an unchanged value ([`Datum::Unchanged`]) keeps
//! the stored one. A change the target rejects, or that finds no row, is a dead letter: the sink
//! stops with it ([`DeadLetter`]) and the driver records it; with the operator's consent the
//! driver restarts with it in the skip list and the sink steps over exactly that change.
//!
//! **Errors.** Every error has a class ([`Fault`]): transient errors are retried by the driver
//! from [`Sink::durable`] with a new sink; definite ones stop with the fix for the operator.
//!
//! [`Datum::Unchanged`]: crate::change::Datum::Unchanged

use std::time::{Duration, Instant};

use crate::change::ChangeEvent;
use crate::error::Fault;
use crate::ident::TableName;
use crate::position::SourcePosition;
use crate::switch::SessionId;

/// A change the target rejected, or an update or delete that found no row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The source position of its transaction's commit (`Begin::commit`).
    pub commit: SourcePosition,
    /// Position of the change within its transaction (1-based).
    pub change_index: u32,
    /// Table.
    pub table: TableName,
    /// insert, update, delete, truncate.
    pub operation: &'static str,
    /// Key values, as text.
    pub key: String,
    /// Column values (long values shortened).
    pub payload: String,
    /// Why it failed.
    pub error: String,
}

/// Applies a change stream to a database. See the module documentation for the contract.
///
/// The driver of a stream needs, besides applying and committing, a few hooks for pipelined
/// commits and for watching the sink's session; their defaults are those of a sink whose
/// commit is synchronous and durable when it returns (MySQL with
/// `innodb_flush_log_at_trx_commit = 1`): nothing in flight, nothing committed but not flushed.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// The sink's errors.
    type Error: Fault + std::error::Error;

    /// Applies one event, in stream order. May buffer; nothing is durable before
    /// [`Sink::commit`].
    async fn apply(&mut self, event: ChangeEvent) -> Result<(), Self::Error>;

    /// Whether no source transaction is open (the last event was a commit, or none came).
    fn at_boundary(&self) -> bool;

    /// Whether a batch holds changes not yet committed.
    fn batch_open(&self) -> bool;

    /// Changes in the open batch.
    fn batch_len(&self) -> usize;

    /// How long ago the open batch received its first change (zero without one).
    fn batch_age(&self) -> Duration;

    /// Commits the open batch with its position (at a boundary only). May return before the
    /// commit completes; [`Sink::settle`] reports the outcome.
    async fn commit(&mut self) -> Result<(), Self::Error>;

    /// Waits for a commit in flight, if any, and returns the last committed position.
    async fn settle(&mut self) -> Result<Option<SourcePosition>, Self::Error>;

    /// Whether a commit runs in the background ([`Sink::settle`] would wait for it).
    fn in_flight(&self) -> bool {
        false
    }

    /// Collects a background commit that has finished, without waiting for one that has not.
    async fn try_settle(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The position of the last commit that completed: applied, and visible on the target,
    /// but (for a sink that commits asynchronously) perhaps not yet durable.
    fn committed(&self) -> Option<SourcePosition> {
        self.durable()
    }

    /// The position whose changes are durable on the target: what the source may forget.
    fn durable(&self) -> Option<SourcePosition>;

    /// Whether some commits are not known to be durable yet ([`Sink::committed`] is past
    /// [`Sink::durable`]).
    fn has_unflushed(&self) -> bool {
        false
    }

    /// Asks the target how far its commits are durable, moving [`Sink::durable`] (cheap; the
    /// driver calls it every few hundred milliseconds while [`Sink::has_unflushed`]).
    async fn poll_flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Makes every completed commit durable now ([`Sink::durable`] reaches
    /// [`Sink::committed`]): before a hold, at a stop.
    async fn flush_now(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Drops the open batch (a partial source transaction is streamed again next time).
    async fn rollback(&mut self);

    /// The session was found dead: forget it without a round trip (the next session ends it on
    /// the server, [`Sink::session`]).
    fn abandon(&mut self) {}

    /// Since when the oldest change received but not yet committed waits, if one does.
    fn waiting_since(&self) -> Option<Instant> {
        None
    }

    /// Source transactions applied by this sink so far.
    fn transactions(&self) -> u64;

    /// How often the driver should learn how far the source has sent while nothing is open
    /// (None: never asks). A sink whose position others wait for (the MySQL sink: a rollback
    /// waits until it has applied the final position, which may be a point where none of its
    /// tables changed) asks, and records what [`Sink::watermark`] tells it.
    fn watermark_every(&self) -> Option<Duration> {
        None
    }

    /// Everything of the stream before `at` is applied: nothing is open, and nothing between
    /// the last commit and `at` was for this sink. Called with nothing open only.
    async fn watermark(&mut self, _at: SourcePosition) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The server's id of the sink's session, so that a later sink can end it if this one is
    /// lost with a transaction open (PostgreSQL's backend pid, MySQL's connection id).
    fn session(&self) -> Option<SessionId> {
        None
    }

    /// Records a dead letter where the operator finds it (`skipped`: stepped over with the
    /// operator's consent).
    async fn record_dead_letter(&self, letter: &DeadLetter, skipped: bool) -> Result<(), Self::Error>;
}
