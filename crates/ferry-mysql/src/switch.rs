//! MySQL's (and MariaDB's) side of a switch: [`MySqlSide`] implements
//! [`ferry_core::switch::SwitchSide`] for a MySQL/MariaDB server, so that the switchboard in the
//! binary (which holds no SQL) can cut a MySQL/MariaDB source over to PostgreSQL without a proxy
//! (the protocols differ): read-only, writers ended after `--grace`, the final binlog position
//! applied by the stream, identities synced on the target, the phase recorded.
//!
//! - final position: the end of the binary log (`SHOW BINARY LOG STATUS` on MySQL 8.2+,
//!   `SHOW MASTER STATUS` elsewhere: [`crate::flavor`]);
//! - read-only: `SET GLOBAL read_only` (and `super_read_only` on MySQL, which has it);
//! - writers: sessions with an open InnoDB transaction in the migrated database, killed after
//!   the grace period; direct sessions: the process list. Ferry's own connections are spared by
//!   connection id ([`crate::endpoint::own_connections`]), never by a name a client announces;
//! - identities: the `AUTO_INCREMENT` counters of the migrated tables, read at a cutover and
//!   moved past the values PostgreSQL handed out at a rollback (`ALTER TABLE ... AUTO_INCREMENT`);
//! - reverse stream: none out of MySQL/MariaDB; into it (PostgreSQL to MySQL, which makes a
//!   rollback lossless), [`reverse_sink_blockers`] is the Go/NoGo of its sink.
//!
//! Where MySQL does not fit the contract as PostgreSQL does, and what this side does about it:
//! - **One connection, `&mut`.** mysql_async runs a statement on `&mut Conn`, the contract
//!   takes `&self`: Ferry's connection sits in a tokio `Mutex`, one statement (or a few) at a
//!   time, every one under the source's query deadline ([`MyEndpoint::query_timeout`]).
//! - **An abandoned statement.** The switchboard drops a call that outlives its deadline; a
//!   connection dropped in the middle of a statement is in an unknown state. The connection is
//!   taken out of the mutex for each statement and put back only when the server answered: a
//!   dropped call drops the connection with it, and the next call (the undo of
//!   [`SwitchSide::set_read_only`] first of all) opens a fresh one. The statement itself may
//!   still be running on the server (`SET GLOBAL read_only = ON` waiting for the global read
//!   lock, up to `lock_wait_timeout`): the undo kills such connections by id first, then
//!   sets read_only off, and retries once on a fresh connection when the held one fails.
//! - **`read_only` is server-wide.** It covers every session of the server at once, in every
//!   database, from the moment it is set (not only sessions that start afterwards, as
//!   PostgreSQL's database default does), so [`SwitchSide::end_writers`] only has to end the
//!   sessions still inside a transaction, whose writes can no longer commit. But users with
//!   `READ_ONLY ADMIN` (MariaDB 10.5+; also `SUPER` before MariaDB 10.11) can still write; on
//!   MySQL `super_read_only` is set too, which stops `SUPER`. [`SwitchSide::direct_sessions`]
//!   marks the sessions of users holding those privileges, for the report.
//! - **Ferry's own sessions** are known by connection id: every [`MyEndpoint::connect`] of
//!   this process is registered ([`crate::endpoint::own_connections`]), the way ferry-postgres
//!   registers backend pids. The stream of `ferry migrate` (another process) is a replication
//!   connection (`Binlog Dump`), not a client session: it is never listed.
//! - **Identities** are per-table counters (`AUTO_INCREMENT`, for the table's one generated
//!   column), reported with their column ([`Identity::column`]); the target (PostgreSQL) moves
//!   the column's sequence. Going back (a rollback), [`SwitchSide::advance_identities`] matches
//!   only generators named by table and column (PostgreSQL reports them so with
//!   `PgSide::with_column_identities`): MySQL has no sequences. `ALTER TABLE` is DDL: it waits
//!   for the table's metadata lock (bounded by the session's `lock_wait_timeout`) and is
//!   written to the binary log as a statement, `ALTER TABLE db.t AUTO_INCREMENT = n`, which
//!   the forward binlog reader steps over (it changes no column: [`crate::binlog::classify`]).
//! - **No reverse stream out of MySQL/MariaDB**: [`SwitchSide::reverse_blockers`] says so in
//!   one line, and [`SwitchSide::prepare_reverse`] refuses. A reverse stream *into* it (the
//!   sink of PostgreSQL's changes after a cutover) writes while the server is read-only: its
//!   user needs the privileges [`reverse_sink_blockers`] checks, and on MySQL the cutover must
//!   leave `super_read_only` off ([`MySqlSide::with_reverse_sink`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use ferry_core::switch::{DirectSession, Identity, IdentitySync, SessionId, SwitchSide};
use ferry_core::{SourcePosition, TableName};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::apply::{reverse_position_table, POSITION_TABLE};
use crate::endpoint::{own_connections, query, timed_out, MyEndpoint};
use crate::error::MyError;
use crate::flavor::{BinlogStatus, ServerVersion};
use crate::preflight::{quote_account, Grants, MyTable};

/// Why no reverse stream comes out of MySQL/MariaDB.
const NOT_BUILT: &str = "reverse replication with MySQL/MariaDB is not built yet (issue 18)";

/// One MySQL/MariaDB server in a switch: Ferry's connection to it and the migrated tables'
/// generated columns.
#[derive(Debug)]
pub struct MySqlSide<'a> {
    endpoint: &'a MyEndpoint,
    side: &'static str,
    /// Ferry's connection: taken out for each statement, put back when the server answered.
    /// None: not opened yet, or given up (an abandoned statement, a broken connection).
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Connection ids of Ferry's connections whose statement never answered (a deadline, a
    /// dropped call): the statement may still run on the server. Undoing read-only ends them
    /// first.
    in_doubt: std::sync::Mutex<Vec<u64>>,
    /// (table in the source database, `AUTO_INCREMENT` column) of every migrated table with a
    /// generated integer key.
    generated: Vec<(String, String)>,
    /// The PostgreSQL schema the migrated tables are in: identities are named there.
    schema: String,
    /// A reverse stream writes to this server after a cutover: read-only must not stop it.
    reverse_sink: bool,
    /// The server's family and version, read when Ferry's first connection opens.
    server: std::sync::OnceLock<ServerVersion>,
}

impl<'a> MySqlSide<'a> {
    /// The side `side` ("source", for messages) on the server `endpoint` names.
    pub fn new(endpoint: &'a MyEndpoint, side: &'static str) -> Self {
        Self {
            endpoint,
            side,
            conn: tokio::sync::Mutex::new(None),
            in_doubt: std::sync::Mutex::new(Vec::new()),
            generated: Vec::new(),
            schema: crate::state::DEFAULT_TARGET_SCHEMA.to_string(),
            reverse_sink: false,
            server: std::sync::OnceLock::new(),
        }
    }

    /// The migrated tables, whose `AUTO_INCREMENT` columns [`SwitchSide::identities`] reads
    /// (those mapped to an integer identity on the target), and the target schema they are in.
    pub fn with_tables(mut self, tables: &[MyTable], schema: &str) -> Self {
        self.generated = generated_columns(tables);
        self.schema = schema.to_string();
        self
    }

    /// A reverse stream (PostgreSQL to this server) writes here after the cutover, through
    /// read-only (its user holds `READ_ONLY ADMIN`, `CONNECTION_ADMIN` or `SUPER`): making the
    /// side read-only then sets `read_only` only, never MySQL's `super_read_only`, which stops
    /// every user but replication threads. Users with those privileges can still write, as the
    /// report of direct sessions says.
    pub fn with_reverse_sink(mut self) -> Self {
        self.reverse_sink = true;
        self
    }

    /// Opens Ferry's connection: `SET GLOBAL read_only` waits for the global read lock (behind
    /// `LOCK TABLES`, `FLUSH TABLES WITH READ LOCK`, commits in progress), and the server gives
    /// up on that wait after `lock_wait_timeout`, set here well inside the client's deadline:
    /// an expired deadline then means a dead server, never a statement that might still set
    /// read_only after Ferry gave up on it. MySQL 8 caches `information_schema.TABLES`
    /// (`AUTO_INCREMENT` included) unless told not to; MariaDB has no such variable. The
    /// server's version is read once, with the first connection.
    async fn open(&self) -> Result<Conn, MyError> {
        let mut c = self.endpoint.connect().await?;
        let lock_wait = read_only_lock_wait(self.endpoint.query_timeout());
        const WHAT: &str = "limiting the lock wait of Ferry's session";
        let known = self.server.get().is_some();
        let server = self
            .endpoint
            .within(WHAT, async {
                c.query_drop(format!("SET SESSION lock_wait_timeout = {lock_wait}"))
                    .await
                    .map_err(|e| MyError::query(WHAT, e))?;
                let server = if known { None } else { Some(crate::flavor::read(&mut c).await?) };
                if server.as_ref().is_none_or(|s| !s.is_mariadb()) {
                    let _ = c.query_drop("SET SESSION information_schema_stats_expiry = 0").await;
                }
                Ok(server)
            })
            .await?;
        if let Some(server) = server {
            let _ = self.server.set(server);
        }
        Ok(c)
    }

    /// The server's family and version, for messages (read by [`MySqlSide::open`]; a MySQL 8.0
    /// until then).
    fn server(&self) -> ServerVersion {
        self.server.get().cloned().unwrap_or_else(|| ServerVersion::parse("8.0.0", ""))
    }

    /// Runs `f` on Ferry's connection (opened first when there is none) under the query
    /// deadline. `f` gets the connection and gives it back with its result: a connection whose
    /// statement did not answer (deadline, or the call dropped) or that broke is not given
    /// back, and the next call opens a fresh one. A server's refusal keeps it.
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, MyError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, mysql_async::Error>)>,
    {
        let mut slot = self.conn.lock().await;
        let conn = match slot.take() {
            Some(c) => c,
            None => self.open().await?,
        };
        let limit = self.endpoint.query_timeout();
        // In doubt until the server answers: a call dropped meanwhile leaves it there.
        let id = u64::from(conn.id());
        self.in_doubt().push(id);
        let (conn, r) = tokio::time::timeout(limit, f(conn))
            .await
            .map_err(|_| timed_out(&self.endpoint.peer(), limit, what))?;
        self.in_doubt().retain(|i| *i != id);
        match r {
            Ok(v) => {
                *slot = Some(conn);
                Ok(v)
            }
            Err(e) => {
                // A refusal keeps the connection; a broken or killed one is not given back.
                let alive = match &e {
                    mysql_async::Error::Server(s) => !matches!(s.code, 1053 | 1927 | 4031),
                    _ => false,
                };
                if alive && !conn.is_disconnected() {
                    *slot = Some(conn);
                }
                Err(MyError::query(what, e))
            }
        }
    }

    /// The `AUTO_INCREMENT` counter (the next value) of every table of the migrated database
    /// that has one. MySQL 8 reads it fresh: [`MySqlSide::open`] turns its statistics cache off.
    async fn counters(&self, what: &str) -> Result<HashMap<String, u64>, MyError> {
        let db = self.endpoint.database().to_string();
        let rows: Vec<(String, Option<u64>)> = self
            .run(what, |mut c| async move {
                let r = c
                    .exec(
                        "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                        (db,),
                    )
                    .await;
                (c, r)
            })
            .await?;
        Ok(rows.into_iter().filter_map(|(t, n)| Some((t, n?))).collect())
    }

    fn in_doubt(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.in_doubt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends Ferry's connections whose statement never answered (`KILL`), so that an abandoned
    /// `SET GLOBAL read_only = ON` waiting for a lock cannot take effect after its undo. A
    /// connection that is gone already (1094, unknown thread) is fine.
    async fn end_in_doubt(&self) -> Result<(), MyError> {
        let ids = self.in_doubt().clone();
        if ids.is_empty() {
            return Ok(());
        }
        tracing::warn!(?ids, "ending Ferry's connections whose statement did not answer");
        let ended: Vec<u64> = self
            .run("ending Ferry's connections whose statement did not answer", |mut c| async move {
                let mut ended = Vec::new();
                for id in ids {
                    match c.query_drop(format!("KILL {id}")).await {
                        Ok(()) => ended.push(id),
                        Err(mysql_async::Error::Server(s)) if s.code == 1094 => ended.push(id),
                        Err(e) => return (c, Err(e)),
                    }
                }
                (c, Ok(ended))
            })
            .await?;
        self.in_doubt().retain(|i| !ended.contains(i));
        Ok(())
    }

    /// Whether Ferry's connection was given up (the next call opens a fresh one).
    async fn given_up(&self) -> bool {
        self.conn.lock().await.is_none()
    }

    /// `SET GLOBAL read_only` on or off, `super_read_only` with it on MySQL (on only without a
    /// reverse sink: [`MySqlSide::with_reverse_sink`]), then read back: Ok only when
    /// `@@GLOBAL.read_only` reads what was asked (an abandoned `read_only = ON` still waiting
    /// for its lock, or another session, may have set it otherwise since).
    ///
    /// As MySQL's manual states them: `super_read_only = ON` sets `read_only = ON` as well, and
    /// `read_only = OFF` sets `super_read_only = OFF` as well; both need `SYSTEM_VARIABLES_ADMIN`
    /// (or `SUPER`). So ON sets `read_only` first (what stops the application, the one that must
    /// succeed) and `super_read_only` after it; OFF needs `read_only = OFF` alone. MariaDB has no
    /// `super_read_only`: nothing is sent for it there.
    async fn read_only(&self, on: bool) -> Result<(), MyError> {
        let what = if on {
            format!("stopping writes on the {} (SET GLOBAL read_only = ON)", self.side)
        } else {
            format!("making the {} writable again (SET GLOBAL read_only = OFF)", self.side)
        };
        let reverse_sink = self.reverse_sink;
        let server = &self.server;
        let side = self.side;
        self.run(&what, |mut c| async move {
            // Read when the connection opened (run opens it before this runs).
            let super_too = on && !reverse_sink && server.get().is_none_or(ServerVersion::has_super_read_only);
            let r = if on {
                match c.query_drop("SET GLOBAL read_only = ON").await {
                    Ok(()) if super_too => {
                        // Stops users with SUPER or CONNECTION_ADMIN too. read_only is on
                        // already: a refusal here leaves them writing, said in a warning.
                        if let Err(e) = c.query_drop("SET GLOBAL super_read_only = ON").await {
                            tracing::warn!(side, error = %e, "SET GLOBAL super_read_only = ON failed: read_only is on, but users with SUPER or CONNECTION_ADMIN can still write");
                        }
                        Ok(())
                    }
                    r => r,
                }
            } else {
                c.query_drop("SET GLOBAL read_only = OFF").await
            };
            let r = match r {
                Ok(()) => c.query_first::<i64, _>("SELECT @@GLOBAL.read_only").await,
                Err(e) => Err(e),
            };
            (c, r)
        })
        .await
        .and_then(|now| read_only_is(on, now, &what))
        .map_err(|e| {
            let lock_wait = read_only_lock_wait(self.endpoint.query_timeout());
            let server = self.server();
            let fix = match e.code {
                Some(1205) => Some(format!(
                    "a session held a lock (LOCK TABLES, FLUSH TABLES WITH READ LOCK, a long commit) for more than {lock_wait} s: retry when it is done"
                )),
                // ER_SPECIFIC_ACCESS_DENIED_ERROR: the statement needs a privilege.
                Some(1227) => Some(set_global_fix(&server)),
                _ => None,
            };
            // A failure to connect says what the connection was for.
            let context = if e.context == what {
                e.context
            } else {
                format!("{what}: {}", e.context)
            };
            MyError {
                context,
                fix: fix.or(e.fix),
                ..e
            }
        })
    }
}

/// The fix for a refused `SET GLOBAL read_only` on `server`: the privilege it needs there.
fn set_global_fix(server: &ServerVersion) -> String {
    let need = server
        .needed_privileges()
        .into_iter()
        .find(|n| n.why.starts_with("SET GLOBAL read_only"))
        .map(|n| n.any_of)
        .unwrap_or(&["SUPER"][..]);
    format!(
        "Ferry's user needs {} on {server} (GRANT {} ON *.* TO ...)",
        need.join(" or "),
        need[0]
    )
}

/// Whether `@@GLOBAL.read_only`, read back after setting it (`now`), is what was asked (`on`);
/// Err says it is not, so that nobody reports the side writable (or read-only) when it is not.
fn read_only_is(on: bool, now: Option<i64>, what: &str) -> Result<(), MyError> {
    match now {
        Some(v) if (v != 0) == on => Ok(()),
        other => Err(MyError::transient(
            what,
            &format!(
                "the statement answered, but @@GLOBAL.read_only reads {} afterwards",
                other.map(|v| v.to_string()).unwrap_or_else(|| "nothing".into())
            ),
            if on {
                "another session made the server writable again meanwhile; cut over again"
            } else {
                "another session (or a SET GLOBAL read_only = ON of Ferry's that was still waiting for its lock) made it read-only again: \
                 run SET GLOBAL read_only = OFF on the server, and check SELECT @@GLOBAL.read_only"
            },
        )),
    }
}

impl MySqlSide<'_> {
    /// The fix for a refused or timed-out `ALTER TABLE ... AUTO_INCREMENT` on `table`.
    fn alter_fix(&self, e: MyError, table: &str) -> MyError {
        let db = quote(self.endpoint.database());
        let account = format!("'{}'@'<Ferry's host>'", self.endpoint.user().replace('\'', "''"));
        let fix = match e.code {
            Some(1205) => format!(
                "a session held a lock on {db}.{} (an open transaction, LOCK TABLES) for more than {} s: end it, then retry",
                quote(table),
                read_only_lock_wait(self.endpoint.query_timeout())
            ),
            Some(1142 | 1044) => format!("GRANT ALTER ON {db}.* TO {account}"),
            Some(1290 | 1836) => format!(
                "the server is read-only and Ferry's user may not write through it: GRANT READ_ONLY ADMIN ON *.* TO {account} (MariaDB), \
                 GRANT CONNECTION_ADMIN ON *.* TO {account} and SET GLOBAL super_read_only = OFF (MySQL)"
            ),
            _ => return e,
        };
        MyError { fix: Some(fix), ..e }
    }
}

impl SwitchSide for MySqlSide<'_> {
    type Error = MyError;

    fn side(&self) -> &str {
        self.side
    }

    /// Opens Ferry's connection ([`MySqlSide::open`]). Ferry's only write on a MySQL/MariaDB
    /// side is the `ALTER TABLE ... AUTO_INCREMENT` of a rollback (DDL: it commits on its own,
    /// and InnoDB makes it durable before it returns); `read_only` is server-wide, so it passes
    /// only by the privileges of Ferry's user (`READ_ONLY ADMIN`, `CONNECTION_ADMIN`, `SUPER`:
    /// [`reverse_sink_blockers`] checks them), not by anything a session can set.
    async fn prepare_session(&self) -> Result<(), MyError> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            *slot = Some(self.open().await?);
        }
        Ok(())
    }

    /// The end of the binary log: every transaction that committed before the call is in it
    /// (a commit is written to the binlog before it returns), and none that commits after. The
    /// stream records its position at transaction boundaries, and the end of the binlog is
    /// one: it reaches it without a later write. Nothing is written to mark it.
    async fn final_position(&self) -> Result<SourcePosition, MyError> {
        const WHAT: &str = "reading the binlog position";
        let server = &self.server;
        let row: Option<mysql_async::Row> = self
            .run(WHAT, |mut c| async move {
                // Read when the connection opened (run opens it before this runs).
                let sql = server.get().map_or("SHOW MASTER STATUS", ServerVersion::binlog_status_sql);
                let r = c.query_first(sql).await;
                (c, r)
            })
            .await?;
        BinlogStatus::from_row(row)?.position("").map(SourcePosition::Mysql)
    }

    /// `SET GLOBAL read_only`: server-wide, for every session at once (see the module
    /// documentation for who it does not stop). Bounded on the server by `lock_wait_timeout`
    /// ([`MySqlSide::open`]). Undoing it (`!on`) first kills Ferry's connections whose statement
    /// never answered (an abandoned `read_only = ON` may still be waiting for its lock), and
    /// retries once on a fresh connection when Ferry's connection fails or was given up.
    async fn set_read_only(&self, on: bool) -> Result<(), MyError> {
        if !on {
            self.end_in_doubt().await?;
        }
        match self.read_only(on).await {
            Err(e) if !on && self.given_up().await => {
                tracing::warn!(error = %e, "making the {} writable again on a fresh connection", self.side);
                self.read_only(false).await
            }
            r => r,
        }
    }

    /// Sessions with an open InnoDB transaction whose default database is the migrated one
    /// get `grace` to finish (read_only stops their writes from committing), then are killed.
    /// Sessions of other databases are stopped by read_only as well, but are not Ferry's to
    /// kill. Returns the sessions killed (`id (user@host)`); a session that left meanwhile is
    /// not one.
    async fn end_writers(&self, grace: Duration) -> Result<Vec<DirectSession>, MyError> {
        const LIST: &str = "listing open transactions";
        let until = Instant::now() + grace;
        loop {
            let db = self.endpoint.database().to_string();
            let open: Vec<(u64, String, String)> = self
                .run(LIST, |mut c| async move {
                    let r = c
                        .exec(
                            "SELECT t.trx_mysql_thread_id, p.USER, p.HOST FROM information_schema.INNODB_TRX t
                             JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
                             WHERE t.trx_mysql_thread_id <> CONNECTION_ID() AND p.DB = ?",
                            (db,),
                        )
                        .await;
                    (c, r)
                })
                .await?;
            // Read each round: a connection Ferry opened meanwhile is its own too.
            let own = own_connections(self.endpoint);
            let open: Vec<_> = open.into_iter().filter(|(id, ..)| !own.contains(id)).collect();
            if open.is_empty() {
                return Ok(Vec::new());
            }
            if Instant::now() >= until {
                let ids: Vec<u64> = open.iter().map(|(id, ..)| *id).collect();
                tracing::warn!(?ids, "killing sessions still in a transaction after the grace period");
                let killed: Vec<u64> = self
                    .run("ending sessions after the grace period", |mut c| async move {
                        let mut killed = Vec::new();
                        for id in ids {
                            // A session that ended meanwhile (1094, unknown thread) is not
                            // counted; a refusal is logged (its writes cannot commit anyway).
                            match c.query_drop(format!("KILL {id}")).await {
                                Ok(()) => killed.push(id),
                                Err(mysql_async::Error::Server(s)) if s.code == 1094 => {}
                                Err(mysql_async::Error::Server(s)) => {
                                    tracing::warn!(id, error = %s.message, "could not kill a session after the grace period")
                                }
                                Err(e) => return (c, Err(e)),
                            }
                        }
                        (c, Ok(killed))
                    })
                    .await?;
                return Ok(open
                    .into_iter()
                    .filter(|(id, ..)| killed.contains(id))
                    .map(|(id, user, host)| DirectSession {
                        id,
                        description: format!("{id} ({user}@{host})"),
                    })
                    .collect());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Client sessions on the server: neither Ferry's own nor `proxied`, nor replication
    /// (`Binlog Dump`) or the server's own threads. A MySQL session is not bound to a database
    /// (its `DB` is only its default), so every one on the server counts. The description names
    /// the privileges that let it write despite read_only, when its user holds them
    /// (`id (user@host)`, or `id (user@host; holds READ_ONLY ADMIN)`).
    async fn direct_sessions(&self, proxied: &[SessionId]) -> Result<Vec<DirectSession>, MyError> {
        let what = format!("listing sessions connected to the {}", self.side);
        let rows: Vec<(u64, String, String, String)> = self
            .run(&what, |mut c| async move {
                let r = c
                    .query(
                        "SELECT p.ID, p.USER, p.HOST,
                                COALESCE((SELECT GROUP_CONCAT(DISTINCT u.PRIVILEGE_TYPE ORDER BY u.PRIVILEGE_TYPE SEPARATOR ', ')
                                          FROM information_schema.USER_PRIVILEGES u
                                          WHERE SUBSTRING_INDEX(u.GRANTEE, '@', 1) = CONCAT('''', p.USER, '''')
                                            AND u.PRIVILEGE_TYPE IN ('SUPER', 'READ_ONLY ADMIN')), '')
                         FROM information_schema.PROCESSLIST p
                         WHERE p.ID <> CONNECTION_ID() AND p.COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Binlog Dump GTID')
                           AND p.USER NOT IN ('system user', 'event_scheduler')
                         ORDER BY p.ID",
                    )
                    .await;
                (c, r)
            })
            .await?;
        let own = own_connections(self.endpoint);
        Ok(rows
            .into_iter()
            .filter(|(id, ..)| !own.contains(id) && !proxied.contains(id))
            .map(|(id, user, host, privileges)| DirectSession {
                id,
                description: if privileges.is_empty() {
                    format!("{id} ({user}@{host})")
                } else {
                    format!("{id} ({user}@{host}; holds {privileges})")
                },
            })
            .collect())
    }

    /// The `AUTO_INCREMENT` counter of every migrated table with a generated integer key, as
    /// the last value handed out (the counter is the next one; 0: none yet), named as on the
    /// target (schema.table, with its column).
    async fn identities(&self) -> Result<Vec<Identity>, MyError> {
        if self.generated.is_empty() {
            return Ok(Vec::new());
        }
        let counters = self.counters("reading AUTO_INCREMENT counters").await?;
        Ok(self
            .generated
            .iter()
            .map(|(table, column)| {
                let next = counters.get(table).copied().unwrap_or(1);
                Identity {
                    name: TableName::new(&self.schema, table),
                    column: Some(column.clone()),
                    last_value: i64::try_from(next.saturating_sub(1)).unwrap_or(i64::MAX),
                }
            })
            .collect())
    }

    /// At a rollback (this side is the new one): the `AUTO_INCREMENT` counter of each migrated
    /// table whose generated column `from` names (schema.table with its column, as
    /// PostgreSQL reports them with `PgSide::with_column_identities`) is set past the last value
    /// handed out there, `ALTER TABLE db.table AUTO_INCREMENT = last + 1`, only when that is
    /// above the counter (never backwards; InnoDB itself never sets it below the column's
    /// greatest value + 1, and rows the reverse stream inserted with their ids moved it
    /// already). A generator of `from` named otherwise (a plain sequence) or a table without
    /// a counter here is skipped. Returns every generator matched, with the counter read back
    /// afterwards (`to`: the next value MySQL hands out), moved or not: a second call returns
    /// the same and changes nothing.
    ///
    /// Each `ALTER TABLE` waits for the table's metadata lock (a session inside a transaction
    /// on it holds one) at most `lock_wait_timeout`, two thirds of the query deadline
    /// (`MySqlSide::open`), then fails (transient). An abandoned call may still move a
    /// counter on the server afterwards; moving forward is what the next call would do anyway.
    async fn advance_identities(&self, from: &[Identity]) -> Result<Vec<IdentitySync>, MyError> {
        let wanted: Vec<(&str, &str, i64)> = self
            .generated
            .iter()
            .filter_map(|(table, column)| {
                let name = TableName::new(&self.schema, table);
                from.iter()
                    .find(|i| i.name == name && i.column.as_deref() == Some(column.as_str()))
                    .map(|i| (table.as_str(), column.as_str(), i.last_value))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let before = self.counters("reading AUTO_INCREMENT counters").await?;
        let db = self.endpoint.database();
        let mut present = Vec::new();
        for (table, column, last) in wanted {
            // No counter here: the table or its generated column is gone.
            let Some(&next) = before.get(table) else { continue };
            present.push((table, column, last));
            let Some(want) = auto_increment_past(last, next) else { continue };
            let sql = format!("ALTER TABLE {}.{} AUTO_INCREMENT = {want}", quote(db), quote(table));
            let what = format!(
                "setting AUTO_INCREMENT of {}.{} on the {} past the last id PostgreSQL handed out ({sql})",
                quote(db),
                quote(table),
                self.side
            );
            self.run(&what, |mut c| async move {
                let r = c.query_drop(sql).await;
                (c, r)
            })
            .await
            .map_err(|e| self.alter_fix(e, table))?;
        }
        let after = self.counters("reading AUTO_INCREMENT counters back").await?;
        Ok(present
            .into_iter()
            .filter_map(|(table, column, last)| {
                after.get(table).map(|&next| IdentitySync {
                    name: TableName::new(&self.schema, table),
                    column: Some(column.to_string()),
                    from: last,
                    to: i64::try_from(next).unwrap_or(i64::MAX),
                })
            })
            .collect())
    }

    async fn reverse_blockers(&self) -> Vec<String> {
        vec![format!(
            "{NOT_BUILT}: nothing would keep the {} (MySQL/MariaDB) and PostgreSQL in step after the switch, so a rollback to MySQL/MariaDB is not possible yet",
            self.side
        )]
    }

    async fn prepare_reverse(&self, _tables: &[TableName]) -> Result<(), MyError> {
        Err(MyError::new(
            "preparing reverse replication",
            &format!("{NOT_BUILT} (the {} is MySQL/MariaDB)", self.side),
            "cut over without reverse replication (rollback to MySQL/MariaDB is not built)",
        ))
    }

    /// Nothing to drop: [`SwitchSide::prepare_reverse`] creates nothing.
    async fn drop_reverse(&self) -> Result<(), MyError> {
        Ok(())
    }
}

/// Go / NoGo, before a cutover from the MySQL/MariaDB server `endpoint` to PostgreSQL, for a
/// reverse stream that keeps the server current afterwards (so that a rollback loses nothing):
/// what would stop its sink, one line each, naming what is missing and the `GRANT` (or setting)
/// that fixes it; empty: nothing. A failure to find out is a blocker too. Reads only: the
/// account's grants (`SHOW GRANTS`), `read_only`/`super_read_only` and whether the state
/// database exists; nothing is tried by writing.
///
/// The sink writes, through the read-only the cutover sets on the server:
/// - its position, in table `state_db`.`reverse_position` (created at cutover, with the
///   database if need be: [`crate::apply`]): `CREATE` on the database unless both exist, and
///   `SELECT`, `INSERT`, `UPDATE` on it;
/// - every change made on PostgreSQL, to the migrated `tables`: `SELECT` (its updates and
///   deletes find rows by key), `INSERT`, `UPDATE`, `DELETE`; and `ALTER` on tables with an
///   `AUTO_INCREMENT` column, which a rollback moves past the ids PostgreSQL handed out;
/// - while `read_only` is on: MariaDB 10.11 and later exempt only `READ_ONLY ADMIN` (10.5.2 to
///   10.10 also `SUPER`, earlier only `SUPER`); MySQL exempts `CONNECTION_ADMIN` or `SUPER`,
///   and nobody while `super_read_only` is on.
///
/// The binary log is not needed on the server for this (the reverse stream reads PostgreSQL's
/// write-ahead log). Privileges held only through a role are not counted: Ferry's sessions set
/// no role.
pub async fn reverse_sink_blockers(endpoint: &MyEndpoint, state_db: &str, tables: &[MyTable]) -> Vec<String> {
    match sink_facts(endpoint, state_db).await {
        Ok(facts) => sink_blockers(&facts, endpoint.database(), state_db, tables),
        Err(e) => vec![format!(
            "could not find out whether reverse replication can write to the MySQL/MariaDB source: {e}"
        )],
    }
}

/// What [`reverse_sink_blockers`] reads from the server.
#[derive(Debug, Clone)]
struct SinkFacts {
    /// `VERSION()`.
    version: String,
    /// `CURRENT_USER()`, `user@host`.
    account: String,
    grants: Grants,
    /// `super_read_only` (None: MariaDB, which has no such variable).
    super_read_only: Option<bool>,
    /// The state database exists, and its position table in it.
    state_db: bool,
    state_table: bool,
}

async fn sink_facts(endpoint: &MyEndpoint, state_db: &str) -> Result<SinkFacts, MyError> {
    const WHAT: &str = "reading the grants of Ferry's user for reverse replication";
    let mut c = endpoint.connect().await?;
    let state_db = state_db.to_string();
    let facts = endpoint
        .within(WHAT, async {
            let (version, account): (String, String) = query(&mut c, WHAT, "SELECT VERSION(), CURRENT_USER()")
                .await?
                .pop()
                .ok_or_else(|| MyError::new(WHAT, "no answer to SELECT VERSION()", "report this as a bug"))?;
            let grants: Vec<String> = query(&mut c, WHAT, "SHOW GRANTS FOR CURRENT_USER()").await?;
            let vars: Vec<(String, String)> = query(&mut c, WHAT, "SHOW GLOBAL VARIABLES WHERE Variable_name = 'super_read_only'").await?;
            let state: Vec<(String, u64)> = c
                .exec(
                    "SELECT s.SCHEMA_NAME, (SELECT COUNT(*) FROM information_schema.TABLES t
                                            WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME AND t.TABLE_NAME = ?)
                     FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME = ?",
                    (POSITION_TABLE, state_db),
                )
                .await
                .map_err(|e| MyError::query(WHAT, e))?;
            Ok(SinkFacts {
                version,
                account,
                grants: Grants::parse(&grants),
                super_read_only: vars.first().map(|(_, v)| matches!(v.to_ascii_uppercase().as_str(), "ON" | "1")),
                state_db: !state.is_empty(),
                state_table: state.first().is_some_and(|(_, n)| *n > 0),
            })
        })
        .await;
    endpoint.disconnect(c).await;
    facts
}

/// The blockers of [`reverse_sink_blockers`], from what the server said.
fn sink_blockers(facts: &SinkFacts, db: &str, state_db: &str, tables: &[MyTable]) -> Vec<String> {
    let g = &facts.grants;
    let account = quote_account(&facts.account);
    fn missing(held: impl Fn(&str) -> bool, wanted: &[&'static str]) -> Vec<&'static str> {
        wanted.iter().copied().filter(|p| !held(p)).collect()
    }
    let mut out = Vec::new();

    // (a) The position table: read, inserted, updated by the sink.
    let state_missing = if facts.state_table {
        missing(|p| g.table(state_db, POSITION_TABLE, p), &["SELECT", "INSERT", "UPDATE"])
    } else {
        missing(|p| g.database(state_db, p), &["CREATE", "SELECT", "INSERT", "UPDATE"])
    };
    if !state_missing.is_empty() {
        let what = if facts.state_table {
            format!("table {}", reverse_position_table(state_db))
        } else if facts.state_db {
            format!(
                "database {} (to create table {} in it)",
                quote(state_db),
                reverse_position_table(state_db)
            )
        } else {
            format!(
                "database {} (to create it with table {})",
                quote(state_db),
                reverse_position_table(state_db)
            )
        };
        out.push(format!(
            "{account} lacks {} on {what}, where reverse replication records its position with every change it applies to the source: GRANT {} ON {}.* TO {account}",
            state_missing.join(", "),
            state_missing.join(", "),
            quote(state_db)
        ));
    }

    // (b) The migrated tables.
    let generated = generated_columns(tables);
    let mut lacking: Vec<&'static str> = Vec::new();
    let mut short: Vec<&str> = Vec::new();
    for t in tables {
        let mut wanted = vec!["SELECT", "INSERT", "UPDATE", "DELETE"];
        if generated.iter().any(|(table, _)| *table == t.name) {
            wanted.push("ALTER");
        }
        let m = missing(|p| g.table(db, &t.name, p), &wanted);
        if !m.is_empty() {
            short.push(&t.name);
            for p in m {
                if !lacking.contains(&p) {
                    lacking.push(p);
                }
            }
        }
    }
    if !short.is_empty() {
        lacking.sort_by_key(|p| ["SELECT", "INSERT", "UPDATE", "DELETE", "ALTER"].iter().position(|x| x == p));
        const SHOWN: usize = 5;
        let mut names = short.iter().take(SHOWN).map(|t| quote(t)).collect::<Vec<_>>().join(", ");
        if short.len() > SHOWN {
            names.push_str(&format!(" and {} more", short.len() - SHOWN));
        }
        out.push(format!(
            "{account} lacks {} on migrated tables of {} ({names}): reverse replication writes every change made on PostgreSQL after the cutover to them{}: GRANT {} ON {}.* TO {account}",
            lacking.join(", "),
            quote(db),
            if lacking.contains(&"ALTER") {
                ", and a rollback moves their AUTO_INCREMENT past the ids PostgreSQL handed out (ALTER)"
            } else {
                ""
            },
            lacking.join(", "),
            quote(db)
        ));
    }

    // (c) Writing through read-only.
    let server = ServerVersion::parse(&facts.version, "");
    let (exempt, grant) = server.read_only_exempt();
    if !exempt.iter().any(|p| g.global(p)) {
        out.push(format!(
            "{account} lacks {} on the source ({} {}): the cutover makes the source read-only, and reverse replication must write through it: GRANT {grant} ON *.* TO {account}",
            exempt.join(" or "),
            server.name(),
            server.numbers.map(|n| n.to_string()).join(".")
        ));
    }
    if facts.super_read_only == Some(true) {
        out.push(
            "super_read_only is ON on the source: it stops every write, even of users with SUPER or CONNECTION_ADMIN, so reverse replication could not apply anything: SET GLOBAL super_read_only = OFF (and remove super_read_only from my.cnf)"
                .to_string(),
        );
    }
    out
}

/// (table, `AUTO_INCREMENT` column) of every table of `tables` with a generated key mapped to an
/// integer identity on the target.
fn generated_columns(tables: &[MyTable]) -> Vec<(String, String)> {
    tables
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .filter(|(_, m)| m.identity && matches!(m.target.as_str(), "smallint" | "integer" | "bigint"))
                .map(|(c, _)| (t.name.clone(), c.clone()))
        })
        .collect()
}

/// The `AUTO_INCREMENT` value that puts a counter at `next` past `last` (the last value handed
/// out elsewhere), or None when it is there already: a counter never moves back.
fn auto_increment_past(last: i64, next: u64) -> Option<u64> {
    let want = u64::try_from(last).ok()?.checked_add(1)?;
    (want > next).then_some(want)
}

/// A MySQL identifier in backticks.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `lock_wait_timeout` (seconds) of Ferry's session: two thirds of the query deadline, so
/// that the server ends a wait for the global read lock before the client gives up on it.
fn read_only_lock_wait(query_timeout: Duration) -> u64 {
    (query_timeout * 2 / 3).as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_counts_only_when_read_back() {
        assert!(read_only_is(false, Some(0), "x").is_ok());
        assert!(read_only_is(true, Some(1), "x").is_ok());
        let e = read_only_is(false, Some(1), "making the source writable again").unwrap_err();
        assert!(e.to_string().contains("@@GLOBAL.read_only reads 1"), "{e}");
        assert!(e.fix.as_deref().unwrap().contains("SET GLOBAL read_only = OFF"), "{e}");
        assert!(read_only_is(false, None, "x").is_err());
        assert!(read_only_is(true, Some(0), "x").is_err());
    }

    #[test]
    fn a_refused_set_global_names_the_flavours_privilege() {
        let mysql = set_global_fix(&ServerVersion::parse("8.4.2", ""));
        assert_eq!(
            mysql,
            "Ferry's user needs SYSTEM_VARIABLES_ADMIN or SUPER on MySQL 8.4.2 (GRANT SYSTEM_VARIABLES_ADMIN ON *.* TO ...)"
        );
        let maria = set_global_fix(&ServerVersion::parse("10.11.9-MariaDB", ""));
        assert!(
            maria.contains("needs READ_ONLY ADMIN on MariaDB 10.11.9") && maria.ends_with("(GRANT READ_ONLY ADMIN ON *.* TO ...)"),
            "{maria}"
        );
    }

    #[test]
    fn the_server_gives_up_on_the_read_only_lock_before_the_client() {
        assert_eq!(read_only_lock_wait(Duration::from_secs(30)), 20);
        assert_eq!(read_only_lock_wait(Duration::from_millis(200)), 1);
    }

    #[test]
    fn auto_increment_only_moves_forward() {
        assert_eq!(auto_increment_past(41, 10), Some(42));
        assert_eq!(auto_increment_past(41, 42), None, "there already");
        assert_eq!(auto_increment_past(41, 500), None, "never backwards");
        assert_eq!(auto_increment_past(0, 1), None);
        assert_eq!(auto_increment_past(-5, 1), None, "a descending generator moves nothing");
        assert_eq!(auto_increment_past(i64::MAX, 1), Some(1 << 63));
        assert_eq!(reverse_position_table("my`db"), "`my``db`.`reverse_position`");
    }

    fn table(name: &str, auto_increment: bool) -> MyTable {
        serde_json::from_value(serde_json::json!({
            "name": name, "engine": "InnoDB", "estimated_rows": 0, "bytes": 0, "primary_key": ["id"], "auto_increment": null,
            "columns": [
                ["id", {"source": "bigint(20)", "target": "bigint", "not_null": true, "identity": auto_increment, "attention": "none"}]
            ]
        }))
        .unwrap()
    }

    fn facts(version: &str, grants: &[&str]) -> SinkFacts {
        SinkFacts {
            version: version.into(),
            account: "ferry@%".into(),
            grants: Grants::parse(&grants.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
            super_read_only: None,
            state_db: false,
            state_table: false,
        }
    }

    #[test]
    fn the_reverse_sink_needs_its_state_the_tables_and_read_only_exemption() {
        let tables = [table("orders", true), table("notes", false)];
        let root = facts(
            "10.11.6-MariaDB",
            &["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"],
        );
        assert!(sink_blockers(&root, "shop", "ferry", &tables).is_empty());

        // The forward migration's grants only.
        let reader = facts(
            "10.11.6-MariaDB",
            &["GRANT SELECT, RELOAD, BINLOG MONITOR, REPLICATION SLAVE ON *.* TO `ferry`@`%`"],
        );
        let b = sink_blockers(&reader, "shop", "ferry", &tables);
        assert_eq!(b.len(), 3, "{b:#?}");
        assert!(b[0].contains("lacks CREATE, INSERT, UPDATE on database `ferry`"), "{}", b[0]);
        assert!(
            b[0].ends_with("GRANT CREATE, INSERT, UPDATE ON `ferry`.* TO 'ferry'@'%'"),
            "{}",
            b[0]
        );
        assert!(b[1].contains("`orders`, `notes`") && b[1].contains("AUTO_INCREMENT"), "{}", b[1]);
        assert!(
            b[1].ends_with("GRANT INSERT, UPDATE, DELETE, ALTER ON `shop`.* TO 'ferry'@'%'"),
            "{}",
            b[1]
        );
        assert!(
            b[2].contains("lacks READ_ONLY ADMIN") && b[2].contains("MariaDB 10.11.6"),
            "{}",
            b[2]
        );
        assert!(b[2].ends_with("GRANT READ_ONLY ADMIN ON *.* TO 'ferry'@'%'"), "{}", b[2]);

        // Enough, at every level: the state table exists and is granted on its own.
        let mut granted = facts(
            "10.6.16-MariaDB",
            &[
                "GRANT SUPER, SELECT ON *.* TO `ferry`@`%`",
                "GRANT INSERT, UPDATE, DELETE ON `sh_p`.* TO `ferry`@`%`",
                "GRANT ALTER ON `shop`.`orders` TO `ferry`@`%`",
                "GRANT INSERT, UPDATE ON `ferry`.`reverse_position` TO `ferry`@`%`",
            ],
        );
        granted.state_db = true;
        granted.state_table = true;
        assert!(
            sink_blockers(&granted, "shop", "ferry", &tables).is_empty(),
            "SUPER exempts before 10.11"
        );
        granted.version = "10.11.6-MariaDB".into();
        let b = sink_blockers(&granted, "shop", "ferry", &tables);
        assert!(
            b.len() == 1 && b[0].contains("lacks READ_ONLY ADMIN "),
            "SUPER no longer exempts: {b:?}"
        );
        // The table exists, its database lacks CREATE: only what the table needs counts.
        granted.version = "8.0.36".into();
        granted.super_read_only = Some(false);
        assert!(
            sink_blockers(&granted, "shop", "ferry", &tables).is_empty(),
            "SUPER exempts on MySQL"
        );
        granted.super_read_only = Some(true);
        let b = sink_blockers(&granted, "shop", "ferry", &tables);
        assert!(b.len() == 1 && b[0].starts_with("super_read_only is ON"), "{b:?}");

        // MySQL 8 without SUPER: CONNECTION_ADMIN; a missing ALTER alone.
        let mysql = facts(
            "8.4.0",
            &[
                "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON *.* TO `ferry`@`%`",
                "GRANT BINLOG_ADMIN ON *.* TO `ferry`@`%`",
            ],
        );
        let b = sink_blockers(&mysql, "shop", "ferry", &tables);
        assert_eq!(b.len(), 2, "{b:#?}");
        assert!(b[0].contains("lacks ALTER on migrated tables of `shop` (`orders`)"), "{}", b[0]);
        assert!(
            b[1].contains("lacks CONNECTION_ADMIN or SUPER") && b[1].ends_with("GRANT CONNECTION_ADMIN ON *.* TO 'ferry'@'%'"),
            "{}",
            b[1]
        );
    }
}
