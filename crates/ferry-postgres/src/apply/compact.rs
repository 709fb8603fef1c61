//! Set-based apply: a batch's changes to one table, reduced to their net effect per key and
//! applied with one statement per kind (and per set of updated columns).
//!
//! Why it is exact: a batch is one target transaction, so only its final state is ever visible;
//! with triggers and foreign-key checks off (`session_replication_role = replica`), tables are
//! independent of each other, so each table's changes may be applied apart from the others as
//! long as their own order is kept; and within a table, changes to different keys commute when
//! the key is the only unique constraint. Tables that do not meet that (REPLICA IDENTITY FULL,
//! other unique or exclusion constraints) are applied in order, row by row, except that a run of
//! consecutive inserts becomes one multi-row INSERT; an update that changes its key is applied
//! on its own, in order, after what came before it.
//!
//! Net effect per key, from the chain of its changes (`existed` = the chain did not start with
//! an insert): ends deleted and existed -> DELETE; ends with a row and existed -> UPDATE of the
//! columns whose values are known (an unchanged TOAST value not given earlier in the chain stays
//! as it is); ends with a row and did not exist -> INSERT. Every DELETE and UPDATE must find its
//! row: if a statement affects fewer rows than keys, or fails, the batch is replayed row by row
//! so the exact change can be named (a dead letter).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use postgres_protocol::types::{array_to_sql, ArrayDimension};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use ferry_core::{Lsn, TableName};
use tokio_postgres::{Client, Statement};

use super::relation::Rel;
use super::{Applier, ApplyError, Op, Txn};
use crate::error::PgError;
use crate::pgoutput::Value;

/// One buffered row change.
#[derive(Debug)]
pub(super) enum Change {
    Insert(Vec<Value>),
    /// `old` is the old key (when it changed) or, under REPLICA IDENTITY FULL, the old row.
    Update {
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete(Vec<Value>),
}

/// A table's buffered changes.
#[derive(Debug)]
pub(super) struct Buffered {
    pub rel: Arc<Rel>,
    pub changes: Vec<(Change, Txn)>,
}

#[derive(Debug)]
enum Cell {
    Known(Option<Bytes>),
    Unchanged,
}

/// A value as pgoutput sent it (text form), without copying it.
fn raw(v: &Value) -> Option<Bytes> {
    match v {
        Value::Text(b) | Value::Binary(b) => Some(b.clone()),
        Value::Null | Value::Unchanged => None,
    }
}

/// A `text[]` parameter written straight from pgoutput's bytes: no per-value allocation.
#[derive(Debug)]
struct TextArray<'a>(&'a [Option<Bytes>]);

impl ToSql for TextArray<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let dim = ArrayDimension {
            len: i32::try_from(self.0.len())?,
            lower_bound: 1,
        };
        array_to_sql(
            Some(dim),
            Type::TEXT.oid(),
            self.0.iter(),
            |e, buf| match e {
                Some(b) => {
                    buf.extend_from_slice(b);
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT_ARRAY
    }

    to_sql_checked!();
}

struct Net {
    existed: bool,
    row: Option<Vec<Cell>>,
}

type Key = Vec<Option<Bytes>>;

fn key_of(rel: &Rel, values: &[Value]) -> Key {
    rel.columns.iter().zip(values).filter(|(c, _)| c.key).map(|(_, v)| raw(v)).collect()
}

/// One set statement (one `text[]` per column), ready to run.
pub(super) struct SetOp {
    stmt: Statement,
    cols: Vec<Vec<Option<Bytes>>>,
    /// Rows it must affect: every key must find its row, every row must go in.
    want: u64,
    what: &'static str,
    table: TableName,
    /// Commit LSN of the last transaction it covers: a failure replays up to there row by row.
    until: Lsn,
}

impl SetOp {
    /// The statement, as an operation for the pipeline that owns what it sends.
    pub(super) fn op(self, client: &Arc<Client>) -> (Op<'static>, SetCheck) {
        let c = Arc::clone(client);
        let check = SetCheck {
            want: self.want,
            what: self.what,
            table: self.table,
            until: self.until,
        };
        let (stmt, cols) = (self.stmt, self.cols);
        let op: Op<'static> = Box::pin(async move {
            let arrays: Vec<TextArray<'_>> = cols.iter().map(|c| TextArray(c)).collect();
            let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            c.execute(&stmt, &params).await
        });
        (op, check)
    }
}

/// What a set statement's answer must be.
pub(super) struct SetCheck {
    want: u64,
    what: &'static str,
    table: TableName,
    until: Lsn,
}

impl SetCheck {
    /// Ok when the statement affected exactly the rows it had to. A rejected or short
    /// statement sends the batch back to be replayed row by row, which names the change at
    /// fault; transient failures end the session.
    pub(super) fn check(&self, r: Result<u64, tokio_postgres::Error>) -> Result<(), ApplyError> {
        match r {
            Ok(n) if n == self.want => Ok(()),
            Ok(n) => {
                tracing::debug!(table = %self.table, what = self.what, want = self.want, got = n, "set-based apply found fewer rows than keys; replaying row by row");
                Err(ApplyError::Reapply { until: self.until })
            }
            Err(e) => {
                let err = PgError::query(format!("applying changes to {} set-based", self.table), e);
                if err.class == ferry_core::ErrorClass::Transient || err.code.is_none() {
                    Err(err.into())
                } else {
                    tracing::debug!(table = %self.table, error = %err, "set-based apply failed; replaying row by row");
                    Err(ApplyError::Reapply { until: self.until })
                }
            }
        }
    }
}

impl Applier {
    /// Applies a table's buffered changes: by net effect per key when the table is
    /// compactable, else in order with runs of inserts merged into one statement.
    pub(super) async fn apply_buffered(&mut self, b: Buffered) -> Result<(), ApplyError> {
        if !b.rel.compactable {
            return self.apply_in_order(b).await;
        }
        for op in self.plan_set(b).await? {
            self.run_set(op).await?;
        }
        Ok(())
    }

    /// A compactable table's buffered changes as set statements (deletes, updates, inserts),
    /// prepared, not yet sent.
    pub(super) async fn plan_set(&mut self, b: Buffered) -> Result<Vec<SetOp>, ApplyError> {
        let rel = b.rel;
        let Some(last) = b.changes.last().map(|(_, t)| *t) else {
            return Ok(Vec::new());
        };
        let mut order: Vec<Key> = Vec::new();
        let mut nets: HashMap<Key, Net> = HashMap::new();
        for (change, _) in b.changes {
            let (key, existed_if_new) = match &change {
                Change::Insert(new) => (key_of(&rel, new), false),
                Change::Update { new, .. } | Change::Delete(new) => (key_of(&rel, new), true),
            };
            let net = nets.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                Net {
                    existed: existed_if_new,
                    row: None,
                }
            });
            match change {
                Change::Insert(new) => net.row = Some(new.iter().map(|v| Cell::Known(raw(v))).collect()),
                Change::Update { new, .. } => {
                    let prior = net.row.take();
                    let merged = new
                        .iter()
                        .enumerate()
                        .map(|(i, v)| match v {
                            Value::Unchanged => match prior.as_ref().map(|p| &p[i]) {
                                Some(Cell::Known(k)) => Cell::Known(k.clone()),
                                _ => Cell::Unchanged,
                            },
                            v => Cell::Known(raw(v)),
                        })
                        .collect();
                    net.row = Some(merged);
                }
                Change::Delete(_) => net.row = None,
            }
        }
        let ncols = rel.columns.len();
        let nkeys = rel.key_columns().count();
        let mut deletes: Vec<Vec<Option<Bytes>>> = vec![Vec::new(); nkeys];
        let mut inserts: Vec<Vec<Option<Bytes>>> = vec![Vec::new(); ncols];
        let mut updates: HashMap<Vec<bool>, Vec<Vec<Option<Bytes>>>> = HashMap::new();
        let (mut n_del, mut n_ins) = (0usize, 0usize);
        for key in order {
            let net = nets.remove(&key).expect("every key has its net effect");
            match (net.existed, net.row) {
                (true, None) => {
                    for (i, k) in key.into_iter().enumerate() {
                        deletes[i].push(k);
                    }
                    n_del += 1;
                }
                (false, None) => {}
                (false, Some(row)) => {
                    for (i, cell) in row.into_iter().enumerate() {
                        inserts[i].push(match cell {
                            Cell::Known(v) => v,
                            Cell::Unchanged => None,
                        });
                    }
                    n_ins += 1;
                }
                (true, Some(row)) => {
                    // SET the known non-key columns; the key finds the row.
                    let mask: Vec<bool> = row
                        .iter()
                        .zip(&rel.columns)
                        .map(|(c, col)| matches!(c, Cell::Known(_)) && !col.key)
                        .collect();
                    let cols = updates
                        .entry(mask.clone())
                        .or_insert_with(|| vec![Vec::new(); mask.iter().filter(|m| **m).count() + nkeys]);
                    let mut j = 0;
                    for (cell, m) in row.into_iter().zip(&mask) {
                        if *m {
                            if let Cell::Known(v) = cell {
                                cols[j].push(v);
                            }
                            j += 1;
                        }
                    }
                    for k in key {
                        cols[j].push(k);
                        j += 1;
                    }
                }
            }
        }
        let mut ops = Vec::new();
        if n_del > 0 {
            ops.push(
                self.set_op(
                    &rel,
                    "D",
                    || super::sql::set_delete(&rel),
                    deletes,
                    n_del,
                    "delete",
                    last.commit_lsn,
                )
                .await?,
            );
        }
        for (mask, cols) in updates {
            let n = cols.last().map(Vec::len).unwrap_or(0);
            let tag = format!("U{}", mask.iter().map(|m| if *m { '1' } else { '0' }).collect::<String>());
            ops.push(
                self.set_op(
                    &rel,
                    &tag,
                    || super::sql::set_update(&rel, &mask),
                    cols,
                    n,
                    "update",
                    last.commit_lsn,
                )
                .await?,
            );
        }
        if n_ins > 0 {
            ops.push(
                self.set_op(
                    &rel,
                    "I",
                    || super::sql::set_insert(&rel),
                    inserts,
                    n_ins,
                    "insert",
                    last.commit_lsn,
                )
                .await?,
            );
        }
        Ok(ops)
    }

    /// A table whose changes do not commute (REPLICA IDENTITY FULL, other unique constraints):
    /// every change in order, row by row, except that a run of consecutive inserts becomes one
    /// multi-row INSERT (rows go in in the same order).
    pub(super) async fn apply_in_order(&mut self, b: Buffered) -> Result<(), ApplyError> {
        let rel = b.rel;
        let ncols = rel.columns.len();
        let mut run: Vec<Vec<Option<Bytes>>> = vec![Vec::new(); ncols];
        let mut run_len = 0usize;
        let mut run_last: Option<Txn> = None;
        for (change, txn) in b.changes {
            match change {
                Change::Insert(new) => {
                    if new.len() != ncols {
                        return Err(super::relation::shape_error(&rel, new.len()));
                    }
                    for (i, v) in new.iter().enumerate() {
                        run[i].push(raw(v));
                    }
                    run_len += 1;
                    run_last = Some(txn);
                }
                other => {
                    self.insert_run(&rel, &mut run, &mut run_len, run_last).await?;
                    let p = match other {
                        Change::Update { old, new } => super::relation::update(self, &rel, txn, old, new).await?,
                        Change::Delete(old) => super::relation::delete(self, &rel, txn, old).await?,
                        Change::Insert(_) => unreachable!("inserts are handled above"),
                    };
                    self.queue(p).await?;
                }
            }
        }
        self.insert_run(&rel, &mut run, &mut run_len, run_last).await?;
        self.flush().await
    }

    async fn insert_run(
        &mut self,
        rel: &Rel,
        run: &mut [Vec<Option<Bytes>>],
        len: &mut usize,
        last: Option<Txn>,
    ) -> Result<(), ApplyError> {
        if *len == 0 {
            return Ok(());
        }
        // Row-by-row statements queued before this run go first.
        self.flush().await?;
        let until = last.map(|t| t.commit_lsn).unwrap_or_default();
        let cols = run.iter_mut().map(std::mem::take).collect();
        let op = self
            .set_op(rel, "I", || super::sql::set_insert(rel), cols, *len, "insert", until)
            .await?;
        self.run_set(op).await?;
        *len = 0;
        Ok(())
    }

    /// Prepares one set statement over the given columns.
    #[allow(clippy::too_many_arguments)]
    async fn set_op(
        &mut self,
        rel: &Rel,
        tag: &str,
        sql: impl FnOnce() -> String,
        cols: Vec<Vec<Option<Bytes>>>,
        want: usize,
        what: &'static str,
        until: Lsn,
    ) -> Result<SetOp, ApplyError> {
        let stmt = self
            .statement_typed(format!("{}:S{tag}", rel.id), sql, &vec![Type::TEXT_ARRAY; cols.len()])
            .await?;
        Ok(SetOp {
            stmt,
            cols,
            want: want as u64,
            what,
            table: rel.table.clone(),
            until,
        })
    }

    /// Runs one set statement now, inside the open batch.
    async fn run_set(&mut self, op: SetOp) -> Result<(), ApplyError> {
        self.ensure_begun().await?;
        let (op, check) = op.op(&self.tgt);
        check.check(op.await)
    }
}
