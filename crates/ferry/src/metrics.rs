//! `/metrics`: Prometheus (OpenMetrics text) from the latest sampled status.
//!
//! Names follow `../shared/design.md` section 6 and Prometheus' rules (base units, `_total` for
//! counters, `_seconds` and `_bytes`). Counters are cumulative over the migration's life, not
//! the process's: they come from the state schema, so a restart does not reset them.

use std::sync::atomic::AtomicU64;

use ferry_core::Phase;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::live::Live;
use crate::status::Status;

type Labels = Vec<(&'static str, String)>;

/// The metric families, refreshed from the live status at each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    info: Family<Labels, Gauge>,
    phase: Family<Labels, Gauge>,
    rows_copied: Family<Labels, Counter>,
    bytes_copied: Family<Labels, Counter>,
    rows_estimate: Family<Labels, Gauge>,
    tables: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    transactions: Counter,
    lag_seconds: Gauge<f64, AtomicU64>,
    cutover_pause: Gauge<f64, AtomicU64>,
    reverse_lag: Gauge<f64, AtomicU64>,
    lag_bytes: Gauge,
    retained_wal: Gauge,
    slot_active: Gauge,
    apply_errors: Counter,
    dead_letters: Counter,
    paused: Gauge,
    uptime: Gauge<f64, AtomicU64>,
    phase_seconds: Gauge<f64, AtomicU64>,
    verify_rows: Counter,
    verify_differences: Family<Labels, Counter>,
    up: Gauge,
    stream_up: Gauge,
    sample_age: Gauge<f64, AtomicU64>,
    source_silence: Gauge<f64, AtomicU64>,
    proxy_sessions: Gauge,
    proxy_switches: Counter,
    read_share: Gauge<f64, AtomicU64>,
    read_target_ready: Gauge,
    read_sessions: Family<Labels, Gauge>,
    read_requests: Family<Labels, Counter>,
    read_moves: Counter,
    read_refused: Counter,
    shadow_sample: Gauge<f64, AtomicU64>,
    shadow_dropped: Counter,
    shadow_statements: Family<Labels, Counter>,
    shadow_mismatches: Family<Labels, Counter>,
    shadow_target_errors: Family<Labels, Counter>,
    shadow_latency: Family<Labels, Gauge<f64, AtomicU64>>,
}

/// Fingerprints with series of their own in `/metrics` (the report's first: problems, then the
/// slowest on the target).
const SHADOW_TOP: usize = 20;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            info: Family::default(),
            phase: Family::default(),
            rows_copied: Family::default(),
            bytes_copied: Family::default(),
            rows_estimate: Family::default(),
            tables: Family::default(),
            events: Family::default(),
            transactions: Counter::default(),
            lag_seconds: Gauge::default(),
            cutover_pause: Gauge::default(),
            reverse_lag: Gauge::default(),
            lag_bytes: Gauge::default(),
            retained_wal: Gauge::default(),
            slot_active: Gauge::default(),
            apply_errors: Counter::default(),
            dead_letters: Counter::default(),
            paused: Gauge::default(),
            uptime: Gauge::default(),
            phase_seconds: Gauge::default(),
            verify_rows: Counter::default(),
            verify_differences: Family::default(),
            up: Gauge::default(),
            stream_up: Gauge::default(),
            sample_age: Gauge::default(),
            source_silence: Gauge::default(),
            proxy_sessions: Gauge::default(),
            proxy_switches: Counter::default(),
            read_share: Gauge::default(),
            read_target_ready: Gauge::default(),
            read_sessions: Family::default(),
            read_requests: Family::default(),
            read_moves: Counter::default(),
            read_refused: Counter::default(),
            shadow_sample: Gauge::default(),
            shadow_dropped: Counter::default(),
            shadow_statements: Family::default(),
            shadow_mismatches: Family::default(),
            shadow_target_errors: Family::default(),
            shadow_latency: Family::default(),
        };
        registry.register(
            "ferry_shadow_sample_ratio",
            "Share of eligible read-only statements run again on the target (ferry shadow --sample), 0 to 1",
            m.shadow_sample.clone(),
        );
        registry.register(
            "ferry_shadow_dropped",
            "Shadow samples dropped because the queue was full or shadowing was suspended",
            m.shadow_dropped.clone(),
        );
        registry.register(
            "ferry_shadow_statements",
            "Sampled statements run on the target, per query fingerprint (the top 20)",
            m.shadow_statements.clone(),
        );
        registry.register(
            "ferry_shadow_mismatches",
            "Sampled statements whose answer on the target stayed different from the source's, per fingerprint (the top 20)",
            m.shadow_mismatches.clone(),
        );
        registry.register(
            "ferry_shadow_target_errors",
            "Sampled statements that failed only on the target, per fingerprint (the top 20)",
            m.shadow_target_errors.clone(),
        );
        registry.register(
            "ferry_shadow_latency_seconds",
            "Latency of sampled statements per fingerprint (the top 20), side (source or target) and quantile (0.5, 0.95, 0.99)",
            m.shadow_latency.clone(),
        );
        registry.register(
            "ferry_proxy_sessions",
            "Client sessions of the proxy connected to a server (both endpoints)",
            m.proxy_sessions.clone(),
        );
        registry.register(
            "ferry_proxy_switches",
            "Switches of every proxy session between source and target since this process started",
            m.proxy_switches.clone(),
        );
        registry.register(
            "ferry_proxy_read_share_ratio",
            "Share of read-endpoint sessions the target is to serve (ferry shift --reads), 0 to 1",
            m.read_share.clone(),
        );
        registry.register(
            "ferry_proxy_read_target_ready",
            "1 while the target may serve shifted reads (its lag under --max-read-lag), 0 otherwise",
            m.read_target_ready.clone(),
        );
        registry.register(
            "ferry_proxy_read_sessions",
            "Read-endpoint sessions, by the server that serves them (source or target)",
            m.read_sessions.clone(),
        );
        registry.register(
            "ferry_proxy_read_requests",
            "Requests of read-endpoint sessions since this process started, by the server that served them",
            m.read_requests.clone(),
        );
        registry.register(
            "ferry_proxy_read_moves",
            "Read-endpoint sessions moved between source and target since this process started",
            m.read_moves.clone(),
        );
        registry.register(
            "ferry_proxy_read_refused_statements",
            "Statements refused on the read endpoint because they would have made transactions read-write",
            m.read_refused.clone(),
        );
        registry.register(
            "ferry_replication_stream_up",
            "1 while change capture streams (or is held at a position), 0 while it reconnects, is paused or stopped",
            m.stream_up.clone(),
        );
        registry.register(
            "ferry_status_sample_age_seconds",
            "Age of the figures read from the databases; above a few seconds they are stale (a database is not answering)",
            m.sample_age.clone(),
        );
        registry.register(
            "ferry_source_silence_seconds",
            "Seconds since the last message from the source's WAL sender",
            m.source_silence.clone(),
        );
        registry.register(
            "ferry_build_info",
            "Ferry version, the migration it runs and its source's engine (always 1)",
            m.info.clone(),
        );
        registry.register(
            "ferry_up",
            "1 when the last sample of the migration's state succeeded, 0 when it failed",
            m.up.clone(),
        );
        registry.register(
            "ferry_phase",
            "1 for the migration's current phase, 0 for the others",
            m.phase.clone(),
        );
        registry.register(
            "ferry_phase_duration_seconds",
            "Seconds since the migration entered its current phase",
            m.phase_seconds.clone(),
        );
        registry.register(
            "ferry_rows_copied",
            "Rows copied by the full load, per table",
            m.rows_copied.clone(),
        );
        registry.register(
            "ferry_bytes_copied",
            "Bytes (binary COPY format) copied by the full load, per table",
            m.bytes_copied.clone(),
        );
        registry.register(
            "ferry_table_rows_estimate",
            "Estimated rows per table (planner statistics at planning time)",
            m.rows_estimate.clone(),
        );
        registry.register("ferry_tables", "Tables of the migration, per full-load state", m.tables.clone());
        registry.register(
            "ferry_cdc_events_applied",
            "Row events applied by change capture, per operation",
            m.events.clone(),
        );
        registry.register(
            "ferry_cdc_transactions_applied",
            "Source transactions applied by change capture",
            m.transactions.clone(),
        );
        registry.register(
            "ferry_replication_lag_seconds",
            "Age of the oldest source WAL (MySQL/MariaDB: binlog) position, sampled each second, not yet applied (0 when caught up)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "ferry_cutover_pause_seconds",
            "How long the application was held by the last cutover or rollback that completed",
            m.cutover_pause.clone(),
        );
        registry.register(
            "ferry_reverse_replication_lag_seconds",
            "After cutover: age of the oldest target write not yet applied on the source (0 when caught up or not cut over)",
            m.reverse_lag.clone(),
        );
        registry.register(
            "ferry_replication_lag_bytes",
            "Source WAL not yet confirmed as applied (current WAL position - slot's confirmed position; MySQL/MariaDB: binlog bytes, within one file)",
            m.lag_bytes.clone(),
        );
        registry.register(
            "ferry_slot_retained_wal_bytes",
            "WAL the replication slot keeps on the source's disk (current WAL position - restart position)",
            m.retained_wal.clone(),
        );
        registry.register(
            "ferry_slot_active",
            "1 when a process streams from the slot (MySQL/MariaDB sources: while this process's binlog stream is connected)",
            m.slot_active.clone(),
        );
        registry.register(
            "ferry_apply_errors",
            "Apply sessions that failed (and were retried) and changes the target rejected, since this process started",
            m.apply_errors.clone(),
        );
        registry.register(
            "ferry_dead_letters",
            "Changes the target rejected, recorded in the dead_letters table",
            m.dead_letters.clone(),
        );
        registry.register(
            "ferry_cdc_paused",
            "1 while change capture is paused through the API",
            m.paused.clone(),
        );
        registry.register(
            "ferry_uptime_seconds",
            "Seconds since this ferry migrate process started",
            m.uptime.clone(),
        );
        registry.register(
            "ferry_verify_rows_compared",
            "Rows compared by verification runs",
            m.verify_rows.clone(),
        );
        registry.register(
            "ferry_verify_differences",
            "Differences found by verification runs, per table",
            m.verify_differences.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition of the current state.
    pub fn render(&self, live: &Live) -> String {
        if let Some(p) = live.proxy() {
            self.shadow(&p.shadow_report());
        }
        let out = self.encode(live.status().ok().as_ref(), live.apply_errors(), live.paused());
        // A stream through Kafka: its per-partition lag too, before the end of the exposition.
        match (live.kafka(), out.strip_suffix("# EOF\n")) {
            (Some(k), Some(head)) => format!("{head}{}# EOF\n", k.families()),
            _ => out,
        }
    }

    /// The exposition for a status (None: the state could not be read).
    fn encode(&self, st: Option<&Status>, apply_errors: u64, paused: bool) -> String {
        match st {
            Some(st) => {
                self.up.set(1);
                self.refresh(st, apply_errors, paused);
            }
            None => {
                self.up.set(0);
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn refresh(&self, st: &Status, apply_errors: u64, paused: bool) {
        self.info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("migration", st.migration_id.clone()),
                ("source_engine", st.source_engine.clone()),
            ])
            .set(1);
        for p in Phase::ALL {
            self.phase
                .get_or_create(&vec![("phase", p.as_str().to_string())])
                .set(i64::from(p.as_str() == st.phase));
        }
        for state in ["pending", "copying", "copied"] {
            let n = st.tables.iter().filter(|t| t.state == state).count();
            self.tables.get_or_create(&vec![("state", state.to_string())]).set(n as i64);
        }
        for t in &st.tables {
            let l = vec![("table", t.table.clone())];
            advance(&self.rows_copied.get_or_create(&l), t.rows_copied);
            advance(&self.bytes_copied.get_or_create(&l), t.bytes_copied);
            self.rows_estimate.get_or_create(&l).set(t.rows_estimate.unwrap_or(0).max(0));
        }
        let e = &st.events_applied;
        for (op, n) in [
            ("insert", e.insert),
            ("update", e.update),
            ("delete", e.delete),
            ("truncate", e.truncate),
        ] {
            advance(&self.events.get_or_create(&vec![("op", op.to_string())]), n);
        }
        advance(&self.transactions, st.transactions_applied);
        self.lag_seconds.set(st.lag_seconds.unwrap_or(0.0));
        if let Some(live) = &st.live {
            if let Some(p) = live
                .last_switch
                .as_ref()
                .filter(|r| r["outcome"] == "done")
                .and_then(|r| r["pause_ms"].as_f64())
            {
                self.cutover_pause.set(p / 1000.0);
            }
            self.reverse_lag
                .set(live.reverse.as_ref().and_then(|r| r.lag_seconds).unwrap_or(0.0));
            self.stream_up
                .set(i64::from(matches!(live.stream_state.as_deref(), Some("streaming" | "held"))));
            self.sample_age.set(live.sample_age_seconds);
            self.source_silence.set(live.source_message_age_seconds.unwrap_or(0.0));
            if let Some(p) = &live.proxy {
                self.proxy_sessions.set(p.sessions as i64);
                advance(&self.proxy_switches, p.switches as i64);
                if let Some(r) = &p.reads {
                    self.read_share.set(f64::from(r.share_percent) / 100.0);
                    self.read_target_ready.set(i64::from(r.target_ready));
                    let label = |side: &str| vec![("upstream", side.to_string())];
                    self.read_sessions
                        .get_or_create(&label("source"))
                        .set((r.sessions - r.on_target) as i64);
                    self.read_sessions.get_or_create(&label("target")).set(r.on_target as i64);
                    advance(&self.read_requests.get_or_create(&label("source")), r.requests_source as i64);
                    advance(&self.read_requests.get_or_create(&label("target")), r.requests_target as i64);
                    advance(&self.read_moves, r.moves as i64);
                    advance(&self.read_refused, r.refused_statements as i64);
                }
            }
        }
        self.lag_bytes.set(st.lag_bytes.unwrap_or(0).max(0));
        self.retained_wal.set(st.retained_wal_bytes.unwrap_or(0).max(0));
        self.slot_active.set(i64::from(st.slot_active == Some(true)));
        advance(&self.dead_letters, st.dead_letters);
        advance(&self.apply_errors, apply_errors as i64);
        self.paused.set(i64::from(paused));
        self.uptime.set(st.live.as_ref().map(|l| l.uptime_seconds).unwrap_or(0.0));
        self.phase_seconds.set(st.phase_seconds.unwrap_or(0.0));
        advance(&self.verify_rows, st.verify_rows_compared);
        for (table, n) in &st.verify_differences {
            advance(&self.verify_differences.get_or_create(&vec![("table", table.clone())]), *n);
        }
    }
}

impl Metrics {
    fn shadow(&self, r: &ferry_proxy::ShadowReport) {
        self.shadow_sample.set(r.sample_percent / 100.0);
        advance(&self.shadow_dropped, r.dropped as i64);
        // Only the current top keeps latency series; counters stay (they never go down).
        self.shadow_latency.clear();
        for f in r.fingerprints.iter().take(SHADOW_TOP) {
            let fp = f.fingerprint.chars().take(200).collect::<String>();
            let l = vec![("fingerprint", fp.clone())];
            advance(&self.shadow_statements.get_or_create(&l), f.executions as i64);
            advance(&self.shadow_mismatches.get_or_create(&l), f.mismatches as i64);
            advance(&self.shadow_target_errors.get_or_create(&l), f.target_errors as i64);
            for (side, lat) in [("source", f.source_latency), ("target", f.target_latency)] {
                for (q, v) in [("0.5", lat.p50_ms), ("0.95", lat.p95_ms), ("0.99", lat.p99_ms)] {
                    let labels = vec![("fingerprint", fp.clone()), ("side", side.to_string()), ("quantile", q.to_string())];
                    self.shadow_latency.get_or_create(&labels).set(v / 1000.0);
                }
            }
        }
    }
}

/// Moves a counter up to `to` (a stored figure); never down: a table recopied after a crash
/// starts its figure again, and a counter must not decrease.
fn advance(c: &Counter, to: i64) {
    let to = to.max(0) as u64;
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: &str, rows: i64, inserts: i64) -> Status {
        serde_json::from_value(serde_json::json!({
            "migration_id": "m", "phase": phase, "slot": "ferry_m", "consistent_lsn": "0/1", "applied_lsn": null,
            "transactions_applied": 3, "events_applied": {"insert": inserts, "update": 2, "delete": 0, "truncate": 0},
            "lag_seconds": 0.25, "lag_bytes": 4096, "retained_wal_bytes": 8192, "slot_active": true, "dead_letters": 0,
            "tables": [{"table": "public.t", "state": "copying", "rows_copied": rows, "rows_estimate": 1000, "bytes_copied": rows * 10}],
            "warnings": []
        }))
        .unwrap()
    }

    #[test]
    fn exposition_follows_the_status_with_prometheus_names() {
        let m = Metrics::new();
        let text = m.encode(None, 0, false);
        assert!(text.contains("ferry_up 0") && text.ends_with("# EOF\n"), "{text}");
        let text = m.encode(Some(&status("full_load", 10, 0)), 0, false);
        for line in [
            "ferry_up 1",
            "ferry_phase{phase=\"full_load\"} 1",
            "ferry_phase{phase=\"cdc\"} 0",
            "ferry_rows_copied_total{table=\"public.t\"} 10",
            "ferry_bytes_copied_total{table=\"public.t\"} 100",
            "ferry_table_rows_estimate{table=\"public.t\"} 1000",
            "ferry_tables{state=\"copying\"} 1",
            "ferry_cdc_events_applied_total{op=\"update\"} 2",
            "ferry_replication_lag_seconds 0.25",
            "ferry_replication_lag_bytes 4096",
            "ferry_slot_retained_wal_bytes 8192",
            "# TYPE ferry_rows_copied counter",
            "# TYPE ferry_replication_lag_seconds gauge",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // Counters only go up: a table recopied after a crash starts its stored figure again.
        let text = m.encode(Some(&status("cdc", 5, 7)), 1, true);
        assert!(text.contains("ferry_rows_copied_total{table=\"public.t\"} 10"), "{text}");
        assert!(text.contains("ferry_cdc_events_applied_total{op=\"insert\"} 7"), "{text}");
        assert!(
            text.contains("ferry_phase{phase=\"cdc\"} 1") && text.contains("ferry_phase{phase=\"full_load\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ferry_apply_errors_total 1") && text.contains("ferry_cdc_paused 1"),
            "{text}"
        );
    }
}
