//! Sequence values: read on the source inside the snapshot, set on the target after the load.
//!
//! Logical replication does not carry sequence values, so the full load sets them from the
//! snapshot (cutover syncs them again at the final position).

use ferry_core::TableName;
use tokio_postgres::{Client, GenericClient};

use crate::error::PgError;

/// A sequence's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SequenceValue {
    /// The sequence.
    pub name: TableName,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`: whether `last_value` was handed out already.
    pub is_called: bool,
}

/// Reads every user sequence of the source (skipping `skip_schema`).
pub async fn read(c: &impl GenericClient, skip_schema: Option<&str>) -> Result<Vec<SequenceValue>, PgError> {
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| PgError::query("listing sequences", e))?;
    let mut out = Vec::new();
    for r in rows {
        let name = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        if Some(name.schema.as_str()) == skip_schema {
            continue;
        }
        let v = c
            .query_one(&format!("SELECT last_value, is_called FROM {}", name.quoted()), &[])
            .await
            .map_err(|e| PgError::query(format!("reading sequence {name}"), e))?;
        out.push(SequenceValue {
            name,
            last_value: v.get(0),
            is_called: v.get(1),
        });
    }
    Ok(out)
}

/// Sets each sequence that exists on the target; returns how many were set.
pub async fn apply(c: &Client, values: &[SequenceValue]) -> Result<usize, PgError> {
    let mut n = 0;
    for v in values {
        let q = v.name.quoted();
        let err = |e| PgError::query(format!("setting sequence {} on the target", v.name), e);
        let exists: bool = c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&q]).await.map_err(err)?.get(0);
        if exists {
            c.execute("SELECT setval($1::text::regclass, $2, $3)", &[&q, &v.last_value, &v.is_called])
                .await
                .map_err(err)?;
            n += 1;
        }
    }
    Ok(n)
}
