//! Where a PostgreSQL server is and how to log in to it, printable without its password.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ferry_core::{ErrorClass, Secret};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use crate::conninfo::{ConnInfo, Environment, ProcessEnv, Provenance};
use crate::error::PgError;
use crate::pgtls::{AuthPolicy, PgSocket, RootCert, RustlsConnect, Sniff, SslMode, TlsSettings, Verdict};

/// `application_name` every Ferry connection announces, so DBAs see Ferry in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "ferry";

/// One of this process's own sessions on some server, named the way `pg_stat_activity` names
/// it: backend pid and `backend_start` in microseconds since the epoch (the expression
/// [`BACKEND_START_US`]). The pair names one session on any server (a pid alone could be
/// another server's, or reused), whatever `application_name` anyone announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnSession {
    /// `pg_backend_pid()`.
    pub pid: i32,
    /// `backend_start`, microseconds since the epoch.
    pub started_us: i64,
}

/// SQL for `pg_stat_activity.backend_start` in microseconds since the epoch, as registered in
/// [`OwnSession::started_us`] (compare with the same expression on the same server).
pub const BACKEND_START_US: &str = "(extract(epoch FROM backend_start) * 1000000)::int8";

/// How long a session this process closed stays in [`own_sessions`]: the server lists a
/// backend until it has exited, a moment after the client said goodbye.
const CLOSED_LINGER: Duration = Duration::from_secs(60);

/// Every session of this process (by connection number), and when it was closed.
static OWN_SESSIONS: Mutex<BTreeMap<u64, (OwnSession, Option<std::time::Instant>)>> = Mutex::new(BTreeMap::new());
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(0);

type OwnSessions = BTreeMap<u64, (OwnSession, Option<std::time::Instant>)>;

fn own_sessions_lock() -> std::sync::MutexGuard<'static, OwnSessions> {
    OWN_SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember_own(number: u64, own: OwnSession) {
    let mut all = own_sessions_lock();
    all.retain(|_, (_, closed)| closed.is_none_or(|t| t.elapsed() < CLOSED_LINGER));
    all.insert(number, (own, None));
}

fn forget_own(number: u64) {
    if let Some((_, closed)) = own_sessions_lock().get_mut(&number) {
        *closed = Some(std::time::Instant::now());
    }
}

/// This process's sessions (every [`Endpoint::connect`] and
/// [`crate::replication::ReplicationConnection::connect_plain`] still open, or closed under a
/// minute ago: the server may still list it), as two arrays for SQL: pids and start times
/// (`unnest($1::int4[], $2::int8[])`). Ferry tells its own sessions from others' by these,
/// never by `application_name`, which any client can set.
pub fn own_sessions() -> (Vec<i32>, Vec<i64>) {
    let mut all = own_sessions_lock();
    all.retain(|_, (_, closed)| closed.is_none_or(|t| t.elapsed() < CLOSED_LINGER));
    all.values().map(|(s, _)| (s.pid, s.started_us)).unzip()
}

/// Keeps one of this process's sessions in [`own_sessions`] until dropped (with the session).
pub(crate) struct OwnSessionGuard(u64);

impl OwnSessionGuard {
    pub(crate) fn new(own: OwnSession) -> Self {
        let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        remember_own(number, own);
        Self(number)
    }
}

impl Drop for OwnSessionGuard {
    fn drop(&mut self) {
        forget_own(self.0);
    }
}

/// The query that names the session it runs on: its pid and [`BACKEND_START_US`].
pub(crate) fn own_session_sql() -> String {
    format!("SELECT pid, {BACKEND_START_US} FROM pg_stat_activity WHERE pid = pg_backend_pid()")
}

/// Parses [`own_session_sql`]'s answer.
pub(crate) fn parse_own_session(pid: Option<&str>, started: Option<&str>) -> Option<OwnSession> {
    Some(OwnSession {
        pid: pid?.parse().ok()?,
        started_us: started?.parse().ok()?,
    })
}

/// Seconds of silence before the kernel sends a keepalive probe.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Between keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel declares the connection dead (10 + 3 x 5 = 25 s).
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Longest sent data may stay unacknowledged before the kernel closes the connection.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies Ferry's keepalive and user-timeout settings to a TCP socket opened without
/// tokio-postgres (the replication protocol client). Best effort: an OS without an option
/// keeps its default.
pub fn tune_tcp(s: &tokio::net::TcpStream) {
    TcpTuning::default().apply(s);
}

/// TCP keepalive and user-timeout settings of a connection (libpq's `keepalives*` and
/// `tcp_user_timeout` options; Ferry's defaults above when not given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTuning {
    /// Keepalives on (libpq `keepalives=1`, the default).
    pub keepalives: bool,
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dead.
    pub retries: u32,
    /// Longest sent data may stay unacknowledged.
    pub user_timeout: Duration,
}

impl Default for TcpTuning {
    fn default() -> Self {
        Self {
            keepalives: true,
            idle: TCP_KEEPALIVE_IDLE,
            interval: TCP_KEEPALIVE_INTERVAL,
            retries: TCP_KEEPALIVE_RETRIES,
            user_timeout: TCP_USER_TIMEOUT,
        }
    }
}

impl TcpTuning {
    /// Applies the settings to a socket. Best effort: an OS without an option keeps its default.
    pub fn apply(&self, s: &tokio::net::TcpStream) {
        let sock = socket2::SockRef::from(s);
        if self.keepalives {
            let ka = socket2::TcpKeepalive::new()
                .with_time(self.idle)
                .with_interval(self.interval)
                .with_retries(self.retries);
            let _ = sock.set_tcp_keepalive(&ka);
        }
        #[cfg(target_os = "linux")]
        let _ = sock.set_tcp_user_timeout(Some(self.user_timeout).filter(|d| !d.is_zero()));
        let _ = sock.set_tcp_nodelay(true);
    }
}

/// A resolved PostgreSQL connection (libpq's rules: [`crate::conninfo`]) plus its password and
/// TLS settings. `Debug` and [`Endpoint::redacted`] never show the password.
#[derive(Clone)]
pub struct Endpoint {
    config: Config,
    redacted: String,
    password: Option<Secret>,
    provenance: Provenance,
    addr: HostAddr,
    tls: TlsSettings,
    auth: AuthPolicy,
    tcp: TcpTuning,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.redacted).finish()
    }
}

/// The URL could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL URL {redacted}: {why}; expected postgres://user[:password]@host[:port]/database[?sslmode=...] or libpq's key=value form")]
pub struct UrlError {
    /// What can be shown of the URL (never the password).
    pub redacted: String,
    /// What is wrong.
    pub why: String,
}

fn secs(opts: &ConnInfo, key: &str) -> Result<Option<Duration>, String> {
    opts.get(key)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("{key}={v:?} is not a whole number of seconds"))
        })
        .transpose()
}

impl Endpoint {
    /// Resolves a `postgres://` URL or libpq key=value string with libpq's conventions (the
    /// `PG*` environment, service and password files). `password`, when given (Ferry's
    /// `FERRY_*_PASSWORD` or password file), overrides every other source.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<Self, UrlError> {
        Self::parse_from(url, password.map(|p| (p, "Ferry's password option".to_string())), &ProcessEnv)
    }

    /// [`Endpoint::parse`] with the explicit password's origin named for error messages.
    pub fn parse_labelled(url: &str, password: Option<(Secret, String)>) -> Result<Self, UrlError> {
        Self::parse_from(url, password, &ProcessEnv)
    }

    /// [`Endpoint::parse`] against a given environment.
    pub fn parse_from(url: &str, password: Option<(Secret, String)>, env: &dyn Environment) -> Result<Self, UrlError> {
        let shown = safe_prefix(url);
        let err = |why: String| UrlError {
            redacted: shown.clone(),
            why,
        };
        let info = ConnInfo::resolve(url, password.as_ref().map(|(s, from)| (s.expose(), from.as_str())), env).map_err(err)?;
        let redacted = info.display();
        let err = |why: String| UrlError {
            redacted: redacted.clone(),
            why,
        };
        let get = |k: &str| info.get(k).map(str::to_string);
        let mut config = Config::new();
        let user = info.get("user").unwrap_or_default();
        config.user(user);
        config.dbname(info.get("dbname").unwrap_or(user));
        let port = match info.get("port").filter(|p| !p.is_empty()) {
            Some(p) => p.parse::<u16>().map_err(|_| err(format!("port {p:?} is not a port number")))?,
            None => 5432,
        };
        let host = info.get("host").map(str::to_string);
        let addr = match (info.get("hostaddr"), &host) {
            (Some(a), _) => HostAddr::Tcp(a.to_string(), port),
            (None, Some(h)) if h.starts_with('/') => HostAddr::Unix(PathBuf::from(h), port),
            (None, Some(h)) => HostAddr::Tcp(h.clone(), port),
            (None, None) => return Err(err("no host given".into())),
        };
        match &addr {
            HostAddr::Tcp(h, _) => config.host(h),
            HostAddr::Unix(d, _) => config.host_path(d),
        };
        config.port(port);
        let password = info.get("password").map(|p| Secret::new(p.to_string()));
        if let Some(p) = &password {
            config.password(p.expose());
        }
        config.application_name(
            info.get("application_name")
                .or(info.get("fallback_application_name"))
                .unwrap_or(APPLICATION_NAME),
        );
        if let Some(o) = info.get("options") {
            config.options(o);
        }
        // libpq treats connect_timeout below 2 s as 2 s, and 0 as "wait forever"; Ferry never
        // waits forever: 0 means its default.
        let timeout = secs(&info, "connect_timeout")
            .map_err(err)?
            .filter(|d| !d.is_zero())
            .map(|d| d.max(Duration::from_secs(2)))
            .unwrap_or(Duration::from_secs(10));
        config.connect_timeout(timeout);
        if let Some(cb) = info.get("channel_binding") {
            config.channel_binding(match cb {
                "disable" => tokio_postgres::config::ChannelBinding::Disable,
                "prefer" => tokio_postgres::config::ChannelBinding::Prefer,
                "require" => tokio_postgres::config::ChannelBinding::Require,
                other => return Err(err(format!("channel_binding={other:?} is not one of disable, prefer, require"))),
            });
        }
        if let Some(t) = info.get("target_session_attrs") {
            config.target_session_attrs(match t {
                "any" => tokio_postgres::config::TargetSessionAttrs::Any,
                "read-write" | "primary" => tokio_postgres::config::TargetSessionAttrs::ReadWrite,
                other => {
                    return Err(err(format!(
                        "target_session_attrs={other:?}: Ferry accepts any, read-write or primary"
                    )))
                }
            });
        }
        if let Some(e) = info.get("client_encoding") {
            if !matches!(e.to_ascii_uppercase().replace(['-', '_'], "").as_str(), "UTF8" | "AUTO") {
                return Err(err(format!(
                    "client_encoding={e:?}: Ferry always talks UTF8 to the server (it converts from the database's encoding)"
                )));
            }
        }
        if info.get("gssencmode") == Some("require") {
            return Err(err(
                "gssencmode=require: GSSAPI encryption is not supported; use TLS (sslmode)".into()
            ));
        }
        if let Some(lb) = info.get("load_balance_hosts").filter(|v| *v != "disable") {
            return Err(err(format!("load_balance_hosts={lb:?}: Ferry connects to exactly one server")));
        }
        for v in ["ssl_min_protocol_version", "ssl_max_protocol_version"] {
            if let Some(x) = info.get(v).filter(|x| !matches!(*x, "TLSv1.2" | "TLSv1.3")) {
                return Err(err(format!("{v}={x:?}: Ferry speaks TLSv1.2 and TLSv1.3 only")));
            }
        }
        let mut tcp = TcpTuning::default();
        if let Some(k) = info.get("keepalives") {
            tcp.keepalives = k != "0";
        }
        if let Some(d) = secs(&info, "keepalives_idle").map_err(err)? {
            tcp.idle = d;
        }
        if let Some(d) = secs(&info, "keepalives_interval").map_err(err)? {
            tcp.interval = d;
        }
        if let Some(n) = info.get("keepalives_count") {
            tcp.retries = n.parse().map_err(|_| err(format!("keepalives_count={n:?} is not a number")))?;
        }
        if let Some(ms) = info.get("tcp_user_timeout") {
            tcp.user_timeout = Duration::from_millis(
                ms.parse()
                    .map_err(|_| err(format!("tcp_user_timeout={ms:?} is not a number of milliseconds")))?,
            );
        }
        let server_name = match (&host, &addr) {
            (Some(h), _) if !h.starts_with('/') => h.clone(),
            (_, HostAddr::Tcp(a, _)) => a.clone(),
            _ => "localhost".to_string(),
        };
        let tls = TlsSettings::resolve(get, env.home(), &server_name).map_err(err)?;
        let auth = AuthPolicy::parse(info.get("require_auth")).map_err(err)?;
        Ok(Self {
            config,
            redacted,
            password,
            provenance: info.provenance.clone(),
            addr,
            tls,
            auth,
            tcp,
        })
    }

    /// The URL with its password masked: safe to print. Built from the parsed settings, never
    /// from the text given.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Where the password came from, and which sources were looked at without one.
    pub fn password_provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The server's address: a TCP host name or a Unix socket directory.
    pub fn host(&self) -> HostAddr {
        self.addr.clone()
    }

    /// TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Which authentication methods may be answered.
    pub fn auth_policy(&self) -> &AuthPolicy {
        &self.auth
    }

    /// TCP keepalive settings.
    pub fn tcp_tuning(&self) -> TcpTuning {
        self.tcp
    }

    /// `host:port/db` for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.host(), self.dbname())
    }

    /// The same server, another database.
    pub fn with_dbname(&self, db: &str) -> Self {
        let mut e = self.clone();
        e.config.dbname(db);
        e.redacted = format!("{} (database {db})", self.redacted);
        e
    }

    /// The configured connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10))
    }

    /// Opens the socket: TCP with Ferry's keepalives, or the Unix socket.
    pub async fn open_socket(&self) -> std::io::Result<PgSocket> {
        Ok(match &self.addr {
            HostAddr::Tcp(h, p) => {
                let s = tokio::net::TcpStream::connect((h.as_str(), *p)).await?;
                self.tcp.apply(&s);
                PgSocket::Tcp(s)
            }
            HostAddr::Unix(dir, p) => PgSocket::Unix(tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{p}"))).await?),
        })
    }

    /// Whether connections go over a local Unix socket (no TLS there, as with libpq).
    pub fn is_local_socket(&self) -> bool {
        matches!(self.addr, HostAddr::Unix(..))
    }

    /// Opens a regular SQL connection; the connection's I/O runs on a spawned task. `role`
    /// (for example "copy-3") is appended to `application_name` so each connection is visible.
    pub async fn connect(&self, role: &str) -> Result<Client, PgError> {
        let (client, number) = match self.tls.mode {
            // libpq's `allow`: plain first, TLS when the server refuses plain connections.
            SslMode::Allow if !self.is_local_socket() => match self.connect_once(role, false).await {
                Err(e) if e.code.as_deref() == Some("28000") => self.connect_once(role, true).await?,
                other => other?,
            },
            mode => self.connect_once(role, mode > SslMode::Allow && !self.is_local_socket()).await?,
        };
        // If Ferry dies (kill -9 included), the server aborts this session's running statement
        // within a second instead of finishing it as an orphan that a rerun would collide with.
        // PostgreSQL 14+; older servers lack the setting, which is harmless. SQL text with
        // literals (the MySQL apply path, catalog queries) assumes standard-conforming strings:
        // a server or role configured otherwise would read backslashes as escapes.
        let _ = client.batch_execute("SET client_connection_check_interval = 1000").await;
        // The same round trip names the session for [`own_sessions`].
        let sql = format!("SET standard_conforming_strings = on; {}", own_session_sql());
        let answer = client
            .simple_query(&sql)
            .await
            .map_err(|e| PgError::query(format!("setting up a session on {}", self.describe()), e))?;
        let own = answer.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => parse_own_session(r.get(0), r.get(1)),
            _ => None,
        });
        match own {
            Some(own) => {
                remember_own(number, own);
                // Closed meanwhile: its I/O task may have ended before the insert.
                if client.is_closed() {
                    forget_own(number);
                }
            }
            None => tracing::debug!(server = %self.describe(), "the session's pid and start time are not known"),
        }
        Ok(client)
    }

    /// Connects; returns the client and the connection's number (its key in [`own_sessions`],
    /// removed when the connection closes).
    async fn connect_once(&self, role: &str, tls: bool) -> Result<(Client, u64), PgError> {
        use tokio_postgres::config::{SslMode as TpSsl, SslNegotiation};
        let mut config = self.config.clone();
        let app = self.config.get_application_name().unwrap_or(APPLICATION_NAME);
        config.application_name(format!("{app} {role}"));
        let tls_config = self.tls.config.clone().filter(|_| tls);
        config.ssl_mode(match (&tls_config, self.tls.mode) {
            (None, _) => TpSsl::Disable,
            (Some(_), m) if m >= SslMode::Require || m == SslMode::Allow => TpSsl::Require,
            (Some(_), _) => TpSsl::Prefer,
        });
        let direct = self.tls.direct && tls_config.is_some();
        config.ssl_negotiation(if direct { SslNegotiation::Direct } else { SslNegotiation::Postgres });
        let verdict = Verdict::default();
        let handshake = Verdict::default();
        let limit = self.connect_timeout();
        let attempt = async {
            let io = self.open_socket().await.map_err(|e| PgError::from_io(e, self))?;
            let sniff = Sniff::new(
                io,
                self.auth.clone(),
                tls_config.is_some() && !direct,
                false,
                self.is_local_socket(),
                verdict.clone(),
            );
            let connector = RustlsConnect {
                // Unused when ssl_mode is Disable.
                config: tls_config
                    .clone()
                    .unwrap_or_else(|| self.tls.config.clone().unwrap_or_else(placeholder_config)),
                server_name: self.tls.server_name.clone(),
                policy: self.auth.clone(),
                verdict: verdict.clone(),
                handshake_error: handshake.clone(),
            };
            raw_connect(config.clone(), sniff, connector)
                .await
                .map_err(|e| PgError::from_connect(e, self))
        };
        let (client, connection) = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let context = format!("cannot connect to {} as user {:?}", self.describe(), self.user());
                if let Some(why) = verdict.refused() {
                    return Err(PgError::config(context, why, "see the reason"));
                }
                if let Some(why) = handshake.refused() {
                    return Err(PgError::config(
                        context,
                        why,
                        "fix the TLS settings (sslmode, sslrootcert, sslcert/sslkey) or the server's certificate",
                    ));
                }
                return Err(e);
            }
            Err(_) => {
                return Err(PgError::from_io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection and log-in within {} s (connect_timeout)", limit.as_secs_f64()),
                    ),
                    self,
                ))
            }
        };
        let what = self.describe();
        let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(server = %what, error = %e, "connection closed with error");
            }
            forget_own(number);
        });
        Ok((client, number))
    }

    /// Environment for libpq-based child processes (pg_dump, pg_restore) that reach the same
    /// server with the same TLS settings. The password travels in `PGPASSWORD`, never on a
    /// command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        match &self.addr {
            // hostaddr given: connect to the address, verify the certificate against the name.
            HostAddr::Tcp(a, p) if *a != self.tls.server_name => {
                env.push(("PGHOST", self.tls.server_name.clone()));
                env.push(("PGHOSTADDR", a.clone()));
                env.push(("PGPORT", p.to_string()));
            }
            HostAddr::Tcp(h, p) => {
                env.push(("PGHOST", h.clone()));
                env.push(("PGPORT", p.to_string()));
            }
            HostAddr::Unix(d, p) => {
                env.push(("PGHOST", d.display().to_string()));
                env.push(("PGPORT", p.to_string()));
            }
        }
        env.push(("PGUSER", self.user().to_string()));
        env.push(("PGDATABASE", self.dbname().to_string()));
        env.push(("PGCONNECT_TIMEOUT", self.connect_timeout().as_secs().max(2).to_string()));
        env.push(("PGSSLMODE", self.tls.mode.as_str().to_string()));
        match &self.tls.rootcert {
            // libpq before 16 does not know `system`: hand it the system bundle's file.
            Some(RootCert::System) => {
                if let Some(f) = ferry_tls::system_roots_file() {
                    env.push(("PGSSLROOTCERT", f.display().to_string()));
                }
            }
            Some(RootCert::File(f)) => env.push(("PGSSLROOTCERT", f.display().to_string())),
            None => {}
        }
        if let Some((c, k)) = &self.tls.client_cert {
            env.push(("PGSSLCERT", c.display().to_string()));
            env.push(("PGSSLKEY", k.display().to_string()));
        }
        if self.tls.direct {
            env.push(("PGSSLNEGOTIATION", "direct".into()));
        }
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.expose().to_string()));
        }
        env
    }
}

/// Only the scheme and host of a connection string that could not be parsed: never a part
/// that could hold the password.
fn safe_prefix(url: &str) -> String {
    let t = url.trim();
    match t.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            let host = host.split(['/', '?']).next().unwrap_or_default();
            if rest.contains('@') {
                format!("{scheme}://****@{host}/...")
            } else {
                format!("{scheme}://{host}/...")
            }
        }
        None => "(key=value string)".to_string(),
    }
}

type RawConnection = tokio_postgres::Connection<Sniff<PgSocket>, crate::pgtls::PgTlsStream>;

/// tokio-postgres's log-in as an owned, boxed `Send` future (an `async fn` borrowing the
/// configuration trips the compiler's higher-ranked `Send` inference in spawned callers).
type LoginFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Client, RawConnection), tokio_postgres::Error>> + Send>>;

fn raw_connect(config: Config, io: Sniff<PgSocket>, tls: RustlsConnect) -> LoginFuture {
    Box::pin(async move { config.connect_raw(io, tls).await })
}

fn placeholder_config() -> std::sync::Arc<ferry_tls::rustls::ClientConfig> {
    ferry_tls::client_config(&ferry_tls::ClientOptions::default()).expect("an encrypt-only TLS configuration always builds")
}

/// A server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddr {
    /// Host name or IP, and port.
    Tcp(String, u16),
    /// Unix socket directory, and port (names the socket file).
    Unix(PathBuf, u16),
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Tcp(h, p) => write!(f, "{h}:{p}"),
            HostAddr::Unix(d, p) => write!(f, "{}/.s.PGSQL.{p}", d.display()),
        }
    }
}

/// Connection errors, which say whom Ferry tried to reach and how (here rather than in
/// `error`, which knows nothing of endpoints).
impl PgError {
    /// Wraps an error raised while connecting to `ep`, with the fixes operators need most:
    /// for password problems, which password was tried (where it came from) and where Ferry
    /// looked when there was none.
    pub fn from_connect(e: tokio_postgres::Error, ep: &Endpoint) -> PgError {
        let context = format!("cannot connect to {} as user {:?}", ep.describe(), ep.user());
        let mut err = PgError::query(context, e);
        // tokio-postgres says "invalid configuration" and hides the cause in `source()`, which
        // `reason` includes.
        let text = err.reason.clone();
        let prov = ep.password_provenance();
        if err.code.is_none() && text.contains("password missing") {
            let mut looked = vec![
                "the URL".to_string(),
                "FERRY_SOURCE_PASSWORD/FERRY_TARGET_PASSWORD and --source-password-file/--target-password-file".into(),
                "PGPASSWORD".into(),
                "a service (PGSERVICE)".into(),
            ];
            looked.extend(prov.looked.iter().cloned());
            return PgError::config(
                err.context,
                format!("the server asks for a password and none was found (looked in: {})", looked.join("; ")),
                "give the password in one of those places (a password file, FERRY_*_PASSWORD or ~/.pgpass with mode 0600 keep it off the command line)",
            );
        }
        if err.is(&SqlState::INVALID_PASSWORD) {
            let from = prov.password_from.clone().unwrap_or_else(|| "no password".into());
            err.fix = Some(format!(
                "the password from {from} was rejected for user {:?}: check the user name and that password (sources, strongest first: FERRY_*_PASSWORD or --*-password-file, the URL, PGPASSWORD, the service file, ~/.pgpass)",
                ep.user()
            ));
        }
        if err.code.is_none() && err.fix.is_none() {
            err.fix = Some(format!(
                "check that PostgreSQL is running at {} and reachable from this machine (host, port, firewall, listen_addresses)",
                ep.host()
            ));
            err.class = ErrorClass::Transient;
        }
        err
    }

    /// A socket could not be opened (or timed out) while connecting to `ep`.
    pub fn from_io(e: std::io::Error, ep: &Endpoint) -> PgError {
        PgError {
            context: format!("cannot connect to {} as user {:?}", ep.describe(), ep.user()),
            reason: e.to_string(),
            fix: Some(format!(
                "check that PostgreSQL is running at {} and reachable from this machine (host, port, firewall, listen_addresses)",
                ep.host()
            )),
            class: ErrorClass::Transient,
            code: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let e = Endpoint::parse("postgres://bob:pw@127.0.0.1:5433/app", None).unwrap();
        assert_eq!(e.redacted(), "postgres://bob:****@127.0.0.1:5433/app");
        assert_eq!(e.dbname(), "app");
        assert_eq!(e.user(), "bob");
        assert_eq!(e.host(), HostAddr::Tcp("127.0.0.1".into(), 5433));
        assert_eq!(e.password().unwrap().expose(), "pw");
        assert!(!format!("{e:?}").contains("pw@"));
    }

    #[test]
    fn password_override_and_defaults() {
        let e = Endpoint::parse("postgresql://bob@db/x", Some(Secret::new("envpw"))).unwrap();
        assert_eq!(e.password().unwrap().expose(), "envpw");
        let e = Endpoint::parse("postgres://bob@db", None).unwrap();
        assert_eq!(e.dbname(), "bob");
    }

    #[test]
    fn own_sessions_stay_listed_a_while_after_closing() {
        let own = OwnSession {
            pid: -4242,
            started_us: 17,
        };
        let guard = OwnSessionGuard::new(own);
        assert!(own_sessions().0.contains(&-4242));
        drop(guard);
        // The server may list the backend a moment after the goodbye.
        assert!(own_sessions().0.contains(&-4242));
    }

    #[test]
    fn malformed_urls_are_refused_without_the_password() {
        for bad in [
            "mysql://bob:topsecret@h/db",
            "postgres://bob:topsecret@h:notaport/db",
            "postgres://:topsecret@/db",
        ] {
            let err = Endpoint::parse(bad, None).unwrap_err().to_string();
            assert!(!err.contains("topsecret"), "{err}");
            assert!(err.contains("invalid PostgreSQL URL"), "{err}");
        }
    }
}
