//! MySQL's (and MariaDB's) side of a switch: [`MySqlSide`] implements
//! [`ferry_core::switch::SwitchSide`] for a MySQL/MariaDB server, so that the switchboard in the
//! binary (which holds no SQL) can cut a MySQL/MariaDB source over to PostgreSQL without a proxy
//! (the protocols differ): read-only, writers ended after `--grace`, the final binlog position
//! applied by the stream, identities synced on the target, the phase recorded.
//!
//! - final position: the end of the binary log (`SHOW MASTER STATUS`), [`binlog_position`];
//! - read-only: `SET GLOBAL read_only` (and `super_read_only` where the server has it);
//! - writers: sessions with an open InnoDB transaction in the migrated database, killed after
//!   the grace period; direct sessions: the process list. Ferry's own connections are spared by
//!   connection id ([`crate::endpoint::own_connections`]), never by a name a client announces;
//! - identities: the `AUTO_INCREMENT` counters of the migrated tables;
//! - reverse stream: none yet (issue 18).
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
//! - **Identities** are per-column counters (`AUTO_INCREMENT`), reported with their column
//!   ([`Identity::column`]); the target (PostgreSQL) moves the column's sequence.
//!   [`SwitchSide::advance_identities`] on MySQL is refused: MySQL/MariaDB is never the side
//!   writes go to until reverse replication to MySQL exists (issue 18), and a path no switch
//!   takes would be untested.
//! - **No reverse stream**: [`SwitchSide::reverse_blockers`] says so in one line, and
//!   [`SwitchSide::prepare_reverse`] refuses; a MySQL/MariaDB cutover runs without one, and
//!   rollback to MySQL/MariaDB is not built yet.

use std::future::Future;
use std::time::{Duration, Instant};

use ferry_core::switch::{DirectSession, Identity, IdentitySync, SessionId, SwitchSide};
use ferry_core::{BinlogPosition, SourcePosition, TableName};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::endpoint::{own_connections, timed_out, MyEndpoint};
use crate::error::MyError;
use crate::preflight::MyTable;

/// Where writes stop, until reverse replication to MySQL exists.
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
        }
    }

    /// The migrated tables, whose `AUTO_INCREMENT` columns [`SwitchSide::identities`] reads
    /// (those mapped to an integer identity on the target; each lands in its `public` schema).
    pub fn with_tables(mut self, tables: &[MyTable]) -> Self {
        self.generated = tables
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .filter(|(_, m)| m.identity && matches!(m.target.as_str(), "smallint" | "integer" | "bigint"))
                    .map(|(c, _)| (t.name.clone(), c.clone()))
            })
            .collect();
        self
    }

    /// Opens Ferry's connection: `SET GLOBAL read_only` waits for the global read lock (behind
    /// `LOCK TABLES`, `FLUSH TABLES WITH READ LOCK`, commits in progress), and the server gives
    /// up on that wait after `lock_wait_timeout`, set here well inside the client's deadline:
    /// an expired deadline then means a dead server, never a statement that might still set
    /// read_only after Ferry gave up on it. MySQL 8 caches `information_schema.TABLES`
    /// (`AUTO_INCREMENT` included) unless told not to; MariaDB has no such variable.
    async fn open(&self) -> Result<Conn, MyError> {
        let mut c = self.endpoint.connect().await?;
        let lock_wait = read_only_lock_wait(self.endpoint.query_timeout());
        const WHAT: &str = "limiting the lock wait of Ferry's session";
        self.endpoint
            .within(WHAT, async {
                c.query_drop(format!("SET SESSION lock_wait_timeout = {lock_wait}"))
                    .await
                    .map_err(|e| MyError::query(WHAT, e))?;
                let _ = c.query_drop("SET SESSION information_schema_stats_expiry = 0").await;
                Ok(())
            })
            .await?;
        Ok(c)
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

    /// `SET GLOBAL read_only` on or off, `super_read_only` with it where the server has it.
    async fn read_only(&self, on: bool) -> Result<(), MyError> {
        let what = if on {
            format!("stopping writes on the {} (SET GLOBAL read_only = ON)", self.side)
        } else {
            format!("making the {} writable again (SET GLOBAL read_only = OFF)", self.side)
        };
        self.run(&what, |mut c| async move {
            // MySQL 8 also stops users with SUPER (setting super_read_only sets read_only);
            // MariaDB has no such variable: its error is expected and ignored.
            let r = if on {
                match c.query_drop("SET GLOBAL read_only = ON").await {
                    Ok(()) => {
                        let _ = c.query_drop("SET GLOBAL super_read_only = ON").await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                let _ = c.query_drop("SET GLOBAL super_read_only = OFF").await;
                c.query_drop("SET GLOBAL read_only = OFF").await
            };
            (c, r)
        })
        .await
        .map_err(|e| {
            let lock_wait = read_only_lock_wait(self.endpoint.query_timeout());
            let fix = match e.code {
                Some(1205) => format!(
                    "a session held a lock (LOCK TABLES, FLUSH TABLES WITH READ LOCK, a long commit) for more than {lock_wait} s: retry when it is done"
                ),
                Some(_) => "Ferry's user needs SUPER (MySQL) or READ_ONLY ADMIN (MariaDB 10.11: GRANT READ_ONLY ADMIN ON *.* TO ...)".into(),
                None => return e,
            };
            MyError { fix: Some(fix), ..e }
        })
    }
}

impl SwitchSide for MySqlSide<'_> {
    type Error = MyError;

    fn side(&self) -> &str {
        self.side
    }

    /// Opens Ferry's connection ([`MySqlSide::open`]). Ferry writes nothing on a MySQL/MariaDB
    /// side (its changes are read from the binlog), so its session needs no exemption from
    /// read-only and commits nothing.
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
        let row: Option<mysql_async::Row> = self
            .run(WHAT, |mut c| async move {
                let r = c.query_first("SHOW MASTER STATUS").await;
                (c, r)
            })
            .await?;
        binlog_position(row).map(SourcePosition::Mysql)
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
    /// target (`public`.table, with its column).
    async fn identities(&self) -> Result<Vec<Identity>, MyError> {
        if self.generated.is_empty() {
            return Ok(Vec::new());
        }
        const WHAT: &str = "reading AUTO_INCREMENT counters";
        let db = self.endpoint.database().to_string();
        let counters: Vec<(String, Option<u64>)> = self
            .run(WHAT, |mut c| async move {
                let r = c
                    .exec(
                        "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                        (db,),
                    )
                    .await;
                (c, r)
            })
            .await?;
        Ok(self
            .generated
            .iter()
            .map(|(table, column)| {
                let next = counters.iter().find(|(t, _)| t == table).and_then(|(_, n)| *n).unwrap_or(1);
                Identity {
                    name: TableName::new("public", table),
                    column: Some(column.clone()),
                    last_value: i64::try_from(next.saturating_sub(1)).unwrap_or(i64::MAX),
                }
            })
            .collect())
    }

    /// Refused: writes never go to MySQL/MariaDB before reverse replication to it exists.
    async fn advance_identities(&self, _from: &[Identity]) -> Result<Vec<IdentitySync>, MyError> {
        Err(MyError::new(
            &format!("moving AUTO_INCREMENT counters on the {}", self.side),
            &format!("not supported until reverse replication to MySQL (issue 18): {NOT_BUILT}"),
            "report this as a bug: no switch sends writes to MySQL/MariaDB yet",
        ))
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

/// The binlog position of a `SHOW MASTER STATUS` row (None: the binary log is off).
pub(crate) fn binlog_position(row: Option<mysql_async::Row>) -> Result<BinlogPosition, MyError> {
    const WHAT: &str = "reading the binlog position";
    let row = row.ok_or_else(|| MyError::new(WHAT, "the binary log is off", "enable log_bin"))?;
    let (file, pos): (String, u64) = (row.get(0).unwrap_or_default(), row.get(1).unwrap_or_default());
    BinlogPosition::new(&file, pos, "").map_err(|e| MyError::new(WHAT, &e.to_string(), "report this as a bug"))
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
    fn the_server_gives_up_on_the_read_only_lock_before_the_client() {
        assert_eq!(read_only_lock_wait(Duration::from_secs(30)), 20);
        assert_eq!(read_only_lock_wait(Duration::from_millis(200)), 1);
    }
}
