//! The row changes of the MySQL sink: each insert, update, delete and truncate as its
//! statement, and the dead letter of a change MySQL refuses.

use std::sync::Arc;

use ferry_core::change::{Identity, Row};
use ferry_core::sink::DeadLetter;
use ferry_core::{ErrorClass, SourcePosition};
use ferry_postgres::apply::ApplyError;

use super::table::Target;
use super::{db_error, rejects_data, sql, Inserts, MySink, Pending, INSERT_BYTES, INSERT_ROWS};
use crate::error::MyError;

impl MySink {
    pub(super) fn letter(
        target: &Target,
        commit: SourcePosition,
        index: u32,
        operation: &'static str,
        row: &Row,
        error: String,
    ) -> ApplyError {
        ApplyError::Rejected(Box::new(DeadLetter {
            commit,
            change_index: index,
            table: target.pg.clone(),
            operation,
            key: target.describe_key(row),
            payload: target.describe_row(row),
            error,
        }))
    }

    /// The outcome of a statement: a data error is the change's dead letter; others stop.
    pub(super) fn judge(e: MyError, reject: impl FnOnce(String) -> ApplyError) -> ApplyError {
        match e.code {
            Some(code) if e.class == ErrorClass::Definite && rejects_data(code) => {
                reject(format!("MySQL/MariaDB refused it: {} (error {code})", e.reason))
            }
            _ => db_error(e),
        }
    }

    pub(super) async fn insert(
        &mut self,
        relation: u32,
        target: Arc<Target>,
        commit: SourcePosition,
        index: u32,
        row: Row,
    ) -> Result<(), ApplyError> {
        if self.inserts.as_ref().is_some_and(|b| b.relation != relation) {
            self.flush_inserts().await?;
        }
        let buf = self.inserts.get_or_insert_with(|| Inserts {
            relation,
            target: Arc::clone(&target),
            params: Vec::new(),
            rows: Vec::new(),
            bytes: 0,
        });
        let before = buf.params.len();
        if let Err(why) = target.insert_params(&row, &mut buf.params) {
            buf.params.truncate(before);
            // What is buffered goes first: it came before this change.
            self.flush_inserts().await?;
            return Err(Self::letter(&target, commit, index, "insert", &row, why));
        }
        buf.bytes += row.iter().map(|d| d.bytes().map_or(8, |b| b.len() + 8)).sum::<usize>();
        buf.rows.push(Pending { commit, index, row });
        if buf.rows.len() >= target.rows_per_insert(INSERT_ROWS) || buf.bytes >= INSERT_BYTES {
            self.flush_inserts().await?;
        }
        Ok(())
    }

    /// Sends the buffered inserts as one statement. When MySQL refuses it for its data, the
    /// statement alone was rolled back (InnoDB's statement rollback) and the rows are sent one
    /// by one, so that the dead letter names the row at fault.
    pub(super) async fn flush_inserts(&mut self) -> Result<(), ApplyError> {
        // (A buffer without rows: its first insert did not convert.)
        let Some(buf) = self.inserts.take().filter(|b| !b.rows.is_empty()) else {
            return Ok(());
        };
        self.ensure_begun().await?;
        let t = buf.target;
        let limit = self.endpoint.query_timeout();
        const WHAT: &str = "applying inserts on MySQL/MariaDB";
        let e = match self.exec(WHAT, &t.insert_sql(buf.rows.len()), buf.params, limit).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let first = match buf.rows.as_slice() {
            [Pending { commit, index, row }, rest @ ..] => {
                let first = Self::judge(e, |why| Self::letter(&t, commit.clone(), *index, "insert", row, why));
                if rest.is_empty() || !matches!(first, ApplyError::Rejected(_)) {
                    return Err(first);
                }
                first
            }
            [] => return Err(db_error(e)),
        };
        let sql = t.insert_sql(1);
        for p in &buf.rows {
            let mut params = Vec::new();
            t.insert_params(&p.row, &mut params)
                .map_err(|why| Self::letter(&t, p.commit.clone(), p.index, "insert", &p.row, why))?;
            if let Err(e) = self.exec(WHAT, &sql, params, limit).await {
                return Err(Self::judge(e, |why| {
                    Self::letter(&t, p.commit.clone(), p.index, "insert", &p.row, why)
                }));
            }
        }
        // One by one every row went in (the refusal was the statement's, not a row's): applied.
        tracing::debug!(table = %t.pg, error = %first, "a multi-row insert was refused, its rows one by one were not");
        Ok(())
    }

    pub(super) async fn update(
        &mut self,
        t: Arc<Target>,
        commit: SourcePosition,
        index: u32,
        old: Option<Row>,
        new: Row,
    ) -> Result<(), ApplyError> {
        self.flush_inserts().await?;
        let letter = |row: &Row, why: String| Self::letter(&t, commit.clone(), index, "update", row, why);
        if t.identity == Identity::Nothing {
            return Err(letter(
                &new,
                format!("{} has REPLICA IDENTITY NOTHING on PostgreSQL: the row cannot be found", t.pg),
            ));
        }
        let key_moved = old.is_some() || t.identity == Identity::Full;
        let by = old.as_ref().unwrap_or(&new);
        let mut params = Vec::new();
        let set = t.assignments(&new, key_moved, &mut params).map_err(|why| letter(&new, why))?;
        let conds = t.find(by, &mut params).map_err(|why| letter(by, why))?;
        let sql = sql::update(&t.quoted, &set, &conds);
        let limit = self.endpoint.query_timeout();
        match self.exec("applying an update on MySQL/MariaDB", &sql, params, limit).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(letter(
                by,
                format!(
                    "no row with {} in {}.{} on MySQL/MariaDB",
                    t.describe_key(by),
                    self.database,
                    t.pg.name
                ),
            )),
            Err(e) => Err(Self::judge(e, |why| letter(&new, why))),
        }
    }

    pub(super) async fn delete(&mut self, t: Arc<Target>, commit: SourcePosition, index: u32, old: Row) -> Result<(), ApplyError> {
        self.flush_inserts().await?;
        let letter = |why: String| Self::letter(&t, commit.clone(), index, "delete", &old, why);
        if t.identity == Identity::Nothing {
            return Err(letter(format!(
                "{} has REPLICA IDENTITY NOTHING on PostgreSQL: the row cannot be found",
                t.pg
            )));
        }
        let mut params = Vec::new();
        let conds = t.find(&old, &mut params).map_err(&letter)?;
        let sql = sql::delete(&t.quoted, &conds);
        let limit = self.endpoint.query_timeout();
        match self.exec("applying a delete on MySQL/MariaDB", &sql, params, limit).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(letter(format!(
                "no row with {} in {}.{} on MySQL/MariaDB",
                t.describe_key(&old),
                self.database,
                t.pg.name
            ))),
            Err(e) => Err(Self::judge(e, letter)),
        }
    }

    /// `DELETE FROM` each table, not `TRUNCATE TABLE`: MySQL commits implicitly before and after
    /// a TRUNCATE, which would commit the batch's earlier changes without their position and
    /// the truncate itself outside the batch (exactly once lost). RESTART IDENTITY has no
    /// equivalent short of `ALTER TABLE` (another implicit commit): AUTO_INCREMENT counters
    /// stay. The deadline is the catalog one: a DELETE of a whole table takes its time.
    pub(super) async fn truncate(&mut self, relations: &[u32]) -> Result<(), ApplyError> {
        let mut targets = Vec::new();
        for r in relations {
            if let Some((t, _, _)) = self.target_of(*r)? {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        self.flush_inserts().await?;
        self.ensure_begun().await?;
        let limit = self.endpoint.query_timeout() * crate::endpoint::CATALOG_FACTOR;
        for t in targets {
            self.exec(
                "applying a truncate on MySQL/MariaDB",
                &format!("DELETE FROM {}", t.quoted),
                Vec::new(),
                limit,
            )
            .await
            .map_err(db_error)?;
        }
        Ok(())
    }
}
