//! The end of a migration's state: exported as JSON (the record `ferry complete` writes), then
//! deleted, or the whole schema dropped when no other migration is recorded in it.

use ferry_core::ident::quote_ident;
use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

use super::StateStore;
use crate::error::PgError;

/// What [`StateStore::drop_migration`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Only this migration's rows were deleted: this many other migrations are recorded.
    Rows {
        /// Other migrations recorded in the schema.
        others: i64,
    },
    /// The whole schema was dropped.
    Schema,
}

impl StateStore {
    /// Every table of the state schema as a JSON array of its rows for migration `id`, by
    /// table name: rows of tables not keyed by migration whole, verification differences by
    /// run.
    pub async fn export_tables(&self, c: &impl GenericClient, id: &str) -> Result<Map<String, Value>, PgError> {
        let tables: Vec<(String, bool)> = c
            .query(
                "SELECT c.relname::text,
                    EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'migration_id' AND NOT a.attisdropped)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
                &[&self.schema],
            )
            .await
            .map_err(|e| PgError::query("listing Ferry's state tables", e))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let q = &self.q;
        let mut out = Map::new();
        for (t, keyed) in &tables {
            let filter = if *keyed {
                "WHERE x.migration_id = $1".to_string()
            } else if t == "verify_differences" {
                format!("WHERE x.run_id IN (SELECT id FROM {q}.verify_runs WHERE migration_id = $1)")
            } else {
                "WHERE $1::text IS NOT NULL".to_string()
            };
            let order = if *keyed || t == "verify_differences" { "ORDER BY 1" } else { "" };
            let sql = if t == "migrations" {
                format!("SELECT COALESCE(jsonb_agg(to_jsonb(x)), '[]') FROM {q}.migrations x WHERE x.id = $1")
            } else {
                format!(
                    "SELECT COALESCE(jsonb_agg(to_jsonb(x) {order}), '[]') FROM {q}.{} x {filter}",
                    quote_ident(t)
                )
            };
            let rows: Value = c
                .query_one(&sql, &[&id])
                .await
                .map_err(|e| PgError::query(format!("exporting Ferry's state table {t}"), e))?
                .get(0);
            out.insert(t.clone(), rows);
        }
        Ok(out)
    }

    /// Drops the state schema, or only migration `id`'s rows when others are recorded there.
    pub async fn drop_migration(&self, c: &impl GenericClient, id: &str) -> Result<Dropped, PgError> {
        let q = &self.q;
        let others: i64 = c
            .query_one(&format!("SELECT count(*)::int8 FROM {q}.migrations WHERE id <> $1"), &[&id])
            .await
            .map_err(|e| PgError::query("looking for other migrations in Ferry's state", e))?
            .get(0);
        if others > 0 {
            c.execute(&format!("DELETE FROM {q}.migrations WHERE id = $1"), &[&id])
                .await
                .map_err(|e| PgError::query("deleting the migration's state", e))?;
            return Ok(Dropped::Rows { others });
        }
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE"))
            .await
            .map_err(|e| PgError::query(format!("dropping Ferry's state schema {}", self.schema), e))?;
        Ok(Dropped::Schema)
    }
}
