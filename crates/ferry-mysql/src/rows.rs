//! Binlog rows as the change stream's rows: a table of the plan becomes a [`Relation`], each
//! row's values their PostgreSQL input text (the full load's conversion,
//! [`crate::value::text_of`]), each row event a [`ChangeEvent`]. Shared by every sink the
//! binlog feeds: the PostgreSQL applier ([`crate::cdc`]) and Kafka (`ferry_kafka::mycapture`).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use ferry_core::change::{ChangeEvent, Column, Datum, Identity, Relation, Row};
use ferry_core::ident::quote_ident;
use ferry_core::sink::DeadLetter;
use ferry_core::{Lsn, SourcePosition, TableName};

use crate::binlog::Change;
use crate::charset::Charset;
use crate::error::MyError;
use crate::preflight::MyTable;
use crate::snapshot::kinds_of;
use crate::types::ZeroDates;
use crate::value::{text_of, Kind};

/// Where a source transaction stands, as [`convert`] numbers its changes (every row change and
/// every truncated table counts, in stream order, as the sinks number them).
#[derive(Debug, Clone)]
pub struct TxnCursor {
    /// Where it starts (its `Begin` position).
    pub begin: SourcePosition,
    /// Its ordering key.
    pub key: Lsn,
    /// Changes so far.
    pub changes: u32,
}

/// Why a row change could not become an event.
#[derive(Debug)]
pub enum ConvError {
    /// The row does not fit the table (its schema changed): needs a human.
    Fatal(MyError),
    /// A value that does not convert: a dead letter.
    DeadLetter(Box<DeadLetter>),
}

/// One table of the stream: its relation as the sink sees it, and how its values convert.
#[derive(Debug)]
pub struct TableConv {
    /// The relation the sink is told.
    pub relation: Relation,
    /// How each column's binlog value converts.
    pub kinds: Vec<Kind>,
    /// The character set of each text column whose binlog bytes are not UTF-8 (the binlog
    /// carries text as stored; the full load gets it converted by the server).
    charsets: Vec<Option<Charset>>,
    /// Key column indexes (empty: no primary key, rows are found by all their columns).
    pub key: Vec<usize>,
    /// Every update carries its old row, not only one that moves the key (for a sink whose
    /// consumers read `before`, as Debezium's MySQL connector writes it).
    pub always_old: bool,
}

impl TableConv {
    /// The table's relation (in target schema `schema`), each column typed as `target` says
    /// (the target's `format_type`, by column name): a sink that applies casts every value's
    /// text to it; one that publishes encodes values by it. Columns are NOT NULL as `t` says
    /// (what the plan creates on a PostgreSQL target).
    pub fn build(id: u32, t: &MyTable, schema: &str, target: &HashMap<String, String>) -> Result<TableConv, MyError> {
        let table = TableName::new(schema, t.name.clone());
        let key: Vec<usize> = t
            .primary_key
            .iter()
            .filter_map(|k| t.columns.iter().position(|(n, _)| n == k))
            .collect();
        let kinds = kinds_of(t);
        let mut charsets = Vec::with_capacity(t.columns.len());
        for ((name, m), kind) in t.columns.iter().zip(&kinds) {
            // ENUM and SET come as labels from the plan (UTF-8); only text is decoded.
            let set = match (m.charset.as_deref(), kind) {
                (Some(cs), Kind::Text) => match Charset::of(cs) {
                    Some(set) => set.needs_decoding().then_some(set),
                    None => return Err(MyError::new(
                        &format!("starting change capture into {table}"),
                        &format!("column {name} is in character set {cs}, which Ferry cannot convert from the binlog"),
                        "convert the column to utf8mb4 on the source (ALTER TABLE ... MODIFY ... CHARACTER SET utf8mb4) and load again, \
                             or exclude the table; ferry check lists such columns (docs/mysql-types.md)",
                    )),
                },
                _ => None,
            };
            charsets.push(set);
        }
        let mut columns = Vec::with_capacity(t.columns.len());
        for (i, (name, _)) in t.columns.iter().enumerate() {
            let Some(type_sql) = target.get(name) else {
                return Err(MyError::new(
                    &format!("starting change capture into {table}"),
                    &format!("column {name} of the source table is missing on the target"),
                    "make the target table match the source (docs/mysql-types.md), or reload it: ferry migrate --overwrite",
                ));
            };
            columns.push(Column {
                name: name.clone(),
                type_sql: type_sql.clone(),
                key: key.contains(&i),
                default: None,
                not_null: t.columns[i].1.not_null,
            });
        }
        Ok(TableConv {
            relation: Relation {
                id,
                scope: table.clone(),
                table,
                identity: if key.is_empty() { Identity::Full } else { Identity::Key },
                columns,
            },
            kinds,
            charsets,
            key,
            always_old: false,
        })
    }

    /// The table's relation typed as the plan maps its columns (the types `ferry migrate`
    /// creates on a PostgreSQL target, ENUM types in `schema`): for a sink with no target
    /// table to read them from (Kafka). Updates carry their old row.
    pub fn from_plan(id: u32, t: &MyTable, schema: &str) -> Result<TableConv, MyError> {
        let types = t
            .columns
            .iter()
            .map(|(name, m)| {
                let ty = if !m.labels.is_empty() && m.target != "text[]" {
                    format!("{}.{}", quote_ident(schema), quote_ident(&m.target))
                } else {
                    m.target.clone()
                };
                (name.clone(), ty)
            })
            .collect();
        let mut conv = TableConv::build(id, t, schema, &types)?;
        conv.always_old = true;
        Ok(conv)
    }

    pub fn check_width(&self, row: &[mysql_async::Value]) -> Result<(), MyError> {
        if row.len() != self.kinds.len() {
            return Err(MyError::new(
                &format!("applying a change to {}", self.relation.table),
                &format!(
                    "the row has {} values, the table {} columns: its schema changed on the source",
                    row.len(),
                    self.kinds.len()
                ),
                "make the same change on the target, then run ferry migrate again (docs/mysql-cdc.md)",
            ));
        }
        Ok(())
    }

    /// The row in the sink's form; the first value that does not convert, with its column.
    pub fn row(&self, row: &[mysql_async::Value], zero: ZeroDates) -> Result<Row, String> {
        row.iter()
            .zip(&self.kinds)
            .zip(&self.relation.columns)
            .zip(&self.charsets)
            .map(|(((v, kind), c), set)| {
                let decoded;
                let v = match (set, v) {
                    (Some(set), mysql_async::Value::Bytes(b)) => {
                        let text = set.decode(b).map_err(|why| format!("column {}: {why}", c.name))?;
                        decoded = mysql_async::Value::Bytes(text.into_owned().into_bytes());
                        &decoded
                    }
                    _ => v,
                };
                match text_of(v, kind, zero) {
                    Ok(Some(s)) => Ok(Datum::Text(Bytes::from(s))),
                    Ok(None) => Ok(Datum::Null),
                    Err(why) => Err(format!("column {}: {why}", c.name)),
                }
            })
            .collect()
    }

    /// The key of a row as `col=value`, for messages and dead letters.
    pub fn key_text(&self, row: &[mysql_async::Value]) -> String {
        let idx: Vec<usize> = if self.key.is_empty() {
            (0..self.kinds.len().min(3)).collect()
        } else {
            self.key.clone()
        };
        idx.iter()
            .filter(|&&i| i < row.len())
            .map(|&i| format!("{}={}", self.relation.columns[i].name, row[i].as_sql(true)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether an update moves the row's key (or the table has none): the sink then needs the
    /// old row to find it.
    pub fn needs_old(&self, before: &[mysql_async::Value], after: &[mysql_async::Value]) -> bool {
        self.key.is_empty() || self.key.iter().any(|&i| before[i] != after[i])
    }
}

/// One binlog row change as a change event: None for a table outside the migration or an
/// update that changes nothing. A value that does not convert is a dead letter, unless it is
/// one the operator chose to step over: then an event of NULLs takes its place (the sink skips
/// it by its position, so the numbering stays that of the stream).
pub fn convert<'t>(
    tables: impl FnOnce(&str) -> Option<&'t TableConv>,
    c: Change,
    txn: &mut TxnCursor,
    zero: ZeroDates,
    skip: &HashSet<(Lsn, u32)>,
) -> Result<Option<ChangeEvent>, ConvError> {
    let (name, operation) = match &c {
        Change::Insert { table, .. } => (table, "insert"),
        Change::Update { table, .. } => (table, "update"),
        Change::Delete { table, .. } => (table, "delete"),
        Change::Truncate { table } => (table, "truncate"),
        _ => return Ok(None),
    };
    let Some(t) = tables(name) else { return Ok(None) };
    if let Change::Update { before, after, .. } = &c {
        if before == after {
            return Ok(None);
        }
    }
    txn.changes += 1;
    let index = txn.changes;
    let skipped = skip.contains(&(txn.key, index));
    let nulls = || vec![Datum::Null; t.kinds.len()];
    let letter = |row: &[mysql_async::Value], error: String| {
        ConvError::DeadLetter(Box::new(DeadLetter {
            commit: txn.begin.clone(),
            change_index: index,
            table: t.relation.table.clone(),
            operation,
            key: t.key_text(row),
            payload: row
                .iter()
                .zip(&t.relation.columns)
                .map(|(v, c)| {
                    let s = v.as_sql(true);
                    if s.chars().count() > 200 {
                        format!(
                            "{}={}...({} chars)",
                            c.name,
                            s.chars().take(200).collect::<String>(),
                            s.chars().count()
                        )
                    } else {
                        format!("{}={s}", c.name)
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            error,
        }))
    };
    let relation = t.relation.id;
    let event = match c {
        Change::Insert { row, .. } => {
            t.check_width(&row).map_err(ConvError::Fatal)?;
            let new = match t.row(&row, zero) {
                Ok(r) => r,
                Err(_) if skipped => nulls(),
                Err(why) => return Err(letter(&row, why)),
            };
            ChangeEvent::Insert { relation, new }
        }
        Change::Update { before, after, .. } => {
            t.check_width(&before).map_err(ConvError::Fatal)?;
            t.check_width(&after).map_err(ConvError::Fatal)?;
            let (old, new) = match (t.row(&before, zero), t.row(&after, zero)) {
                (Ok(o), Ok(n)) => (o, n),
                _ if skipped => (nulls(), nulls()),
                (Err(why), _) => return Err(letter(&before, why)),
                (_, Err(why)) => return Err(letter(&after, why)),
            };
            ChangeEvent::Update {
                relation,
                old: (t.always_old || t.needs_old(&before, &after)).then_some(old),
                new,
            }
        }
        Change::Delete { row, .. } => {
            t.check_width(&row).map_err(ConvError::Fatal)?;
            let old = match t.row(&row, zero) {
                Ok(r) => r,
                Err(_) if skipped => nulls(),
                Err(why) => return Err(letter(&row, why)),
            };
            ChangeEvent::Delete { relation, old }
        }
        Change::Truncate { .. } => ChangeEvent::Truncate {
            relations: vec![relation],
            cascade: false,
            restart_identity: false,
        },
        _ => return Ok(None),
    };
    Ok(Some(event))
}
