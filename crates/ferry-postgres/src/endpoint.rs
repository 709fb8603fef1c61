//! Where a PostgreSQL server is and how to log in to it, printable without its password.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ferry_core::{redact_url, Secret};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::PgError;

/// `application_name` every Ferry connection announces, so DBAs see Ferry in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "ferry";

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
    let sock = socket2::SockRef::from(s);
    let ka = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    let _ = sock.set_tcp_nodelay(true);
}

/// A parsed connection URL plus its password. `Debug` and [`Endpoint::redacted`] never show the
/// password.
#[derive(Clone)]
pub struct Endpoint {
    config: Config,
    redacted: String,
    password: Option<Secret>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.redacted).finish()
    }
}

/// The URL could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL URL {redacted}: {why}; expected postgres://user[:password]@host[:port]/database[?sslmode=...]")]
pub struct UrlError {
    /// The URL with its password masked.
    pub redacted: String,
    /// What is wrong.
    pub why: String,
}

impl Endpoint {
    /// Parses `postgres://` / `postgresql://` URLs (and libpq key=value strings). `password`,
    /// when given (from the environment or a password file), overrides the URL's.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<Self, UrlError> {
        let redacted = redact_url(url);
        let err = |why: String| UrlError {
            redacted: redacted.clone(),
            why,
        };
        let trimmed = url.trim();
        if trimmed.contains("://") && !(trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://")) {
            return Err(err("the scheme must be postgres:// or postgresql://".into()));
        }
        // The parser's own message may quote the offending text, which can hold the password.
        let mut config = Config::from_str(trimmed).map_err(|e| err(redact_url(&e.to_string())))?;
        if config.get_hosts().is_empty() {
            return Err(err("no host given".into()));
        }
        if config.get_user().is_none() {
            return Err(err("no user given".into()));
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or_default().to_string();
            config.dbname(&user);
        }
        let password = password.or_else(|| config.get_password().map(|p| Secret::new(String::from_utf8_lossy(p).into_owned())));
        if let Some(p) = &password {
            config.password(p.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A peer that vanishes (a black hole: packets dropped, nothing closed) is noticed by
        // the kernel: keepalive probes after 10 s of silence, and unacknowledged data gives up
        // after TCP_USER_TIMEOUT. Ferry's own deadlines (stream silence, the apply watchdog,
        // sampler timeouts: docs/operations.md) usually fire first; these are the floor under
        // every connection, verification's and the control connections' included.
        config.keepalives(true);
        config.keepalives_idle(TCP_KEEPALIVE_IDLE);
        config.keepalives_interval(TCP_KEEPALIVE_INTERVAL);
        config.keepalives_retries(TCP_KEEPALIVE_RETRIES);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        Ok(Self {
            config,
            redacted,
            password,
        })
    }

    /// The URL with its password masked: safe to print.
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

    /// First host: a TCP host name or a Unix socket directory.
    pub fn host(&self) -> HostAddr {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => HostAddr::Tcp(h.clone(), port),
            Some(Host::Unix(p)) => HostAddr::Unix(p.clone(), port),
            None => HostAddr::Tcp("localhost".into(), port),
        }
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

    /// Whether the user asked for TLS (`sslmode=require` or stricter is unsupported for now).
    pub fn requires_tls(&self) -> bool {
        matches!(self.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require)
    }

    /// The configured connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10))
    }

    /// Opens a regular SQL connection; the connection's I/O runs on a spawned task. `role`
    /// (for example "copy-3") is appended to `application_name` so each connection is visible.
    pub async fn connect(&self, role: &str) -> Result<Client, PgError> {
        if self.requires_tls() {
            return Err(PgError::config(
                format!("cannot connect to {}", self.describe()),
                "the URL asks for sslmode=require, and this build of Ferry has no TLS support yet",
                "use sslmode=prefer or sslmode=disable on a trusted network, or tunnel the connection",
            ));
        }
        let mut config = self.config.clone();
        let app = self.config.get_application_name().unwrap_or(APPLICATION_NAME);
        config.application_name(format!("{app} {role}"));
        let (client, connection) = config.connect(NoTls).await.map_err(|e| PgError::from_connect(e, self))?;
        let what = self.describe();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(server = %what, error = %e, "connection closed with error");
            }
        });
        // If Ferry dies (kill -9 included), the server aborts this session's running statement
        // within a second instead of finishing it as an orphan that a rerun would collide with.
        // PostgreSQL 14+; older servers lack the setting, which is harmless.
        let _ = client.batch_execute("SET client_connection_check_interval = 1000").await;
        Ok(client)
    }
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
