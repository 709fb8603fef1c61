//! The engine-neutral change stream: what every change source produces and every sink applies.
//!
//! A stream is a sequence of whole source transactions: [`ChangeEvent::Begin`], the
//! transaction's changes in source order, [`ChangeEvent::Commit`]. A [`ChangeEvent::Relation`]
//! describes a table before the first change that uses its `id` and again whenever its shape
//! changes; it may arrive inside a transaction (the change that follows uses the new shape).
//!
//! Values travel as bytes with a format tag ([`Datum`]), never as parsed values: the PostgreSQL
//! source passes pgoutput's text forms through untouched, the MySQL source renders its values
//! in the target type's text input form, and a sink reads them as its column types say. Rows
//! of the full load are not in this model: PostgreSQL-to-PostgreSQL copies stay binary COPY.
//!
//! Positions are [`SourcePosition`]s of the source's engine. `Begin::commit` is where the
//! transaction's commit stands in the source's history (for PostgreSQL the commit record's
//! LSN); `Commit::end` is the position a consumer has passed once the transaction is applied,
//! the one to record and to acknowledge to the source (for PostgreSQL the end of the commit
//! record). Both grow with every transaction of one stream.

use bytes::Bytes;

use crate::ident::TableName;
use crate::position::SourcePosition;

/// One column value in a change: bytes plus the format they are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// Not sent because it did not change (PostgreSQL's unchanged TOAST): the sink keeps the
    /// stored value. Never NULL.
    Unchanged,
    /// The value in the column type's text input form (what PostgreSQL's input function reads).
    Text(Bytes),
    /// The value in PostgreSQL's binary send/receive form of the column's type.
    Binary(Bytes),
}

impl Datum {
    /// The value's bytes, for a value that was sent.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Datum::Text(b) | Datum::Binary(b) => Some(b),
            Datum::Null | Datum::Unchanged => None,
        }
    }
}

/// One row image: one [`Datum`] per column of its relation, in the relation's column order.
pub type Row = Vec<Datum>;

/// How a sink finds the row an update or delete is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// By the columns marked `key` (a primary key or a unique index of NOT NULL columns).
    Key,
    /// By every column (PostgreSQL's REPLICA IDENTITY FULL; a table without a key): the old
    /// row is sent whole, and duplicates stay duplicates (one row per change).
    Full,
    /// Updates and deletes cannot be located (PostgreSQL's REPLICA IDENTITY NOTHING).
    Nothing,
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// The column's type in the target's SQL (`integer`, `numeric(10,2)`, `public.mood`,
    /// `text[]`): the type its [`Datum::Text`] values are the input form of.
    pub type_sql: String,
    /// Part of the row identity ([`Identity::Key`]).
    pub key: bool,
    /// The default expression on the source, in the target's SQL, when known: used by a sink
    /// that adds a column the source gained mid-stream.
    pub default: Option<String>,
    /// NOT NULL on the source.
    pub not_null: bool,
}

/// A table as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The stream's id for the table (PostgreSQL: the table's OID); row changes refer to it.
    pub id: u32,
    /// The table.
    pub table: TableName,
    /// The table a migration's filter decides about: the partition root for a partition, the
    /// table itself otherwise.
    pub scope: TableName,
    /// How rows are found.
    pub identity: Identity,
    /// Columns, in row order (generated columns are not sent).
    pub columns: Vec<Column>,
}

/// One event of a change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// A source transaction starts.
    Begin {
        /// Where its commit stands in the source's history.
        commit: SourcePosition,
        /// Commit time on the source, microseconds since the Unix epoch (0: unknown).
        commit_time_us: i64,
        /// The source's transaction id (0 where the engine has none to give).
        xid: u64,
    },
    /// The open transaction was written by a replication applier (PostgreSQL's replication
    /// origin): a sink skips the transactions of its own opposite direction (loop prevention).
    Origin {
        /// The origin's name.
        name: String,
    },
    /// A table's description (see the module documentation).
    Relation(Relation),
    /// A row was inserted.
    Insert {
        /// Relation id.
        relation: u32,
        /// The new row.
        new: Row,
    },
    /// A row was updated.
    Update {
        /// Relation id.
        relation: u32,
        /// The old key (or, under [`Identity::Full`], the old row) when the key changed or the
        /// identity is full; None when the key is the new row's.
        old: Option<Row>,
        /// The new row; may hold [`Datum::Unchanged`].
        new: Row,
    },
    /// A row was deleted.
    Delete {
        /// Relation id.
        relation: u32,
        /// The old key, or the old row under [`Identity::Full`].
        old: Row,
    },
    /// Tables were truncated together.
    Truncate {
        /// Relation ids.
        relations: Vec<u32>,
        /// CASCADE.
        cascade: bool,
        /// RESTART IDENTITY.
        restart_identity: bool,
    },
    /// The open transaction committed.
    Commit {
        /// The position to record and acknowledge once it is applied.
        end: SourcePosition,
        /// Commit time on the source, microseconds since the Unix epoch (0: unknown).
        commit_time_us: i64,
    },
}

impl ChangeEvent {
    /// Whether this is a row change (insert, update or delete).
    pub fn is_row_change(&self) -> bool {
        matches!(
            self,
            ChangeEvent::Insert { .. } | ChangeEvent::Update { .. } | ChangeEvent::Delete { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datums_expose_bytes_only_when_sent() {
        assert_eq!(Datum::Text(Bytes::from_static(b"1")).bytes().map(|b| &b[..]), Some(&b"1"[..]));
        assert_eq!(Datum::Binary(Bytes::from_static(b"\x00")).bytes().map(|b| b.len()), Some(1));
        assert!(Datum::Null.bytes().is_none() && Datum::Unchanged.bytes().is_none());
        let row = ChangeEvent::Delete {
            relation: 1,
            old: vec![Datum::Null],
        };
        assert!(row.is_row_change());
        assert!(!ChangeEvent::Truncate {
            relations: vec![1],
            cascade: false,
            restart_identity: false
        }
        .is_row_change());
    }
}
