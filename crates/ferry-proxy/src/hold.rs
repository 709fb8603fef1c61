//! A hold in place, and the atomic switch of every session to another upstream under it.

use crate::error::SwitchError;
use crate::proxy::{lock, Command, SessionHandle, Shared};
use crate::upstream::{self, Backend, ConnectError};
use crate::Upstream;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// While alive, no session starts a new request. Dropping it releases them, like [`Hold::release`].
#[derive(Debug)]
pub struct Hold {
    shared: Arc<Shared>,
    released: bool,
    started: Instant,
}

/// What a switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchReport {
    pub from: String,
    pub to: String,
    /// Sessions moved (idle ones included).
    pub sessions: usize,
    pub elapsed: Duration,
}

/// What a hold held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Requests and new connections that waited.
    pub held: usize,
    /// The longest time one of them waited (zero when none did).
    pub max_wait: Duration,
    /// How long the hold was in place.
    pub hold_time: Duration,
}

impl Hold {
    pub(crate) fn new(shared: Arc<Shared>) -> Hold {
        Hold {
            shared,
            released: false,
            started: Instant::now(),
        }
    }

    /// Requests currently held.
    pub fn waiting(&self) -> usize {
        self.shared.held_now.load(SeqCst)
    }

    /// Moves every session to `upstream`, atomically: all sessions connect to it in parallel and
    /// replay their state; only when all succeeded do they adopt the new connections (and
    /// Terminate the old ones). On any failure, or after `within`, all stay where they were.
    /// New sessions use `upstream` from then on.
    pub async fn switch(&mut self, upstream: Upstream, within: Duration) -> Result<SwitchReport, SwitchError> {
        let started = Instant::now();
        let from = lock(&self.shared.upstream).name.clone();
        let sessions: Vec<Arc<SessionHandle>> = lock(&self.shared.sessions).values().cloned().collect();
        let total = sessions.len();
        tracing::info!(from = %from, to = %upstream.name, sessions = total, "switch: connecting every session to the new upstream");

        // Each session's connection is bounded by the connect timeout and its replay by the
        // replay timeout, the whole switch by `within`.
        let timeouts = self.shared.timeouts;
        let mut tasks = JoinSet::new();
        for s in &sessions {
            let s = s.clone();
            let up = upstream.clone();
            tasks.spawn(async move {
                let log = lock(&s.replay).clone();
                let result = async {
                    let mut backend = upstream::connect(&up, &s.user, &s.params, &timeouts).await?;
                    if let Err(e) = upstream::replay(&mut backend, &log, timeouts.replay).await {
                        backend.terminate().await;
                        return Err(e);
                    }
                    Ok::<Backend, ConnectError>(backend)
                }
                .await;
                (s, result)
            });
        }

        let mut ready: Vec<(Arc<SessionHandle>, Backend)> = Vec::with_capacity(total);
        let mut failure: Option<SwitchError> = None;
        let deadline = tokio::time::Instant::now() + within;
        while ready.len() < total {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(Ok((s, Ok(backend))))) => ready.push((s, backend)),
                Ok(Some(Ok((s, Err(source))))) => {
                    failure = Some(SwitchError::Session {
                        session: s.id,
                        user: s.user.clone(),
                        application_name: lock(&s.application_name).clone(),
                        upstream: upstream.name.clone(),
                        source,
                    });
                    break;
                }
                Ok(Some(Err(join_error))) => {
                    failure = Some(SwitchError::Timeout {
                        upstream: upstream.name.clone(),
                        within,
                        pending: total - ready.len(),
                        total,
                    });
                    tracing::warn!(error = %join_error, "switch task failed");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    failure = Some(SwitchError::Timeout {
                        upstream: upstream.name.clone(),
                        within,
                        pending: total - ready.len(),
                        total,
                    });
                    break;
                }
            }
        }
        if let Some(err) = failure {
            tasks.abort_all();
            for (_, backend) in ready {
                tokio::spawn(backend.terminate());
            }
            tracing::info!(error = %err, "switch failed; every session stays on {from}");
            return Err(err);
        }

        // Point of no return: every new connection is ready. New sessions go to the new
        // upstream; existing ones adopt their connection (they are all at a safe point).
        *lock(&self.shared.upstream) = upstream.clone();
        let mut acks = Vec::with_capacity(ready.len());
        for (s, backend) in ready {
            let (tx, rx) = oneshot::channel();
            match s.commands.send(Command::Adopt(backend, tx)) {
                Ok(()) => acks.push(rx),
                Err(tokio::sync::mpsc::error::SendError(Command::Adopt(backend, _))) => {
                    // The session ended meanwhile.
                    tokio::spawn(backend.terminate());
                }
                Err(_) => {}
            }
        }
        for rx in acks {
            // A session that ends instead of acknowledging drops the sender: nothing to wait for.
            let _ = rx.await;
        }
        self.shared.switches.fetch_add(1, SeqCst);
        // Read sessions moved with the primary: they find their place again at their next
        // request.
        self.shared.read.reroute();
        let report = SwitchReport {
            from,
            to: upstream.name.clone(),
            sessions: total,
            elapsed: started.elapsed(),
        };
        tracing::info!(from = %report.from, to = %report.to, sessions = report.sessions, elapsed_ms = report.elapsed.as_millis() as u64, "switch done");
        Ok(report)
    }

    /// Lets held requests go. Returns how many were held and the longest wait.
    pub fn release(mut self) -> ReleaseReport {
        self.release_inner()
    }

    fn release_inner(&mut self) -> ReleaseReport {
        self.released = true;
        let shared = &self.shared;
        let stats = std::mem::take(&mut *lock(&shared.hold_stats));
        shared.holding.store(false, SeqCst);
        shared.release_tx.send_modify(|g| *g += 1);
        shared.hold_active.store(false, SeqCst);
        let max_wait = stats.earliest.map_or(Duration::ZERO, |e| e.elapsed());
        *lock(&shared.last_max_wait) = Some(max_wait);
        let report = ReleaseReport {
            held: stats.held,
            max_wait,
            hold_time: self.started.elapsed(),
        };
        tracing::info!(
            held = report.held,
            max_wait_ms = report.max_wait.as_millis() as u64,
            "hold released"
        );
        report
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.released {
            self.release_inner();
        }
    }
}
