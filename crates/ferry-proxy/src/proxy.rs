//! The proxy handle, the state its sessions share, and the accept loop.

use crate::error::{BusySession, HoldError, ProxyError};
use crate::hold::Hold;
use crate::read::ReadRouting;
use crate::replay::ReplayLog;
use crate::rustls;
use crate::scram::Verifier;
use crate::shadow::Shadow;
use crate::timeouts::Timeouts;
use crate::upstream::{Backend, CancelKey};
use crate::{ProxyConfig, Upstream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Locks a std mutex, ignoring poisoning (the data stays consistent: no invariant spans a panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Messages from the controller to a session task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Drop the old server connection and continue on this one; acknowledge when done.
    Adopt(Backend, oneshot::Sender<()>),
    /// Close the session (proxy shutdown).
    Shutdown,
}

/// What the controller can see of a session; written by the session task.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub id: u32,
    pub secret: i32,
    pub user: String,
    /// The client's startup parameters, reused for every server connection.
    pub params: Vec<(String, String)>,
    pub application_name: Mutex<String>,
    pub safe: AtomicBool,
    pub tx_status: AtomicU8,
    pub in_flight: AtomicU32,
    pub unsynced: AtomicBool,
    /// Nanoseconds since `Shared::epoch` when the session last left its safe point.
    pub busy_since: AtomicU64,
    pub backend_pid: AtomicI32,
    pub cancel_key: Mutex<CancelKey>,
    pub replay: Mutex<ReplayLog>,
    pub commands: mpsc::UnboundedSender<Command>,
    /// A read-endpoint session: its routing bucket (see `read.rs`).
    pub read_bucket: Option<u8>,
    /// Name of the upstream its server connection is on now.
    pub upstream: Mutex<String>,
}

impl SessionHandle {
    pub fn busy_state(&self) -> &'static str {
        match self.tx_status.load(Relaxed) {
            b'T' => "in transaction",
            b'E' => "in failed transaction",
            _ if self.in_flight.load(Relaxed) > 0 => "query in flight",
            _ if self.unsynced.load(Relaxed) => "extended-protocol batch without Sync",
            _ => "sending a request",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct HoldStats {
    pub held: usize,
    pub earliest: Option<Instant>,
}

/// State shared by the accept loop, every session task and the controller.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dbname: String,
    pub timeouts: Timeouts,
    pub verifiers: HashMap<String, Verifier>,
    pub upstream: Mutex<Upstream>,
    pub epoch: Instant,
    /// Hot-path flag: sessions check it when they leave a safe point.
    pub holding: AtomicBool,
    /// A hold object exists (only one at a time).
    pub hold_active: AtomicBool,
    /// Bumped on every release; waiters watch it.
    pub release_tx: watch::Sender<u64>,
    /// Sessions poke this when they reach a safe point while holding.
    pub safe_notify: Notify,
    /// Sessions past authentication that are connecting to a server.
    pub connecting: AtomicUsize,
    pub sessions: Mutex<HashMap<u32, Arc<SessionHandle>>>,
    pub next_id: AtomicU32,
    pub held_now: AtomicUsize,
    pub hold_stats: Mutex<HoldStats>,
    pub switches: AtomicU64,
    pub last_max_wait: Mutex<Option<Duration>>,
    pub shutdown_tx: watch::Sender<bool>,
    /// Accepts TLS from clients (ALPN `postgresql` added), when a certificate was given.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub require_tls: bool,
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    /// Client connections being served, authenticated or not (refusals not included).
    pub clients: Arc<AtomicUsize>,
    /// Client connections still in startup or authentication.
    pub unauthenticated: Arc<AtomicUsize>,
    /// Connections being refused (53300) with a proper error; at most `max_unauthenticated`,
    /// beyond that a refusal is one non-blocking write and a close.
    pub refusing: Arc<AtomicUsize>,
    /// Connections refused for a limit since start.
    pub refused: AtomicU64,
    /// The read endpoint's routing.
    pub read: ReadRouting,
    /// Shadow traffic.
    pub shadow: Arc<Shadow>,
}

/// One unit of a connection counter, given back when dropped.
#[derive(Debug)]
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub fn take(counter: &Arc<AtomicUsize>) -> Counted {
        counter.fetch_add(1, SeqCst);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// How an accepted connection is treated.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A session: counted as a client, and as unauthenticated until it has logged in.
    Session { client: Counted, unauthenticated: Counted },
    /// Over a limit: negotiate, read the startup packet, answer FATAL 53300 with this message.
    Refuse { slot: Counted, message: String, hint: String },
}

impl Shared {
    pub fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A receiver that fires on the next release; check `holding` after taking it.
    pub fn release_rx(&self) -> watch::Receiver<u64> {
        let mut rx = self.release_tx.subscribe();
        rx.borrow_and_update();
        rx
    }

    pub fn begin_wait(&self) {
        self.held_now.fetch_add(1, SeqCst);
        let mut s = lock(&self.hold_stats);
        s.held += 1;
        s.earliest.get_or_insert_with(Instant::now);
    }

    pub fn end_wait(&self) {
        self.held_now.fetch_sub(1, SeqCst);
    }

    /// Waits until no hold is in place (or shutdown). Returns false on shutdown.
    pub async fn wait_released(&self) -> bool {
        let mut shutdown = self.shutdown_tx.subscribe();
        self.begin_wait();
        let ok = loop {
            let mut rx = self.release_rx();
            if !self.holding.load(SeqCst) {
                break true;
            }
            if *shutdown.borrow_and_update() {
                break false;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = shutdown.changed() => {}
            }
        };
        self.end_wait();
        ok
    }

    pub fn notify_safe(&self) {
        if self.holding.load(SeqCst) {
            self.safe_notify.notify_one();
        }
    }

    pub fn unregister(&self, id: u32) {
        lock(&self.sessions).remove(&id);
        self.notify_safe();
    }
}

/// A running proxy. Cheap to clone; every clone controls the same proxy.
#[derive(Clone, Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    read_addr: Option<SocketAddr>,
    accept: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// A snapshot of the proxy's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStats {
    /// Sessions connected to a server.
    pub sessions: usize,
    /// Sessions inside a transaction ('T' or 'E').
    pub in_transaction: usize,
    /// Sessions not at a safe point (in a transaction, request in flight or unsynced).
    pub busy: usize,
    /// Requests (and new connections) currently held.
    pub held: usize,
    /// Switches completed since start.
    pub switches: u64,
    /// Name of the upstream new sessions go to.
    pub upstream: String,
    /// Longest time a request waited during the last released hold.
    pub last_hold_max_wait: Option<Duration>,
    /// Client connections open, authenticated or not (at most `max_connections`).
    pub clients: usize,
    /// Client connections still in startup or authentication (at most `max_unauthenticated`).
    pub unauthenticated: usize,
    /// Connections refused since start because a limit was reached (SQLSTATE 53300).
    pub refused: u64,
    /// The read endpoint, when there is one.
    pub read: Option<ReadStats>,
    /// Whether the replica (the target) may take shifted reads and shadow traffic now.
    pub replica_ready: bool,
}

/// The read endpoint's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStats {
    pub listen: SocketAddr,
    /// Percent of read sessions the replica is to serve.
    pub share: u8,
    /// Name of the replica, if one is set.
    pub replica: Option<String>,
    /// Whether the replica may serve now (its lag under the bound).
    pub replica_ready: bool,
    /// Read sessions connected to a server.
    pub sessions: usize,
    /// Of them, on the replica (a replica that is also the primary, after a cutover, counts as
    /// the primary).
    pub on_replica: usize,
    /// Sessions moved between primary and replica since start, and moves that failed.
    pub moves: u64,
    pub move_failures: u64,
    /// Requests of read sessions served by the primary and by the replica since start.
    pub requests_primary: u64,
    pub requests_replica: u64,
    /// Statements refused because they would have made a read session's transactions writable.
    pub refused_statements: u64,
}

impl Proxy {
    /// Binds the listener and spawns the accept loop on the current tokio runtime, with the
    /// default [`Timeouts`].
    pub async fn start(config: ProxyConfig, upstream: Upstream) -> Result<Proxy, ProxyError> {
        Proxy::start_with(config, upstream, Timeouts::default()).await
    }

    /// Like [`Proxy::start`], with other time limits.
    pub async fn start_with(config: ProxyConfig, upstream: Upstream, timeouts: Timeouts) -> Result<Proxy, ProxyError> {
        if timeouts.connect.is_zero() || timeouts.replay.is_zero() || timeouts.cancel.is_zero() || timeouts.client_startup.is_zero() {
            return Err(ProxyError::Config(format!("every timeout must be longer than zero: {timeouts:?}")));
        }
        if config.max_connections == 0 || config.max_unauthenticated == 0 {
            return Err(ProxyError::Config(format!(
                "max_connections ({}) and max_unauthenticated ({}) must be at least 1",
                config.max_connections, config.max_unauthenticated
            )));
        }
        if config.require_tls && config.tls.is_none() {
            return Err(ProxyError::Config(
                "require_tls needs a certificate and key to accept TLS with (ProxyConfig::tls)".into(),
            ));
        }
        let tls = config.tls.as_ref().map(|c| {
            // PostgreSQL 17's ALPN: required for direct TLS, accepted after an SSLRequest.
            let mut c = rustls::ServerConfig::clone(c);
            c.alpn_protocols = vec![crate::session::ALPN.to_vec()];
            Arc::new(c)
        });
        if config.users.is_empty() {
            return Err(ProxyError::Config("no proxy users: add at least one ProxyUser".into()));
        }
        let mut verifiers = HashMap::new();
        for u in &config.users {
            if u.name.is_empty() {
                return Err(ProxyError::Config("a proxy user has an empty name".into()));
            }
            if verifiers.insert(u.name.clone(), Verifier::new(&u.password)).is_some() {
                return Err(ProxyError::Config(format!("proxy user {:?} is listed twice", u.name)));
            }
        }
        let listener = listen(config.listen).map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let read_listener = match config.read_listen {
            Some(addr) => {
                let l = listen(addr).map_err(|source| ProxyError::Bind { addr, source })?;
                let a = l.local_addr().map_err(|source| ProxyError::Bind { addr, source })?;
                Some((l, a))
            }
            None => None,
        };
        let read_addr = read_listener.as_ref().map(|(_, a)| *a);
        let shared = Arc::new(Shared {
            dbname: config.dbname,
            timeouts,
            verifiers,
            upstream: Mutex::new(upstream),
            epoch: Instant::now(),
            holding: AtomicBool::new(false),
            hold_active: AtomicBool::new(false),
            release_tx: watch::Sender::new(0),
            safe_notify: Notify::new(),
            connecting: AtomicUsize::new(0),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            held_now: AtomicUsize::new(0),
            hold_stats: Mutex::new(HoldStats::default()),
            switches: AtomicU64::new(0),
            last_max_wait: Mutex::new(None),
            shutdown_tx: watch::Sender::new(false),
            tls,
            require_tls: config.require_tls,
            max_connections: config.max_connections,
            max_unauthenticated: config.max_unauthenticated,
            clients: Arc::new(AtomicUsize::new(0)),
            unauthenticated: Arc::new(AtomicUsize::new(0)),
            refusing: Arc::new(AtomicUsize::new(0)),
            refused: AtomicU64::new(0),
            read: ReadRouting::default(),
            shadow: Arc::new(Shadow::default()),
        });
        tracing::info!(
            listen = %local_addr,
            upstream = %lock(&shared.upstream).name,
            tls = shared.tls.is_some(),
            require_tls = shared.require_tls,
            max_connections = shared.max_connections,
            "proxy started"
        );
        let mut accept = vec![tokio::spawn(accept_loop(listener, shared.clone(), false))];
        if let Some((l, a)) = read_listener {
            tracing::info!(listen = %a, "proxy read endpoint started");
            accept.push(tokio::spawn(accept_loop(l, shared.clone(), true)));
        }
        Ok(Proxy {
            shared,
            local_addr,
            read_addr,
            accept: Arc::new(Mutex::new(accept)),
        })
    }

    /// The proxy's time limits.
    pub fn timeouts(&self) -> Timeouts {
        self.shared.timeouts
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The read endpoint's address, if there is one.
    pub fn read_addr(&self) -> Option<SocketAddr> {
        self.read_addr
    }

    /// Where read sessions go when shifted (the migration's target); None: nowhere but the
    /// primary.
    pub fn set_replica(&self, replica: Option<Upstream>) {
        if let Some(r) = &replica {
            let primary = lock(&self.shared.upstream).clone();
            self.shared.shadow.set_upstreams(primary, r.clone());
        }
        self.shared.read.set_replica(replica);
    }

    /// Runs `percent` (0 to 100, fractions allowed) of the read-only statements sessions run
    /// on the source outside transactions again on the replica, and compares the answers (see
    /// "Shadow traffic" above). Needs [`Proxy::set_replica`]. Returns the previous percent.
    pub fn set_shadow_sample(&self, percent: f64) -> f64 {
        let old = self.shared.shadow.set_sample(percent, self.shared.timeouts);
        tracing::info!(from = old, to = percent, "shadow sample changed");
        old
    }

    /// What shadow traffic found so far.
    pub fn shadow_report(&self) -> crate::ShadowReport {
        self.shared.shadow.report()
    }

    /// Sends `percent` (0..=100) of read sessions to the replica while it is ready; returns
    /// the previous share. Sessions move at the start of their next request.
    pub fn set_read_share(&self, percent: u8) -> u8 {
        let old = self.shared.read.set_share(percent);
        if old != percent.min(100) {
            tracing::info!(from = old, to = percent.min(100), "read share changed");
        }
        old
    }

    /// Whether the replica may serve reads now (the caller keeps its lag under its bound).
    /// Sessions on it move back to the primary at the start of their next request when not.
    pub fn set_replica_ready(&self, ready: bool) {
        if self.shared.read.set_ready(ready) {
            tracing::info!(ready, "read replica readiness changed");
        }
    }

    /// The upstream new sessions go to.
    pub fn upstream(&self) -> Upstream {
        lock(&self.shared.upstream).clone()
    }

    pub fn stats(&self) -> ProxyStats {
        let primary = lock(&self.shared.upstream).name.clone();
        let sessions = lock(&self.shared.sessions);
        ProxyStats {
            sessions: sessions.len(),
            in_transaction: sessions.values().filter(|s| s.tx_status.load(Relaxed) != b'I').count(),
            busy: sessions.values().filter(|s| !s.safe.load(Relaxed)).count(),
            held: self.shared.held_now.load(SeqCst),
            switches: self.shared.switches.load(SeqCst),
            upstream: primary.clone(),
            last_hold_max_wait: *lock(&self.shared.last_max_wait),
            clients: self.shared.clients.load(SeqCst),
            unauthenticated: self.shared.unauthenticated.load(SeqCst),
            refused: self.shared.refused.load(SeqCst),
            replica_ready: self.shared.read.ready(),
            read: self.read_addr.map(|listen| {
                let r = &self.shared.read;
                let replica = r.replica().map(|u| u.name);
                let reads = sessions.values().filter(|s| s.read_bucket.is_some());
                let (mut n, mut on_replica) = (0, 0);
                for s in reads {
                    n += 1;
                    let on = lock(&s.upstream);
                    if replica.as_deref() == Some(on.as_str()) && *on != primary {
                        on_replica += 1;
                    }
                }
                ReadStats {
                    listen,
                    share: r.share(),
                    replica,
                    replica_ready: r.ready(),
                    sessions: n,
                    on_replica,
                    moves: r.moves.load(Relaxed),
                    move_failures: r.move_failures.load(Relaxed),
                    requests_primary: r.requests[0].load(Relaxed),
                    requests_replica: r.requests[1].load(Relaxed),
                    refused_statements: r.refused.load(Relaxed),
                }
            }),
        }
    }

    /// Backend process ids of every session's current server connection.
    /// Shadow traffic's own connections are included: they are the proxy's too.
    pub fn backend_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = lock(&self.shared.sessions).values().map(|s| s.backend_pid.load(SeqCst)).collect();
        pids.extend(lock(&self.shared.shadow.pids).iter().copied());
        pids
    }

    /// Starts holding and waits until every session is at a safe point. On timeout the hold is
    /// released and the error names the sessions that were busy.
    pub async fn hold(&self, within: Duration) -> Result<Hold, HoldError> {
        let shared = &self.shared;
        if *shared.shutdown_tx.borrow() {
            return Err(HoldError::ShutDown);
        }
        if shared.hold_active.swap(true, SeqCst) {
            return Err(HoldError::AlreadyHolding);
        }
        *lock(&shared.hold_stats) = Default::default();
        shared.holding.store(true, SeqCst);
        let hold = Hold::new(shared.clone());
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = shared.safe_notify.notified();
            let busy = self.busy_sessions();
            if busy.is_empty() {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    sessions = lock(&shared.sessions).len(),
                    "hold in place: every session at a safe point"
                );
                return Ok(hold);
            }
            if tokio::time::Instant::now() >= deadline {
                drop(hold);
                tracing::info!(busy = busy.len(), "hold timed out; released");
                return Err(HoldError::Busy { within, busy });
            }
            // The poll interval covers sessions that vanish without a notification.
            let tick = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(tick) => {}
            }
        }
    }

    fn busy_sessions(&self) -> Vec<BusySession> {
        let shared = &self.shared;
        let now = shared.now_nanos();
        let mut busy: Vec<BusySession> = lock(&shared.sessions)
            .values()
            .filter(|s| !s.safe.load(SeqCst))
            .map(|s| BusySession {
                id: s.id,
                user: s.user.clone(),
                application_name: lock(&s.application_name).clone(),
                state: s.busy_state(),
                busy_for: Duration::from_nanos(now.saturating_sub(s.busy_since.load(Relaxed))),
            })
            .collect();
        let connecting = shared.connecting.load(SeqCst);
        for _ in 0..connecting {
            busy.push(BusySession {
                id: 0,
                user: String::new(),
                application_name: String::new(),
                state: "connecting to the server",
                busy_for: Duration::ZERO,
            });
        }
        busy.sort_by_key(|b| b.id);
        busy
    }

    /// Stops accepting connections (the listening socket closes), waits up to `within` for the
    /// sessions to end by themselves, then closes those left as [`Proxy::shutdown`] does.
    /// Returns how many were closed that way.
    pub async fn drain(&self, within: Duration) -> usize {
        for accept in lock(&self.accept).drain(..) {
            accept.abort();
        }
        let deadline = Instant::now() + within;
        tracing::info!(
            sessions = self.shared.clients.load(SeqCst),
            within_ms = within.as_millis() as u64,
            "proxy draining: no new connections; waiting for sessions to end"
        );
        while self.shared.clients.load(SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = lock(&self.shared.sessions).len();
        self.shutdown().await;
        left
    }

    /// Stops accepting connections and closes every session (clients get FATAL 57P01).
    pub async fn shutdown(&self) {
        for accept in lock(&self.accept).drain(..) {
            accept.abort();
        }
        self.shared.shutdown_tx.send_replace(true);
        let handles: Vec<_> = lock(&self.shared.sessions).values().cloned().collect();
        for h in handles {
            let _ = h.commands.send(Command::Shutdown);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&self.shared.sessions).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("proxy shut down");
    }
}

/// Pending connections the kernel keeps for the accept loop (capped by net.core.somaxconn):
/// a burst of connections beyond it would see their handshakes dropped and retried.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts a session for an accepted connection, or refuses it when a limit is reached. Only
/// this task adds clients, so a check and the increment after it cannot race each other.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, read: bool) {
    let over = if shared.clients.load(SeqCst) >= shared.max_connections {
        Some((
            "too many connections to the Ferry proxy".to_owned(),
            format!("The proxy serves at most {} client connections at a time.", shared.max_connections),
        ))
    } else if shared.unauthenticated.load(SeqCst) >= shared.max_unauthenticated {
        Some((
            "too many connections to the Ferry proxy are still logging in".to_owned(),
            format!(
                "The proxy lets at most {} connections authenticate at a time; try again.",
                shared.max_unauthenticated
            ),
        ))
    } else {
        None
    };
    let admission = match over {
        None => Admission::Session {
            client: Counted::take(&shared.clients),
            unauthenticated: Counted::take(&shared.unauthenticated),
        },
        Some((message, hint)) => {
            let n = shared.refused.fetch_add(1, SeqCst) + 1;
            if n == 1 || n.is_power_of_two() {
                tracing::warn!(%peer, refused = n, "{message}; connection refused (SQLSTATE 53300)");
            }
            if shared.refusing.load(SeqCst) >= shared.max_unauthenticated {
                // A flood: no task, no wait. The error goes out if the socket takes it at once.
                let frame = crate::upstream::error_frame(crate::codec::Severity::Fatal, "53300", &message, Some(&hint));
                let _ = stream.try_write(&frame);
                return;
            }
            Admission::Refuse {
                slot: Counted::take(&shared.refusing),
                message,
                hint,
            }
        }
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        crate::session::run(shared, stream, peer, admission, read).await;
    });
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, read: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => admit(&shared, stream, peer, read),
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
