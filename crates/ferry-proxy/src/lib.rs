//! Ferry's PostgreSQL wire-protocol proxy: it forwards client sessions to one upstream server,
//! can hold new requests at transaction boundaries, and switches every session to another server
//! without a client seeing an error.
//!
//! # How a session flows
//! A client connects and authenticates against the proxy's own users (SCRAM-SHA-256; over TLS
//! when it asks and the proxy has a certificate, see "TLS" below). The proxy then opens a server connection as
//! the login that the current [`Upstream`] maps the user to, passing the client's startup
//! parameters (application_name, options, DateStyle, client_encoding, ...), forwards the
//! server's ParameterStatus messages and sends its own BackendKeyData, so that a CancelRequest
//! comes to the proxy, which forwards it to whichever server the session is on at that moment.
//!
//! Forwarding copies bytes: message headers are scanned, and only Query, Parse and Close from
//! the client and ReadyForQuery, CommandComplete, ParseComplete, CloseComplete and ErrorResponse
//! from the server are looked into, to track:
//! * the transaction status of the last ReadyForQuery ('I', 'T', 'E');
//! * requests in flight: Query, Sync and FunctionCall sent minus ReadyForQuery received (COPY
//!   data belongs to the request in flight);
//! * "unsynced": an extended-protocol message (Parse, Bind, Describe, Execute, Close, Flush) was
//!   sent since the last Sync.
//!
//! A session is at a **safe point** when the status is 'I', nothing is in flight and it is not
//! unsynced. [`Proxy::hold`] stops sessions at their next safe point: the first message of the
//! next request is kept in the proxy's buffer until the [`Hold`] is released. New connections
//! authenticate and then wait before connecting to a server.
//!
//! # What a switch carries over
//! [`Hold::switch`] opens, for every session, a connection to the new server with the same
//! startup parameters, and replays, in the order they ran:
//! * simple-protocol `SET` / `RESET` statements (not `SET LOCAL`, not `SET TRANSACTION`) that
//!   completed without error, inside a transaction only once it committed; `RESET ALL` and
//!   `DISCARD ALL` clear them;
//! * named prepared statements, from Parse messages (kept raw) and SQL `PREPARE`, minus those
//!   closed by Close, `DEALLOCATE` or `DISCARD ALL`.
//!
//! Only when every session's replay succeeded do all sessions adopt their new connection and
//! Terminate the old one; otherwise all stay where they were.
//!
//! # What is NOT carried over
//! These belong to the old server session and are lost at a switch; the client sees the error
//! the new server gives on next use:
//! * temporary tables (`relation "..." does not exist`, 42P01);
//! * `LISTEN` registrations: notifications silently stop arriving (no error);
//! * session-level advisory locks: silently not held any more (no error), so another session can
//!   take them;
//! * cursors `WITH HOLD` (`cursor "..." does not exist`, 34000) and unnamed statements/portals;
//! * `SET` sent through the extended protocol (Parse/Bind/Execute of a SET statement), `SET`
//!   inside a multi-statement query string, and `SET` undone by `ROLLBACK TO SAVEPOINT`: the
//!   setting silently falls back to its default on the new server;
//! * `DEALLOCATE` sent through the extended protocol: the statement comes back on the new server;
//! * sequences' `currval`/`lastval` (`currval of sequence "..." is not yet defined`, 55000), and
//!   the ParameterStatus values the client got at connection time (server_version etc.) are not
//!   re-sent.
//!
//! # Timeouts
//! Opening a server connection (TCP connect, startup, authentication) is bounded by
//! [`Timeouts::connect`], replaying session state at a switch by [`Timeouts::replay`], and a
//! cancel request by [`Timeouts::cancel`]. A server connection that carries a client's requests
//! has no read deadline (a query may run for minutes): every socket, client or server, has TCP
//! keepalives and, on Linux, TCP_USER_TIMEOUT, so a dead peer ends its session within about
//! half a minute. Defaults and the reasoning: [`Timeouts`] and `docs/timeouts-mysql-proxy.md`.
//!
//! # TLS
//! * Clients: with [`ProxyConfig::tls`] (a rustls server configuration, `ferry_tls::server_config`)
//!   SSLRequest is answered 'S' and the TLS handshake follows; PostgreSQL 17's direct TLS
//!   (`sslnegotiation=direct`: the ClientHello comes first, with ALPN `postgresql`) is accepted
//!   too. Without it SSLRequest is answered 'N'. GSSENCRequest is always answered 'N'.
//!   [`ProxyConfig::require_tls`] refuses a plain client at its startup packet with FATAL 28000.
//!   Bytes sent after an encryption request, before the answer, end the connection
//!   (CVE-2021-23214).
//! * Upstreams: [`Upstream::tls`] ([`UpstreamTls`]): SSLRequest, then the handshake with the
//!   rustls client configuration given (which decides how the server's certificate is checked,
//!   against [`Upstream::host`]); `Require` and a server answering 'N' is
//!   [`ConnectError::TlsRefused`]. Cancel requests to the server go the same way.
//! * Forwarding is the same for TLS and plain streams: a TLS stream is read and written through
//!   rustls, which may keep encrypted bytes when the socket is full; the session flushes them as
//!   soon as the socket takes them, with no flush per message.
//!
//! # The read endpoint
//! With [`ProxyConfig::read_listen`] the proxy listens on a second address, for the sessions an
//! application would send to a read replica. A listener of its own, rather than a rule on the
//! database or user name, because that is how PostgreSQL clients are pointed at replicas
//! already (a second host:port in the pool's configuration, or a second entry in a
//! multi-host connection string), and it needs no name the target does not have.
//!
//! * Every server connection of a read session starts with `-c default_transaction_read_only=on`
//!   appended to its `options`, on the primary as on the replica: a write fails with
//!   PostgreSQL's own error (`cannot execute INSERT in a read-only transaction`, SQLSTATE
//!   25006) wherever the session is. Statements that would turn that off (`READ WRITE`, `SET`
//!   of a `*read_only` setting to off, `set_config` naming one, the same inside a `DO` block)
//!   are replaced by one that raises SQLSTATE 25006 with the reason, so the server still
//!   answers in protocol order. `SHOW`, `current_setting` and `RESET` pass.
//! * [`Proxy::set_read_share`] sends that percent of read sessions to the replica
//!   ([`Proxy::set_replica`]), as long as [`Proxy::set_replica_ready`] says the replica may serve
//!   (the caller measures its lag). A session is placed when it connects and moved, when the
//!   share or the readiness changes, at the start of its next request, at a safe point, with
//!   its SETs and prepared statements replayed as at a switch. Which sessions move is sticky
//!   (see `read.rs`): raising the share only moves sessions to the replica, lowering it only
//!   moves them back, and a session that is not moved keeps its server.
//! * A [`Hold`] holds read sessions too, and [`Hold::switch`] moves them to the new primary.
//!
//! # Shadow traffic
//! [`Proxy::set_shadow_sample`] runs a share of the read-only statements sessions of the primary
//! endpoint send to the source outside transactions again on the replica, after the client has
//! its answer, and compares the answers; [`Proxy::shadow_report`] says what it found per query
//! fingerprint (mismatches with an example, errors only the replica gave, latency on both).
//! How it samples, compares and stays bounded: `shadow.rs`.
//!
//! # Limits
//! At most [`ProxyConfig::max_connections`] client connections (default 1000) and, among them,
//! [`ProxyConfig::max_unauthenticated`] still logging in (default 64), each for at most
//! [`Timeouts::client_startup`] (10 s). A connection over either limit gets FATAL 53300 "too many
//! connections to the Ferry proxy" in answer to its startup packet (after a TLS handshake if it
//! asks for one) within 2 s; when as many connections are already being refused, the error is
//! written once without waiting and the connection closed. An invalid startup packet (length
//! under 8 or over 10,000 bytes) or authentication message gets FATAL 08P01 and a close.
//!
//! Client passwords are not SASLprep-normalised (ASCII passwords are unaffected); the
//! replication protocol is refused.

mod codec;
mod error;
mod hold;
mod proxy;
mod read;
mod replay;
mod scram;
mod session;
mod shadow;
mod sql;
mod timeouts;
mod upstream;

pub use error::{BusySession, HoldError, ProxyError, SwitchError};
pub use hold::{Hold, ReleaseReport, SwitchReport};
pub use proxy::{Proxy, ProxyStats, ReadStats};
pub use shadow::{FingerprintReport, Latency, MismatchExample, ShadowReport, TargetError};
pub use timeouts::Timeouts;
pub use upstream::ConnectError;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

pub use ferry_tls::rustls;

/// Where sessions go: one PostgreSQL server and database, and how each proxy user logs in there.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// "source" / "target": used in logs and errors.
    pub name: String,
    /// Hostname, IP address, or a Unix socket directory if it starts with '/'.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// Proxy user name -> login on this server.
    pub logins: HashMap<String, Login>,
    /// Whether the proxy's connections to this server use TLS (never over a Unix socket, which
    /// PostgreSQL does not encrypt).
    pub tls: UpstreamTls,
}

/// TLS on the proxy's connections to an upstream: libpq's `sslmode` reduced to what the proxy
/// does. The rustls configuration carries the verification (encrypt only, verify the chain, or
/// the chain and the host name: the name checked is [`Upstream::host`]) and any client
/// certificate; build it with `ferry_tls::client_config`.
#[derive(Clone, Default)]
pub enum UpstreamTls {
    /// Plain TCP (libpq `disable`).
    #[default]
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq `prefer`).
    Prefer(Arc<rustls::ClientConfig>),
    /// TLS or no connection (libpq `require`, `verify-ca`, `verify-full`).
    Require(Arc<rustls::ClientConfig>),
}

impl UpstreamTls {
    /// The configuration to use, if TLS is to be tried at all.
    pub fn config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        match self {
            UpstreamTls::Disable => None,
            UpstreamTls::Prefer(c) | UpstreamTls::Require(c) => Some(c),
        }
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamTls::Disable => "Disable",
            UpstreamTls::Prefer(_) => "Prefer",
            UpstreamTls::Require(_) => "Require",
        })
    }
}

/// A login on a server. `Debug` does not print the password.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Default [`ProxyConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Default [`ProxyConfig::max_unauthenticated`].
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;

/// What the proxy listens on and whom it lets in.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Address to listen on; port 0 picks a free port (see [`Proxy::local_addr`]).
    pub listen: SocketAddr,
    /// The read endpoint's address, if there is one (see "The read endpoint" above): same
    /// users, database, TLS and limits; its sessions' transactions are read-only.
    pub read_listen: Option<SocketAddr>,
    /// Clients authenticate with SCRAM-SHA-256 against these.
    pub users: Vec<ProxyUser>,
    /// The database name clients must ask for; others are refused with SQLSTATE 3D000.
    pub dbname: String,
    /// Certificate and key to accept TLS with (`ferry_tls::server_config`): SSLRequest is
    /// answered 'S', and PostgreSQL 17's direct TLS (`sslnegotiation=direct`, ALPN
    /// `postgresql`) is accepted. None: SSLRequest is answered 'N'.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse clients that do not use TLS (SQLSTATE 28000). Needs `tls`.
    pub require_tls: bool,
    /// Client connections at most, authenticated or not; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// Client connections still in startup or authentication at most (each for at most
    /// [`Timeouts::client_startup`]); more are refused with SQLSTATE 53300.
    pub max_unauthenticated: usize,
}

impl ProxyConfig {
    /// A plain-TCP proxy with the default limits.
    pub fn new(listen: SocketAddr, users: Vec<ProxyUser>, dbname: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            listen,
            read_listen: None,
            users,
            dbname: dbname.into(),
            tls: None,
            require_tls: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
        }
    }
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listen", &self.listen)
            .field("read_listen", &self.read_listen)
            .field("users", &self.users)
            .field("dbname", &self.dbname)
            .field("tls", &self.tls.is_some())
            .field("require_tls", &self.require_tls)
            .field("max_connections", &self.max_connections)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .finish()
    }
}

/// A user clients log in to the proxy as. `Debug` does not print the password.
#[derive(Clone)]
pub struct ProxyUser {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for ProxyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_passwords() {
        let l = Login {
            user: "u".into(),
            password: Some("hunter2".into()),
        };
        let p = ProxyUser {
            name: "app".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{l:?}{p:?}").contains("hunter2"));
    }
}
