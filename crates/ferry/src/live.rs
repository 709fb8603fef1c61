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
        }
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

    /// The latest status, or why there is none yet.
    pub fn status(&self) -> Result<Status, String> {
        match &*self.latest.read().expect("lock") {
            Some(s) => Ok(s.clone()),
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
                    let st = self.overlay(st);
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
        });
        st
    }
}
