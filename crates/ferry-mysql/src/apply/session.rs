//! The MySQL sink's session on the server: ending a lost one, the position table, the
//! catalog, and reading the stored position from outside a sink ([`applied`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_core::{Lsn, SourcePosition};
use mysql_async::prelude::Queryable;

use super::table::{JsonEq, MyColumn};
use super::{sql, POSITION_TABLE};
use crate::endpoint::MyEndpoint;
use crate::error::MyError;

/// Where a given-up connection was needed.
pub(super) fn lost(what: &str) -> MyError {
    MyError::transient(
        what,
        "the connection to MySQL/MariaDB was given up after a failure",
        "Ferry reconnects and resumes from the last committed position",
    )
}

/// How a server compares JSON, from its `VERSION()`.
pub(super) fn json_eq(version: &str) -> JsonEq {
    if !version.contains("MariaDB") {
        return JsonEq::Cast;
    }
    let mut n = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (n.next().unwrap_or(0), n.next().unwrap_or(0));
    if (major, minor) >= (10, 7) {
        JsonEq::Equals
    } else {
        JsonEq::Skip
    }
}

/// Ends the session an earlier sink lost with a transaction open (its COMMIT may still be on the
/// way) and waits until it is gone, so that the position read next is final. Only a connection
/// this process opened is ended.
pub(super) async fn end_stale_session(endpoint: &MyEndpoint, conn: &mut mysql_async::Conn, id: u64) -> Result<(), MyError> {
    const WHAT: &str = "ending the MySQL/MariaDB session a lost reverse replication connection left behind";
    if !crate::endpoint::own_connections(endpoint).contains(&id) {
        tracing::warn!(session = id, "not ending session {id}: it is not one of this process's connections");
        return Ok(());
    }
    endpoint
        .within(WHAT, async {
            match conn.query_drop(format!("KILL {id}")).await {
                // 1094: unknown thread, gone already.
                Err(mysql_async::Error::Server(s)) if s.code == 1094 => Ok(()),
                r => r.map_err(|e| MyError::query(WHAT, e)),
            }
        })
        .await?;
    let started = Instant::now();
    // A killed session rolls its transaction back before it leaves the process list.
    while started.elapsed() < endpoint.query_timeout() {
        let alive: Option<u64> = endpoint
            .within(WHAT, async {
                conn.exec_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", (id,))
                    .await
                    .map_err(|e| MyError::query(WHAT, e))
            })
            .await?;
        if alive.unwrap_or(0) == 0 {
            tracing::warn!(
                session = id,
                "ended the MySQL/MariaDB session a lost reverse replication connection left behind"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(MyError::transient(
        WHAT,
        &format!(
            "session {id} is still there {} after KILL",
            crate::endpoint::human(endpoint.query_timeout())
        ),
        "Ferry retries; a session rolling back a large transaction takes a while",
    ))
}

/// Creates the state database and the position table when missing. The table's DDL runs with
/// the state database as the session's default one: the binlog logs it under that database,
/// so the forward binlog reader does not take it for a schema change of the migrated database
/// (`CREATE DATABASE` is logged under the database it creates).
pub(super) async fn ensure_position_table(
    endpoint: &MyEndpoint,
    conn: &mut mysql_async::Conn,
    state_db: &str,
    table: &str,
) -> Result<(), MyError> {
    const WHAT: &str = "creating Ferry's reverse replication position table on MySQL/MariaDB";
    endpoint
        .within(WHAT, async {
            let exists: Option<u64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (state_db, POSITION_TABLE),
                )
                .await
                .map_err(|e| MyError::query(WHAT, e))?;
            if exists.unwrap_or(0) > 0 {
                return Ok(());
            }
            let db = sql::ident(state_db);
            conn.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS {db}; USE {db};
                 CREATE TABLE IF NOT EXISTS {table} (
                     migration_id VARCHAR(63) NOT NULL PRIMARY KEY,
                     lsn BIGINT UNSIGNED NOT NULL,
                     position VARCHAR(80) NOT NULL,
                     updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                 ) ENGINE=InnoDB"
            ))
            .await
            .map_err(|e| {
                MyError::driver(
                    WHAT,
                    e,
                    &format!("grant Ferry's user CREATE, INSERT, UPDATE and SELECT on {state_db}.* (or create the database and the table yourself)"),
                )
            })
        })
        .await
}

/// The stored position of a migration: (ordering key, position).
pub(super) async fn read_position(
    endpoint: &MyEndpoint,
    conn: &mut mysql_async::Conn,
    table: &str,
    migration_id: &str,
) -> Result<Option<(Lsn, SourcePosition)>, MyError> {
    const WHAT: &str = "reading the reverse replication position on MySQL/MariaDB";
    let row: Option<(u64, String)> = endpoint
        .within(WHAT, async {
            conn.exec_first(format!("SELECT lsn, position FROM {table} WHERE migration_id = ?"), (migration_id,))
                .await
                .map_err(|e| MyError::query(WHAT, e))
        })
        .await?;
    Ok(row.map(|(lsn, text)| {
        let p = text.parse().unwrap_or(SourcePosition::Postgres(Lsn(lsn)));
        (Lsn(lsn), p)
    }))
}

/// The columns of the tables in scope, by table, in column order.
pub(super) async fn read_columns(
    endpoint: &MyEndpoint,
    conn: &mut mysql_async::Conn,
    database: &str,
    tables: &[String],
) -> Result<HashMap<String, Vec<MyColumn>>, MyError> {
    const WHAT: &str = "reading the columns of the migrated tables on MySQL/MariaDB";
    let rows: Vec<(String, String, String, String, String)> = endpoint
        .within_catalog(WHAT, async {
            conn.exec(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, EXTRA FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (database,),
            )
            .await
            .map_err(|e| MyError::query(WHAT, e))
        })
        .await?;
    let mut out: HashMap<String, Vec<MyColumn>> = HashMap::new();
    for (table, name, data_type, column_type, extra) in rows {
        if tables.contains(&table) {
            out.entry(table).or_default().push(MyColumn {
                name,
                data_type,
                column_type,
                extra,
            });
        }
    }
    Ok(out)
}

/// The reverse replication position stored for a migration on MySQL/MariaDB (None: nothing
/// applied yet, or no position table): how far the reverse stream has applied, for a rollback
/// that waits for it to reach the final position.
pub async fn applied(endpoint: &MyEndpoint, state_db: &str, migration_id: &str) -> Result<Option<Lsn>, MyError> {
    const WHAT: &str = "reading the reverse replication position on MySQL/MariaDB";
    let mut conn = endpoint.connect().await?;
    let table = format!("{}.{}", sql::ident(state_db), sql::ident(POSITION_TABLE));
    let r = endpoint
        .within(WHAT, async {
            match conn
                .exec_first::<u64, _, _>(format!("SELECT lsn FROM {table} WHERE migration_id = ?"), (migration_id,))
                .await
            {
                // ER_NO_SUCH_TABLE, ER_BAD_DB_ERROR: no reverse replication ever ran.
                Err(mysql_async::Error::Server(s)) if s.code == 1146 || s.code == 1049 => Ok(None),
                r => r.map(|v| v.map(Lsn)).map_err(|e| MyError::query(WHAT, e)),
            }
        })
        .await;
    endpoint.disconnect(conn).await;
    r
}
