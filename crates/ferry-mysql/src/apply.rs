//! The MySQL/MariaDB sink: a PostgreSQL change stream applied to MySQL, exactly once
//! (issue 18: after a cutover from MySQL, the reverse stream keeps the old MySQL database in
//! step so that a rollback to it loses nothing).
//!
//! It follows the contract of [`ferry_core::sink`]; what is particular to MySQL:
//!
//! **Position on the MySQL side.** Each batch (one MySQL transaction holding one or more whole
//! source transactions) writes the migration's row of `<state_db>.reverse_position` in the same
//! transaction as its changes: first, as the transaction's FIRST statement, the position of the
//! batch's first source commit (the marker), then the changes, then the batch's last
//! `Commit::end`, then `COMMIT`. After a crash the row says exactly which changes MySQL holds;
//! [`MySink::open`] reads it ([`Sink::durable`]) and every transaction that committed before it
//! is skipped when the stream sends it again.
//!
//! **Loop prevention.** The marker being the first row change of every transaction the sink
//! writes, the forward binlog reader (`crate::binlog`, MySQL to PostgreSQL) skips every
//! transaction whose first row event touches `reverse_position`: Ferry's own writes never come
//! back. The other way round, a source transaction marked with Ferry's forward replication
//! origin (written on PostgreSQL by the forward applier) is skipped here; its position still
//! counts as applied.
//!
//! **Rows.** Values are sent as parameters of prepared statements (cached per table and shape
//! by the driver, `stmt_cache_size`), converted from PostgreSQL's text output to the MySQL
//! column's type ([`convert`], the reverse of `docs/mysql-types.md`). Consecutive inserts into
//! one table go out as one multi-row INSERT (at most [`INSERT_ROWS`] rows or [`INSERT_BYTES`]);
//! nothing else is held back, so memory stays bounded whatever a transaction's size (MySQL's
//! transaction holds the rows). An update or delete finds its row by the key (or, without
//! one, by every column, NULL-safe, `LIMIT 1` so that one duplicate goes), and must find
//! exactly one (the session reports rows found, not rows changed); otherwise, and for a value
//! MySQL cannot hold or rejects, the change is a dead letter.
//!
//! **Commits are synchronous**: [`Sink::commit`] returns once MySQL has committed, so
//! [`Sink::durable`] moves at once (with `innodb_flush_log_at_trx_commit = 1`, MySQL's default,
//! a commit is on disk when it returns).
//!
//! ```text
//! START TRANSACTION; INSERT reverse_position (first Begin.commit)   <- marker, 1 round trip
//!   INSERT ... VALUES (..),(..)   UPDATE ... LIMIT 1   DELETE ... LIMIT 1   DELETE FROM t
//! UPDATE reverse_position (last Commit.end); COMMIT                 <- 1 round trip
//! ```
//!
//! | failure | what happens |
//! |---|---|
//! | crash or lost connection before COMMIT | MySQL rolls the batch back; the next sink reads the old position; the source resends the batch |
//! | connection lost during COMMIT (outcome unknown) | the next sink KILLs the old session ([`MySinkOptions::stale`]) and waits until it is gone, then reads the position: it says which |
//! | a statement gets no answer within the query deadline | transient error, the connection is given up; as above |
//! | deadlock, lock wait timeout | transient (`crate::error::error_class`): the driver retries from the position |
//! | a value MySQL cannot hold or rejects, a row not found | [`ApplyError::Rejected`] naming the change: the driver records it and stops, or steps over it with the operator's consent |
//! | a column missing on MySQL, a missing privilege | definite error with the fix |

mod convert;
mod rows;
mod session;
mod sql;
mod table;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::change::{ChangeEvent, Row};
use ferry_core::sink::{DeadLetter, Sink};
use ferry_core::switch::SessionId;
use ferry_core::{Lsn, SourcePosition, TableName};
use ferry_postgres::apply::{order_key, origin_names, ApplyError, TextSettings};
use ferry_postgres::state::StateStore;
use ferry_postgres::PgError;
use mysql_async::prelude::Queryable;
use mysql_async::Value;

pub use convert::Conv;
pub use session::applied;
pub use table::{JsonEq, MyColumn};

use crate::endpoint::{deadline, MyEndpoint, CLEANUP_TIMEOUT};
use crate::error::MyError;
use session::{end_stale_session, ensure_position_table, json_eq, lost, read_columns, read_position};
use table::Target;

/// The database of the position table when none is given.
pub const DEFAULT_STATE_DB: &str = "ferry";
/// The position table, in the state database. The forward binlog reader skips every
/// transaction whose first row event is on it.
pub const POSITION_TABLE: &str = "reverse_position";

/// `` `state_db`.`reverse_position` ``: where the reverse stream's sink records its position
/// ([`crate::apply`]), for people.
pub fn reverse_position_table(state_db: &str) -> String {
    format!("{}.{}", sql::ident(state_db), sql::ident(POSITION_TABLE))
}
/// Most rows in one multi-row INSERT.
pub const INSERT_ROWS: usize = 500;
/// Most value bytes in one multi-row INSERT (well under MySQL's default `max_allowed_packet`).
pub const INSERT_BYTES: usize = 4 << 20;
/// While the stream is idle, how often the sink asks how far the source has sent
/// ([`Sink::watermark`]): a rollback waits for the final position, often a point where none of
/// the migrated tables changed. At most one single-row update per period.
pub const WATERMARK_EVERY: Duration = Duration::from_millis(100);

/// The MySQL sink for each session of a PostgreSQL stream (`ferry_postgres::cdc::run`).
#[derive(Debug, Clone)]
pub struct MySinks {
    /// The MySQL/MariaDB server and database the migration came from.
    pub endpoint: MyEndpoint,
    /// The tables in scope, by name.
    pub tables: Vec<String>,
    /// The PostgreSQL schema they are in (the migration's target schema).
    pub target_schema: String,
    /// The database of `reverse_position` ([`DEFAULT_STATE_DB`]).
    pub state_db: String,
    /// The migration's id.
    pub migration_id: String,
    /// PostgreSQL server with Ferry's state schema (dead letters).
    pub state: ferry_postgres::Endpoint,
    /// The state schema's name there.
    pub state_schema: String,
}

impl ferry_postgres::cdc::SinkFactory for MySinks {
    type Sink = MySink;

    fn describe(&self) -> String {
        self.endpoint.describe()
    }

    /// `ordered_until` does not apply: the MySQL sink applies every change as it comes.
    async fn open(
        &self,
        settings: &TextSettings,
        skip: &HashSet<(Lsn, u32)>,
        _ordered_until: Lsn,
        stale: Option<SessionId>,
    ) -> Result<MySink, PgError> {
        let options = MySinkOptions {
            endpoint: self.endpoint.clone(),
            database: self.endpoint.database().to_string(),
            tables: self.tables.clone(),
            target_schema: self.target_schema.clone(),
            state_db: self.state_db.clone(),
            migration_id: self.migration_id.clone(),
            skip: skip.clone(),
            stale,
            state: self.state.clone(),
            store: StateStore::new(&self.state_schema),
            text: settings.clone(),
        };
        match MySink::open(options).await {
            Ok(sink) => Ok(sink),
            Err(ApplyError::Db(e)) => Err(e),
            Err(other) => Err(PgError::config(
                "starting reverse replication to MySQL/MariaDB",
                other.to_string(),
                "report this as a bug",
            )),
        }
    }

    /// Never resolves: every statement of the sink runs under the server's query deadline
    /// ([`MyEndpoint::within`]; a truncate under the catalog one), so a dead or hung session
    /// ends the call with a transient error by itself, and the next sink ends the session
    /// ([`Sink::session`]).
    fn watchdog(&self, _sink: &MySink, _limit: Duration) -> impl std::future::Future<Output = PgError> + 'static {
        std::future::pending()
    }
}

/// What a MySQL sink needs.
#[derive(Debug, Clone)]
pub struct MySinkOptions {
    /// The MySQL/MariaDB server (its connect and query deadlines, its TLS).
    pub endpoint: MyEndpoint,
    /// The database the migration copied (`<db>.<name>` became PostgreSQL's
    /// `<target_schema>.<name>`).
    pub database: String,
    /// The PostgreSQL schema of the tables in scope: a change to a table of another schema is
    /// skipped.
    pub target_schema: String,
    /// The tables in scope, by name; changes to other tables are skipped.
    pub tables: Vec<String>,
    /// The database of `reverse_position` ([`DEFAULT_STATE_DB`]; created if missing).
    pub state_db: String,
    /// The migration's id (the row of `reverse_position`, the origin names).
    pub migration_id: String,
    /// Dead letters to step over: (ordering key of the transaction's commit, change index).
    pub skip: HashSet<(Lsn, u32)>,
    /// The MySQL connection id of an earlier sink lost with a transaction open: ended (KILL)
    /// before the position is read, so that the position read is final.
    pub stale: Option<u64>,
    /// PostgreSQL server holding Ferry's state schema (the migration's target): dead letters
    /// are recorded there.
    pub state: ferry_postgres::Endpoint,
    /// The state schema on it.
    pub store: StateStore,
    /// The stream's text settings (`ferry_postgres::cdc`'s relations read them from the
    /// source): DateStyle must be ISO and IntervalStyle postgres, the forms this sink reads.
    pub text: TextSettings,
}

/// The session's `sql_mode`. STRICT_ALL_TABLES: a value MySQL cannot store exactly (out of
/// range, too long, an invalid date) is an error, hence a dead letter, where a lax mode would
/// store another value with a warning. NO_AUTO_VALUE_ON_ZERO: an AUTO_INCREMENT column given 0
/// stores 0, the stream's value, rather than a new one. NO_ENGINE_SUBSTITUTION: the position
/// table is InnoDB or is not created (a MyISAM position could not commit with the changes).
/// Neither ANSI_QUOTES nor NO_BACKSLASH_ESCAPES: the sink quotes with backticks and escapes
/// literals with backslashes.
const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";

/// The open source transaction.
#[derive(Debug, Clone)]
struct Txn {
    commit: SourcePosition,
    key: Lsn,
    /// Row changes seen so far (every change and every truncated table counts, as in the
    /// PostgreSQL applier, so that dead letters are numbered the same way).
    changes: u32,
    skip: bool,
    /// Written by Ferry's forward applier: skipped, but its position counts as applied.
    foreign: bool,
}

/// The open batch: one MySQL transaction.
#[derive(Debug)]
struct Batch {
    first: SourcePosition,
    end: Option<SourcePosition>,
    started: Instant,
    changes: usize,
    txns: u64,
    /// `START TRANSACTION` and the marker were sent.
    begun: bool,
}

/// An insert waiting to go out with the next ones into the same table.
#[derive(Debug)]
struct Pending {
    commit: SourcePosition,
    index: u32,
    row: Row,
}

/// Consecutive inserts into one table, sent as one statement.
struct Inserts {
    relation: u32,
    target: Arc<Target>,
    params: Vec<Value>,
    rows: Vec<Pending>,
    bytes: usize,
}

/// Applies a PostgreSQL change stream to MySQL/MariaDB. See the module documentation.
pub struct MySink {
    endpoint: MyEndpoint,
    /// None once given up (a deadline expired, the connection broke, [`Sink::abandon`]).
    conn: Option<mysql_async::Conn>,
    session: u64,
    database: String,
    /// The PostgreSQL schema of the tables in scope.
    target_schema: String,
    scope: HashSet<String>,
    catalog: HashMap<String, Vec<MyColumn>>,
    json_eq: JsonEq,
    /// `` `ferry`.`reverse_position` ``.
    position_table: String,
    migration_id: String,
    skip: HashSet<(Lsn, u32)>,
    skip_origin: String,
    state: ferry_postgres::Endpoint,
    store: StateStore,
    /// Relation id to its target (None: not in scope).
    rels: HashMap<u32, (TableName, Option<Arc<Target>>)>,
    txn: Option<Txn>,
    batch: Option<Batch>,
    inserts: Option<Inserts>,
    durable: Option<SourcePosition>,
    durable_key: Lsn,
    transactions: u64,
}

impl std::fmt::Debug for MySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySink")
            .field("server", &self.endpoint.describe())
            .field("session", &self.session)
            .field("durable", &self.durable)
            .finish()
    }
}

/// A MySQL error as the stream drivers' error: class, reason and fix kept, the server's error
/// number as `code` ("MySQL 1062").
pub fn db_error(e: MyError) -> ApplyError {
    ApplyError::Db(PgError {
        context: e.context,
        reason: e.reason,
        fix: e.fix,
        class: e.class,
        code: e.code.map(|c| format!("MySQL {c}")),
    })
}

fn bug(context: &str, reason: &str) -> ApplyError {
    ApplyError::Db(PgError::config(context, reason, "report this as a bug"))
}

/// Server errors that reject the change's data (a dead letter), as opposed to the session,
/// privileges or the schema (the operator must act) or a transient condition (retried).
pub fn rejects_data(code: u16) -> bool {
    matches!(
        code,
        // ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME, ER_DUP_UNKNOWN_IN_INDEX
        1062 | 1586 | 1859
        // ER_BAD_NULL_ERROR, ER_WARN_NULL_TO_NOTNULL, ER_NO_DEFAULT_FOR_FIELD
        | 1048 | 1263 | 1364
        // ER_WARN_DATA_OUT_OF_RANGE, WARN_DATA_TRUNCATED, ER_TRUNCATED_WRONG_VALUE,
        // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD, ER_ILLEGAL_VALUE_FOR_TYPE, ER_DATA_TOO_LONG,
        // ER_WRONG_VALUE_FOR_TYPE, ER_DATETIME_FUNCTION_OVERFLOW, ER_DATA_OUT_OF_RANGE
        | 1264 | 1265 | 1292 | 1366 | 1367 | 1406 | 1411 | 1441 | 1690
        // foreign keys (off in the session, but a server may enforce them anyway)
        | 1216 | 1217 | 1451 | 1452
        // MySQL CHECK constraint, invalid JSON; MariaDB CHECK constraint (json_valid)
        | 3819 | 3140 | 4025
    )
}

impl MySink {
    /// Connects, prepares the session, ends `stale`, creates the position table if missing,
    /// reads the durable position and the MySQL columns of the tables in scope.
    pub async fn open(o: MySinkOptions) -> Result<MySink, ApplyError> {
        if !o.text.date_style.to_ascii_uppercase().starts_with("ISO") || !o.text.interval_style.eq_ignore_ascii_case("postgres") {
            return Err(ApplyError::Db(PgError::config(
                "starting reverse replication to MySQL/MariaDB",
                format!(
                    "the source sends dates as DateStyle {:?} and intervals as IntervalStyle {:?}; the MySQL sink reads ISO and postgres",
                    o.text.date_style, o.text.interval_style
                ),
                "set them on the PostgreSQL database the stream comes from: ALTER DATABASE <db> SET DateStyle = 'ISO, MDY'; ALTER DATABASE <db> SET IntervalStyle = 'postgres'",
            )));
        }
        if o.state_db == o.database {
            return Err(ApplyError::Db(PgError::config(
                "starting reverse replication to MySQL/MariaDB",
                format!("the state database {} is the migrated database", o.state_db),
                "keep Ferry's position in a database of its own (the default is ferry)",
            )));
        }
        let endpoint = o.endpoint.clone().for_apply();
        let mut conn = endpoint.connect().await.map_err(db_error)?;
        // The server gives up on a row lock before the client's deadline: a lock wait is then
        // a transient server error (1205), never an abandoned statement.
        let lock_wait = (endpoint.query_timeout().as_secs() * 2 / 3).max(1);
        // Foreign keys are not checked: the source's order is consistent already, as
        // PostgreSQL's own apply (session_replication_role = replica) assumes.
        let setup =
            format!("SET SESSION sql_mode = '{SQL_MODE}', SESSION foreign_key_checks = 0, SESSION innodb_lock_wait_timeout = {lock_wait}");
        let (session, version) = endpoint
            .within("preparing the reverse replication session", async {
                let what = "preparing the reverse replication session";
                conn.query_drop(setup).await.map_err(|e| MyError::query(what, e))?;
                let row: Option<(u64, String)> = conn
                    .query_first("SELECT CONNECTION_ID(), VERSION()")
                    .await
                    .map_err(|e| MyError::query(what, e))?;
                row.ok_or_else(|| MyError::new(what, "no answer to SELECT CONNECTION_ID()", "report this as a bug"))
            })
            .await
            .map_err(db_error)?;
        if let Some(stale) = o.stale {
            end_stale_session(&endpoint, &mut conn, stale).await.map_err(db_error)?;
        }
        let position_table = format!("{}.{}", sql::ident(&o.state_db), sql::ident(POSITION_TABLE));
        ensure_position_table(&endpoint, &mut conn, &o.state_db, &position_table)
            .await
            .map_err(db_error)?;
        let stored = read_position(&endpoint, &mut conn, &position_table, &o.migration_id)
            .await
            .map_err(db_error)?;
        let catalog = read_columns(&endpoint, &mut conn, &o.database, &o.tables).await.map_err(db_error)?;
        let (durable, durable_key) = match stored {
            Some((key, p)) => (Some(p), key),
            None => (None, Lsn(0)),
        };
        let at = durable.as_ref().map_or_else(|| "none yet".to_string(), |p| p.to_string());
        tracing::info!(server = %endpoint.describe(), session, position = %at, "reverse replication session ready");
        Ok(MySink {
            json_eq: json_eq(&version),
            endpoint,
            conn: Some(conn),
            session,
            database: o.database,
            target_schema: o.target_schema,
            scope: o.tables.into_iter().collect(),
            catalog,
            position_table,
            skip_origin: origin_names(&o.migration_id).0,
            migration_id: o.migration_id,
            skip: o.skip,
            state: o.state,
            store: o.store,
            rels: HashMap::new(),
            txn: None,
            batch: None,
            inserts: None,
            durable,
            durable_key,
            transactions: 0,
        })
    }

    /// Runs a prepared statement under the query deadline (`limit`); returns the rows it
    /// found. A deadline that expired or a broken connection gives the connection up.
    async fn exec(&mut self, what: &str, sql: &str, params: Vec<Value>, limit: Duration) -> Result<u64, MyError> {
        let peer = self.endpoint.peer();
        let conn = self.conn.as_mut().ok_or_else(|| lost(what))?;
        let r = deadline(&peer, limit, what, async {
            conn.exec_drop(sql, params).await.map_err(|e| MyError::query(what, e))?;
            Ok(conn.affected_rows())
        })
        .await;
        self.give_up_unless_answered(&r);
        r
    }

    /// Runs statements in the text protocol (several, `;`-separated) under the query deadline.
    async fn query(&mut self, what: &str, sql: &str) -> Result<(), MyError> {
        let peer = self.endpoint.peer();
        let limit = self.endpoint.query_timeout();
        let conn = self.conn.as_mut().ok_or_else(|| lost(what))?;
        let r = deadline(&peer, limit, what, async {
            conn.query_drop(sql).await.map_err(|e| MyError::query(what, e))
        })
        .await;
        self.give_up_unless_answered(&r);
        r
    }

    /// Without an answer from the server (a deadline, a broken socket), the connection's state
    /// is unknown: it is dropped (closing it), and the next sink ends its session ([`Sink::session`]).
    fn give_up_unless_answered<T>(&mut self, r: &Result<T, MyError>) {
        if matches!(r, Err(e) if e.code.is_none()) {
            self.conn = None;
        }
    }

    /// Starts the batch's MySQL transaction, its first statement the marker (see the module
    /// documentation), if not yet done.
    async fn ensure_begun(&mut self) -> Result<(), ApplyError> {
        let first = match &self.batch {
            Some(b) if b.begun => return Ok(()),
            Some(b) => b.first.clone(),
            None => return Err(bug("applying a change to MySQL/MariaDB", "a change arrived outside a batch")),
        };
        let sql = format!("START TRANSACTION; {}", self.marker_sql(&first));
        self.query("starting a transaction on MySQL/MariaDB (with Ferry's position marker)", &sql)
            .await
            .map_err(db_error)?;
        if let Some(b) = self.batch.as_mut() {
            b.begun = true;
        }
        Ok(())
    }

    /// The marker: the migration's position row set to `at`. Its `updated_at` always moves
    /// (by a microsecond at least), so the statement always changes the row and the binlog
    /// always logs it, even when `at` equals the stored position (a source transaction whose
    /// commit starts right where the last one ended): no row change, no row event, and the
    /// forward reader would take the transaction for a user's.
    fn marker_sql(&self, at: &SourcePosition) -> String {
        format!(
            "INSERT INTO {t} (migration_id, lsn, position, updated_at) VALUES ({id}, {key}, {p}, UTC_TIMESTAMP(6))
             ON DUPLICATE KEY UPDATE lsn = VALUES(lsn), position = VALUES(position),
                 updated_at = GREATEST(VALUES(updated_at), updated_at + INTERVAL 1 MICROSECOND)",
            t = self.position_table,
            id = sql::literal(&self.migration_id),
            key = order_key(at).0,
            p = sql::literal(&at.to_string()),
        )
    }

    /// The table a row change goes to, counting the change; None when it is skipped (an
    /// applied or foreign transaction, a table out of scope, a dead letter stepped over).
    fn target_of(&mut self, relation: u32) -> Result<Option<(Arc<Target>, SourcePosition, u32)>, ApplyError> {
        let Some(txn) = self.txn.as_mut() else {
            return Err(bug(
                "applying a change to MySQL/MariaDB",
                "a row change arrived outside a transaction",
            ));
        };
        if txn.skip {
            return Ok(None);
        }
        txn.changes += 1;
        let (index, key, commit) = (txn.changes, txn.key, txn.commit.clone());
        let Some((_, target)) = self.rels.get(&relation) else {
            return Err(bug(
                "applying a change to MySQL/MariaDB",
                &format!("a change arrived for relation {relation} before its description"),
            ));
        };
        let Some(target) = target.clone() else { return Ok(None) };
        if self.skip.contains(&(key, index)) {
            tracing::warn!(table = %target.pg, commit = %commit, change = index, "stepping over a dead letter");
            return Ok(None);
        }
        if let Some(b) = self.batch.as_mut() {
            b.changes += 1;
        }
        Ok(Some((target, commit, index)))
    }

    fn relation(&mut self, r: ferry_core::change::Relation) -> Result<(), ApplyError> {
        let in_scope = r.table.schema == self.target_schema && self.scope.contains(&r.table.name);
        let target = if in_scope {
            let columns = self.catalog.get(&r.table.name).ok_or_else(|| {
                ApplyError::Db(PgError::config(
                    "applying changes to MySQL/MariaDB",
                    format!("{} has no table {}.{} on MySQL/MariaDB", r.table, self.database, r.table.name),
                    "create the table on MySQL/MariaDB as PostgreSQL has it (docs/mysql-types.md), or leave it out of the migration",
                ))
            })?;
            let t = Target::new(&r, &self.database, columns, self.json_eq).map_err(|why| {
                ApplyError::Db(PgError::config(
                    "applying changes to MySQL/MariaDB",
                    why,
                    "make the MySQL/MariaDB table match the PostgreSQL one (a schema change made after the cutover must be made on MySQL/MariaDB too)",
                ))
            })?;
            Some(Arc::new(t))
        } else {
            None
        };
        self.rels.insert(r.id, (r.table, target));
        Ok(())
    }

    async fn handle(&mut self, event: ChangeEvent) -> Result<(), ApplyError> {
        match event {
            ChangeEvent::Begin { commit, .. } => {
                let key = order_key(&commit);
                // Applied already: it committed before the recorded end of the last transaction
                // applied. A transaction whose commit starts exactly there is not (its commit
                // record can follow the last one's directly), hence `<`, as in the PostgreSQL
                // applier.
                let skip = key < self.durable_key;
                if !skip && self.batch.is_none() {
                    self.batch = Some(Batch {
                        first: commit.clone(),
                        end: None,
                        started: Instant::now(),
                        changes: 0,
                        txns: 0,
                        begun: false,
                    });
                }
                self.txn = Some(Txn {
                    commit,
                    key,
                    changes: 0,
                    skip,
                    foreign: false,
                });
            }
            ChangeEvent::Origin { name } => {
                if name == self.skip_origin {
                    if let Some(t) = self.txn.as_mut().filter(|t| !t.skip) {
                        t.skip = true;
                        t.foreign = true;
                    }
                }
            }
            ChangeEvent::Commit { end, .. } => {
                if let Some(t) = self.txn.take().filter(|t| !t.skip || t.foreign) {
                    if let Some(b) = self.batch.as_mut() {
                        b.end = Some(end);
                        b.txns += u64::from(!t.foreign);
                    }
                }
            }
            ChangeEvent::Relation(r) => {
                // Buffered inserts were converted with the previous description.
                self.flush_inserts().await?;
                self.relation(r)?;
            }
            ChangeEvent::Insert { relation, new } => {
                if let Some((t, commit, index)) = self.target_of(relation)? {
                    self.insert(relation, t, commit, index, new).await?;
                }
            }
            ChangeEvent::Update { relation, old, new } => {
                if let Some((t, commit, index)) = self.target_of(relation)? {
                    self.update(t, commit, index, old, new).await?;
                }
            }
            ChangeEvent::Delete { relation, old } => {
                if let Some((t, commit, index)) = self.target_of(relation)? {
                    self.delete(t, commit, index, old).await?;
                }
            }
            ChangeEvent::Truncate { relations, .. } => self.truncate(&relations).await?,
        }
        Ok(())
    }

    /// Commits the open batch: the rest of its inserts, the position, COMMIT.
    async fn commit_batch(&mut self) -> Result<(), ApplyError> {
        if self.batch.is_none() {
            return Ok(());
        }
        if self.txn.is_some() {
            return Err(bug("committing on MySQL/MariaDB", "asked to commit inside a source transaction"));
        }
        self.flush_inserts().await?;
        let Some(end) = self.batch.as_ref().and_then(|b| b.end.clone()) else {
            return Err(bug("committing on MySQL/MariaDB", "a batch without a committed transaction"));
        };
        self.ensure_begun().await?;
        let key = order_key(&end);
        let sql = format!(
            "UPDATE {t} SET lsn = {k}, position = {p}, updated_at = GREATEST(UTC_TIMESTAMP(6), updated_at + INTERVAL 1 MICROSECOND)
             WHERE migration_id = {id}; COMMIT",
            t = self.position_table,
            k = key.0,
            p = sql::literal(&end.to_string()),
            id = sql::literal(&self.migration_id),
        );
        self.query("committing applied changes with their position on MySQL/MariaDB", &sql)
            .await
            .map_err(db_error)?;
        let b = self.batch.take().expect("checked above");
        self.transactions += b.txns;
        self.durable = Some(end);
        self.durable_key = key;
        Ok(())
    }
}

impl Sink for MySink {
    type Error = ApplyError;

    async fn apply(&mut self, event: ChangeEvent) -> Result<(), ApplyError> {
        self.handle(event).await
    }

    fn at_boundary(&self) -> bool {
        self.txn.is_none()
    }

    fn batch_open(&self) -> bool {
        self.batch.is_some()
    }

    fn batch_len(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.changes)
    }

    fn batch_age(&self) -> Duration {
        self.batch.as_ref().map_or(Duration::ZERO, |b| b.started.elapsed())
    }

    async fn commit(&mut self) -> Result<(), ApplyError> {
        self.commit_batch().await
    }

    /// Commits are synchronous: nothing to wait for.
    async fn settle(&mut self) -> Result<Option<SourcePosition>, ApplyError> {
        Ok(self.durable.clone())
    }

    fn durable(&self) -> Option<SourcePosition> {
        self.durable.clone()
    }

    async fn rollback(&mut self) {
        self.inserts = None;
        self.txn = None;
        let begun = self.batch.take().is_some_and(|b| b.begun);
        // Bounded: after a lost connection it would never answer; the next sink ends the
        // session (and its transaction) instead.
        let answered = match (begun, self.conn.as_mut()) {
            (true, Some(conn)) => matches!(tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_drop("ROLLBACK")).await, Ok(Ok(()))),
            _ => true,
        };
        if !answered {
            self.conn = None;
        }
    }

    fn abandon(&mut self) {
        self.conn = None;
        self.inserts = None;
        self.batch = None;
        self.txn = None;
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.batch.as_ref().map(|b| b.started)
    }

    fn transactions(&self) -> u64 {
        self.transactions
    }

    fn watermark_every(&self) -> Option<Duration> {
        Some(WATERMARK_EVERY)
    }

    /// Records `at` as the position, alone in its transaction: the marker statement in
    /// autocommit (its first and only row change is the position row, so the forward reader
    /// leaves it out too).
    async fn watermark(&mut self, at: SourcePosition) -> Result<(), ApplyError> {
        let key = order_key(&at);
        if key <= self.durable_key || self.batch.is_some() || self.txn.is_some() {
            return Ok(());
        }
        let sql = self.marker_sql(&at);
        self.query("recording how far the source has sent (reverse replication position)", &sql)
            .await
            .map_err(db_error)?;
        self.durable = Some(at);
        self.durable_key = key;
        Ok(())
    }

    fn session(&self) -> Option<SessionId> {
        Some(self.session)
    }

    /// Records a dead letter in the state schema on PostgreSQL, on a connection of its own
    /// (`StateStore::record_dead_letter`: the same table and key as the PostgreSQL sink's).
    async fn record_dead_letter(&self, d: &DeadLetter, skipped: bool) -> Result<(), ApplyError> {
        let limit = self.endpoint.query_timeout();
        let work = async {
            let c = self.state.connect("reverse-dead-letters").await?;
            self.store.record_dead_letter(&c, &self.migration_id, d, skipped).await
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r.map_err(ApplyError::Db),
            Err(_) => Err(ApplyError::Db(PgError::transient(
                "recording a dead letter",
                format!("no answer from {} within {}", self.state.describe(), crate::endpoint::human(limit)),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::ErrorClass;

    #[test]
    fn data_errors_are_dead_letters_and_others_are_not() {
        for code in [1062, 1264, 1366, 1292, 1406, 1048, 1452, 4025] {
            assert!(rejects_data(code), "{code}");
        }
        // A missing table, a privilege, a read-only server, a deadlock: not the change's fault.
        for code in [1146, 1142, 1290, 1213, 1205, 2013] {
            assert!(!rejects_data(code), "{code}");
        }
        let e = db_error(MyError {
            context: "applying".into(),
            reason: "Deadlock found".into(),
            fix: None,
            class: ErrorClass::Transient,
            code: Some(1213),
        });
        match e {
            ApplyError::Db(p) => assert_eq!((p.class, p.code.as_deref()), (ErrorClass::Transient, Some("MySQL 1213"))),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn json_comparison_by_server() {
        assert_eq!(json_eq("8.0.36"), JsonEq::Cast);
        assert_eq!(json_eq("10.11.6-MariaDB-0+deb12u1-log"), JsonEq::Equals);
        assert_eq!(json_eq("10.6.16-MariaDB"), JsonEq::Skip);
        assert_eq!(json_eq("11.4.2-MariaDB"), JsonEq::Equals);
    }
}
