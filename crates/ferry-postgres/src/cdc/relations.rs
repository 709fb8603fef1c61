//! The PostgreSQL source's side of the neutral change stream: pgoutput messages in,
//! [`ChangeEvent`]s out.
//!
//! Row changes, begins and commits map one to one (values pass through untouched, as bytes with
//! their format). A relation message only names its columns' type OIDs: here, on a catalog
//! connection to the stream's source, they become the column types in SQL (`format_type` of
//! the OID and modifier the message carries, so a later ALTER cannot change what this message
//! meant), with each column's default and NOT NULL, and the partition root a filter decides
//! on. A sink needs nothing of the source's catalog after that.

use std::time::Duration;

use ferry_core::change::{ChangeEvent, Column, Identity, Relation};
use ferry_core::{SourcePosition, TableName};
use tokio_postgres::{Client, Statement};

pub use crate::apply::TextSettings;
use crate::endpoint::Endpoint;
use crate::error::PgError;
use crate::pgoutput::{self, Message};

/// What a relation message's columns are, in one round trip: the partition root (its row comes
/// even for a relation without columns), then for each column of the message in its order the
/// type in SQL of the OID and modifier the message carries, the default and NOT NULL (NULLs for
/// a relation without columns). `$1` type OIDs, `$2` type modifiers, `$3` column names, `$4`
/// the relation's OID.
const RESOLVE: &str = "SELECT rn.nspname::text, rc.relname::text,
        format_type(u.t, u.m), pg_get_expr(d.adbin, d.adrelid), COALESCE(a.attnotnull, false)
 FROM (SELECT pg_partition_root($4::oid) AS oid) p
 LEFT JOIN pg_class rc ON rc.oid = p.oid
 LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
 LEFT JOIN (unnest($1::oid[], $2::int4[], $3::text[]) WITH ORDINALITY AS u(t, m, n, i)
            LEFT JOIN pg_attribute a ON a.attrelid = $4 AND a.attname = u.n AND NOT a.attisdropped
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum) ON true
 ORDER BY u.i";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Turns pgoutput messages into neutral change events.
pub struct Relations {
    catalog: Client,
    /// [`RESOLVE`], prepared once on `catalog`.
    resolve: Statement,
    source: String,
    timeout: Duration,
    settings: TextSettings,
}

impl std::fmt::Debug for Relations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relations").field("source", &self.source).finish()
    }
}

impl Relations {
    /// Opens the catalog connection to the stream's source; every catalog read is bounded by
    /// `timeout`.
    pub async fn connect(source: &Endpoint, timeout: Duration) -> Result<Self, PgError> {
        let catalog = source.connect("cdc-catalog").await?;
        let r = catalog
            .query_one(
                "SELECT current_setting('TimeZone'), current_setting('DateStyle'), current_setting('IntervalStyle')",
                &[],
            )
            .await
            .map_err(|e| PgError::query("reading the source's date and time settings", e))?;
        let settings = TextSettings {
            time_zone: r.get(0),
            date_style: r.get(1),
            interval_style: r.get(2),
        };
        catalog
            .batch_execute("SET search_path = ''")
            .await
            .map_err(|e| PgError::query("preparing the catalog connection", e))?;
        let resolve = catalog
            .prepare(RESOLVE)
            .await
            .map_err(|e| PgError::query("preparing the catalog connection", e))?;
        Ok(Self {
            catalog,
            resolve,
            source: source.describe(),
            timeout,
            settings,
        })
    }

    /// The source's value text settings.
    pub fn settings(&self) -> &TextSettings {
        &self.settings
    }

    /// The neutral event for one message; None for messages no sink needs (type descriptions,
    /// logical decoding messages).
    pub async fn event(&mut self, msg: Message) -> Result<Option<ChangeEvent>, PgError> {
        Ok(Some(match msg {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => ChangeEvent::Begin {
                commit: SourcePosition::Postgres(final_lsn),
                commit_time_us: unix_us(commit_time),
                xid: u64::from(xid),
            },
            Message::Commit { end_lsn, commit_time, .. } => ChangeEvent::Commit {
                end: SourcePosition::Postgres(end_lsn),
                commit_time_us: unix_us(commit_time),
            },
            Message::Origin { name, .. } => ChangeEvent::Origin { name },
            Message::Relation(r) => ChangeEvent::Relation(self.resolve(r).await?),
            Message::Insert { relation, new } => ChangeEvent::Insert { relation, new },
            Message::Update { relation, old, new, .. } => ChangeEvent::Update { relation, old, new },
            Message::Delete { relation, old, .. } => ChangeEvent::Delete { relation, old },
            Message::Truncate {
                cascade,
                restart_identity,
                relations,
            } => ChangeEvent::Truncate {
                relations,
                cascade,
                restart_identity,
            },
            Message::Type { .. } | Message::LogicalMessage { .. } => return Ok(None),
        }))
    }

    async fn resolve(&mut self, r: pgoutput::Relation) -> Result<Relation, PgError> {
        let table = TableName::new(r.namespace.clone(), r.name.clone());
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        let mods: Vec<i32> = r.columns.iter().map(|c| c.type_mod).collect();
        let names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        let what = format!("reading the column types of {table} on the source {}", self.source);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&oids, &mods, &names, &r.id];
        let rows = match tokio::time::timeout(self.timeout, self.catalog.query(&self.resolve, &params)).await {
            Ok(r) => r.map_err(|e| PgError::query(what, e))?,
            Err(_) => {
                return Err(PgError::transient(
                    what,
                    format!("no answer within {}", ferry_core::human_duration(self.timeout)),
                ))
            }
        };
        let identity = match r.replica_identity {
            b'f' => Identity::Full,
            b'n' => Identity::Nothing,
            _ => Identity::Key,
        };
        let columns = r
            .columns
            .iter()
            .zip(&rows)
            .map(|(c, row)| Column {
                name: c.name.clone(),
                type_sql: row.get(2),
                key: c.key,
                default: row.get(3),
                not_null: row.get(4),
            })
            .collect();
        // pg_partition_root is NULL for a table outside any partition tree: its own scope.
        let root = rows
            .first()
            .and_then(|row| Some((row.get::<_, Option<String>>(0)?, row.get::<_, Option<String>>(1)?)));
        let scope = root
            .map(|(schema, name)| TableName::new(schema, name))
            .unwrap_or_else(|| table.clone());
        Ok(Relation {
            id: r.id,
            table,
            scope,
            identity,
            columns,
        })
    }
}

/// pgoutput's commit time (microseconds since 2000-01-01; 0 unknown) as Unix microseconds.
fn unix_us(pg_us: i64) -> i64 {
    if pg_us == 0 {
        0
    } else {
        pg_us + PG_EPOCH_OFFSET_US
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commit_times_move_to_the_unix_epoch() {
        assert_eq!(super::unix_us(0), 0);
        // 2000-01-01 00:00:01 UTC.
        assert_eq!(super::unix_us(1_000_000), 946_684_801_000_000);
    }
}
