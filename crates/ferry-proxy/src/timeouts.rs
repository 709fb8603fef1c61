//! Every time limit of the proxy, and the TCP options of its sockets
//! (`docs/timeouts-mysql-proxy.md`).
//!
//! What is bounded by a deadline: everything the proxy does on its own account against a server
//! (opening a server connection and logging in, replaying a session's state at a switch,
//! forwarding a cancel request, saying Terminate) and a client's startup and authentication.
//!
//! What is not: a server connection while it carries a client's request. A query may
//! legitimately run for minutes, and an idle session may legitimately say nothing for hours, so
//! no read deadline applies there. A dead server (or a network that silently drops packets) is
//! found by the kernel instead: TCP keepalive probes after [`Timeouts::keepalive_idle`] of
//! silence ([`Timeouts::keepalive_retries`] unanswered probes, [`Timeouts::keepalive_interval`]
//! apart, end the connection) and, on Linux, TCP_USER_TIMEOUT for data sent and never
//! acknowledged. The client then gets FATAL 08006 naming the upstream and the error, and the
//! proxy logs which session and which upstream died.

use std::time::Duration;
use tokio::net::TcpStream;

/// The proxy's time limits. [`Timeouts::default`] is what `Proxy::start` uses; tests and
/// callers with other needs pass their own to `Proxy::start_with`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a server connection: name resolution, TCP connect, the startup message,
    /// authentication and the server's first ReadyForQuery. Default 10 s.
    pub connect: Duration,
    /// Replaying a session's SETs and prepared statements on its new server at a switch
    /// (`Hold::switch` has its own overall limit too). Default 10 s.
    pub replay: Duration,
    /// Forwarding a client's cancel request: connect to the server and send it. Default 5 s.
    pub cancel: Duration,
    /// A client's startup, TLS handshake and authentication. Default 10 s: a client needs a
    /// few round trips, and with at most `max_unauthenticated` connections logging in at once,
    /// this is how long a silent connection can keep a place (PostgreSQL's
    /// `authentication_timeout` is 60 s, but its places are not so few).
    pub client_startup: Duration,
    /// Silence on a socket (client or server) before the kernel sends a keepalive probe.
    /// Default 10 s.
    pub keepalive_idle: Duration,
    /// Between keepalive probes. Default 5 s.
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel ends the connection (10 + 3 x 5 = 25 s). Default 3.
    pub keepalive_retries: u32,
    /// Linux: longest sent data may stay unacknowledged before the kernel ends the connection
    /// (TCP_USER_TIMEOUT). Default 30 s.
    pub user_timeout: Duration,
}

/// Longest the proxy waits to hand a Terminate (or a client's last bytes) to a server
/// connection it is dropping: the connection is closed either way.
pub(crate) const TERMINATE_TIMEOUT: Duration = Duration::from_secs(1);

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            replay: Duration::from_secs(10),
            cancel: Duration::from_secs(5),
            client_startup: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// Sets keepalives (and TCP_USER_TIMEOUT on Linux) on a socket. Best effort: an option the
    /// OS lacks keeps its default, and a failure is logged, not fatal.
    pub(crate) fn tune(&self, s: &TcpStream) {
        let sock = socket2::SockRef::from(s);
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.keepalive_idle)
            .with_interval(self.keepalive_interval)
            .with_retries(self.keepalive_retries);
        if let Err(e) = sock.set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalives");
        }
        #[cfg(target_os = "linux")]
        if let Err(e) = sock.set_tcp_user_timeout(Some(self.user_timeout)) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// A duration for people (`ferry_core::human_duration`).
pub(crate) fn human(d: Duration) -> String {
    ferry_core::human_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(human(Duration::from_millis(300)), "300 ms");
        assert_eq!(human(Duration::from_secs(10)), "10 s");
        assert_eq!(human(Duration::from_millis(2500)), "2.5 s");
    }

    #[test]
    fn a_dead_peer_is_noticed_within_half_a_minute() {
        let t = Timeouts::default();
        let keepalive = t.keepalive_idle + t.keepalive_interval * t.keepalive_retries;
        assert_eq!(keepalive, Duration::from_secs(25));
        assert_eq!(t.user_timeout, Duration::from_secs(30));
        assert_eq!(t.connect, Duration::from_secs(10));
    }

    #[tokio::test]
    async fn sockets_get_keepalives_and_a_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (server, _)) = (client.unwrap(), accepted.unwrap());
        let t = Timeouts {
            keepalive_idle: Duration::from_secs(7),
            keepalive_interval: Duration::from_secs(2),
            keepalive_retries: 4,
            user_timeout: Duration::from_secs(11),
            ..Timeouts::default()
        };
        for s in [&client, &server] {
            t.tune(s);
            let sock = socket2::SockRef::from(s);
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
            #[cfg(target_os = "linux")]
            {
                assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(2));
                assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
                assert_eq!(sock.tcp_user_timeout().unwrap(), Some(Duration::from_secs(11)));
            }
        }
    }
}
