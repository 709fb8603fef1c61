//! The proxy handle, the state its sessions share, and the accept loop.

use crate::error::{BusySession, HoldError, ProxyError};
use crate::hold::Hold;
use crate::replay::ReplayLog;
use crate::scram::Verifier;
use crate::timeouts::Timeouts;
use crate::upstream::{Backend, CancelKey};
use crate::{ProxyConfig, Upstream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
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
    accept: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
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
        let listener = TcpListener::bind(config.listen).await.map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
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
        });
        tracing::info!(listen = %local_addr, upstream = %lock(&shared.upstream).name, "proxy started");
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            shared,
            local_addr,
            accept: Arc::new(Mutex::new(Some(accept))),
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

    /// The upstream new sessions go to.
    pub fn upstream(&self) -> Upstream {
        lock(&self.shared.upstream).clone()
    }

    pub fn stats(&self) -> ProxyStats {
        let sessions = lock(&self.shared.sessions);
        ProxyStats {
            sessions: sessions.len(),
            in_transaction: sessions.values().filter(|s| s.tx_status.load(Relaxed) != b'I').count(),
            busy: sessions.values().filter(|s| !s.safe.load(Relaxed)).count(),
            held: self.shared.held_now.load(SeqCst),
            switches: self.shared.switches.load(SeqCst),
            upstream: lock(&self.shared.upstream).name.clone(),
            last_hold_max_wait: *lock(&self.shared.last_max_wait),
        }
    }

    /// Backend process ids of every session's current server connection.
    pub fn backend_pids(&self) -> Vec<i32> {
        lock(&self.shared.sessions).values().map(|s| s.backend_pid.load(SeqCst)).collect()
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

    /// Stops accepting connections and closes every session (clients get FATAL 57P01).
    pub async fn shutdown(&self) {
        if let Some(accept) = lock(&self.accept).take() {
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    crate::session::run(shared, stream, peer).await;
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
