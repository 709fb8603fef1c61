//! PostgreSQL's side of a switch (cutover, rollback): [`PgSide`] implements
//! [`ferry_core::switch::SwitchSide`] for the switchboard in the binary, which holds no SQL.
//!
//! - final position: a logical decoding message, committed synchronously ([`final_position`]);
//! - read-only: `ALTER DATABASE ... SET default_transaction_read_only` (new sessions), with
//!   Ferry's own sessions set writable ([`set_read_only`], [`writable_session`]);
//! - writers and direct sessions: `pg_stat_activity`, Ferry's own sessions spared by backend pid
//!   and start time, never by `application_name` ([`end_writers`], [`direct_sessions`]);
//! - sequences: `pg_sequences` read on one side, `setval` on the other in one statement; for
//!   a switch to another engine, the sequences of serial and identity columns are named by
//!   their table and column ([`PgSide::with_column_identities`], [`column_identities`]);
//! - reverse stream: a publication and a slot on the target ([`prepare_reverse`], [`drop_reverse`]).

use std::time::{Duration, Instant};

use ferry_core::ident::{quote_ident, quote_literal};
use ferry_core::switch::{DirectSession, Identity, IdentitySync, SessionId, SwitchSide};
use ferry_core::{Lsn, SourcePosition, TableName};
use tokio_postgres::Client;

use crate::endpoint::{own_sessions, BACKEND_START_US};
use crate::state::StateStore;
use crate::{Endpoint, PgError};

/// How long preparing the reverse stream may take (before the pause; nobody is held).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(15);

/// Names of the reverse stream's slot and publication on the target, from the forward ones.
pub fn reverse_names(slot: &str, publication: &str) -> (String, String) {
    (format!("{slot}_rev"), format!("{publication}_rev"))
}

/// The reverse stream's slot and publication (on the target: it streams target to source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseStream {
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
}

impl ReverseStream {
    /// The reverse stream of the migration whose forward slot and publication these are.
    pub fn of(slot: &str, publication: &str) -> Self {
        let (slot, publication) = reverse_names(slot, publication);
        Self { slot, publication }
    }
}

/// One PostgreSQL database in a switch: Ferry's session on it, how to open more, and its role.
#[derive(Debug)]
pub struct PgSide<'a> {
    client: &'a Client,
    endpoint: &'a Endpoint,
    side: &'static str,
    reverse: Option<ReverseStream>,
    /// Report the sequences of serial and identity columns by table and column.
    column_identities: bool,
}

impl<'a> PgSide<'a> {
    /// The side `side` ("source" or "target", for messages) reached through `client`, a
    /// session opened on `endpoint`.
    pub fn new(client: &'a Client, endpoint: &'a Endpoint, side: &'static str) -> Self {
        Self {
            client,
            endpoint,
            side,
            reverse: None,
            column_identities: false,
        }
    }

    /// The reverse stream a cutover prepares on this side (the target).
    pub fn with_reverse(mut self, reverse: ReverseStream) -> Self {
        self.reverse = Some(reverse);
        self
    }

    /// [`SwitchSide::identities`] names the sequence of a serial or identity column by what it
    /// generates: the owning table with its column (`Identity { name: table, column:
    /// Some(column) }`); a sequence owned by no column stays a sequence (`column` None).
    ///
    /// For a switch whose new side is another engine (a rollback to MySQL/MariaDB). Generators
    /// are named as the new side knows them ([`Identity::name`]), and MySQL knows no sequences:
    /// its generator is a table's `AUTO_INCREMENT` counter, for its one generated column, so it
    /// can only match a generator named by table and column. A PostgreSQL new side knows the
    /// sequences by name, so a switch between two PostgreSQL databases leaves this off.
    pub fn with_column_identities(mut self) -> Self {
        self.column_identities = true;
        self
    }
}

impl SwitchSide for PgSide<'_> {
    type Error = PgError;

    fn side(&self) -> &str {
        self.side
    }

    async fn prepare_session(&self) -> Result<(), PgError> {
        writable_session(self.client).await
    }

    async fn final_position(&self) -> Result<SourcePosition, PgError> {
        final_position(self.client).await.map(SourcePosition::Postgres)
    }

    async fn set_read_only(&self, on: bool) -> Result<(), PgError> {
        set_read_only(self.client, self.side, on).await
    }

    async fn end_writers(&self, grace: Duration) -> Result<Vec<DirectSession>, PgError> {
        end_writers(self.client, grace).await
    }

    async fn direct_sessions(&self, proxied: &[SessionId]) -> Result<Vec<DirectSession>, PgError> {
        let proxied: Vec<i32> = proxied.iter().filter_map(|&p| i32::try_from(p).ok()).collect();
        direct_sessions(self.client, self.side, &proxied).await
    }

    async fn identities(&self) -> Result<Vec<Identity>, PgError> {
        if self.column_identities {
            column_identities(self.client).await
        } else {
            identities(self.client).await
        }
    }

    async fn advance_identities(&self, from: &[Identity]) -> Result<Vec<IdentitySync>, PgError> {
        advance_identities(self.client, from).await
    }

    async fn reverse_blockers(&self) -> Vec<String> {
        reverse_blockers(self.client, self.side).await
    }

    async fn prepare_reverse(&self, tables: &[TableName]) -> Result<(), PgError> {
        match &self.reverse {
            Some(rev) => prepare_reverse(self.endpoint, rev, tables).await,
            None => Err(PgError::config(
                "preparing reverse replication",
                format!("no reverse stream out of the {} is configured", self.side),
                "report this as a bug",
            )),
        }
    }

    async fn drop_reverse(&self) -> Result<(), PgError> {
        match &self.reverse {
            Some(rev) => drop_reverse(self.endpoint, rev).await,
            None => Ok(()),
        }
    }
}

/// Ferry's own sessions write even where Ferry made the database read-only, and commit
/// synchronously (the final position must be on disk before anyone is told it was reached).
pub async fn writable_session(c: &Client) -> Result<(), PgError> {
    c.batch_execute("SET default_transaction_read_only = off; SET synchronous_commit = on")
        .await
        .map_err(|e| PgError::query("opening a writable session", e))
}

/// Where writes stopped: every transaction committed before it, none after. A logical
/// decoding message (not published: pgoutput leaves messages out unless asked) is written in a
/// transaction committed synchronously, so the WAL up to it is flushed whatever the
/// application's synchronous_commit, and the change stream passes it. Its position comes after
/// every commit that happened before.
pub async fn final_position(c: &Client) -> Result<Lsn, PgError> {
    let lsn: String = c
        .query_one(
            "WITH m AS (SELECT pg_logical_emit_message(true, 'ferry', 'final position') AS lsn) SELECT lsn::text FROM m",
            &[],
        )
        .await
        .map_err(|e| PgError::query("marking the final position in the write-ahead log", e))?
        .get(0);
    lsn.parse().map_err(|_| {
        PgError::config(
            "reading the final position",
            format!("unexpected LSN {lsn}"),
            "report this as a bug",
        )
    })
}

/// The statement that makes database `db` read-only for new sessions, or undoes it.
fn read_only_sql(db: &str, on: bool) -> String {
    if on {
        format!("ALTER DATABASE {} SET default_transaction_read_only = on", quote_ident(db))
    } else {
        format!("ALTER DATABASE {} RESET default_transaction_read_only", quote_ident(db))
    }
}

/// Makes the database of `c` read-only for new sessions (or undoes it). After a cutover the
/// source is read-only for everyone but Ferry's reverse apply (which sets its session
/// writable); after a rollback it is writable again. `side` names it for messages.
pub async fn set_read_only(c: &Client, side: &str, on: bool) -> Result<(), PgError> {
    // A session opened while the database was read-only could not alter it.
    writable_session(c).await?;
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(|e| PgError::query("reading the database name", e))?
        .get(0);
    let sql = read_only_sql(&db, on);
    c.batch_execute(&sql).await.map_err(|e| {
        PgError::query(
            format!(
                "{} the {side} ({sql})",
                if on { "making read-only" } else { "making writable again" }
            ),
            e,
        )
        .with_fix("connect as the database owner or a superuser")
    })
}

/// Without a proxy: sessions that connected before the database became read-only keep their
/// writable default. Waits up to `grace` for them to leave, then terminates those still there.
/// Returns the sessions it terminated, described as [`direct_sessions`] describes them.
/// Ferry's own sessions are spared by backend pid (and start time), never by `application_name`.
pub async fn end_writers(c: &Client, grace: Duration) -> Result<Vec<DirectSession>, PgError> {
    let sql = format!(
        "SELECT pid, {DESCRIPTION} FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
           AND backend_start < $1::text::timestamptz
           AND (pid, {BACKEND_START_US}) NOT IN (SELECT * FROM unnest($2::int4[], $3::int8[]))"
    );
    let cutoff: String = c
        .query_one("SELECT now()::text", &[])
        .await
        .map_err(|e| PgError::query("reading the time", e))?
        .get(0);
    let until = Instant::now() + grace;
    loop {
        // Read each round: a session Ferry opened meanwhile is its own too.
        let (own_pids, own_starts) = own_sessions();
        let rows = c
            .query(&sql, &[&cutoff, &own_pids, &own_starts])
            .await
            .map_err(|e| PgError::query("listing writers", e))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if Instant::now() >= until {
            let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            tracing::warn!(?pids, "terminating sessions still connected after the grace period");
            // Only those the server terminated (a session that left meanwhile is not counted).
            let ended = c
                .query(
                    "SELECT pid FROM unnest($1::int4[]) AS pid WHERE pg_terminate_backend(pid)",
                    &[&pids],
                )
                .await
                .map_err(|e| PgError::query("terminating writers after the grace period", e))?;
            let ended: Vec<i32> = ended.iter().map(|r| r.get(0)).collect();
            return Ok(rows.iter().filter(|r| ended.contains(&r.get::<_, i32>(0))).map(described).collect());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The columns that describe a session of `pg_stat_activity` for people, after its pid
/// (read by [`described`]).
const DESCRIPTION: &str = "usename::text, COALESCE(application_name, ''), COALESCE(host(client_addr), 'local'), COALESCE(state, '')";

/// A row of pid and [`DESCRIPTION`] as a session for people.
fn described(r: &tokio_postgres::Row) -> DirectSession {
    let pid = r.get::<_, i32>(0);
    DirectSession {
        id: pid as SessionId,
        description: format!(
            "pid {pid} (user {}, application '{}', from {}, {})",
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        ),
    }
}

/// Client sessions on `c`'s database that are neither Ferry's nor the proxy's (`proxied`: the
/// proxy's backend pids). Ferry's own sessions are known by backend pid (and start time),
/// never by `application_name`, which any client can set; the replication stream is a
/// walsender, not a client backend. One look: the switchboard looks twice.
pub async fn direct_sessions(c: &Client, side: &str, proxied: &[i32]) -> Result<Vec<DirectSession>, PgError> {
    let (own_pids, own_starts) = own_sessions();
    let sql = format!(
        "SELECT pid, {DESCRIPTION}
         FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
           AND NOT pid = ANY($1)
           AND (pid, {BACKEND_START_US}) NOT IN (SELECT * FROM unnest($2::int4[], $3::int8[]))
         ORDER BY pid"
    );
    let rows = c
        .query(&sql, &[&proxied, &own_pids, &own_starts])
        .await
        .map_err(|e| PgError::query(format!("listing sessions connected to the {side}"), e))?;
    Ok(rows.iter().map(described).collect())
}

/// Every user sequence of `c` that has handed out values, with its last value: where writes
/// stopped, read inside the pause.
pub async fn identities(c: &Client) -> Result<Vec<Identity>, PgError> {
    let rows = c
        .query(
            "SELECT schemaname::text, sequencename::text, last_value FROM pg_sequences
             WHERE last_value IS NOT NULL AND schemaname NOT IN ('pg_catalog', 'information_schema')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading sequence values where writes stopped", e))?;
    Ok(rows
        .iter()
        .map(|r| Identity {
            name: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            column: None,
            last_value: r.get(2),
        })
        .collect())
}

/// Like [`identities`], with the sequence of each serial or identity column named by its
/// column: `Identity { name: <owning table>, column: Some(<column>) }`; a sequence owned by no
/// column stays a sequence (`column` None). A serial column's sequence is tied to it by `OWNED
/// BY` (an automatic dependency in `pg_depend`), an identity column's by an internal one: both
/// are what `pg_get_serial_sequence` finds. A sequence owned by several columns (possible only
/// by hand) is reported once per column.
pub async fn column_identities(c: &Client) -> Result<Vec<Identity>, PgError> {
    let rows = c
        .query(
            "SELECT COALESCE(tn.nspname, s.schemaname)::text, COALESCE(t.relname, s.sequencename)::text, a.attname::text, s.last_value
             FROM pg_sequences s
             JOIN pg_namespace sn ON sn.nspname = s.schemaname
             JOIN pg_class sc ON sc.relnamespace = sn.oid AND sc.relname = s.sequencename AND sc.relkind = 'S'
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = sc.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
             LEFT JOIN pg_class t ON t.oid = d.refobjid
             LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
             LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND NOT a.attisdropped
             WHERE s.last_value IS NOT NULL AND s.schemaname NOT IN ('pg_catalog', 'information_schema')
               AND (d.objid IS NULL OR a.attname IS NOT NULL)
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading the values of sequences and generated columns where writes stopped", e))?;
    Ok(rows
        .iter()
        .map(|r| Identity {
            name: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            column: r.get(2),
            last_value: r.get(3),
        })
        .collect())
}

/// Sets every generator of `from` that exists on `c` so that it can never hand out a value the
/// other side already did: never moved backwards (an ascending sequence keeps the greater
/// value, a descending one the smaller). Sequences take one statement, whatever their number;
/// a column's generator (a serial or identity column, from an engine with per-column
/// generators such as MySQL's `AUTO_INCREMENT`) one statement each, which also moves it past
/// the column's greatest value. `c` must allow writes in this session.
pub async fn advance_identities(c: &Client, from: &[Identity]) -> Result<Vec<IdentitySync>, PgError> {
    let (sequences, columns): (Vec<&Identity>, Vec<&Identity>) = from.iter().partition(|i| i.column.is_none());
    let mut out = Vec::new();
    if !sequences.is_empty() {
        let (mut schemas, mut names, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for s in &sequences {
            schemas.push(s.name.schema.clone());
            names.push(s.name.name.clone());
            values.push(s.last_value);
        }
        let set = c
            .query(
                "SELECT s.schemaname::text, s.sequencename::text, v.last,
                        setval(format('%I.%I', s.schemaname, s.sequencename)::regclass,
                               CASE WHEN s.increment_by > 0 THEN GREATEST(v.last, s.last_value) ELSE LEAST(v.last, s.last_value) END,
                               true)
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS v(schema_name, seq_name, last)
                 JOIN pg_sequences s ON s.schemaname = v.schema_name AND s.sequencename = v.seq_name
                 ORDER BY 1, 2",
                &[&schemas, &names, &values],
            )
            .await
            .map_err(|e| PgError::query("setting sequences where writes go next", e))?;
        out.extend(set.iter().map(|r| IdentitySync {
            name: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            column: None,
            from: r.get(2),
            to: r.get(3),
        }));
    }
    for i in columns {
        let column = i.column.as_deref().unwrap_or_default();
        let table = i.name.quoted();
        // max() over the column: an index lookup on a key, a control query.
        let row = c
            .query_one(
                &format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2), GREATEST(COALESCE(max({}), 0) + 1, $3::int8), false) FROM {table}",
                    quote_ident(column)
                ),
                &[&table, &column, &i.last_value.saturating_add(1)],
            )
            .await
            .map_err(|e| PgError::query(format!("setting the generator of {}.{column} where writes go next", i.name), e))?;
        // No generator behind the column here: nothing to move.
        if let Some(to) = row.get::<_, Option<i64>>(0) {
            out.push(IdentitySync {
                name: i.name.clone(),
                column: Some(column.to_string()),
                from: i.last_value,
                to,
            });
        }
    }
    Ok(out)
}

/// What blocks a reverse stream out of `c`'s server (wal_level), one line each; a failure to
/// read it is one too.
pub async fn reverse_blockers(c: &Client, side: &str) -> Vec<String> {
    match c.query_one("SELECT current_setting('wal_level')", &[]).await {
        Ok(r) if r.get::<_, String>(0) != "logical" => vec![format!(
            "wal_level is {} on the {side}: reverse replication (which makes a rollback lossless) needs wal_level=logical; set it and restart the {side}",
            r.get::<_, String>(0)
        )],
        Ok(_) => Vec::new(),
        Err(e) => vec![format!("reading wal_level on the {side}: {e}")],
    }
}

/// The last verification run of `migration_id` recorded in `store`: id, status, differences.
pub async fn last_verification(c: &Client, store: &StateStore, migration_id: &str) -> Result<Option<(i64, String, i64)>, PgError> {
    let sql = format!(
        "SELECT id, status, COALESCE(differences, 0)::int8 FROM {}.verify_runs WHERE migration_id = $1 ORDER BY id DESC LIMIT 1",
        store.quoted()
    );
    let row = c
        .query_opt(&sql, &[&migration_id])
        .await
        .map_err(|e| PgError::query("reading the last verification run", e))?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// The statement that creates the reverse stream's publication of `tables` (all tables when
/// none are recorded).
fn publication_sql(publication: &str, tables: &[TableName]) -> String {
    let list = tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let what = if list.is_empty() {
        "FOR ALL TABLES".to_string()
    } else {
        format!("FOR TABLE {list}")
    };
    format!("CREATE PUBLICATION {} {what}", quote_ident(publication))
}

/// The reverse stream's publication and slot on `target`, created before the pause (after
/// dropping a leftover): the forward applier's own writes that land in the slot meanwhile
/// carry the forward origin and are skipped by the reverse applier.
///
/// Nobody is held yet, but the step is bounded all the same ([`PREPARE_TIMEOUT`], on the
/// server, so that a timed-out statement does not linger): `CREATE PUBLICATION` needs a lock
/// on every migrated table and a new slot waits for every transaction running on the target.
pub async fn prepare_reverse(target: &Endpoint, rev: &ReverseStream, tables: &[TableName]) -> Result<(), PgError> {
    let ReverseStream { slot, publication } = rev;
    drop_reverse(target, rev).await?;
    let c = target.connect("switch-prepare").await?;
    let ms = PREPARE_TIMEOUT.as_millis();
    c.batch_execute(&format!(
        "SET default_transaction_read_only = off; SET lock_timeout = {ms}; SET statement_timeout = {ms}"
    ))
    .await
    .map_err(|e| PgError::query("preparing a session on the target", e))?;
    let stuck = "a transaction on the target holds a lock on a migrated table or has been running \
                 for a long time; find it in pg_stat_activity on the target, end it, and retry";
    // A published table without a replica identity refuses UPDATE and DELETE: the application's
    // writes to a migrated table without a key (MySQL allows them; a PostgreSQL source's carry
    // their identity over in the schema) would fail the moment it moves. Such tables get
    // REPLICA IDENTITY FULL (their changes are found by the whole row, as the forward stream
    // finds them); nothing else changes.
    c.batch_execute(&full_identity_sql(tables))
        .await
        .map_err(|e| PgError::query("giving the migrated tables without a key REPLICA IDENTITY FULL on the target", e).with_fix(stuck))?;
    c.batch_execute(&publication_sql(publication, tables))
        .await
        .map_err(|e| PgError::query(format!("creating publication {publication} on the target"), e).with_fix(stuck))?;
    c.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot])
        .await
        .map_err(|e| {
            PgError::query(format!("creating replication slot {slot} on the target"), e).with_fix(
                "the target needs wal_level=logical and a free replication slot (max_replication_slots), \
                 and no transaction running on it for long (a new slot waits for every running one)",
            )
        })?;
    Ok(())
}

/// For each of `tables` that has no replica identity (no primary key, identity `default`),
/// `ALTER TABLE ... REPLICA IDENTITY FULL`; one statement, run on the target.
fn full_identity_sql(tables: &[TableName]) -> String {
    let names: Vec<String> = tables.iter().map(|t| quote_literal(&t.quoted())).collect();
    format!(
        "DO $ferry$ DECLARE t regclass; BEGIN
           FOR t IN SELECT c.oid::regclass FROM pg_class c
                    WHERE c.oid = ANY (ARRAY[{}]::regclass[]) AND c.relreplident = 'd'
                      AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
           LOOP EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', t); END LOOP;
         END $ferry$",
        if names.is_empty() { "NULL".to_string() } else { names.join(", ") }
    )
}

/// Drops the reverse stream's slot and publication on `target`, if they exist.
pub async fn drop_reverse(target: &Endpoint, rev: &ReverseStream) -> Result<(), PgError> {
    let ReverseStream { slot, publication } = rev;
    let c = target.connect("switch").await?;
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        &[slot],
    )
    .await
    .map_err(|e| PgError::query(format!("dropping replication slot {slot} on the target"), e))?;
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)))
        .await
        .map_err(|e| PgError::query(format!("dropping publication {publication} on the target"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reverse_stream_is_named_after_the_forward_one() {
        assert_eq!(
            reverse_names("ferry_m1", "ferry_m1_pub"),
            ("ferry_m1_rev".to_string(), "ferry_m1_pub_rev".to_string())
        );
        let rev = ReverseStream::of("s", "p");
        assert_eq!((rev.slot.as_str(), rev.publication.as_str()), ("s_rev", "p_rev"));
    }

    #[test]
    fn read_only_is_a_database_default_set_and_reset() {
        assert_eq!(
            read_only_sql("app", true),
            r#"ALTER DATABASE "app" SET default_transaction_read_only = on"#
        );
        assert_eq!(
            read_only_sql(r#"my "db""#, false),
            r#"ALTER DATABASE "my ""db""" RESET default_transaction_read_only"#
        );
    }

    #[test]
    fn the_reverse_publication_lists_the_migrated_tables() {
        let tables = [TableName::new("public", "orders"), TableName::new("Sales", "a\"b")];
        assert_eq!(
            publication_sql("p_rev", &tables),
            r#"CREATE PUBLICATION "p_rev" FOR TABLE "public"."orders", "Sales"."a""b""#
        );
        assert_eq!(publication_sql("p_rev", &[]), r#"CREATE PUBLICATION "p_rev" FOR ALL TABLES"#);
    }
}
