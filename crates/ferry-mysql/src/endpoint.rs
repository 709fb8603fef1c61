//! A MySQL/MariaDB source: `mysql://user[:password]@host[:port]/database`, its password, and
//! connections. `Debug` and [`MyEndpoint::describe`] never show the password.
//!
//! # Timeouts (`docs/timeouts-mysql-proxy.md`)
//! * Opening a connection ([`MyEndpoint::connect`]) is bounded by [`CONNECT_TIMEOUT`]: TCP
//!   connect, handshake, authentication and the session's init statements (`Conn::new` does all
//!   of them before it returns).
//! * Every connection has TCP keepalives after [`TCP_KEEPALIVE_IDLE`] of silence. mysql_async
//!   sets only the idle time (TCP_KEEPIDLE): the interval between probes and their count stay
//!   the OS's (Linux: 75 s x 9), and it exposes no TCP_USER_TIMEOUT. Ferry does not reach
//!   around the driver for them; the deadlines below are what notice a dead server first.
//! * Short control and metadata queries run under [`MyEndpoint::within`] ([`QUERY_TIMEOUT`];
//!   catalog reads over a whole database under [`MyEndpoint::within_catalog`]): on expiry the
//!   error names the server, the deadline and what was waited for, and the connection is given
//!   up (a query abandoned half-way leaves it unusable).
//! * Long data reads (the full load's and verification's `SELECT`s, which legitimately stream
//!   for hours) have no deadline; keepalives end them if the server vanishes.
//! * The binlog stream has its own read deadline (`apply.rs`: heartbeats every second, silence
//!   for [`crate::apply::BINLOG_SILENCE`] means a dead connection: reconnect with backoff).

use std::future::Future;
use std::time::Duration;

use ferry_core::Secret;
use mysql_async::prelude::Queryable;

use crate::error::MyError;

/// Longest a connection may take to be usable: TCP connect, handshake, authentication and the
/// session's init statements.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Silence on a connection before the kernel sends TCP keepalive probes.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Deadline of a short control or metadata query (binlog position, session settings, locks,
/// `SET GLOBAL read_only`, `KILL`, ...): a healthy server answers in milliseconds.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Catalog reads (`information_schema` over every table of the database) get this many times
/// the query deadline: they are proportional to the schema's size.
pub const CATALOG_FACTOR: u32 = 10;
/// Deadline of statements on the way out (`COMMIT` of a read-only snapshot, `UNLOCK TABLES`,
/// `QUIT`): their outcome does not matter, they must not keep Ferry waiting.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A duration for people (`ferry_core::human_duration`).
pub fn human(d: Duration) -> String {
    ferry_core::human_duration(d)
}

/// Runs `fut` with a deadline. On expiry the error says who did not answer (`peer`, e.g.
/// "MySQL/MariaDB at db:3306/shop"), within how long, and what was waited for (`what`, e.g.
/// "reading the binlog position"); `fut` is dropped.
pub async fn deadline<T>(peer: &str, limit: Duration, what: &str, fut: impl Future<Output = Result<T, MyError>>) -> Result<T, MyError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(peer, limit, what)),
    }
}

/// The error of an expired deadline.
pub fn timed_out(peer: &str, limit: Duration, what: &str) -> MyError {
    MyError::new(
        what,
        &format!(
            "no answer from {peer} within {}; Ferry gave up on that connection",
            human(limit)
        ),
        "check that the server is up and reachable from Ferry's host (a network that drops packets looks like this), then run the command again",
    )
}

/// A parsed `mysql://` URL plus its password.
#[derive(Clone)]
pub struct MyEndpoint {
    host: String,
    port: u16,
    user: String,
    password: Option<Secret>,
    database: String,
    connect_timeout: Duration,
    query_timeout: Duration,
}

impl std::fmt::Debug for MyEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MyEndpoint({}@{})", self.user, self.describe())
    }
}

/// Whether a URL names a MySQL/MariaDB server.
pub fn is_mysql_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("mysql://") || lower.starts_with("mariadb://")
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("a % escape is cut short")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a % escape is not hexadecimal")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a % escape is not UTF-8".to_string())
}

impl MyEndpoint {
    /// Parses a URL; `password` (from a file or the environment) wins over one in the URL.
    /// Errors never contain the password.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<MyEndpoint, String> {
        let bad = |why: &str| {
            format!(
                "invalid MySQL URL {} ({why}); expected mysql://user[:password]@host[:port]/database",
                ferry_core::secret::redact_url(url)
            )
        };
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .filter(|_| is_mysql_url(url))
            .ok_or_else(|| bad("it must start with mysql://"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (auth, hostpath) = rest.rsplit_once('@').ok_or_else(|| bad("no user@"))?;
        let (user, url_password) = match auth.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (auth, None),
        };
        if user.is_empty() {
            return Err(bad("no user"));
        }
        let (hostport, database) = hostpath.split_once('/').ok_or_else(|| bad("no /database"))?;
        if database.is_empty() {
            return Err(bad("no database"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("the port is not a number"))?)
            }
            _ => (hostport, 3306),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let url_password = url_password.map(percent_decode).transpose().map_err(|e| bad(&e))?.map(Secret::new);
        Ok(MyEndpoint {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            user: percent_decode(user).map_err(|e| bad(&e))?,
            password: password.or(url_password),
            database: percent_decode(database).map_err(|e| bad(&e))?,
            connect_timeout: CONNECT_TIMEOUT,
            query_timeout: QUERY_TIMEOUT,
        })
    }

    /// The same source with another connect timeout (default [`CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, limit: Duration) -> MyEndpoint {
        self.connect_timeout = limit;
        self
    }

    /// The same source with another deadline for control queries (default [`QUERY_TIMEOUT`];
    /// catalog reads get [`CATALOG_FACTOR`] times it).
    pub fn with_query_timeout(mut self, limit: Duration) -> MyEndpoint {
        self.query_timeout = limit;
        self
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The deadline of control queries.
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// "MySQL/MariaDB at host:port/database", for messages.
    pub fn peer(&self) -> String {
        format!("MySQL/MariaDB at {}", self.describe())
    }

    /// Runs a short control or metadata query (or a few, on one connection) under the query
    /// deadline; `what` says what it waits for ("reading the binlog position"). After an
    /// expiry the connection is in an unknown state: drop it.
    pub async fn within<T>(&self, what: &str, fut: impl Future<Output = Result<T, MyError>>) -> Result<T, MyError> {
        deadline(&self.peer(), self.query_timeout, what, fut).await
    }

    /// Like [`MyEndpoint::within`], for catalog reads over the whole database.
    pub async fn within_catalog<T>(&self, what: &str, fut: impl Future<Output = Result<T, MyError>>) -> Result<T, MyError> {
        deadline(&self.peer(), self.query_timeout * CATALOG_FACTOR, what, fut).await
    }

    /// Runs a statement on the way out (a snapshot's `COMMIT`, `UNLOCK TABLES`) and ignores its
    /// outcome, waiting at most [`CLEANUP_TIMEOUT`].
    pub async fn cleanup(&self, conn: &mut mysql_async::Conn, sql: &str) {
        if tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_drop(sql)).await.is_err() {
            tracing::warn!(server = %self.describe(), statement = sql, "no answer to a closing statement within {}; the connection is dropped", human(CLEANUP_TIMEOUT));
        }
    }

    /// Closes a connection politely (`QUIT`), waiting at most [`CLEANUP_TIMEOUT`].
    pub async fn disconnect(&self, conn: mysql_async::Conn) {
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, conn.disconnect()).await;
    }

    /// `host:port/database`, for messages.
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }

    /// The database (schema) migrated.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The user Ferry connects as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Connection options: UTF-8 (utf8mb4) and UTC for every session, so values arrive in one
    /// form whatever the server's defaults; TCP keepalives after [`TCP_KEEPALIVE_IDLE`].
    pub fn opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.as_ref().map(|p| p.expose().to_string()))
            .db_name(Some(self.database.clone()))
            .prefer_socket(false)
            .tcp_keepalive(Some(TCP_KEEPALIVE_IDLE))
            .init(vec!["SET NAMES utf8mb4", "SET time_zone = '+00:00'"])
            .into()
    }

    /// Opens a connection, with the fix for the usual failures. The connect timeout covers
    /// everything before the connection is usable: name resolution, TCP connect, the server's
    /// greeting, authentication and the init statements (`Conn::new` does them all).
    pub async fn connect(&self) -> Result<mysql_async::Conn, MyError> {
        let what = format!("cannot connect to the MySQL/MariaDB source {}", self.describe());
        let conn = tokio::time::timeout(self.connect_timeout, mysql_async::Conn::new(self.opts()))
            .await
            .map_err(|_| {
                MyError::new(
                    &what,
                    &format!(
                        "no connection and log-in within {} (connect timeout: TCP connect, the server's greeting, authentication, session setup)",
                        human(self.connect_timeout)
                    ),
                    "check the host, the port and any firewall in between, and that the server is not overloaded",
                )
            })?;
        conn.map_err(|e| {
            let reason = e.to_string();
            let fix = match &e {
                mysql_async::Error::Server(s) if s.code == 1045 => {
                    "check the user and password (FERRY_SOURCE_PASSWORD or --source-password-file), and that the user may connect from Ferry's host"
                }
                mysql_async::Error::Server(s) if s.code == 1049 => "check the database name at the end of the URL",
                mysql_async::Error::Io(_) => "check the host and port, and that the server is running and listening on TCP",
                _ => "check the URL and that the server is reachable",
            };
            MyError::new(&what, &reason, fix)
        })
    }
}

/// Runs a query that returns rows, with context for errors.
pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut mysql_async::Conn,
    context: &str,
    sql: &str,
) -> Result<Vec<T>, MyError> {
    conn.query(sql).await.map_err(|e| MyError::query(context, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let e = MyEndpoint::parse("mysql://app:p%40ss@db.example:3307/shop", None).unwrap();
        assert_eq!(e.describe(), "db.example:3307/shop");
        assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss");
        assert!(!format!("{e:?}").contains("p@ss"));
        let e = MyEndpoint::parse("mariadb://app@db/shop", Some(Secret::new("env"))).unwrap();
        assert_eq!((e.port, e.password.as_ref().unwrap().expose()), (3306, "env"));
        for bad in [
            "mysql://app:topsecret@db",
            "mysql://:topsecret@db/x",
            "mysql://app:topsecret@db:xx/x",
            "postgres://a@b/c",
        ] {
            let err = MyEndpoint::parse(bad, None).unwrap_err();
            assert!(!err.contains("topsecret"), "{err}");
            assert!(err.contains("invalid MySQL URL"), "{err}");
        }
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
    }

    #[tokio::test]
    async fn a_deadline_names_the_server_and_what_was_waited_for() {
        let e = MyEndpoint::parse("mysql://app@db.example:3307/shop", None)
            .unwrap()
            .with_query_timeout(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let err = e
            .within("reading the binlog position", std::future::pending::<Result<(), MyError>>())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.context, "reading the binlog position");
        assert_eq!(
            err.reason,
            "no answer from MySQL/MariaDB at db.example:3307/shop within 50 ms; Ferry gave up on that connection"
        );
        // A query that answers in time passes through, errors included.
        assert_eq!(e.within("x", async { Ok::<_, MyError>(7) }).await.unwrap(), 7);
        let inner = e
            .within("x", async { Err::<(), _>(MyError::new("inner", "why", "fix")) })
            .await
            .unwrap_err();
        assert_eq!(inner.context, "inner");
    }

    /// A server that accepts TCP connections and never says a word (a black hole past the
    /// handshake): the connect timeout covers the greeting and authentication, not just TCP.
    #[tokio::test]
    async fn connect_timeout_covers_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hole = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                kept.push(s);
            }
        });
        let e = MyEndpoint::parse(&format!("mysql://app:s3cr3t-pw@127.0.0.1:{port}/shop"), None)
            .unwrap()
            .with_connect_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = e.connect().await.unwrap_err();
        let took = started.elapsed();
        hole.abort();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}/shop")), "{text}");
        assert!(text.contains("no connection and log-in within 300 ms"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn every_connection_has_keepalives() {
        let e = MyEndpoint::parse("mysql://app@db/shop", None).unwrap();
        assert_eq!(e.opts().tcp_keepalive(), Some(TCP_KEEPALIVE_IDLE));
        assert_eq!((e.connect_timeout(), e.query_timeout()), (CONNECT_TIMEOUT, QUERY_TIMEOUT));
    }
}
