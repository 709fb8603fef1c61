//! What the running `ferry migrate` knows, shared by the HTTP API, the metrics and the dashboard.
//!
//! The durable truth is the state schema on the target (and the slot on the source): a sampler
//! reads it once a second over its own two connections and keeps the latest `Status`, so a
//! scrape or a dashboard refresh never queries the databases. On top of it, the figures only
//! this process has: rows in flight in the full load (committed ranges are in the state schema,
//! rows of a range still copying are not), change-capture counters between checkpoints, rates,
//! and one sample per second for the charts.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_postgres::cdc::CdcProgress;
use ferry_postgres::snapshot::TableProgress;
use ferry_postgres::Endpoint;
use tokio::sync::watch;

use crate::status::{self, LiveFigures, Sample, Status};

/// Samples kept for the charts: 15 minutes at one per second.
const HISTORY: usize = 900;

/// Tables being copied (schema.name) and their in-process counters.
type LoadTables = (Vec<String>, Arc<Vec<TableProgress>>);

/// Shared live state of one `ferry migrate` process.
#[derive(Debug)]
pub struct Live {
    started: Instant,
    /// Full load in progress: table names (schema.name) and their in-process counters.
    load: RwLock<Option<LoadTables>>,
    /// Change capture in progress.
    cdc: RwLock<Option<Arc<CdcProgress>>>,
    /// Latest sampled status, with the live figures filled.
    latest: RwLock<Option<Status>>,
    /// Why the last sample failed, if it did.
    sample_error: RwLock<Option<String>>,
    history: Mutex<VecDeque<Sample>>,
    /// Change capture paused through the API.
    pause: watch::Sender<bool>,
    /// Stops the applier at a position for verification.
    pub hold: Arc<ferry_postgres::cdc::Hold>,
    /// The verification running now (run id, its counters).
    pub verify_run: Mutex<Option<(i64, Arc<ferry_postgres::verify::Progress>)>>,
    /// Stops the reverse applier (target to source, after cutover) at a position.
    pub reverse_hold: Arc<ferry_postgres::cdc::Hold>,
    /// Reverse change capture in progress.
    reverse: RwLock<Option<Arc<CdcProgress>>>,
    /// Target WAL positions sampled once a second while reverse capture runs, for its lag.
    reverse_wal: Mutex<VecDeque<(Instant, u64)>>,
    /// Source WAL positions sampled once a second, for the forward stream's lag.
    forward_wal: Mutex<VecDeque<(Instant, u64)>>,
    /// Bumped when change capture must turn around (after a cutover or a rollback).
    redirect: watch::Sender<u64>,
    /// An applier kept at the final position of the last switch until capture turns around.
    kept: Mutex<Option<ferry_postgres::cdc::HoldGuard>>,
    /// The last cutover or rollback report.
    last_switch: Mutex<Option<serde_json::Value>>,
    /// The wire-protocol proxy, when one runs.
    proxy: RwLock<Option<ferry_proxy::Proxy>>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            load: RwLock::new(None),
            cdc: RwLock::new(None),
            latest: RwLock::new(None),
            sample_error: RwLock::new(None),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            pause: watch::channel(false).0,
            hold: Arc::new(ferry_postgres::cdc::Hold::new()),
            verify_run: Mutex::new(None),
            reverse_hold: Arc::new(ferry_postgres::cdc::Hold::new()),
            reverse: RwLock::new(None),
            reverse_wal: Mutex::new(VecDeque::new()),
            forward_wal: Mutex::new(VecDeque::new()),
            redirect: watch::channel(0).0,
            kept: Mutex::new(None),
            last_switch: Mutex::new(None),
            proxy: RwLock::new(None),
        }
    }

    /// Reverse change capture started (Some) or ended (None).
    pub fn set_reverse(&self, progress: Option<Arc<CdcProgress>>) {
        self.reverse_wal.lock().expect("lock").clear();
        *self.reverse.write().expect("lock") = progress;
    }

    /// Reverse capture's counters, while it runs.
    pub fn reverse(&self) -> Option<Arc<CdcProgress>> {
        self.reverse.read().expect("lock").clone()
    }

    /// The proxy runs.
    pub fn set_proxy(&self, proxy: ferry_proxy::Proxy) {
        *self.proxy.write().expect("lock") = Some(proxy);
    }

    /// The proxy, when one runs.
    pub fn proxy(&self) -> Option<ferry_proxy::Proxy> {
        self.proxy.read().expect("lock").clone()
    }

    /// Tells change capture to turn around (it re-reads the phase).
    pub fn redirect(&self) {
        self.redirect.send_modify(|g| *g += 1);
    }

    /// Fires when change capture must turn around.
    pub fn redirect_receiver(&self) -> watch::Receiver<u64> {
        self.redirect.subscribe()
    }

    /// Keeps an applier held until [`Live::release_kept`].
    pub fn keep_held(&self, guard: ferry_postgres::cdc::HoldGuard) {
        *self.kept.lock().expect("lock") = Some(guard);
    }

    /// Lets a kept applier go (its stream has stopped by then).
    pub fn release_kept(&self) {
        self.kept.lock().expect("lock").take();
    }

    /// Records the last switch's report.
    pub fn set_last_switch(&self, report: serde_json::Value) {
        *self.last_switch.lock().expect("lock") = Some(report);
    }

    /// The last switch's report.
    pub fn last_switch(&self) -> Option<serde_json::Value> {
        self.last_switch.lock().expect("lock").clone()
    }

    /// Reverse replication figures from a target WAL position sampled now: (applied LSN,
    /// unapplied bytes, lag seconds = age of the oldest sampled target position not applied).
    fn reverse_figures(&self, target_wal: Option<u64>) -> Option<status::ReverseFigures> {
        let r = self.reverse()?;
        let applied = r.applied_lsn.load(Ordering::Relaxed);
        let (unapplied, lag) = wal_age(&mut self.reverse_wal.lock().expect("lock"), target_wal, applied);
        Some(status::ReverseFigures {
            applied_lsn: ferry_core::Lsn(applied).to_string(),
            unapplied_bytes: unapplied,
            lag_seconds: Some(lag),
            transactions: r.txns.load(Ordering::Relaxed),
            changes: r.changes.load(Ordering::Relaxed),
            errors: r.errors.load(Ordering::Relaxed),
        })
    }

    /// The full load started copying these tables.
    pub fn set_load(&self, tables: Vec<String>, progress: Arc<Vec<TableProgress>>) {
        *self.load.write().expect("lock") = Some((tables, progress));
    }

    /// Change capture started with these counters.
    pub fn set_cdc(&self, progress: Arc<CdcProgress>) {
        *self.cdc.write().expect("lock") = Some(progress);
    }

    /// A receiver that turns true while change capture is paused.
    pub fn pause_receiver(&self) -> watch::Receiver<bool> {
        self.pause.subscribe()
    }

    /// Pauses or resumes change capture; returns the previous setting.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.pause.send_replace(paused)
    }

    /// Apply sessions that failed (and were retried) and changes the target rejected, since
    /// this process started.
    pub fn apply_errors(&self) -> u64 {
        self.cdc
            .read()
            .expect("lock")
            .as_ref()
            .map(|c| c.errors.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Whether change capture is paused.
    pub fn paused(&self) -> bool {
        *self.pause.borrow()
    }

    fn proxy_figures(&self) -> Option<status::ProxyFigures> {
        self.proxy().map(|p| {
            let s = p.stats();
            status::ProxyFigures {
                listen: p.local_addr().to_string(),
                upstream: s.upstream.clone(),
                sessions: s.sessions,
                busy_sessions: s.busy,
                held_requests: s.held,
                switches: s.switches,
            }
        })
    }

    /// The latest status, or why there is none yet.
    pub fn status(&self) -> Result<Status, String> {
        match &*self.latest.read().expect("lock") {
            Some(s) => {
                // What this process knows first-hand is fresh, not a second old.
                let mut s = s.clone();
                if let Some(live) = s.live.as_mut() {
                    live.paused = self.paused();
                    live.proxy = self.proxy_figures();
                    live.last_switch = self.last_switch();
                }
                Ok(s)
            }
            None => Err(self
                .sample_error
                .read()
                .expect("lock")
                .clone()
                .unwrap_or_else(|| "the migration has not recorded its state yet".into())),
        }
    }

    /// Reads the state once a second until the process ends.
    pub async fn sample_forever(self: Arc<Self>, target: Endpoint, source: Endpoint, id: String, schema: String, wal_warn: i64) {
        let mut conns: Option<(tokio_postgres::Client, tokio_postgres::Client)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if conns.as_ref().is_none_or(|(t, s)| t.is_closed() || s.is_closed()) {
                conns = match tokio::try_join!(target.connect("status"), source.connect("status")) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        *self.sample_error.write().expect("lock") = Some(format!("cannot read the migration's state: {e}"));
                        continue;
                    }
                };
            }
            let (t, s) = conns.as_ref().expect("connected above");
            match status::read_with(t, Some(s), &target.describe(), Some(&id), &schema, wal_warn).await {
                Ok(st) => {
                    let target_wal = if self.reverse().is_some() {
                        t.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
                            .await
                            .ok()
                            .map(|r| r.get::<_, i64>(0) as u64)
                    } else {
                        None
                    };
                    // Forward lag: the age of the oldest source WAL position (sampled once a
                    // second) the slot has not confirmed. Not the age of the last applied
                    // commit: a quiet database on a busy cluster always has some WAL pending
                    // (other databases'), yet nothing of its own to apply.
                    let forward = s
                        .query_opt(
                            "SELECT (pg_current_wal_lsn() - '0/0')::int8, (confirmed_flush_lsn - '0/0')::int8
                             FROM pg_replication_slots WHERE slot_name = $1",
                            &[&st.slot],
                        )
                        .await
                        .ok()
                        .flatten()
                        .and_then(|r| Some((r.get::<_, Option<i64>>(0)? as u64, r.get::<_, Option<i64>>(1)? as u64)));
                    let mut st = self.overlay(st);
                    if let Some((current, confirmed)) = forward {
                        let (_, lag) = wal_age(&mut self.forward_wal.lock().expect("lock"), Some(current), confirmed);
                        if st.lag_seconds.is_some() {
                            st.lag_seconds = Some(lag);
                        }
                    }
                    if let Some(l) = st.live.as_mut() {
                        l.reverse = self.reverse_figures(target_wal);
                    }
                    *self.latest.write().expect("lock") = Some(st);
                    *self.sample_error.write().expect("lock") = None;
                }
                Err(e) => {
                    // Before the full load records the migration, there is nothing to read.
                    *self.sample_error.write().expect("lock") = Some(format!("{e:#}"));
                    conns = None;
                }
            }
        }
    }

    /// Adds what only this process knows to a status read from the databases, and records
    /// the per-second sample.
    fn overlay(&self, mut st: Status) -> Status {
        if let Some((names, progress)) = &*self.load.read().expect("lock") {
            for (name, p) in names.iter().zip(progress.iter()) {
                if let Some(t) = st.tables.iter_mut().find(|t| &t.table == name) {
                    // The counters include rows of ranges not committed yet; the stored figures
                    // only committed ranges (and earlier runs' work).
                    t.rows_copied = t.rows_copied.max(p.rows.load(Ordering::Relaxed) as i64);
                    t.bytes_copied = t.bytes_copied.max(p.bytes.load(Ordering::Relaxed) as i64);
                    if t.state == "pending" && p.started_ms.load(Ordering::Relaxed) > 0 {
                        t.state = "copying".into();
                    }
                }
            }
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let e = &st.events_applied;
        let sample = Sample {
            t: now_ms,
            rows_copied: st.tables.iter().map(|t| t.rows_copied).sum(),
            bytes_copied: st.tables.iter().map(|t| t.bytes_copied).sum(),
            changes_applied: e.insert + e.update + e.delete + e.truncate,
            transactions_applied: st.transactions_applied,
            lag_seconds: st.lag_seconds,
            lag_bytes: st.lag_bytes,
        };
        let mut h = self.history.lock().expect("lock");
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(sample);
        let rate = |f: fn(&Sample) -> i64| -> f64 {
            let first = h.iter().rev().nth(5.min(h.len() - 1)).expect("not empty");
            let dt = (sample.t.saturating_sub(first.t)) as f64 / 1000.0;
            if dt <= 0.0 {
                0.0
            } else {
                (f(&sample) - f(first)).max(0) as f64 / dt
            }
        };
        st.live = Some(LiveFigures {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            paused: self.paused(),
            rows_per_second: rate(|s| s.rows_copied),
            bytes_per_second: rate(|s| s.bytes_copied),
            changes_per_second: rate(|s| s.changes_applied),
            transactions_per_second: rate(|s| s.transactions_applied),
            apply_errors: self.apply_errors(),
            verification_running: self
                .verify_run
                .lock()
                .expect("lock")
                .as_ref()
                .map(|(id, p)| (*id, p.rows.load(Ordering::Relaxed), p.differences.load(Ordering::Relaxed))),
            history: h.iter().copied().collect(),
            reverse: None,
            proxy: self.proxy_figures(),
            last_switch: self.last_switch(),
        });
        st
    }
}

/// Unapplied bytes and lag seconds of a stream from WAL positions of its origin server sampled
/// once a second (`sampled` is pushed first when given): the lag is the age of the oldest
/// sample not yet applied, 0 when all are.
fn wal_age(w: &mut VecDeque<(Instant, u64)>, sampled: Option<u64>, applied: u64) -> (Option<i64>, f64) {
    let now = Instant::now();
    if let Some(lsn) = sampled {
        w.push_back((now, lsn));
    }
    // Positions applied are of no further use, except the newest (the reference when idle).
    while w.len() > 1 && w[1].1 <= applied {
        w.pop_front();
    }
    // Bounded, keeping the oldest unapplied sample (the one the lag is measured from).
    while w.len() > HISTORY {
        w.remove(1);
    }
    let lag = w
        .iter()
        .find(|(_, l)| *l > applied)
        .map(|(t, _)| now.duration_since(*t).as_secs_f64())
        .unwrap_or(0.0);
    (w.back().map(|(_, l)| l.saturating_sub(applied) as i64), lag)
}
