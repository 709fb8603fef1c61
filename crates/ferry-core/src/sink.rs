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

use crate::change::ChangeEvent;
use crate::error::Fault;
use crate::ident::TableName;
use crate::position::SourcePosition;

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

    /// Commits the open batch with its position (at a boundary only). May return before the
    /// commit completes; [`Sink::settle`] reports the outcome.
    async fn commit(&mut self) -> Result<(), Self::Error>;

    /// Waits for a commit in flight, if any, and returns the last committed position.
    async fn settle(&mut self) -> Result<Option<SourcePosition>, Self::Error>;

    /// The position whose changes are durable on the target: what the source may forget.
    fn durable(&self) -> Option<SourcePosition>;

    /// Records a dead letter where the operator finds it (`skipped`: stepped over with the
    /// operator's consent).
    async fn record_dead_letter(&self, letter: &DeadLetter, skipped: bool) -> Result<(), Self::Error>;
}
