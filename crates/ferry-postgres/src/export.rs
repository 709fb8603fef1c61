//! A source's rows as the change stream describes them: every row of a table, in one exported
//! snapshot, as a [`Relation`] and rows of text values, page by page (bounded memory). What a
//! sink that is not PostgreSQL needs for its initial load (Kafka's `op: r` events); a
//! PostgreSQL target copies in binary COPY instead ([`crate::snapshot`]).
//!
//! The session reads values in the forms the change stream sends them (DateStyle ISO,
//! IntervalStyle postgres, bytea in hex), so a sink reads snapshot rows and streamed rows alike.
//! A table's key columns are those of its replica identity (all columns under `REPLICA
//! IDENTITY FULL`), as pgoutput flags them.

use std::time::Duration;

use bytes::Bytes;
use ferry_core::change::{Column, Datum, Identity, Relation, Row};
use ferry_core::TableName;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::endpoint::Endpoint;
use crate::error::PgError;

/// Rows fetched per round trip.
pub const PAGE_ROWS: usize = 1000;

/// The tables a publication publishes, in name order.
pub async fn published_tables(c: &Client, publication: &str) -> Result<Vec<TableName>, PgError> {
    let rows = c
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(|e| PgError::query(format!("listing the tables of publication {publication}"), e))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// The ordinary and partitioned tables of the database outside the system schemas, for a
/// publication that names its tables.
pub async fn user_tables(c: &Client) -> Result<Vec<TableName>, PgError> {
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| PgError::query("listing the source's tables", e))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Reads tables in an exported snapshot.
pub struct SnapshotReader {
    client: Client,
    timeout: Duration,
    open: Option<String>,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader").field("open", &self.open).finish()
    }
}

impl SnapshotReader {
    /// A session in `snapshot` (exported by a slot's creation, kept alive by its connection).
    pub async fn open(source: &Endpoint, snapshot: &str, timeout: Duration) -> Result<SnapshotReader, PgError> {
        let client = source.connect("snapshot-export").await?;
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};
             SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL IntervalStyle = 'postgres'; SET LOCAL bytea_output = 'hex';
             SET LOCAL extra_float_digits = 1;
             -- Types as the stream names them: user types schema-qualified (an enum is known by it).
             SET LOCAL search_path = ''",
            ferry_core::ident::quote_literal(snapshot)
        );
        tokio::time::timeout(timeout, client.batch_execute(&sql))
            .await
            .map_err(|_| PgError::transient("opening the snapshot", "no answer in time"))?
            .map_err(|e| PgError::query("opening the exported snapshot", e))?;
        Ok(SnapshotReader {
            client,
            timeout,
            open: None,
        })
    }

    /// The table as the stream would describe it (id: its OID).
    pub async fn relation(&self, table: &TableName) -> Result<Relation, PgError> {
        let qualified = table.quoted();
        let rows = self
            .client
            .query(
                "SELECT c.oid, c.relreplident::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                        a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                        COALESCE(a.attnum = ANY (i.indkey), false)
                   FROM pg_class c
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   LEFT JOIN pg_index i ON i.indrelid = c.oid
                        AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
                  WHERE c.oid = $1::text::regclass
                  ORDER BY a.attnum",
                &[&qualified],
            )
            .await
            .map_err(|e| PgError::query(format!("describing {table}"), e))?;
        let first = rows.first().ok_or_else(|| {
            PgError::config(
                format!("describing {table}"),
                "the table has no columns",
                "add a column or leave the table out",
            )
        })?;
        let oid: u32 = first.get(0);
        let ident: String = first.get(1);
        let full = ident == "f";
        let columns: Vec<Column> = rows
            .iter()
            .map(|r| Column {
                name: r.get(2),
                type_sql: r.get(3),
                not_null: r.get(4),
                default: r.get(5),
                key: full || r.get::<_, bool>(6),
            })
            .collect();
        let identity = match ident.as_str() {
            "f" => Identity::Full,
            "n" => Identity::Nothing,
            _ if columns.iter().any(|c| c.key) => Identity::Key,
            _ => Identity::Nothing,
        };
        Ok(Relation {
            id: oid,
            table: table.clone(),
            scope: table.clone(),
            identity,
            columns,
        })
    }

    /// Starts reading `rel`'s rows (a cursor in the snapshot).
    pub async fn start(&mut self, rel: &Relation) -> Result<(), PgError> {
        self.close().await?;
        let cols: Vec<String> = rel.columns.iter().map(|c| ferry_core::ident::quote_ident(&c.name)).collect();
        let sql = format!(
            "DECLARE ferry_export NO SCROLL CURSOR FOR SELECT {} FROM ONLY {}",
            cols.join(", "),
            rel.table.quoted()
        );
        self.batch(&sql, &format!("reading {}", rel.table)).await?;
        self.open = Some(rel.table.to_string());
        Ok(())
    }

    async fn batch(&self, sql: &str, what: &str) -> Result<Vec<SimpleQueryMessage>, PgError> {
        tokio::time::timeout(self.timeout, self.client.simple_query(sql))
            .await
            .map_err(|_| PgError::transient(what.to_string(), format!("no answer within {} s", self.timeout.as_secs())))?
            .map_err(|e| PgError::query(what.to_string(), e))
    }

    /// The next page of at most [`PAGE_ROWS`] rows of the table started; empty at the end.
    pub async fn page(&mut self) -> Result<Vec<Row>, PgError> {
        let what = format!("reading {}", self.open.as_deref().unwrap_or("a table"));
        let msgs = self.batch(&format!("FETCH {PAGE_ROWS} FROM ferry_export"), &what).await?;
        let mut out = Vec::new();
        for m in msgs {
            if let SimpleQueryMessage::Row(r) = m {
                out.push(
                    (0..r.len())
                        .map(|i| match r.get(i) {
                            Some(v) => Datum::Text(Bytes::copy_from_slice(v.as_bytes())),
                            None => Datum::Null,
                        })
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    async fn close(&mut self) -> Result<(), PgError> {
        if self.open.take().is_some() {
            self.batch("CLOSE ferry_export", "closing the snapshot cursor").await?;
        }
        Ok(())
    }

    /// Ends the snapshot's transaction.
    pub async fn finish(mut self) -> Result<(), PgError> {
        self.close().await?;
        self.batch("COMMIT", "ending the snapshot").await?;
        Ok(())
    }
}
