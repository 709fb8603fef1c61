//! The proxy's error types: what failed, why, and what to do.

use crate::upstream::ConnectError;
use std::fmt;
use std::time::Duration;

/// Starting the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source} (is the port in use? choose another listen address or port 0)")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid proxy configuration: {0}")]
    Config(String),
}

/// A session that kept a hold from completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusySession {
    /// The proxy's session id (also the process id the client sees in BackendKeyData).
    pub id: u32,
    pub user: String,
    pub application_name: String,
    /// "in transaction", "in failed transaction", "query in flight", "extended-protocol batch
    /// without Sync" or "connecting to the server".
    pub state: &'static str,
    /// How long the session has been in that state.
    pub busy_for: Duration,
}

impl fmt::Display for BusySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "session {} (user {:?}, application_name {:?}) {} for {:.1} s",
            self.id,
            self.user,
            self.application_name,
            self.state,
            self.busy_for.as_secs_f64()
        )
    }
}

fn list(sessions: &[BusySession]) -> String {
    sessions.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; ")
}

/// `Proxy::hold` failed; the hold has been released again.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(
        "not every session reached a transaction boundary within {:.1} s; busy: {}. The hold was released and traffic flows again; retry later, or end those sessions' transactions (pg_terminate_backend on the server)",
        within.as_secs_f64(), list(busy)
    )]
    Busy { within: Duration, busy: Vec<BusySession> },
    #[error("a hold is already in place: release it before holding again")]
    AlreadyHolding,
    #[error("the proxy is shut down")]
    ShutDown,
}

/// `Hold::switch` failed; every session stays on its old upstream.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("session {session} (user {user:?}, application_name {application_name:?}) could not move to upstream {upstream}: {source}. Every session stays on the old upstream; fix the cause and switch again")]
    Session {
        session: u32,
        user: String,
        application_name: String,
        upstream: String,
        source: ConnectError,
    },
    #[error("switching to upstream {upstream} did not finish within {:.1} s ({pending} of {total} sessions not ready). Every session stays on the old upstream; check that the server is reachable and not overloaded, then switch again with more time", within.as_secs_f64())]
    Timeout {
        upstream: String,
        within: Duration,
        pending: usize,
        total: usize,
    },
}
