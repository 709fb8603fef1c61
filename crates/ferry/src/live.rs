//! What the running `ferry migrate` knows, shared by the HTTP API, the metrics and the dashboard.
//!
//! The durable truth is the state schema on the target (and the slot on the source): a sampler
//! reads it once a second over its own two connections and keeps the latest `Status`, so a
//! scrape or a dashboard refresh never queries the databases. On top of it, the figures only
//! this process has: rows in flight in the full load (committed ranges are in the state schema,
//! rows of a range still copying are not), change-capture counters between checkpoints, rates,
//! and one sample per second for the charts.
//!
//! A MySQL/MariaDB migration is served the same way ([`Live::for_mysql`],
//! [`Live::sample_mysql_forever`]): its state is in the same state schema, the source's binlog
//! end is read once a second instead of its WAL position, and the stream's own counters
//! (`ferry_mysql::cdc::CdcStats`) take the place of the PostgreSQL stream's.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ferry_core::{BinlogPosition, SourcePosition};
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
    /// The apply leg's Kafka figures and the cluster (no secret), while a stream runs through
    /// Kafka (`--via`).
    kafka: RwLock<Option<(Arc<ferry_kafka::apply::ApplyProgress>, String)>>,
    /// Latest sampled status, with the live figures filled, and when it was read.
    latest: RwLock<Option<(Status, Instant)>>,
    /// When the source's WAL position was last read.
    source_sampled: Mutex<Option<Instant>>,
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
    /// Set by `ferry complete`: the migration's record (the state schema may be gone).
    completed: Mutex<Option<serde_json::Value>>,
    /// The source is MySQL/MariaDB: what the API can and cannot do differs.
    mysql_source: bool,
    /// The MySQL binlog stream's counters, while it runs.
    mysql: RwLock<Option<Arc<ferry_mysql::cdc::CdcStats>>>,
    /// The MySQL source's binlog end, as last read.
    binlog_end: Mutex<Option<BinlogPosition>>,
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
            kafka: RwLock::new(None),
            latest: RwLock::new(None),
            source_sampled: Mutex::new(None),
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
            completed: Mutex::new(None),
            mysql_source: false,
            mysql: RwLock::new(None),
            binlog_end: Mutex::new(None),
        }
    }

    /// Nothing known yet, of a migration from a MySQL/MariaDB source.
    pub fn for_mysql() -> Self {
        Self {
            mysql_source: true,
            ..Self::new()
        }
    }

    /// Whether the source is MySQL/MariaDB.
    pub fn mysql_source(&self) -> bool {
        self.mysql_source
    }

    /// The MySQL binlog stream started with these counters.
    pub fn set_mysql(&self, stats: Arc<ferry_mysql::cdc::CdcStats>) {
        *self.mysql.write().expect("lock") = Some(stats);
    }

    /// The migration completed (`ferry complete`); `record` is what it exported.
    pub fn set_completed(&self, record: serde_json::Value) {
        *self.completed.lock().expect("lock") = Some(record);
    }

    /// The completed migration's record, once `ferry complete` ran in this process.
    pub fn completed(&self) -> Option<serde_json::Value> {
        self.completed.lock().expect("lock").clone()
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

    /// Reverse replication figures, from the target WAL positions sampled: (applied LSN,
    /// unapplied bytes, lag seconds = age of the oldest target WAL not processed).
    fn reverse_figures(&self) -> Option<status::ReverseFigures> {
        let r = self.reverse()?;
        let applied = r.applied_lsn.load(Ordering::Relaxed);
        let (unapplied, lag) = wal_lag(&self.reverse_wal.lock().expect("lock"), applied, Instant::now());
        let lag = lag.max(r.waiting_inside().as_secs_f64());
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

    /// Change capture runs through Kafka with these per-partition figures.
    pub fn set_kafka(&self, progress: Arc<ferry_kafka::apply::ApplyProgress>, cluster: String) {
        *self.kafka.write().expect("lock") = Some((progress, cluster));
    }

    /// The Kafka figures of a stream through Kafka, if one runs.
    pub fn kafka(&self) -> Option<Arc<ferry_kafka::apply::ApplyProgress>> {
        self.kafka.read().expect("lock").as_ref().map(|(p, _)| p.clone())
    }

    fn kafka_figures(&self) -> Option<crate::status::KafkaFigures> {
        let guard = self.kafka.read().expect("lock");
        let (p, cluster) = guard.as_ref()?;
        let parts = p.partitions.lock().expect("progress lock");
        Some(crate::status::KafkaFigures {
            cluster: cluster.clone(),
            partitions: parts.len(),
            lag_records: parts.values().map(|(next, high)| (high - next).max(0)).sum(),
        })
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
        if let Some(m) = self.mysql.read().expect("lock").as_ref() {
            // The MySQL stream retries failed sessions (reconnecting); a rejected change stops it.
            return m.reconnects.load(Ordering::Relaxed);
        }
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
                target_fit: s.replica_ready,
                reads: s.read.map(|r| status::ReadFigures {
                    listen: r.listen.to_string(),
                    share_percent: r.share,
                    target_ready: r.replica_ready,
                    sessions: r.sessions,
                    on_target: r.on_replica,
                    moves: r.moves,
                    move_failures: r.move_failures,
                    requests_source: r.requests_primary,
                    requests_target: r.requests_replica,
                    refused_statements: r.refused_statements,
                }),
                shadow: {
                    let r = p.shadow_report();
                    (r.since.is_some() || !r.fingerprints.is_empty()).then(|| status::ShadowFigures {
                        sample_percent: r.sample_percent,
                        statements: r.fingerprints.iter().map(|f| f.executions).sum(),
                        fingerprints: r.fingerprints.len(),
                        mismatches: r.fingerprints.iter().map(|f| f.mismatches).sum(),
                        target_errors: r.fingerprints.iter().map(|f| f.target_errors).sum(),
                        dropped: r.dropped,
                        suspended: r.suspended.map(|(why, _)| why),
                    })
                },
            }
        })
    }

    /// The forward stream's lag now, as the read endpoint judges the target: the age of the
    /// oldest source change not applied (the source's position read once a second; changes
    /// inside Ferry to the millisecond). None when the target does not follow the source now:
    /// before change capture streams, after it stopped, after a cutover and during a rollback.
    pub fn read_lag(&self) -> Option<f64> {
        let phase = self.latest.read().expect("lock").as_ref().map(|(s, _)| s.phase.clone())?;
        if phase != "cdc" {
            return None;
        }
        let p = self.cdc.read().expect("lock").clone()?;
        let applied = p.applied_lsn.load(Ordering::Relaxed);
        if applied == 0 || p.state() == ferry_postgres::cdc::StreamState::Stopped {
            return None;
        }
        let (_, lag) = wal_lag(&self.forward_wal.lock().expect("lock"), applied, Instant::now());
        Some(lag.max(p.waiting_inside().as_secs_f64()))
    }

    /// The latest status, or why there is none yet. Figures this process knows first-hand
    /// (the stream's positions, state and lag) are filled in now; the rest says how old it is.
    pub fn status(&self) -> Result<Status, String> {
        let latest = self.latest.read().expect("lock").clone();
        match latest {
            Some((mut s, at)) => {
                self.fresh(&mut s, at);
                if self.completed().is_some() {
                    s.phase = "complete".into();
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

    /// Fills the first-hand figures of `s` (read from the databases at `at`).
    fn fresh(&self, s: &mut Status, at: Instant) {
        let now = Instant::now();
        let cdc = self.cdc.read().expect("lock").clone();
        if let Some(p) = cdc.as_ref() {
            let applied = p.applied_lsn.load(Ordering::Relaxed);
            if applied > 0 {
                s.applied_lsn = Some(ferry_core::Lsn(applied).to_string());
                s.applied_position = Some(SourcePosition::Postgres(ferry_core::Lsn(applied)).to_string());
            }
            // Forward lag while change capture runs toward the target (not after a cutover,
            // when the forward stream is stopped and kept for a rollback).
            if !matches!(s.phase.as_str(), "cut_over" | "rollback") && p.state() != ferry_postgres::cdc::StreamState::Stopped {
                let (bytes, lag) = wal_lag(&self.forward_wal.lock().expect("lock"), applied, now);
                // The source positions are read once a second; what waits inside Ferry is known
                // to the millisecond.
                s.lag_seconds = Some(lag.max(p.waiting_inside().as_secs_f64()));
                if bytes.is_some() {
                    s.lag_bytes = bytes;
                }
            }
        }
        let mysql = self.fill_mysql(s, now);
        if s.source_position.is_none() {
            s.source_position = self
                .forward_wal
                .lock()
                .expect("lock")
                .back()
                .filter(|_| !self.mysql_source)
                .map(|(_, l)| SourcePosition::Postgres(ferry_core::Lsn(*l)).to_string());
        }
        let source_sampled = *self.source_sampled.lock().expect("lock");
        let sample_error = self.sample_error.read().expect("lock").clone();
        if let Some(live) = s.live.as_mut() {
            live.paused = self.paused();
            live.proxy = self.proxy_figures();
            live.last_switch = self.last_switch();
            live.reverse = self.reverse_figures();
            live.kafka = self.kafka_figures();
            live.sample_age_seconds = now.duration_since(at).as_secs_f64();
            live.sample_error = sample_error;
            live.source_sample_age_seconds = source_sampled.map(|t| now.duration_since(t).as_secs_f64());
            if let Some(p) = cdc.as_ref() {
                live.stream_state = Some(p.state().as_str().to_string());
                live.stream_error = p.last_error();
                live.source_message_age_seconds = p.source_silence().map(|d| d.as_secs_f64());
                let flushed = p.flushed_lsn.load(Ordering::Relaxed);
                live.flushed_lsn = (flushed > 0).then(|| ferry_core::Lsn(flushed).to_string());
            }
            if let Some(m) = mysql.as_ref() {
                // Paused through the API: the run ended at a boundary and the next waits.
                let paused = live.paused && !m.streaming.load(Ordering::Relaxed);
                live.stream_state = Some(if paused { "paused" } else { mysql_stream_state(m) }.into());
                live.stream_error = m.last_error.lock().expect("lock").clone();
            }
        }
    }

    /// Fills what the MySQL stream knows first-hand (positions, lag, row changes by operation,
    /// whether it streams) into `s`; returns its counters (None: not a MySQL stream, or not
    /// started).
    fn fill_mysql(&self, s: &mut Status, now: Instant) -> Option<Arc<ferry_mysql::cdc::CdcStats>> {
        if !self.mysql_source {
            return None;
        }
        let end = self.binlog_end.lock().expect("lock").clone();
        if let Some(end) = &end {
            s.source_position = Some(SourcePosition::Mysql(end.clone()).to_string());
        }
        let m = self.mysql.read().expect("lock").clone()?;
        let (committed, processed) = m.positions.lock().expect("lock").clone();
        if let Some(c) = committed {
            s.applied_position = Some(SourcePosition::Mysql(c).to_string());
        }
        // The state schema does not record a MySQL stream's row changes by operation: this
        // process's counts (docs/mysql-cdc.md).
        let op = |i: usize| m.ops[i].load(Ordering::Relaxed) as i64;
        s.events_applied = status::EventCounts {
            insert: op(0),
            update: op(1),
            delete: op(2),
            truncate: op(3),
        };
        s.slot_active = Some(m.streaming.load(Ordering::Relaxed));
        if !matches!(s.phase.as_str(), "cut_over" | "rollback") {
            let w = self.forward_wal.lock().expect("lock");
            s.lag_seconds = Some(match &processed {
                // The age of the oldest binlog position not processed, as for PostgreSQL.
                Some(p) if !w.is_empty() => wal_lag(&w, binlog_key(p), now).1,
                // No source position read yet: the age of the last applied commit while events
                // wait, 0 when caught up.
                _ => m.lag_seconds() as f64,
            });
            // Bytes are known within one binlog file only (file sizes are not read).
            s.lag_bytes = match (&end, &processed) {
                (Some(e), Some(p)) if e.file() == p.file() => Some(e.pos().saturating_sub(p.pos()) as i64),
                _ => None,
            };
        }
        Some(m)
    }

    /// Publishes one sample of either sampler: the status read (with the MySQL stream's own
    /// counters when `mysql`), or why it could not be read, and the errors met on the way. A
    /// failed read drops the target connection (before the full load records the migration
    /// there is nothing to read; a broken connection is opened again next time).
    fn publish(&self, read: Result<Status, String>, mut errors: Vec<String>, tconn: &mut Option<tokio_postgres::Client>, mysql: bool) {
        match read {
            Ok(mut st) => {
                let now = Instant::now();
                if mysql {
                    self.fill_mysql(&mut st, now);
                }
                let mut st = self.overlay(st);
                self.fresh(&mut st, now);
                *self.latest.write().expect("lock") = Some((st, now));
            }
            Err(e) => {
                *tconn = None;
                errors.push(e);
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &error {
            tracing::warn!(error = %e, "status sampler: reading the databases failed; figures are getting old");
        }
        *self.sample_error.write().expect("lock") = error;
    }

    /// Reads the state once a second until the process ends. Every read is bounded by
    /// [`SAMPLE_TIMEOUT`]: a database that stops answering makes the figures age (and says
    /// so), it never freezes them silently.
    pub async fn sample_forever(self: Arc<Self>, target: Endpoint, source: Endpoint, id: String, schema: String, wal_warn: i64) {
        let mut tconn: Option<tokio_postgres::Client> = None;
        let mut sconn: Option<tokio_postgres::Client> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.completed().is_some() {
                // Nothing to sample after `ferry complete` (the state schema may be gone).
                continue;
            }
            let mut errors = Vec::new();
            // The source's WAL position first: the lag is measured against it.
            match wal_position(&mut sconn, &source, "source").await {
                Ok(lsn) => {
                    let now = Instant::now();
                    push_sample(&mut self.forward_wal.lock().expect("lock"), now, lsn);
                    *self.source_sampled.lock().expect("lock") = Some(now);
                }
                Err(e) => errors.push(e),
            }
            if self.reverse().is_some() {
                match wal_position(&mut tconn, &target, "target").await {
                    Ok(lsn) => push_sample(&mut self.reverse_wal.lock().expect("lock"), Instant::now(), lsn),
                    Err(e) => errors.push(e),
                }
            } else {
                self.reverse_wal.lock().expect("lock").clear();
            }
            let read = async {
                let t = connected(&mut tconn, &target, "target").await?;
                let s = if errors.is_empty() { sconn.as_ref() } else { None };
                tokio::time::timeout(
                    SAMPLE_TIMEOUT,
                    status::read_with(t, s, &target.describe(), Some(&id), &schema, wal_warn),
                )
                .await
                .map_err(|_| {
                    format!(
                        "no answer from the target within {} s while reading the migration's state",
                        SAMPLE_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("{e:#}"))
            };
            let read = read.await;
            self.publish(read, errors, &mut tconn, false);
        }
    }

    /// [`Live::sample_forever`] for a migration from a MySQL/MariaDB source: once a second, the
    /// source's binlog end (one short connection: `SHOW MASTER STATUS`) and the migration's
    /// state on the target (the shared state schema, and what `ferry_mysql::state` adds), each
    /// read bounded by [`SAMPLE_TIMEOUT`].
    pub async fn sample_mysql_forever(
        self: Arc<Self>,
        target: Endpoint,
        source: ferry_mysql::MyEndpoint,
        state: ferry_mysql::state::MyState,
    ) {
        let mut tconn: Option<tokio_postgres::Client> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let schema = state.store().schema().to_string();
        loop {
            tick.tick().await;
            let mut errors = Vec::new();
            match tokio::time::timeout(SAMPLE_TIMEOUT, ferry_mysql::cutover::binlog_end(&source)).await {
                Ok(Ok(end)) => {
                    let now = Instant::now();
                    push_sample(&mut self.forward_wal.lock().expect("lock"), now, binlog_key(&end));
                    *self.binlog_end.lock().expect("lock") = Some(end);
                    *self.source_sampled.lock().expect("lock") = Some(now);
                }
                Ok(Err(e)) => errors.push(format!("reading the source's binlog position: {e}")),
                Err(_) => errors.push(format!(
                    "no answer from the source at {} within {} s while reading its binlog position",
                    source.describe(),
                    SAMPLE_TIMEOUT.as_secs()
                )),
            }
            // After a cutover the target's writes stream back to the source: its WAL position
            // is what the reverse stream's lag is measured against, as for a PostgreSQL source.
            if self.reverse().is_some() {
                match wal_position(&mut tconn, &target, "target").await {
                    Ok(lsn) => push_sample(&mut self.reverse_wal.lock().expect("lock"), Instant::now(), lsn),
                    Err(e) => errors.push(e),
                }
            } else {
                self.reverse_wal.lock().expect("lock").clear();
            }
            let read = async {
                let t = connected(&mut tconn, &target, "target").await?;
                tokio::time::timeout(SAMPLE_TIMEOUT, async {
                    let mut st = status::read_with(t, None, &target.describe(), Some(state.id()), &schema, 0)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    let extra = state.status_json(t).await.map_err(|e| e.to_string())?;
                    status::add_mysql(&mut st, extra.as_ref());
                    Ok::<_, String>(st)
                })
                .await
                .map_err(|_| {
                    format!(
                        "no answer from the target within {} s while reading the migration's state",
                        SAMPLE_TIMEOUT.as_secs()
                    )
                })?
            };
            let read = read.await;
            self.publish(read, errors, &mut tconn, true);
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
        let now_ms = ferry_core::unix_ms();
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
            ..Default::default()
        });
        st
    }
}

/// What the MySQL stream is doing, in the PostgreSQL stream's words.
fn mysql_stream_state(m: &ferry_mysql::cdc::CdcStats) -> &'static str {
    if m.holding.load(Ordering::Relaxed) {
        "held"
    } else if m.streaming.load(Ordering::Relaxed) {
        "streaming"
    } else if m.reconnects.load(Ordering::Relaxed) > 0 {
        "reconnecting"
    } else {
        "starting"
    }
}

/// A binlog position as one number that orders like it (file number, then offset), for the
/// lag's position samples; differences are bytes only within one file.
fn binlog_key(p: &BinlogPosition) -> u64 {
    (p.file_number() << 40) | p.pos().min((1 << 40) - 1)
}

/// Longest one read of the databases by the status sampler may take.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A sampler connection, opened (within [`SAMPLE_TIMEOUT`]) when missing or closed.
async fn connected<'a>(
    conn: &'a mut Option<tokio_postgres::Client>,
    ep: &Endpoint,
    side: &str,
) -> Result<&'a tokio_postgres::Client, String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = None;
        let c = tokio::time::timeout(SAMPLE_TIMEOUT, ep.connect("status"))
            .await
            .map_err(|_| {
                format!(
                    "no connection to the {side} at {} within {} s",
                    ep.describe(),
                    SAMPLE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot connect to the {side}: {e}"))?;
        *conn = Some(c);
    }
    Ok(conn.as_ref().expect("connected above"))
}

/// A server's current WAL position, as a number, read on a sampler connection within
/// [`SAMPLE_TIMEOUT`]; a connection that did not answer is dropped (the next sample opens a new
/// one).
async fn wal_position(conn: &mut Option<tokio_postgres::Client>, ep: &Endpoint, side: &str) -> Result<u64, String> {
    let c = connected(conn, ep, side).await?;
    match tokio::time::timeout(SAMPLE_TIMEOUT, ferry_postgres::slot::wal_position(c, side)).await {
        Ok(Ok(lsn)) => Ok(lsn),
        Ok(Err(e)) => {
            *conn = None;
            Err(e.to_string())
        }
        Err(_) => {
            *conn = None;
            Err(format!(
                "no answer from the {side} at {} within {} s while reading its WAL position",
                ep.describe(),
                SAMPLE_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Records a WAL position of a stream's origin server sampled at `t`, keeping the deque
/// bounded (the oldest samples go first; a lag older than the window reads as the window).
fn push_sample(w: &mut VecDeque<(Instant, u64)>, t: Instant, lsn: u64) {
    w.push_back((t, lsn));
    while w.len() > HISTORY {
        w.pop_front();
    }
}

/// Unapplied bytes and lag seconds of a stream, from WAL positions of its origin server
/// sampled once a second and the position before which nothing is left to apply: the lag is
/// the age of the oldest WAL not processed, the moment the origin's WAL passed `processed`,
/// interpolated between the two samples around it (0 when every sample is processed).
/// Keeps the proxy's read endpoint honest: every 100 ms, the target may serve shifted reads
/// only while its lag is under `max` (it becomes fit again once under half of it, so that a lag
/// hovering at the bound does not move sessions back and forth).
pub async fn steer_reads(live: Arc<Live>, proxy: ferry_proxy::Proxy, max: Duration) {
    let (max, recovered) = (max.as_secs_f64(), max.as_secs_f64() / 2.0);
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lag = live.read_lag();
        let now = match lag {
            Some(l) if ready => l <= max,
            Some(l) => l <= recovered,
            None => false,
        };
        if now != ready {
            match lag {
                Some(l) if !now => tracing::warn!(
                    lag_seconds = l,
                    max_read_lag_seconds = max,
                    "the target lags: shifted reads return to the source"
                ),
                Some(l) => tracing::info!(lag_seconds = l, "the target caught up: shifted reads may go to it"),
                None => tracing::info!("the target does not follow the source now: shifted reads stay on the source"),
            }
            ready = now;
        }
        proxy.set_replica_ready(ready);
    }
}

fn wal_lag(w: &VecDeque<(Instant, u64)>, processed: u64, now: Instant) -> (Option<i64>, f64) {
    let bytes = w.back().map(|(_, l)| l.saturating_sub(processed) as i64);
    let lag = match w.iter().position(|(_, l)| *l > processed) {
        None => 0.0,
        // The origin passed `processed` before the oldest sample kept: at least that old.
        Some(0) => now.duration_since(w[0].0).as_secs_f64(),
        Some(i) => {
            let ((t0, l0), (t1, l1)) = (w[i - 1], w[i]);
            let frac = (processed.saturating_sub(l0)) as f64 / (l1 - l0) as f64;
            let passed = t0 + t1.duration_since(t0).mul_f64(frac.clamp(0.0, 1.0));
            now.saturating_duration_since(passed).as_secs_f64()
        }
    };
    (bytes, lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_unprocessed_wal_interpolated() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut w = VecDeque::new();
        push_sample(&mut w, s(0.0), 1000);
        push_sample(&mut w, s(1.0), 2000);
        push_sample(&mut w, s(2.0), 3000);
        // Everything processed: no lag, whatever the time.
        assert_eq!(wal_lag(&w, 3000, s(10.0)), (Some(0), 0.0));
        // The origin passed 2500 at 1.5 s: at 2.1 s, 0.6 s old.
        let (bytes, lag) = wal_lag(&w, 2500, s(2.1));
        assert_eq!(bytes, Some(500));
        assert!((lag - 0.6).abs() < 1e-6, "{lag}");
        // A stalled stream ages with the clock.
        let (_, lag) = wal_lag(&w, 2500, s(30.0));
        assert!((lag - 28.5).abs() < 1e-6, "{lag}");
        // Behind the oldest sample: at least its age.
        let (_, lag) = wal_lag(&w, 500, s(3.0));
        assert!((lag - 3.0).abs() < 1e-6, "{lag}");
        // No samples (the origin never answered): nothing known.
        assert_eq!(wal_lag(&VecDeque::new(), 10, s(1.0)), (None, 0.0));
    }

    fn mysql_status() -> Status {
        serde_json::from_value(serde_json::json!({
            "migration_id": "m", "source_engine": "mysql", "phase": "cdc", "slot": "server_id 1174405121",
            "consistent_lsn": null, "applied_lsn": null, "transactions_applied": 7,
            "events_applied": {"insert": 0, "update": 0, "delete": 0, "truncate": 0},
            "lag_seconds": null, "lag_bytes": null, "retained_wal_bytes": null, "slot_active": null, "dead_letters": 0,
            "tables": [], "warnings": []
        }))
        .unwrap()
    }

    #[test]
    fn a_mysql_stream_fills_positions_lag_and_counts() {
        let p = |f: &str, pos: u64| BinlogPosition::new(f, pos, "").unwrap();
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // A PostgreSQL migration's live state has nothing of MySQL's.
        assert!(Live::new().fill_mysql(&mut mysql_status(), t0).is_none());
        let live = Live::for_mysql();
        assert!(live.mysql_source());
        let stats = Arc::new(ferry_mysql::cdc::CdcStats::default());
        live.set_mysql(stats.clone());
        *stats.positions.lock().unwrap() = (Some(p("binlog.000002", 1000)), Some(p("binlog.000002", 1500)));
        stats.ops[0].store(3, Ordering::Relaxed);
        stats.ops[2].store(1, Ordering::Relaxed);
        stats.streaming.store(true, Ordering::Relaxed);
        stats.reconnects.store(2, Ordering::Relaxed);
        {
            let mut w = live.forward_wal.lock().unwrap();
            push_sample(&mut w, at(0.0), binlog_key(&p("binlog.000002", 1000)));
            push_sample(&mut w, at(1.0), binlog_key(&p("binlog.000002", 2000)));
        }
        *live.binlog_end.lock().unwrap() = Some(p("binlog.000002", 2000));
        let mut s = mysql_status();
        live.fill_mysql(&mut s, at(2.0));
        assert_eq!(s.applied_position.as_deref(), Some("mysql:binlog.000002:1000"));
        assert_eq!(s.source_position.as_deref(), Some("mysql:binlog.000002:2000"));
        // Bytes from where nothing is left to apply (1500) to the end; the source passed 1500
        // at 0.5 s: 1.5 s old at 2 s.
        assert_eq!(s.lag_bytes, Some(500));
        assert!((s.lag_seconds.unwrap() - 1.5).abs() < 1e-6, "{:?}", s.lag_seconds);
        assert_eq!((s.events_applied.insert, s.events_applied.delete), (3, 1));
        assert_eq!(s.slot_active, Some(true));
        assert_eq!(mysql_stream_state(&stats), "streaming");
        assert_eq!(live.apply_errors(), 2);
        // The source moved to the next file: bytes are not known across files, seconds are.
        push_sample(&mut live.forward_wal.lock().unwrap(), at(3.0), binlog_key(&p("binlog.000003", 300)));
        *live.binlog_end.lock().unwrap() = Some(p("binlog.000003", 300));
        let mut s = mysql_status();
        live.fill_mysql(&mut s, at(4.0));
        assert_eq!(s.lag_bytes, None);
        assert!((s.lag_seconds.unwrap() - 3.5).abs() < 1e-6, "{:?}", s.lag_seconds);
        // Caught up in the new file: no lag.
        stats.positions.lock().unwrap().1 = Some(p("binlog.000003", 300));
        let mut s = mysql_status();
        live.fill_mysql(&mut s, at(9.0));
        assert_eq!((s.lag_bytes, s.lag_seconds), (Some(0), Some(0.0)));
        // File numbers order before offsets.
        assert!(binlog_key(&p("binlog.000010", 4)) > binlog_key(&p("binlog.000009", 1 << 30)));
        stats.streaming.store(false, Ordering::Relaxed);
        assert_eq!(mysql_stream_state(&stats), "reconnecting");
    }
}
