//! What finishing (`ferry complete`) or giving up (`ferry abandon`) a migration drops on either
//! side besides the slots ([`crate::slot`]): publications and replication origins, looked up
//! first so that only what existed is reported; and whether the database is still read-only for
//! new sessions (the cutover's `ALTER DATABASE ... SET default_transaction_read_only`).

use ferry_core::ident::quote_ident;
use tokio_postgres::Client;

use crate::error::PgError;

/// Whether publication `name` exists in the database of `c`.
pub async fn publication_exists(c: &Client, name: &str) -> Result<bool, PgError> {
    exists(c, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", name).await
}

/// Whether replication origin `name` exists on the server of `c`.
pub async fn origin_exists(c: &Client, name: &str) -> Result<bool, PgError> {
    exists(c, "SELECT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)", name).await
}

async fn exists(c: &Client, sql: &str, name: &str) -> Result<bool, PgError> {
    c.query_one(sql, &[&name])
        .await
        .map(|row| row.get(0))
        .map_err(|e| PgError::query(format!("looking for {name}"), e))
}

/// Drops publication `name` on the `side` ("source", "target": for messages), if it exists.
pub async fn drop_publication(c: &Client, name: &str, side: &str) -> Result<(), PgError> {
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(|e| PgError::query(format!("dropping publication {name} on the {side}"), e))
}

/// Drops replication origin `name` on the `side`, if it exists. Fails while a session uses it.
pub async fn drop_origin(c: &Client, name: &str, side: &str) -> Result<(), PgError> {
    c.execute(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1",
        &[&name],
    )
    .await
    .map(|_| ())
    .map_err(|e| PgError::query(format!("dropping replication origin {name} on the {side}"), e))
}

/// Whether the database of `c` is read-only for new sessions (its own setting,
/// `pg_db_role_setting`).
pub async fn database_read_only(c: &Client) -> Result<bool, PgError> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                        WHERE d.datname = current_database() AND s.setrole = 0
                          AND 'default_transaction_read_only=on' = ANY (s.setconfig))",
        &[],
    )
    .await
    .map(|row| row.get(0))
    .map_err(|e| PgError::query("reading the database's default_transaction_read_only", e))
}

/// Whether a session of `c`'s user on its database starts read-only
/// (`default_transaction_read_only` as this session got it: the database's, the role's or the
/// server's setting); `side` names it for messages. Read before [`crate::switch::writable_session`].
pub async fn session_read_only(c: &Client, side: &str) -> Result<bool, PgError> {
    c.query_one("SHOW default_transaction_read_only", &[])
        .await
        .map(|r| r.get::<_, String>(0) == "on")
        .map_err(|e| PgError::query(format!("reading default_transaction_read_only on the {side}"), e))
}
