//! Relations: what a table looks like on both sides, schema changes seen in the stream, tables
//! created mid-stream, and building the statements for one row change.

use std::sync::Arc;

use ferry_core::ident::quote_ident;
use ferry_core::{ErrorClass, Lsn, TableName, TableState};
use tokio_postgres::types::Type;
use tokio_postgres::Statement;

use super::{sql, text, Applier, ApplyError, Blame, Pending, Txn};
use crate::error::PgError;
use crate::pgoutput::Value;
use ferry_core::change::{Identity, Relation};

/// A column as the applier uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// Name.
    pub name: String,
    /// Type as SQL (`integer`, `numeric(10,2)`, `public.mood`).
    pub type_sql: String,
    /// Part of the replica identity key.
    pub key: bool,
    /// Compared as text under REPLICA IDENTITY FULL (no equality operator for the type).
    pub text_compare: bool,
}

/// A relation of the stream, resolved against the target.
#[derive(Debug, Clone)]
pub struct Rel {
    /// Source OID.
    pub id: u32,
    /// Table.
    pub table: TableName,
    /// Columns in stream order.
    pub columns: Vec<RelColumn>,
    /// REPLICA IDENTITY FULL: rows are found by all their columns.
    pub full: bool,
    /// Whether the table is part of the migration.
    pub in_scope: bool,
    /// Changes committed before this are in the table's copied rows.
    pub snapshot_lsn: Lsn,
    /// Changes to different keys commute (the key is the only unique constraint, rows are
    /// found by key): the table may be applied set-based.
    pub compactable: bool,
}

impl Rel {
    /// Key columns, in order.
    pub fn key_columns(&self) -> impl Iterator<Item = &RelColumn> {
        self.columns.iter().filter(|c| c.key)
    }
}

fn schema_error(table: &TableName, what: String) -> PgError {
    PgError {
        context: format!("schema change on the source table {table}"),
        reason: what,
        fix: Some(format!(
            "Ferry applies additive changes (new columns, new tables) by itself; make the same change to {table} on the target by hand, then rerun ferry migrate"
        )),
        class: ErrorClass::Definite,
        code: None,
    }
}

impl Applier {
    /// Resolves a relation of the stream against the target: scope, and any schema change
    /// since the last description (the source side resolved its types, defaults and scope).
    pub(super) async fn relation(&mut self, r: Relation) -> Result<(), ApplyError> {
        let table = r.table.clone();
        let q = self.ctx.store.quoted().to_string();
        let mut in_scope = self.snapshots.contains_key(&table);
        if !in_scope && table.schema != self.ctx.store.schema() {
            in_scope = self.new_table(&r, &table).await?;
        }
        if !in_scope {
            self.rels.insert(
                r.id,
                Arc::new(Rel {
                    id: r.id,
                    table,
                    columns: vec![],
                    full: false,
                    in_scope: false,
                    snapshot_lsn: Lsn(0),
                    compactable: false,
                }),
            );
            return Ok(());
        }
        let types: Vec<String> = r.columns.iter().map(|c| c.type_sql.clone()).collect();
        let target_cols: Vec<(String, String)> = self
            .tgt
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
                &[&table.quoted()],
            )
            .await
            .map_err(|e| PgError::query(format!("reading the columns of {table} on the target"), e))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        if target_cols.is_empty() {
            return Err(schema_error(&table, "the table does not exist on the target".into()).into());
        }
        // Columns the target lacks are additions; anything else that differs stops the stream.
        let mut added = Vec::new();
        for (c, ty) in r.columns.iter().zip(&types) {
            match target_cols.iter().find(|(n, _)| n == &c.name) {
                Some((_, tty)) if tty == ty => {}
                Some((_, tty)) => {
                    return Err(schema_error(&table, format!("column {} is {ty} on the source but {tty} on the target", c.name)).into());
                }
                None => added.push((c.name.clone(), ty.clone())),
            }
        }
        for (n, _) in &target_cols {
            if !r.columns.iter().any(|c| &c.name == n) {
                return Err(schema_error(
                    &table,
                    format!("column {n} exists on the target but is no longer sent by the source (dropped or renamed there)"),
                )
                .into());
            }
        }
        for (name, ty) in added {
            let col = r.columns.iter().find(|c| c.name == name);
            let (default, not_null) = col.map(|c| (c.default.clone(), c.not_null)).unwrap_or((None, false));
            let ddl = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}{}{}",
                table.quoted(),
                quote_ident(&name),
                default.as_ref().map(|d| format!(" DEFAULT {d}")).unwrap_or_default(),
                if not_null { " NOT NULL" } else { "" }
            );
            self.tgt
                .batch_execute(&ddl)
                .await
                .map_err(|e| PgError::query(format!("adding column {name} to {table} on the target ({ddl})"), e))?;
            let note = format!("column {name} {ty} added to {table} on the target, as on the source");
            tracing::info!(table = %table, column = %name, "{note}");
            self.tgt
                .execute(
                    &format!("INSERT INTO {q}.events (migration_id, phase, kind, message) VALUES ($1, 'cdc', 'schema_change', $2)"),
                    &[&self.ctx.migration_id, &note],
                )
                .await
                .map_err(|e| PgError::query("logging a schema change", e))?;
        }
        let full = r.identity == Identity::Full;
        let columns = r
            .columns
            .iter()
            .zip(types)
            .map(|(c, ty)| {
                let base = ty.trim_end_matches("[]");
                RelColumn {
                    name: c.name.clone(),
                    text_compare: matches!(
                        base,
                        "json" | "xml" | "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle"
                    ),
                    type_sql: ty,
                    key: c.key || full,
                }
            })
            .collect();
        let snapshot_lsn = self.snapshots.get(&table).copied().unwrap_or_default();
        let mut key_names: Vec<String> = r.columns.iter().filter(|c| c.key).map(|c| c.name.clone()).collect();
        key_names.sort();
        let compactable = !full
            && !key_names.is_empty()
            && self
                .tgt
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'x')
                        AND NOT EXISTS (
                            SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique
                              AND (0 = ANY (i.indkey) OR i.indpred IS NOT NULL
                                   OR ARRAY(SELECT a.attname::text FROM pg_attribute a
                                            WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) ORDER BY 1) <> $2::text[]))",
                    &[&table.quoted(), &key_names],
                )
                .await
                .map_err(|e| PgError::query(format!("reading the unique constraints of {table} on the target"), e))?
                .get::<_, bool>(0);
        let prefix = format!("{}:", r.id);
        self.stmts.retain(|k, _| !k.starts_with(&prefix));
        self.rels.insert(
            r.id,
            Arc::new(Rel {
                id: r.id,
                table,
                columns,
                full,
                in_scope: true,
                snapshot_lsn,
                compactable,
            }),
        );
        Ok(())
    }

    /// A table the full load did not copy: created on the source after the snapshot. When the
    /// migration's filter selects it (its partition root's name, for partitions), create it on
    /// the target (pg_dump of its definition, indexes and constraints included) and stream it
    /// from its first change: every row it has arrived after the slot's consistent point.
    async fn new_table(&mut self, r: &Relation, table: &TableName) -> Result<bool, ApplyError> {
        // Reverse replication carries the migration's tables only: the source has them all.
        // A stream of another engine names only the migration's tables.
        let Some(source) = self.ctx.source.clone().filter(|_| self.ctx.direction == super::Direction::Forward) else {
            return Ok(false);
        };
        // A partition is in the migration when its partition root is.
        let filter_name = &r.scope;
        if !source.filter.matches(filter_name) {
            return Ok(false);
        }
        // On the apply connection, inside the open batch: the same source transaction may hold
        // locks (an ALTER of a table the new one references) that a second connection would
        // wait for forever.
        source.create_on_target(&self.tgt, table).await?;
        let q = self.ctx.store.quoted().to_string();
        self.tgt
            .execute(
                &format!(
                    "INSERT INTO {q}.tables (migration_id, schema_name, table_name, state, snapshot_lsn, rows_copied)
                     VALUES ($1, $2, $3, $4, '0/0', 0) ON CONFLICT DO NOTHING"
                ),
                &[&self.ctx.migration_id, &table.schema, &table.name, &TableState::Copied.as_str()],
            )
            .await
            .map_err(|e| PgError::query("recording a new table", e))?;
        self.tgt
            .execute(
                &format!("INSERT INTO {q}.events (migration_id, phase, kind, message) VALUES ($1, 'cdc', 'schema_change', $2)"),
                &[
                    &self.ctx.migration_id,
                    &format!("new table {table} created on the source; created on the target and streamed"),
                ],
            )
            .await
            .map_err(|e| PgError::query("logging a new table", e))?;
        self.snapshots.insert(table.clone(), Lsn(0));
        Ok(true)
    }

    async fn statement(&mut self, key: String, sql: impl FnOnce() -> String, params: usize) -> Result<Statement, ApplyError> {
        self.statement_typed(key, sql, &vec![Type::TEXT; params]).await
    }

    /// A prepared statement from the cache, or prepared now with the given parameter types.
    pub(super) async fn statement_typed(
        &mut self,
        key: String,
        sql: impl FnOnce() -> String,
        types: &[Type],
    ) -> Result<Statement, ApplyError> {
        if let Some(s) = self.stmts.get(&key) {
            return Ok(s.clone());
        }
        // Not while a batch commits in the background: if it failed, its transaction is
        // aborted and would refuse the statement.
        self.settle_inner().await?;
        let text = sql();
        let stmt = self
            .tgt
            .prepare_typed(&text, types)
            .await
            .map_err(|e| PgError::query(format!("preparing {text}"), e))?;
        self.stmts.insert(key, stmt.clone());
        Ok(stmt)
    }
}

pub(super) fn shape_error(rel: &Rel, n: usize) -> ApplyError {
    ApplyError::Db(PgError::config(
        format!("applying a change to {}", rel.table),
        format!("the change has {n} columns but the relation has {}", rel.columns.len()),
        "report this as a bug",
    ))
}

fn blame(rel: &Arc<Rel>, txn: Txn, operation: &'static str, keys_from: usize, mask: Option<Vec<bool>>) -> Blame {
    Blame {
        rel: Arc::clone(rel),
        txn,
        operation,
        keys_from,
        mask,
    }
}

fn key_values(rel: &Rel, tuple: &[Value]) -> Vec<Option<String>> {
    rel.columns.iter().zip(tuple).filter(|(c, _)| c.key).map(|(_, v)| text(v)).collect()
}

pub(super) async fn insert(app: &mut Applier, rel: &Arc<Rel>, txn: Txn, new: Vec<Value>) -> Result<Pending, ApplyError> {
    if new.len() != rel.columns.len() {
        return Err(shape_error(rel, new.len()));
    }
    let params: Vec<Option<String>> = new.iter().map(text).collect();
    let stmt = app.statement(format!("{}:I", rel.id), || sql::insert(rel), params.len()).await?;
    Ok(Pending {
        stmt,
        must_hit: false,
        blame: blame(rel, txn, "insert", params.len(), None),
        params,
    })
}

pub(super) async fn update(
    app: &mut Applier,
    rel: &Arc<Rel>,
    txn: Txn,
    old: Option<Vec<Value>>,
    new: Vec<Value>,
) -> Result<Pending, ApplyError> {
    if new.len() != rel.columns.len() || old.as_ref().is_some_and(|o| o.len() != rel.columns.len()) {
        return Err(shape_error(rel, new.len()));
    }
    if rel.full && old.is_none() {
        return Err(ApplyError::Db(PgError::config(
            format!("applying an update to {}", rel.table),
            "REPLICA IDENTITY FULL but no old row was sent",
            "report this as a bug",
        )));
    }
    // Set only what may have changed: never an unchanged TOASTed value (the target keeps its
    // own), never the key when the source says it did not change (identity columns GENERATED
    // ALWAYS refuse any update), and under REPLICA IDENTITY FULL only columns that differ.
    let mask: Vec<bool> = new
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let unchanged_toast = matches!(v, Value::Unchanged);
            let same_key = rel.columns[i].key && !rel.full && old.is_none();
            let same_value = rel.full && old.as_ref().is_some_and(|o| o[i] == *v);
            !(unchanged_toast || same_key || same_value)
        })
        .collect();
    let keys = key_values(rel, old.as_deref().unwrap_or(&new));
    let mut params: Vec<Option<String>> = new.iter().zip(&mask).filter(|(_, m)| **m).map(|(v, _)| text(v)).collect();
    let keys_from = params.len();
    params.extend(keys);
    let mask_key: String = mask.iter().map(|m| if *m { '1' } else { '0' }).collect();
    let stmt = app
        .statement(format!("{}:U:{mask_key}", rel.id), || sql::update(rel, &mask), params.len())
        .await?;
    Ok(Pending {
        stmt,
        must_hit: true,
        blame: blame(rel, txn, "update", keys_from, Some(mask)),
        params,
    })
}

pub(super) async fn delete(app: &mut Applier, rel: &Arc<Rel>, txn: Txn, old: Vec<Value>) -> Result<Pending, ApplyError> {
    if old.len() != rel.columns.len() {
        return Err(shape_error(rel, old.len()));
    }
    let keys = key_values(rel, &old);
    let stmt = app.statement(format!("{}:D", rel.id), || sql::delete(rel), keys.len()).await?;
    Ok(Pending {
        stmt,
        must_hit: true,
        blame: blame(rel, txn, "delete", 0, Some(vec![])),
        params: keys,
    })
}
