//! A MySQL/MariaDB source: `mysql://user[:password]@host[:port]/database[?option=value&...]`,
//! its password, its TLS settings, and connections. `Debug`, [`MyEndpoint::describe`] and every
//! error never show the password.
//!
//! # URL options (`docs/mysql-types.md`, "Connecting")
//! `ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key` (crate::tls), and `get-server-public-key=true`
//! (below). Names are case-insensitive and `-` and `_` are alike (`sslmode`, `ssl_mode`,
//! `SSL-MODE`); `sslrootcert` is accepted for `ssl-ca`. Any other option is an error naming
//! it: nothing in a URL is silently dropped.
//!
//! # caching_sha2_password (MySQL 8's default authentication)
//! The driver (mysql_async) speaks it: after one full authentication the server caches the
//! account and later log-ins take the fast path (a scramble, no password sent). The full
//! authentication sends the password: in clear over TLS (any `ssl-mode` but `DISABLED`, once
//! the server offers TLS), and without TLS encrypted with the server's RSA public key, which
//! the driver always asks the server for: MySQL's clients call that `get-server-public-key`.
//! `get-server-public-key=true` is accepted (it says what happens anyway); `false` cannot be
//! honoured and is refused. `server-public-key-path` (a key file pinned by hand) is refused:
//! the driver cannot read one, and a key asked from the server could be swapped by a man in
//! the middle, so the fix is TLS with a checked certificate (`ssl-mode=VERIFY_IDENTITY`).
//!
//! # Client conventions
//! The password is, in this order: the one Ferry was given (`FERRY_SOURCE_PASSWORD`,
//! `--source-password-file`), the URL's, `MYSQL_PWD`, `password` in `[client]` of `~/.my.cnf`
//! (crate::mycnf). TLS options missing from the URL are taken from `~/.my.cnf` too. Without any
//! `ssl-mode`, the mode is `PREFERRED` (the mysql client's default), or `VERIFY_CA` when a CA is
//! given: a CA file is there to be checked against.
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
//!   for [`crate::cdc::BINLOG_SILENCE`] means a dead connection: reconnect with backoff).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Secret;
use mysql_async::prelude::Queryable;

use crate::error::MyError;
use crate::mycnf::{self, normal_name};
use crate::tls::{self, SslMode, TlsSettings};

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
/// Prepared statements a sink's connection keeps ([`MyEndpoint::for_apply`]).
pub const APPLY_STATEMENTS: usize = 256;
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
    MyError::transient(
        what,
        &format!(
            "no answer from {peer} within {}; Ferry gave up on that connection",
            human(limit)
        ),
        "check that the server is up and reachable from Ferry's host (a network that drops packets looks like this), then run the command again",
    )
}

/// Where the password Ferry uses came from (never the password itself), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `FERRY_SOURCE_PASSWORD` or `--source-password-file`.
    Given,
    /// The URL's `user:password@`.
    Url,
    /// The `MYSQL_PWD` environment variable.
    MysqlPwd,
    /// `password` in `[client]` of this option file.
    MyCnf(PathBuf),
    /// None: an empty password is sent.
    None,
}

impl PasswordSource {
    /// "the password from MYSQL_PWD", for messages.
    pub fn describe(&self) -> String {
        match self {
            PasswordSource::Given => "the password given with FERRY_SOURCE_PASSWORD or --source-password-file".into(),
            PasswordSource::Url => "the password in the URL".into(),
            PasswordSource::MysqlPwd => "the password from MYSQL_PWD".into(),
            PasswordSource::MyCnf(p) => format!("the password from {} ([client] password)", p.display()),
            PasswordSource::None => {
                "no password (none given with FERRY_SOURCE_PASSWORD, --source-password-file, the URL, MYSQL_PWD or ~/.my.cnf)".into()
            }
        }
    }
}

/// What the MySQL client conventions read from the environment: `MYSQL_PWD` and the home
/// directory holding `.my.cnf`.
#[derive(Debug, Clone, Default)]
pub struct ClientEnv {
    /// `MYSQL_PWD` (ignored when empty).
    pub mysql_pwd: Option<Secret>,
    /// `HOME`.
    pub home: Option<PathBuf>,
}

impl ClientEnv {
    /// This process's environment.
    pub fn from_process() -> ClientEnv {
        ClientEnv {
            mysql_pwd: std::env::var("MYSQL_PWD").ok().filter(|p| !p.is_empty()).map(Secret::new),
            home: std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from),
        }
    }
}

/// What a source learns about its server's TLS while it runs, shared by its clones.
#[derive(Debug, Default)]
struct TlsState {
    /// `PREFERRED` against a server without TLS: plain text from now on.
    plain: AtomicBool,
    /// `VERIFY_CA`: the certificate name the driver verifies against (`None`: the host's own).
    name: tokio::sync::OnceCell<Option<String>>,
}

/// A parsed `mysql://` URL plus its password and TLS settings.
#[derive(Clone)]
pub struct MyEndpoint {
    host: String,
    port: u16,
    user: String,
    password: Option<Secret>,
    password_source: PasswordSource,
    database: String,
    tls: TlsSettings,
    tls_state: Arc<TlsState>,
    connect_timeout: Duration,
    query_timeout: Duration,
    /// Connections for a sink ([`MyEndpoint::for_apply`]).
    apply: bool,
}

impl std::fmt::Debug for MyEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MyEndpoint({}@{})", self.user, self.describe())
    }
}

/// How many connection ids [`own_connections`] keeps (the most recent): a bound on memory in a
/// long-running process, far above the connections Ferry opens at once.
const OWN_CONNECTIONS_KEPT: usize = 4096;

/// This process's connections (`host:port` as given, connection id), oldest first.
static OWN_CONNECTIONS: std::sync::Mutex<std::collections::VecDeque<(String, u64)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn own_connections_lock() -> std::sync::MutexGuard<'static, std::collections::VecDeque<(String, u64)>> {
    OWN_CONNECTIONS.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember_own(server: String, id: u64) {
    let mut all = own_connections_lock();
    if all.len() >= OWN_CONNECTIONS_KEPT {
        all.pop_front();
    }
    all.push_back((server, id));
}

/// The connection ids (`CONNECTION_ID()`, `information_schema.PROCESSLIST.ID`) of the
/// connections this process opened to the server `endpoint` names, through
/// [`MyEndpoint::connect`]: Ferry tells its own sessions from others' by these, never by a
/// name a client announces (`program_name`), which anyone can set (the way
/// `ferry_postgres::endpoint::own_sessions` does on PostgreSQL). A connection stays listed
/// after it closed: a server hands out a connection id once until it restarts, so a closed
/// one names nobody else (after a restart, at worst a session with an id Ferry had is spared).
/// The id is the one of the handshake (32 bits).
pub fn own_connections(endpoint: &MyEndpoint) -> Vec<u64> {
    let server = endpoint.server();
    own_connections_lock()
        .iter()
        .filter(|(s, _)| *s == server)
        .map(|(_, id)| *id)
        .collect()
}

/// Whether a URL names a MySQL/MariaDB server.
pub fn is_mysql_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("mysql://") || lower.starts_with("mariadb://")
}

fn percent_decode(s: &str) -> Result<String, String> {
    ferry_core::url::percent_decode(s).map_err(|e| e.to_string())
}

/// The URL for messages: the password masked (even one with `/`, `@` or `?` left unencoded)
/// and the options left out (errors name the option they are about).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let hostpart = hostpart.split(['?', '#']).next().unwrap_or_default();
    match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:****@{hostpart}"),
            None => format!("{scheme}://{u}@{hostpart}"),
        },
        None => format!("{scheme}://{hostpart}"),
    }
}

/// The options a URL may carry.
pub const URL_OPTIONS: &str = "ssl-mode, ssl-ca, ssl-cert, ssl-key, get-server-public-key";

/// The authentication options of MySQL's clients (`get-server-public-key`,
/// `server-public-key-path`, by normal name): Ok when `value` asks for what the driver does
/// anyway, Err with the reason otherwise; None for any other option. See the module doc.
fn public_key_option(normal: &str, value: &str) -> Option<Result<(), String>> {
    match normal {
        "getserverpublickey" => Some(match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Ok(()),
            "false" | "0" | "off" | "no" => Err(
                "cannot be turned off: without TLS, Ferry's driver always asks the server for its RSA public key to send the password of a \
                 caching_sha2_password account; to send no password outside TLS, use ssl-mode=REQUIRED or VERIFY_IDENTITY"
                    .to_string(),
            ),
            other => Err(format!("is {other:?}; expected true or false")),
        }),
        "serverpublickeypath" => Some(Err(
            "is not supported: Ferry's driver cannot read the server's RSA public key from a file (without TLS it asks the server for it, \
             as get-server-public-key=true does); to authenticate the server, use TLS with ssl-mode=VERIFY_IDENTITY and ssl-ca=/path/ca.pem"
                .to_string(),
        )),
        _ => None,
    }
}

/// TLS options given in a URL or an option file, by normal name (`sslmode`, ...).
#[derive(Debug, Default)]
struct SslGiven {
    mode: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl SslGiven {
    /// Sets the option `normal` (a normal name); false when it is not a TLS option.
    fn set(&mut self, normal: &str, value: String) -> Result<bool, String> {
        let slot = match normal {
            "sslmode" => &mut self.mode,
            "sslca" | "sslrootcert" => &mut self.ca,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return Ok(false),
        };
        if slot.is_some() {
            return Err("given twice".into());
        }
        *slot = Some(value);
        Ok(true)
    }
}

impl MyEndpoint {
    /// Parses a URL; `password` (from a file or the environment) wins over one in the URL,
    /// which wins over `MYSQL_PWD` and `~/.my.cnf`. Reads this process's environment; errors
    /// never contain the password.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<MyEndpoint, String> {
        MyEndpoint::parse_with(url, password, &ClientEnv::from_process())
    }

    /// [`MyEndpoint::parse`] with the given environment.
    pub fn parse_with(url: &str, password: Option<Secret>, env: &ClientEnv) -> Result<MyEndpoint, String> {
        let bad = |why: &str| {
            format!(
                "invalid MySQL URL {} ({why}); expected mysql://user[:password]@host[:port]/database[?ssl-mode=...&ssl-ca=...]",
                redact(url)
            )
        };
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .filter(|_| is_mysql_url(url))
            .ok_or_else(|| bad("it must start with mysql://"))?;
        let (rest, query) = match rest.find('?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let query = query.map(|q| q.split('#').next().unwrap_or_default());
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
        let host = host.trim_matches(['[', ']']).to_string();
        let user = percent_decode(user).map_err(|e| bad(&e))?;
        let url_password = url_password.map(percent_decode).transpose().map_err(|e| bad(&e))?.map(Secret::new);

        // Options: every one known, or an error naming it.
        let mut from_url = SslGiven::default();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name).map_err(|e| bad(&e))?;
            let value = percent_decode(value).map_err(|e| bad(&format!("option {name:?}: {e}")))?;
            if value.is_empty() {
                return Err(bad(&format!("option {name:?} has no value")));
            }
            let normal = normal_name(&name);
            if let Some(r) = public_key_option(&normal, &value) {
                r.map_err(|why| bad(&format!("option {name:?} {why}")))?;
                continue;
            }
            match from_url.set(&normal, value) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(bad(&format!(
                        "unknown option {name:?}; Ferry understands {URL_OPTIONS} (names in any case, - or _ alike)"
                    )))
                }
                Err(why) => return Err(bad(&format!("option {name:?} {why}"))),
            }
        }

        // ~/.my.cnf: TLS defaults, and the password of last resort.
        let cnf = mycnf::read(env.home.as_deref())?;
        let mut from_cnf = SslGiven::default();
        if let Some(c) = &cnf {
            for (k, v) in c.ssl.iter().filter(|(_, v)| !v.is_empty()) {
                let _ = from_cnf.set(k, v.clone());
            }
        }
        let cnf_password = match &cnf {
            Some(c) if c.password.is_some() && c.user.as_deref().is_none_or(|u| u == user) => Some(c),
            _ => None,
        };
        let (password, password_source) = if let Some(p) = password {
            (Some(p), PasswordSource::Given)
        } else if let Some(p) = url_password {
            (Some(p), PasswordSource::Url)
        } else if let Some(p) = env.mysql_pwd.clone() {
            (Some(p), PasswordSource::MysqlPwd)
        } else if let Some(c) = cnf_password {
            if c.readable_by_others {
                return Err(format!(
                    "{} holds the MySQL password and other users can read it (mode {:o}); run chmod 600 {}",
                    c.path.display(),
                    c.mode,
                    c.path.display()
                ));
            }
            (c.password.clone(), PasswordSource::MyCnf(c.path.clone()))
        } else {
            (None, PasswordSource::None)
        };

        let pick = |u: Option<String>, c: Option<String>| u.or(c);
        let ca = pick(from_url.ca, from_cnf.ca).map(PathBuf::from);
        let mode = match pick(from_url.mode, from_cnf.mode) {
            Some(m) => SslMode::parse(&m).map_err(|e| bad(&e))?,
            None if ca.is_some() => SslMode::VerifyCa,
            None => SslMode::Preferred,
        };
        let tls = TlsSettings {
            mode,
            ca,
            cert: pick(from_url.cert, from_cnf.cert).map(PathBuf::from),
            key: pick(from_url.key, from_cnf.key).map(PathBuf::from),
        };
        tls.check_files().map_err(|e| format!("MySQL source {}: {e}", redact(url)))?;
        if matches!(mode, SslMode::Preferred | SslMode::Required) && tls.ca.is_some() {
            tracing::warn!(
                "ssl-mode={} does not check the server's certificate, so ssl-ca is not used; use ssl-mode=VERIFY_CA or VERIFY_IDENTITY to check it",
                mode.name()
            );
        }
        Ok(MyEndpoint {
            host,
            port,
            user,
            password,
            password_source,
            database: percent_decode(database).map_err(|e| bad(&e))?,
            tls,
            tls_state: Arc::new(TlsState::default()),
            connect_timeout: CONNECT_TIMEOUT,
            query_timeout: QUERY_TIMEOUT,
            apply: false,
        })
    }

    /// The same server for a sink's connections (reverse replication, `crate::apply`): the
    /// server reports the rows a statement FOUND rather than those it changed
    /// (`CLIENT_FOUND_ROWS`), so an UPDATE that sets the values a row holds already still
    /// counts its row; and the driver keeps [`APPLY_STATEMENTS`] prepared statements, one per
    /// table and statement shape.
    pub fn for_apply(mut self) -> MyEndpoint {
        self.apply = true;
        self
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Where the password came from.
    pub fn password_source(&self) -> &PasswordSource {
        &self.password_source
    }

    /// Whether connections are encrypted: `Some(true)` yes, `Some(false)` no, `None` not known
    /// before the first connection (`PREFERRED`).
    pub fn encrypted(&self) -> Option<bool> {
        match self.tls.mode {
            SslMode::Disabled => Some(false),
            SslMode::Preferred if self.tls_state.plain.load(Ordering::Relaxed) => Some(false),
            SslMode::Preferred => None,
            _ => Some(true),
        }
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
    /// form whatever the server's defaults; TCP keepalives after [`TCP_KEEPALIVE_IDLE`]; TLS
    /// as the source's `ssl-mode` says and the server allows (`PREFERRED` falls back to plain
    /// text once the server is known not to offer TLS).
    pub fn opts(&self) -> mysql_async::Opts {
        let plain = self.tls.mode == SslMode::Preferred && self.tls_state.plain.load(Ordering::Relaxed);
        let name = self.tls_state.name.get().cloned().flatten();
        self.opts_with(if plain { None } else { self.tls.ssl_opts(name.as_deref()) })
    }

    fn opts_with(&self, ssl: Option<mysql_async::SslOpts>) -> mysql_async::Opts {
        let builder = mysql_async::OptsBuilder::default();
        let builder = match self.apply {
            true => builder.client_found_rows(true).stmt_cache_size(APPLY_STATEMENTS),
            false => builder,
        };
        builder
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.as_ref().map(|p| p.expose().to_string()))
            .db_name(Some(self.database.clone()))
            .prefer_socket(false)
            .tcp_keepalive(Some(TCP_KEEPALIVE_IDLE))
            .ssl_opts(ssl)
            .init(vec!["SET NAMES utf8mb4", "SET time_zone = '+00:00'"])
            .into()
    }

    /// Opens a connection, with the fix for the usual failures. The connect timeout covers
    /// everything before the connection is usable: name resolution, TCP connect, the server's
    /// greeting, TLS, authentication and the init statements (`Conn::new` does them all).
    pub async fn connect(&self) -> Result<mysql_async::Conn, MyError> {
        let what = format!("cannot connect to the MySQL/MariaDB source {}", self.describe());
        tls::install_provider();
        if self.tls.mode == SslMode::VerifyCa {
            self.tls_state
                .name
                .get_or_try_init(|| async {
                    tls::probe_name(&self.host, self.port, &self.tls, self.connect_timeout)
                        .await
                        .map_err(|f| self.tls_failure(&what, f))
                })
                .await?;
        }
        let conn = match self.attempt(&what, self.opts()).await? {
            Ok(conn) => conn,
            Err(e) if tls::is_no_tls(&e) && self.tls.mode == SslMode::Preferred => {
                if !self.tls_state.plain.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        server = %self.describe(),
                        "the server does not offer TLS: connecting unencrypted (ssl-mode=PREFERRED, the default; ssl-mode=REQUIRED would refuse)"
                    );
                }
                self.attempt(&what, self.opts()).await?.map_err(|e| self.connect_error(&what, e))?
            }
            Err(e) => return Err(self.connect_error(&what, e)),
        };
        remember_own(self.server(), u64::from(conn.id()));
        Ok(conn)
    }

    /// `host:port`, as given: the server, for [`own_connections`].
    fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// One connection attempt under the connect timeout: the outer error is the timeout.
    async fn attempt(&self, what: &str, opts: mysql_async::Opts) -> Result<Result<mysql_async::Conn, mysql_async::Error>, MyError> {
        tokio::time::timeout(self.connect_timeout, mysql_async::Conn::new(opts))
            .await
            .map_err(|_| {
                MyError::transient(
                    what,
                    &format!(
                        "no connection and log-in within {} (connect timeout: TCP connect, the server's greeting, TLS, authentication, session setup)",
                        human(self.connect_timeout)
                    ),
                    "check the host, the port and any firewall in between, and that the server is not overloaded",
                )
            })
    }

    fn tls_failure(&self, what: &str, f: tls::Failure) -> MyError {
        match f {
            tls::Failure::NoTls => tls::no_tls_error(what, self.tls.mode),
            tls::Failure::Tls(reason, fix) => MyError::new(what, &format!("ssl-mode={}: {reason}", self.tls.mode.name()), &fix),
            tls::Failure::Other(reason) => MyError::transient(
                what,
                &reason,
                "check the host and port, and that the server is running and listening on TCP",
            ),
        }
    }

    /// A failed connection in words: what was tried (the password's source, the TLS mode) and
    /// the fix.
    fn connect_error(&self, what: &str, e: mysql_async::Error) -> MyError {
        if tls::is_no_tls(&e) {
            return tls::no_tls_error(what, self.tls.mode);
        }
        if let mysql_async::Error::Server(s) = &e {
            let lower = s.message.to_ascii_lowercase();
            if s.code == 3159 || lower.contains("insecure transport") || lower.contains("secure transport") {
                return MyError::new(
                    what,
                    &format!("{} (Ferry connected without TLS: ssl-mode={})", s.message, self.tls.mode.name()),
                    "the server accepts encrypted connections only: use ssl-mode=VERIFY_IDENTITY with ssl-ca=/path/ca.pem (or REQUIRED to encrypt without checking the certificate)",
                );
            }
            if s.code == 1045 {
                const CHECK: &str = "check the user and password, and that the user may connect from Ferry's host; give the password with FERRY_SOURCE_PASSWORD, --source-password-file, MYSQL_PWD or password= in [client] of ~/.my.cnf";
                if self.tls.mode == SslMode::Disabled {
                    // MariaDB refuses a plain-text log-in under require_secure_transport=ON
                    // with this same error.
                    return MyError::new(
                        what,
                        &format!(
                            "{}; Ferry tried {}, over an unencrypted connection (ssl-mode={})",
                            s.message,
                            self.password_source.describe(),
                            self.tls.mode.name()
                        ),
                        &format!(
                            "a server that accepts encrypted connections only (require_secure_transport=ON) answers an unencrypted log-in with this same error: use ssl-mode=VERIFY_IDENTITY with ssl-ca=/path/ca.pem (or REQUIRED to encrypt without checking the certificate); otherwise {CHECK}"
                        ),
                    );
                }
                return MyError::new(
                    what,
                    &format!("{}; Ferry tried {}", s.message, self.password_source.describe()),
                    CHECK,
                );
            }
            if s.code == 1049 {
                return MyError::new(what, &s.message, "check the database name at the end of the URL");
            }
        }
        if let mysql_async::Error::Io(io) = &e {
            if tls::rustls_error(io).is_some() {
                return self.tls_failure(what, tls::explain(io, &self.host, &self.tls));
            }
            if let mysql_async::IoError::Io(inner) = io {
                if inner.kind() == std::io::ErrorKind::NotFound && self.tls.mode != SslMode::Disabled {
                    return MyError::new(
                        what,
                        &format!("a TLS file cannot be read: {inner}"),
                        "check the ssl-ca, ssl-cert and ssl-key paths and that Ferry's user may read them",
                    );
                }
            }
            return MyError::transient(
                what,
                &e.to_string(),
                "check the host and port, and that the server is running and listening on TCP",
            );
        }
        MyError::driver(what, e, "check the URL and that the server is reachable")
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

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-mysql-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn no_env() -> ClientEnv {
        ClientEnv::default()
    }

    /// A self-signed certificate and its key (openssl is on every machine the suite runs on).
    fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=unit"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (crt, key)
    }

    #[test]
    fn url_options_are_known_or_refused_by_name() {
        let e = MyEndpoint::parse_with("mysql://app@db/shop", None, &no_env()).unwrap();
        assert_eq!(e.tls().mode, SslMode::Preferred);
        for (url, mode) in [
            ("mysql://app@db/shop?ssl-mode=DISABLED", SslMode::Disabled),
            ("mysql://app@db/shop?sslmode=required", SslMode::Required),
            ("mysql://app@db/shop?SSL_MODE=Preferred", SslMode::Preferred),
            ("mysql://app@db/shop?ssl-mode=require&", SslMode::Required),
        ] {
            assert_eq!(MyEndpoint::parse_with(url, None, &no_env()).unwrap().tls().mode, mode, "{url}");
        }
        for (url, needle) in [
            ("mysql://app:topsecret@db/shop?sslmod=REQUIRED", "unknown option \"sslmod\""),
            (
                "mysql://app:topsecret@db/shop?ssl-mode=REQUIRED&useSSL=true",
                "unknown option \"useSSL\"",
            ),
            ("mysql://app:topsecret@db/shop?password=topsecret", "unknown option \"password\""),
            ("mysql://app:topsecret@db/shop?ssl-mode=yes", "ssl-mode \"yes\" is not one of"),
            ("mysql://app:topsecret@db/shop?ssl-mode", "option \"ssl-mode\" has no value"),
            (
                "mysql://app:topsecret@db/shop?ssl-mode=REQUIRED&sslmode=DISABLED",
                "option \"sslmode\" given twice",
            ),
            ("mysql://app:topsecret@db/shop?ssl-ca=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
            ("mysql://app:topsecret@db/shop?ssl-cert=/x.crt", "ssl-cert needs ssl-key"),
        ] {
            let err = MyEndpoint::parse_with(url, None, &no_env()).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("topsecret"), "{err}");
        }
        let err = MyEndpoint::parse_with("mysql://app@db/shop?sslmod=REQUIRED", None, &no_env()).unwrap_err();
        assert!(err.contains(URL_OPTIONS), "{err}");
    }

    #[test]
    fn mysql_clients_public_key_options() {
        // What the driver does anyway (caching_sha2_password without TLS): accepted.
        for url in [
            "mysql://app@db/shop?get-server-public-key=true",
            "mysql://app@db/shop?get_server_public_key=1&ssl-mode=DISABLED",
            "mysql://app@db/shop?GET-SERVER-PUBLIC-KEY=ON",
        ] {
            assert!(MyEndpoint::parse_with(url, None, &no_env()).is_ok(), "{url}");
        }
        // What it cannot do: refused, naming the option and the way out.
        for (url, needles) in [
            (
                "mysql://app:topsecret@db/shop?get-server-public-key=false",
                &["option \"get-server-public-key\" cannot be turned off", "ssl-mode=REQUIRED"][..],
            ),
            (
                "mysql://app:topsecret@db/shop?get-server-public-key=maybe",
                &["\"maybe\"; expected true or false"][..],
            ),
            (
                "mysql://app:topsecret@db/shop?server-public-key-path=/etc/mysql/public_key.pem",
                &["option \"server-public-key-path\" is not supported", "ssl-mode=VERIFY_IDENTITY"][..],
            ),
            (
                "mysql://app:topsecret@db/shop?get-server-public-key",
                &["option \"get-server-public-key\" has no value"][..],
            ),
        ] {
            let err = MyEndpoint::parse_with(url, None, &no_env()).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{url}: {err}");
            }
            assert!(!err.contains("topsecret"), "{err}");
        }
    }

    #[test]
    fn certificate_files_and_the_default_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("certs");
        let (crt, key) = self_signed(&dir);
        let ca = crt.display().to_string();
        // A CA without a mode: VERIFY_CA (a CA file is there to be checked against).
        let e = MyEndpoint::parse_with(&format!("mysql://app@db/shop?ssl-ca={ca}"), None, &no_env()).unwrap();
        assert_eq!((e.tls().mode, e.tls().ca.as_deref()), (SslMode::VerifyCa, Some(crt.as_path())));
        let e = MyEndpoint::parse_with(
            &format!("mysql://app@db/shop?ssl-mode=VERIFY_IDENTITY&sslrootcert={ca}"),
            None,
            &no_env(),
        )
        .unwrap();
        assert_eq!(e.tls().mode, SslMode::VerifyIdentity);
        let o = e.opts();
        let ssl = o.ssl_opts().unwrap();
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        // A client key others can read is refused with the fix; 0600 is fine.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let url = format!("mysql://app@db/shop?ssl-mode=REQUIRED&ssl-cert={ca}&ssl-key={}", key.display());
        let err = MyEndpoint::parse_with(&url, None, &no_env()).unwrap_err();
        assert!(err.contains("chmod 600") && err.contains("ca.key"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = MyEndpoint::parse_with(&url, None, &no_env()).unwrap();
        assert!(e.opts().ssl_opts().unwrap().client_identity().is_some());
        // A file that is no certificate.
        let err = MyEndpoint::parse_with(&format!("mysql://app@db/shop?ssl-ca={}", key.display()), None, &no_env()).unwrap_err();
        assert!(err.contains("CA file (ssl-ca)") && err.contains("ca.key"), "{err}");
        // DISABLED: no TLS options at all.
        let e = MyEndpoint::parse_with("mysql://app@db/shop?ssl-mode=disabled", None, &no_env()).unwrap();
        assert!(e.opts().ssl_opts().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn odd_passwords_decode_and_never_print() {
        let env = no_env();
        let e = MyEndpoint::parse_with("mysql://app:p%2Fw%40x%3A%27%22%20%25y@db:3307/shop", None, &env).unwrap();
        assert_eq!(e.password.as_ref().unwrap().expose(), "p/w@x:'\" %y");
        assert_eq!(e.password_source(), &PasswordSource::Url);
        assert!(!format!("{e:?}").contains("p/w"));
        // Unencoded: the last @ ends the user info; still never printed.
        for url in [
            "mysql://app:p/w@x@db/shop?bogus=1",
            "mysql://app:p/w@x@db/shop?ssl-mode=nope",
            "mysql://app:p/w@x@db:99999/shop",
            "mysql://app:p/w@x@db",
        ] {
            let err = MyEndpoint::parse_with(url, None, &env).unwrap_err();
            assert!(!err.contains("p/w") && !err.contains("w@x"), "{err}");
        }
        assert_eq!(redact("mysql://app:p/w@x@db/shop?x=1"), "mysql://app:****@db/shop");
    }

    #[test]
    fn password_sources_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let home = scratch("home");
        let cnf = home.join(".my.cnf");
        std::fs::write(&cnf, "[client]\npassword = \"from cnf\"\nssl-mode = REQUIRED\n").unwrap();
        std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = |pwd: Option<&str>| ClientEnv {
            mysql_pwd: pwd.map(Secret::new),
            home: Some(home.clone()),
        };
        let src = |url: &str, given: Option<&str>, e: &ClientEnv| {
            let ep = MyEndpoint::parse_with(url, given.map(Secret::new), e).unwrap();
            (ep.password.as_ref().map(|p| p.expose().to_string()), ep.password_source().clone())
        };
        assert_eq!(
            src("mysql://app:url@db/x", Some("given"), &env(Some("pwd"))),
            (Some("given".into()), PasswordSource::Given)
        );
        assert_eq!(
            src("mysql://app:url@db/x", None, &env(Some("pwd"))),
            (Some("url".into()), PasswordSource::Url)
        );
        assert_eq!(
            src("mysql://app@db/x", None, &env(Some("pwd"))),
            (Some("pwd".into()), PasswordSource::MysqlPwd)
        );
        assert_eq!(
            src("mysql://app@db/x", None, &env(None)),
            (Some("from cnf".into()), PasswordSource::MyCnf(cnf.clone()))
        );
        assert_eq!(src("mysql://app@db/x", None, &no_env()), (None, PasswordSource::None));
        // TLS options from the file; the URL's win.
        let e = MyEndpoint::parse_with("mysql://app@db/x", None, &env(None)).unwrap();
        assert_eq!(e.tls().mode, SslMode::Required);
        let e = MyEndpoint::parse_with("mysql://app@db/x?ssl-mode=DISABLED", None, &env(None)).unwrap();
        assert_eq!(e.tls().mode, SslMode::Disabled);
        // A password others can read is refused when it would be used, never printed.
        std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MyEndpoint::parse_with("mysql://app@db/x", None, &env(None)).unwrap_err();
        assert!(
            err.contains("chmod 600") && err.contains(".my.cnf") && !err.contains("from cnf"),
            "{err}"
        );
        assert_eq!(src("mysql://app@db/x", None, &env(Some("pwd"))).1, PasswordSource::MysqlPwd);
        // A password for another user is not used.
        std::fs::write(&cnf, "[client]\nuser=other\npassword=theirs\n").unwrap();
        std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(src("mysql://app@db/x", None, &env(None)).1, PasswordSource::None);
        assert_eq!(src("mysql://other@db/x", None, &env(None)).0.as_deref(), Some("theirs"));
        // World-writable: ignored, as the mysql client does.
        std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(src("mysql://other@db/x", None, &env(None)).1, PasswordSource::None);
        std::fs::remove_dir_all(&home).unwrap();
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
        // Sinks count the rows an UPDATE found, not those it changed.
        assert!(!e.opts().client_found_rows());
        let apply = e.for_apply().opts();
        assert!(apply.client_found_rows());
        assert_eq!(apply.stmt_cache_size(), APPLY_STATEMENTS);
    }
}
