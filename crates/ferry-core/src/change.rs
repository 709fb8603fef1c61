//! The neutral change model that every change source produces and every sink applies.
//!
//! A stream is a sequence of transactions: `Begin`, row events, `Commit`. Row images carry one
//! [`Datum`] per column in the relation's column order. [`Datum::Unchanged`] is PostgreSQL's
//! unchanged-TOAST marker: the column keeps its stored value, it is never NULL.

use crate::ident::TableName;
use crate::position::SourcePosition;

/// One column value in a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// Not sent because it did not change (unchanged TOAST): keep the stored value.
    Unchanged,
    /// The value in the engine's text form.
    Text(String),
    /// The value in the engine's binary form.
    Binary(Vec<u8>),
}

/// One row image.
pub type Row = Vec<Datum>;

/// One event of a change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// A source transaction starts; `commit` is where it will have committed.
    Begin {
        /// The source's transaction id.
        xid: u64,
        /// The commit position, known up front for PostgreSQL.
        commit: SourcePosition,
    },
    /// A row was inserted.
    Insert {
        /// Table.
        table: TableName,
        /// The new row.
        new: Row,
    },
    /// A row was updated; `old_key` is present when the key (or, under full replica identity,
    /// the whole old row) is known.
    Update {
        /// Table.
        table: TableName,
        /// Old key or old row, if sent.
        old_key: Option<Row>,
        /// The new row; may hold [`Datum::Unchanged`].
        new: Row,
    },
    /// A row was deleted.
    Delete {
        /// Table.
        table: TableName,
        /// The old key (or old row under full replica identity).
        old_key: Row,
    },
    /// Tables were truncated together.
    Truncate {
        /// Tables.
        tables: Vec<TableName>,
    },
    /// The transaction committed at `position`; everything up to it may be checkpointed.
    Commit {
        /// The commit's source position.
        position: SourcePosition,
    },
}
