//! Cutover and rollback: switch the application's writes from one database to the other with
//! a pause of well under a second, and keep the side it left current so that the switch can be
//! undone without losing a write. See docs/cutover.md for the diagram and the failure table.
//!
//! ```text
//! pre-checks (Go / NoGo) ─> prepare (reverse publication + slot on the target)
//!   ─┬─ pause ─────────────────────────────────────────────────────────────────────┐
//!    │ hold new transactions at the proxy; in-flight ones finish                    │
//!    │ final position P on the side writes stopped on (a flushed, empty commit)     │
//!    │ applier reaches P and stays there                                            │
//!    │ sequences: the new side never hands out a value the old one did              │
//!    │ old side read-only (default_transaction_read_only) for all but Ferry         │
//!    │ proxy sessions move to the new side (atomic: all or none), SETs + prepares   │
//!    │ phase recorded (cut_over / rolled_back)     <── point of no return           │
//!    └ release held transactions ───────────────────────────────────────────────────┘
//!   ─> change capture changes direction (forward stops at P, reverse starts; or back)
//! ```
//! Every step before the point of no return runs within `--max-pause`; a step that fails or
//! runs late aborts: traffic is released to the side it was on, read-only is undone, the phase
//! goes back, and the migration continues as before. Nothing after the point of no return can
//! fail the switch: the phase is recorded before any held transaction reaches the new side, so
//! a crash at any moment resumes in a state that matches where traffic may have gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::switch::{seen_twice, IdentitySync, SessionId, SwitchSide};
use ferry_core::{Fault, Lsn, Phase, SourcePosition};
use ferry_postgres::preflight::CheckRequest;
use ferry_postgres::state::StateStore;
use ferry_postgres::switch::{self as pg_switch, PgSide, ReverseStream};
use ferry_postgres::{cdc, Endpoint};
use serde::Serialize;
use serde_json::json;
use tokio_postgres::Client;

pub use ferry_postgres::switch::reverse_names;

use crate::live::Live;

/// What a cutover or rollback may do; from the API request.
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    /// Longest the application may be held; any step running past it aborts.
    pub max_pause: Duration,
    /// Pre-check: replication lag must be below this.
    pub max_lag: Duration,
    /// While the lag is above `max_lag` (a verification just held the stream, a burst of
    /// writes), wait up to this long for it to drop before refusing.
    pub catch_up: Duration,
    /// Proceed although sessions connected to the old side directly (not through the proxy).
    pub allow_direct_sessions: bool,
    /// No proxy: stop writes with default_transaction_read_only, end writers after `grace`,
    /// then signal the switch (API state, webhook) for the application to switch itself.
    pub no_proxy: bool,
    /// How long writers connected directly may finish before they are terminated (no proxy).
    pub grace: Duration,
    /// Cutover without a clean verification (not recommended).
    pub skip_verify_check: bool,
    /// Opt-in Go/NoGo: shadow traffic ran at least this long and found no mismatch and no
    /// target-only error in it.
    pub shadow_clean_for: Option<Duration>,
    /// Who asked, for the transitions log.
    pub actor: String,
}

/// Everything a switch needs, shared by the API handlers and the auto-rollback monitor.
#[derive(Debug)]
pub struct Switchboard {
    /// The migration.
    pub req: CheckRequest,
    /// State schema.
    pub store: StateStore,
    /// Live state (appliers' holds, change-capture direction, the proxy).
    pub live: Arc<Live>,
    /// Proxy upstreams: (source, target).
    pub upstreams: Option<(ferry_proxy::Upstream, ferry_proxy::Upstream)>,
    /// POSTed a JSON document after every switch (http:// only).
    pub webhook: Option<crate::status::Webhook>,
    /// One switch at a time.
    busy: tokio::sync::Mutex<()>,
}

/// What a finished switch reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "cutover" or "rollback".
    pub kind: &'static str,
    /// "done", "aborted" or "no_go".
    pub outcome: &'static str,
    /// Why it did not happen (aborted / no_go).
    pub reason: Option<String>,
    /// What blocked, one line each (no_go).
    pub blockers: Vec<String>,
    /// Milliseconds from holding the first transaction to releasing them all.
    pub pause_ms: Option<f64>,
    /// Requests that waited at the proxy, and the longest wait (ms).
    pub held_requests: usize,
    /// Longest a held request waited, in milliseconds, as the proxy measured it.
    pub max_wait_ms: Option<f64>,
    /// Position writes stopped at on the side they left.
    pub final_lsn: Option<String>,
    /// Sequences moved forward.
    pub sequences: usize,
    /// The generators moved forward: `sequence = value`, `table.column = value`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Sessions ended after the grace period (no proxy), as the side describes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<String>,
    /// Steps and their milliseconds.
    pub steps: Vec<(String, f64)>,
    /// Sessions connected directly to the side writes left, when reported.
    pub direct_sessions: Vec<String>,
    /// What the switch waited for before it started (lag above --max-lag dropping).
    pub waited: Option<String>,
}

impl Report {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            outcome: "no_go",
            reason: None,
            blockers: Vec::new(),
            pause_ms: None,
            held_requests: 0,
            max_wait_ms: None,
            final_lsn: None,
            sequences: 0,
            identities: Vec::new(),
            ended: Vec::new(),
            steps: Vec::new(),
            direct_sessions: Vec::new(),
            waited: None,
        }
    }

    /// Records the generators a switch moved.
    fn synced(&mut self, synced: Vec<IdentitySync>) {
        self.sequences = synced.len();
        self.identities = synced.iter().map(ToString::to_string).collect();
    }

    pub(crate) fn no_go(mut self, blockers: Vec<String>) -> Self {
        self.reason = Some(format!("{} cannot start: {}", self.kind, blockers.join("; ")));
        self.blockers = blockers;
        self
    }
}

/// How every lag blocker of the pre-checks reads (forward and reverse), so that a switch can
/// tell them from the others and wait them out.
const LAG_BLOCKER: &str = "replication lag is";

/// Whether a pre-check's blocker is only about the lag (which may drop by itself).
fn is_lag_blocker(b: &str) -> bool {
    b.contains(LAG_BLOCKER)
}

/// Figures older than this (seconds) are too old to switch on.
const STALE_AFTER: f64 = 5.0;

/// Which way a switch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// Source to target.
    Cutover,
    /// Target back to source.
    Rollback,
}

impl Way {
    fn kind(self) -> &'static str {
        match self {
            Way::Cutover => "cutover",
            Way::Rollback => "rollback",
        }
    }
}

/// A step of the pause failed or ran late.
pub(crate) struct Abort(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Abort {
    fn from(e: E) -> Self {
        Abort(e.to_string())
    }
}

impl Switchboard {
    /// A switchboard for this migration.
    pub fn new(
        req: CheckRequest,
        live: Arc<Live>,
        upstreams: Option<(ferry_proxy::Upstream, ferry_proxy::Upstream)>,
        webhook: Option<crate::status::Webhook>,
    ) -> Self {
        Self {
            store: StateStore::new(&req.state_schema),
            req,
            live,
            upstreams,
            webhook,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The one-switch-at-a-time lock, when free (`ferry complete` holds it while it runs).
    pub fn try_busy(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.busy.try_lock().ok()
    }

    /// Switches the application to the target.
    pub async fn cutover(&self, opts: &SwitchOptions) -> Report {
        self.switch(Way::Cutover, opts).await
    }

    /// Switches the application back to the source.
    pub async fn rollback(&self, opts: &SwitchOptions) -> Report {
        self.switch(Way::Rollback, opts).await
    }

    async fn switch(&self, way: Way, opts: &SwitchOptions) -> Report {
        let mut report = Report::new(way.kind());
        let Ok(_busy) = self.busy.try_lock() else {
            return report.no_go(vec!["another cutover or rollback is running".into()]);
        };
        let (old, new) = match way {
            Way::Cutover => (&self.req.source, &self.req.target),
            Way::Rollback => (&self.req.target, &self.req.source),
        };
        let conns = tokio::try_join!(
            old.connect("switch"),
            new.connect("switch"),
            self.req.target.connect("switch-state")
        );
        let (old_c, new_c, state_c) = match conns {
            Ok(c) => c,
            Err(e) => return report.no_go(vec![e.to_string()]),
        };
        let (old, new) = self.sides(way, &old_c, &new_c);
        if let Err(e) = old.prepare_session().await {
            return report.no_go(vec![e.to_string()]);
        }
        if let Err(e) = new.prepare_session().await {
            return report.no_go(vec![e.to_string()]);
        }
        // The state store is PostgreSQL's (on the target), whatever the engines.
        if let Err(e) = pg_switch::writable_session(&state_c).await {
            return report.no_go(vec![e.to_string()]);
        }
        let mut checked = self.pre_checks(way, opts, &old, &new, &state_c).await;
        // A lag above --max-lag that is the only blocker is waited out (a verification just
        // held the stream, a burst of writes), then everything is checked again.
        if checked.as_ref().is_err_and(|b| b.iter().all(|b| is_lag_blocker(b))) && !opts.catch_up.is_zero() {
            let waiting = Instant::now();
            report.waited = self.wait_for_lag(way, opts).await;
            report.steps.push(("catch-up".into(), waiting.elapsed().as_secs_f64() * 1000.0));
            checked = self.pre_checks(way, opts, &old, &new, &state_c).await;
        }
        let report = match checked {
            Ok(direct) => Report {
                direct_sessions: direct,
                ..report
            },
            Err(blockers) => {
                let r = report.no_go(blockers);
                tracing::warn!(reason = r.reason.as_deref().unwrap_or(""), "{} refused", way.kind());
                self.remember(&r);
                return r;
            }
        };
        let r = self.run(way, opts, report, &old, &new, &state_c).await;
        self.remember(&r);
        r
    }

    /// The two sides of a switch that goes `way`, on Ferry's sessions `old_c` (where writes
    /// stop) and `new_c` (where they go next). The target carries the reverse stream.
    fn sides<'a>(&'a self, way: Way, old_c: &'a Client, new_c: &'a Client) -> (PgSide<'a>, PgSide<'a>) {
        let source = |c| PgSide::new(c, &self.req.source, "source");
        let target = |c| PgSide::new(c, &self.req.target, "target").with_reverse(ReverseStream::of(&self.req.slot, &self.req.publication));
        match way {
            Way::Cutover => (source(old_c), target(new_c)),
            Way::Rollback => (target(old_c), source(new_c)),
        }
    }

    /// The lag the switch must wait out: forward (cutover) or reverse (rollback), None when not
    /// known (no figures yet, or figures too old to trust).
    fn lag(&self, way: Way) -> Option<f64> {
        let st = self.live.status().ok()?;
        if st.live.as_ref().is_some_and(|l| l.sample_age_seconds > STALE_AFTER) {
            return None;
        }
        match way {
            Way::Cutover => st.lag_seconds,
            Way::Rollback => st.live.as_ref().and_then(|l| l.reverse.as_ref()).and_then(|r| r.lag_seconds),
        }
    }

    /// Waits (at most `opts.catch_up`) while the lag is above `opts.max_lag`; says what it
    /// waited for, if it did. The pre-checks judge the lag afterwards.
    async fn wait_for_lag(&self, way: Way, opts: &SwitchOptions) -> Option<String> {
        let limit = opts.max_lag.as_secs_f64();
        let first = self.lag(way);
        if first.is_some_and(|l| l <= limit) {
            return None;
        }
        let started = Instant::now();
        tracing::info!(lag_s = ?first, max_lag_s = limit, wait_s = opts.catch_up.as_secs_f64(), "{} waits for the lag to drop", way.kind());
        let mut last = first;
        while started.elapsed() < opts.catch_up {
            tokio::time::sleep(Duration::from_millis(200)).await;
            last = self.lag(way);
            if last.is_some_and(|l| l <= limit) {
                break;
            }
        }
        let show = |l: Option<f64>| l.map(|l| format!("{l:.1} s")).unwrap_or_else(|| "unknown".into());
        Some(format!(
            "waited {:.1} s for {}replication lag to drop from {} to {} (--max-lag {limit} s, --catch-up-timeout {} s)",
            started.elapsed().as_secs_f64(),
            if way == Way::Rollback { "reverse " } else { "" },
            show(first),
            show(last),
            opts.catch_up.as_secs_f64()
        ))
    }

    /// Go / NoGo. Returns the direct sessions that were allowed (reported), or what blocks.
    async fn pre_checks<O: SwitchSide, N: SwitchSide>(
        &self,
        way: Way,
        opts: &SwitchOptions,
        old: &O,
        new: &N,
        state_c: &Client,
    ) -> Result<Vec<String>, Vec<String>> {
        let mut no = Vec::new();
        let rec = match self.store.load(state_c, &self.req.migration_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(vec!["the migration is not recorded on the target".into()]),
            Err(e) => return Err(vec![e.to_string()]),
        };
        let to = match way {
            Way::Cutover => Phase::Cutover,
            Way::Rollback => Phase::Rollback,
        };
        if let Err(e) = rec.phase.check_transition(to) {
            no.push(e.to_string());
        }
        if way == Way::Cutover && rec.phase == Phase::Verify {
            no.push("a verification is running: wait for it to finish".into());
        }
        if self.live.paused() {
            no.push("change capture is paused: resume it first (POST /api/resume)".into());
        }
        if !opts.no_proxy && self.live.proxy().is_none() {
            no.push("no proxy is running: start ferry migrate with --proxy-listen, or cut over with --no-proxy and switch the application yourself".into());
        }
        match self.live.status() {
            Ok(st) if st.live.as_ref().is_some_and(|l| l.sample_age_seconds > STALE_AFTER) => {
                let l = st.live.as_ref().expect("checked");
                no.push(format!(
                    "the migration's figures are {:.0} s old ({}): a database is not answering; wait until ferry status is current again",
                    l.sample_age_seconds,
                    l.sample_error.as_deref().unwrap_or("no error recorded")
                ));
            }
            Ok(st) => {
                if way == Way::Cutover {
                    if st.dead_letters > 0 {
                        no.push(format!(
                            "{} dead letter(s) recorded: changes the target rejected are not on it (ferry status lists them); fix them first",
                            st.dead_letters
                        ));
                    }
                    match st.lag_seconds {
                        Some(l) if l > opts.max_lag.as_secs_f64() => no.push(format!(
                            "{LAG_BLOCKER} {l:.1} s, over --max-lag {} s: wait until change capture has caught up",
                            opts.max_lag.as_secs_f64()
                        )),
                        None => no.push(format!(
                            "{LAG_BLOCKER} not known yet: wait a few seconds for change capture to report"
                        )),
                        _ => {}
                    }
                    if !opts.skip_verify_check {
                        // Read from the store, not the status snapshot: a run that just ended
                        // must count.
                        match pg_switch::last_verification(state_c, &self.store, &self.req.migration_id).await {
                            Err(e) => no.push(format!("reading the last verification: {e}")),
                            Ok(None) => no.push("no verification has run: run ferry verify --api (or POST /api/verify) first, or pass --skip-verify-check".into()),
                            Ok(Some((id, status, differences))) if status != "identical" => no.push(format!(
                                "the last verification (run {id}) did not end clean (status {status}, {differences} differences): verify (and repair) until it does"
                            )),
                            Ok(Some(_)) => {}
                        }
                    }
                    if let Some(window) = opts.shadow_clean_for {
                        match self.live.proxy() {
                            None => {
                                no.push("--require-shadow-clean needs the proxy's shadow traffic, and this migration has no proxy".into())
                            }
                            Some(p) => {
                                if let Err(why) = crate::shadow_cmd::clean_for(&p.shadow_report(), window) {
                                    no.push(format!("{why}; fix it, or leave out --require-shadow-clean"));
                                }
                            }
                        }
                    }
                } else if let Some(l) = st.live.as_ref().and_then(|l| l.reverse.as_ref()).and_then(|r| r.lag_seconds) {
                    if l > opts.max_lag.as_secs_f64() {
                        no.push(format!(
                            "reverse {LAG_BLOCKER} {l:.1} s, over --max-lag {} s: wait until it has caught up",
                            opts.max_lag.as_secs_f64()
                        ));
                    }
                }
            }
            Err(e) => no.push(format!("the migration's status is not known yet ({e})")),
        }
        if way == Way::Cutover {
            no.extend(new.reverse_blockers().await);
        }
        let direct = match self.direct_sessions(old).await {
            Ok(d) => d,
            Err(e) => {
                no.push(e.to_string());
                Vec::new()
            }
        };
        if !direct.is_empty() && !opts.no_proxy && !opts.allow_direct_sessions {
            no.push(format!(
                "{} session(s) are connected to the {} directly, not through the proxy, and could write there after the switch (split brain): {}; stop them, or pass --allow-direct-sessions to proceed anyway",
                direct.len(),
                old_side(way),
                direct.join(", ")
            ));
        }
        if no.is_empty() {
            Ok(direct)
        } else {
            Err(no)
        }
    }

    /// Sessions connected to the side `side` directly: neither Ferry's nor the proxy's.
    async fn direct_sessions<S: SwitchSide>(&self, side: &S) -> Result<Vec<String>, S::Error> {
        let first = side.direct_sessions(&self.proxied()).await?;
        if first.is_empty() {
            return Ok(Vec::new());
        }
        // A session this process is opening right now is listed by the server a moment before
        // Ferry has read its pid (login, then one round trip): look again, and name only the
        // sessions seen both times.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = side.direct_sessions(&self.proxied()).await?;
        Ok(seen_twice(&first, again).into_iter().map(|d| d.description).collect())
    }

    /// The server's ids of the proxy's sessions (none without a proxy).
    fn proxied(&self) -> Vec<SessionId> {
        let pids = self.live.proxy().map(|p| p.backend_pids()).unwrap_or_default();
        pids.into_iter().filter_map(|p| SessionId::try_from(p).ok()).collect()
    }

    async fn run<O: SwitchSide, N: SwitchSide>(
        &self,
        way: Way,
        opts: &SwitchOptions,
        mut report: Report,
        old: &O,
        new: &N,
        state_c: &Client,
    ) -> Report {
        let id = &self.req.migration_id;
        let (during, done, back) = match way {
            Way::Cutover => (Phase::Cutover, Phase::CutOver, Phase::Cdc),
            Way::Rollback => (Phase::Rollback, Phase::RolledBack, Phase::CutOver),
        };
        let why = format!("{} requested by {}", way.kind(), opts.actor);
        if let Err(e) = self.store.transition(state_c, id, during, &opts.actor, &why).await {
            return report.no_go(vec![e.to_string()]);
        }
        tracing::info!(actor = %opts.actor, max_pause_ms = opts.max_pause.as_millis() as u64, "{} starting", way.kind());
        // Before the pause: what can be prepared without holding anyone.
        let t = Instant::now();
        if way == Way::Cutover {
            if let Err(Abort(e)) = self.prepare_reverse(new, state_c).await {
                return self
                    .abort(
                        way,
                        report,
                        state_c,
                        old,
                        new,
                        back,
                        &opts.actor,
                        &format!("preparing reverse replication: {e}"),
                        false,
                    )
                    .await;
            }
            report.steps.push(("prepare reverse replication".into(), ms(t.elapsed())));
        }
        // Catch up first, outside the pause: the stream into the side writes go to applies
        // everything up to a position marked now, so the pause only covers what is written
        // from here on (a fraction of a second), however busy the server's WAL is.
        let t = Instant::now();
        if let Err(Abort(e)) = self.catch_up(way, old, opts.max_pause).await {
            return self.abort(way, report, state_c, old, new, back, &opts.actor, &e, false).await;
        }
        report.steps.push(("caught up before the pause".into(), ms(t.elapsed())));
        let outcome = if opts.no_proxy {
            self.pause_without_proxy(way, opts, &mut report, old, new, state_c, done).await
        } else {
            self.pause_with_proxy(way, opts, &mut report, old, new, state_c, done).await
        };
        match outcome {
            Ok(()) => {
                report.outcome = "done";
                tracing::info!(
                    pause_ms = report.pause_ms.unwrap_or(0.0),
                    held = report.held_requests,
                    max_wait_ms = report.max_wait_ms.unwrap_or(0.0),
                    final_lsn = report.final_lsn.as_deref().unwrap_or(""),
                    sequences = report.sequences,
                    "{} done",
                    way.kind()
                );
                let msg = format!(
                    "{} done: pause {:.1} ms, final position {}, {} sequence(s) synced",
                    way.kind(),
                    report.pause_ms.unwrap_or(0.0),
                    report.final_lsn.as_deref().unwrap_or("?"),
                    report.sequences
                );
                let _ = self.store.event(state_c, id, done, way.kind(), &msg).await;
                // Change capture turns around: the stream into the side writes left stops (it
                // holds at the final position), the stream out of the side they went to starts.
                self.live.redirect();
                self.notify(&report).await;
                report
            }
            Err((Abort(reason), read_only_set)) => {
                self.abort(way, report, state_c, old, new, back, &opts.actor, &reason, read_only_set)
                    .await
            }
        }
    }

    /// The pause with the proxy. Err carries why, and whether the old side was made read-only.
    #[allow(clippy::too_many_arguments)]
    async fn pause_with_proxy<O: SwitchSide, N: SwitchSide>(
        &self,
        way: Way,
        opts: &SwitchOptions,
        report: &mut Report,
        old: &O,
        new: &N,
        state_c: &Client,
        done: Phase,
    ) -> Result<(), (Abort, bool)> {
        let proxy = self.live.proxy().ok_or((Abort("the proxy stopped".into()), false))?;
        let (src_up, tgt_up) = self.upstreams.clone().ok_or((Abort("the proxy has no upstreams".into()), false))?;
        let (old_up, new_up) = if way == Way::Cutover { (src_up, tgt_up) } else { (tgt_up, src_up) };
        let started = Instant::now();
        let deadline = started + opts.max_pause;
        let left = || deadline.saturating_duration_since(Instant::now());
        let step = |report: &mut Report, name: &str, t: Instant| report.steps.push((name.to_string(), ms(t.elapsed())));

        let t = Instant::now();
        let mut hold = proxy
            .hold(left())
            .await
            .map_err(|e| (Abort(format!("transactions did not finish within --max-pause: {e}")), false))?;
        step(report, "hold new transactions, in-flight ones finish", t);
        let mut read_only = false;
        let mut switched = false;
        let result: Result<(), Abort> = async {
            // A session that connected directly since the pre-checks would write past the point.
            let t = Instant::now();
            if !opts.allow_direct_sessions {
                let direct = within(left(), self.direct_sessions(old)).await??;
                if !direct.is_empty() {
                    return Err(Abort(format!(
                        "session(s) connected to the {} directly meanwhile: {}",
                        old_side(way),
                        direct.join(", ")
                    )));
                }
            }
            let p = lsn(within(left(), old.final_position()).await??)?;
            report.final_lsn = Some(p.to_string());
            step(report, "final position", t);
            let t = Instant::now();
            let guard = self.apply_final(way, p, left()).await?;
            step(report, "target of the switch applied the final position", t);
            let t = Instant::now();
            report.synced(within(left(), sync_identities(old, new)).await??);
            step(report, "sequences synced", t);
            let t = Instant::now();
            // After a cutover the source is read-only for all but Ferry; a rollback makes it
            // writable again (the target is left as it was before the cutover: writable).
            match way {
                Way::Cutover => {
                    // A statement that failed on the way or was abandoned at the deadline may
                    // still take effect: the abort undoes it then (undoing what was never done
                    // is harmless); a refusal changed nothing.
                    match within(left(), old.set_read_only(true)).await {
                        Ok(Ok(())) => read_only = true,
                        Ok(Err(e)) => {
                            read_only = may_have_taken_effect(&e);
                            return Err(e.into());
                        }
                        Err(late) => {
                            read_only = true;
                            return Err(late);
                        }
                    }
                }
                Way::Rollback => within(left(), new.set_read_only(false)).await??,
            }
            step(report, "source read-only / writable again", t);
            let t = Instant::now();
            hold.switch(new_up, left()).await?;
            switched = true;
            step(report, "proxy sessions moved (settings and prepared statements replayed)", t);
            let t = Instant::now();
            let reason = format!(
                "{} by {}: writes stopped at {p}, applied there, proxy switched",
                way.kind(),
                opts.actor
            );
            within(
                left(),
                self.store.transition(state_c, &self.req.migration_id, done, &opts.actor, &reason),
            )
            .await??;
            step(report, "phase recorded", t);
            // Keep the applier where it is until change capture turns around.
            self.live.keep_held(guard);
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                let released = hold.release();
                report.pause_ms = Some(ms(started.elapsed()));
                report.held_requests = released.held;
                report.max_wait_ms = Some(ms(released.max_wait));
                Ok(())
            }
            Err(e) => {
                // Sessions moved but the phase could not be recorded: move them back before
                // anyone runs a transaction on the new side.
                if switched {
                    if let Err(back) = hold.switch(old_up, Duration::from_secs(10)).await {
                        tracing::error!(error = %back, "could not move proxy sessions back; closing them");
                        if let Some(p) = self.live.proxy() {
                            p.shutdown().await;
                        }
                    }
                }
                drop(hold);
                Err((e, read_only))
            }
        }
    }

    /// The pause without a proxy: the gate only ([`pause_without_proxy`]), on this process's
    /// change stream.
    #[allow(clippy::too_many_arguments)]
    async fn pause_without_proxy<O: SwitchSide, N: SwitchSide>(
        &self,
        way: Way,
        opts: &SwitchOptions,
        report: &mut Report,
        old: &O,
        new: &N,
        state_c: &Client,
        done: Phase,
    ) -> Result<(), (Abort, bool)> {
        let stream = PgStream {
            board: self,
            way,
            state_c,
            actor: &opts.actor,
            done,
        };
        pause_without_proxy(way, opts, report, old, new, &stream).await
    }

    /// Puts everything back as it was before the switch started.
    #[allow(clippy::too_many_arguments)]
    async fn abort<O: SwitchSide, N: SwitchSide>(
        &self,
        way: Way,
        mut report: Report,
        state_c: &Client,
        old: &O,
        new: &N,
        back: Phase,
        actor: &str,
        reason: &str,
        read_only_set: bool,
    ) -> Report {
        report.outcome = "aborted";
        report.reason = Some(format!("{} aborted: {reason}; traffic stays on the {}", way.kind(), old_side(way)));
        tracing::warn!(reason, "{} aborted; traffic stays on the {}", way.kind(), old_side(way));
        // Cutover: the source takes writes again (if it was made read-only). Rollback: the
        // source stays read-only, the target writable (both idempotent).
        match way {
            Way::Cutover if read_only_set => restore_read_only(old, false).await,
            Way::Cutover => {}
            Way::Rollback => {
                restore_read_only(new, true).await;
                restore_read_only(old, false).await;
            }
        }
        if way == Way::Cutover {
            if let Err(e) = new.drop_reverse().await {
                tracing::warn!(error = %e, "could not drop the reverse slot and publication on the target; ferry migrate drops them at its next start");
            }
        }
        let why = format!("{} aborted: {reason}", way.kind());
        if let Err(e) = self.store.transition(state_c, &self.req.migration_id, back, actor, &why).await {
            tracing::error!(error = %e, "could not record the aborted {}", way.kind());
        }
        report
    }

    /// Lets the stream into the side writes go to apply everything up to `p` and holds it
    /// there (the guard keeps it held).
    async fn apply_final(&self, way: Way, p: Lsn, within: Duration) -> Result<cdc::HoldGuard, Abort> {
        let (applier, new_side) = self.applier(way);
        applier.stop_at(p, within).await.map_err(|e| {
            Abort(format!(
                "the {new_side} did not apply the final position {p} within --max-pause ({e})"
            ))
        })
    }

    /// Waits (up to [`CATCH_UP_TIMEOUT`], nobody held) until the stream into the side writes
    /// go to has applied a position marked on the other side now, in rounds, until one round
    /// takes under a quarter of `max_pause`: what is left for the pause is then what is written
    /// in that time. A stream that cannot get there (the server writes WAL faster than it can
    /// be decoded and applied) fails here, before anyone is held.
    async fn catch_up<O: SwitchSide>(&self, way: Way, old: &O, max_pause: Duration) -> Result<(), Abort> {
        let (applier, new_side) = self.applier(way);
        let started = Instant::now();
        loop {
            let left = CATCH_UP_TIMEOUT.saturating_sub(started.elapsed());
            let round = Instant::now();
            let p0 = lsn(within(left, old.final_position()).await??)?;
            let guard = applier.stop_at(p0, left).await.map_err(|e| {
                Abort(format!(
                    "the {new_side} did not catch up with position {p0} within {} s before the pause: change capture is too far behind ({e})",
                    CATCH_UP_TIMEOUT.as_secs()
                ))
            })?;
            drop(guard);
            let took = round.elapsed();
            if took < max_pause / 4 {
                return Ok(());
            }
            tracing::info!(position = %p0, took_ms = took.as_millis() as u64, "caught up; another round to shorten the pause");
            if started.elapsed() >= CATCH_UP_TIMEOUT {
                return Err(Abort(format!(
                    "the {new_side} keeps {:.1} s behind (its last catch-up round took that long, --max-pause is {:.1} s): \
                     change capture cannot keep up with the writes right now; retry when the load is lower or with a longer --max-pause",
                    took.as_secs_f64(),
                    max_pause.as_secs_f64()
                )));
            }
        }
    }

    fn applier(&self, way: Way) -> (Arc<cdc::Hold>, &'static str) {
        match way {
            Way::Cutover => (self.live.hold.clone(), "target"),
            Way::Rollback => (self.live.reverse_hold.clone(), "source"),
        }
    }

    /// The reverse stream out of `new` (the target), prepared before the pause for the
    /// migrated tables (see [`SwitchSide::prepare_reverse`]): nobody is held yet.
    async fn prepare_reverse<N: SwitchSide>(&self, new: &N, state_c: &Client) -> Result<(), Abort> {
        let tables: Vec<ferry_core::TableName> = self
            .store
            .tables(state_c, &self.req.migration_id)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        new.prepare_reverse(&tables).await?;
        Ok(())
    }

    fn remember(&self, r: &Report) {
        self.live.set_last_switch(serde_json::to_value(r).unwrap_or_default());
    }

    /// POSTs the report to the webhook in the background: the switch's answer, the `busy`
    /// lock and the proxy never wait for it (at most `status::WEBHOOK_TIMEOUT`); failures are
    /// logged, never fatal.
    async fn notify(&self, r: &Report) {
        let Some(hook) = self.webhook.clone() else { return };
        let body = json!({
            "event": if r.kind == "cutover" { "cut_over" } else { "rolled_back" },
            "migration_id": self.req.migration_id,
            "writes_go_to": if r.kind == "cutover" { self.req.target.describe() } else { self.req.source.describe() },
            "report": r,
        });
        hook.announce_in_background("switch", body);
    }
}

/// How long catching up before the pause may take (nobody is held).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn old_side(way: Way) -> &'static str {
    match way {
        Way::Cutover => "source",
        Way::Rollback => "target",
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs `f` within `d`.
pub(crate) async fn within<T>(d: Duration, f: impl std::future::Future<Output = T>) -> Result<T, Abort> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| Abort(format!("a step did not finish within the {} ms left of --max-pause", d.as_millis())))
}

/// The position a hold of this switchboard's change streams takes. They are PostgreSQL's
/// (both sides are): a position of another engine is a bug.
fn lsn(p: SourcePosition) -> Result<Lsn, Abort> {
    match p {
        SourcePosition::Postgres(lsn) => Ok(lsn),
        other => Err(Abort(format!(
            "the final position {other} is not a PostgreSQL position: this switchboard runs PostgreSQL change streams only (report this as a bug)"
        ))),
    }
}

/// Moves every generator (sequence, identity) of `new` past the values `old` handed out: the
/// new side never hands out a value the old one did. Returns those it set.
async fn sync_identities<O: SwitchSide, N: SwitchSide>(old: &O, new: &N) -> Result<Vec<IdentitySync>, Abort> {
    let values = old.identities().await?;
    Ok(new.advance_identities(&values).await?)
}

/// Whether a failed [`SwitchSide::set_read_only`] may have taken effect all the same: a
/// refusal (a definite error: a privilege) did not; a statement whose connection failed on the
/// way, or that timed out, may have.
fn may_have_taken_effect<E: Fault>(e: &E) -> bool {
    e.class() != ferry_core::ErrorClass::Definite
}

/// The text of a position in reports: an LSN, or a binlog file and offset.
pub(crate) fn position_text(p: &SourcePosition) -> String {
    match p {
        SourcePosition::Postgres(lsn) => lsn.to_string(),
        SourcePosition::Mysql(b) => b.file_pos(),
    }
}

/// The change stream into the side writes go to, and the migration's record, as a switch
/// without a proxy drives them ([`pause_without_proxy`]): this process's PostgreSQL applier
/// ([`PgStream`]), or the stream of a MySQL/MariaDB source, which runs in the `ferry migrate`
/// process and is followed through Ferry's state on the target ([`MyStream`]).
pub(crate) trait Stream {
    /// What keeps the stream at the final position until change capture turns around.
    type Held: Send;
    /// Waits up to `within` until the stream has applied `p`, and holds it there.
    fn reach(&self, p: &SourcePosition, within: Duration) -> impl std::future::Future<Output = Result<Self::Held, Abort>> + Send;
    /// Records the switch as done (the point of no return), with `reason`; `report` is what
    /// the switch did so far (the recording may add to it). Keeps the stream held.
    fn record(&self, held: Self::Held, reason: &str, report: &mut Report) -> impl std::future::Future<Output = Result<(), Abort>> + Send;
}

/// The stream into the side writes go to of a PostgreSQL-to-PostgreSQL switch: an applier of
/// this process ([`Switchboard::apply_final`]); the phase recorded in the state store.
struct PgStream<'a> {
    board: &'a Switchboard,
    way: Way,
    state_c: &'a Client,
    actor: &'a str,
    done: Phase,
}

impl Stream for PgStream<'_> {
    type Held = cdc::HoldGuard;

    async fn reach(&self, p: &SourcePosition, within: Duration) -> Result<cdc::HoldGuard, Abort> {
        self.board.apply_final(self.way, lsn(p.clone())?, within).await
    }

    async fn record(&self, held: cdc::HoldGuard, reason: &str, _report: &mut Report) -> Result<(), Abort> {
        let board = self.board;
        board
            .store
            .transition(self.state_c, &board.req.migration_id, self.done, self.actor, reason)
            .await?;
        // Keep the applier where it is until change capture turns around.
        board.live.keep_held(held);
        Ok(())
    }
}

/// The pause without a proxy, for any two sides: the old side read-only, its writers ended
/// after the grace period, then within `--max-pause`: the final position, the stream applies
/// it, identities synced, the phase recorded. Err carries why, and whether the old side may
/// have been made read-only (the abort undoes it).
pub(crate) async fn pause_without_proxy<O: SwitchSide, N: SwitchSide, S: Stream>(
    way: Way,
    opts: &SwitchOptions,
    report: &mut Report,
    old: &O,
    new: &N,
    stream: &S,
) -> Result<(), (Abort, bool)> {
    let started = Instant::now();
    let t = Instant::now();
    old.set_read_only(true).await.map_err(|e| {
        let maybe = may_have_taken_effect(&e);
        (Abort(e.to_string()), maybe)
    })?;
    report
        .steps
        .push((format!("{} read-only for new sessions", old_side(way)), ms(t.elapsed())));
    let t = Instant::now();
    let ended = old.end_writers(opts.grace).await.map_err(|e| (Abort(e.to_string()), true))?;
    report.steps.push((
        format!("writers finished or ended after the grace period ({} terminated)", ended.len()),
        ms(t.elapsed()),
    ));
    report.ended = ended.into_iter().map(|d| d.description).collect();
    let deadline = Instant::now() + opts.max_pause;
    let left = || deadline.saturating_duration_since(Instant::now());
    let result: Result<(), Abort> = async {
        let t = Instant::now();
        let p = within(left(), old.final_position()).await??;
        let at = position_text(&p);
        report.final_lsn = Some(at.clone());
        let held = stream.reach(&p, left()).await?;
        report.steps.push(("final position applied".into(), ms(t.elapsed())));
        let t = Instant::now();
        report.synced(within(left(), sync_identities(old, new)).await??);
        report.steps.push(("sequences synced".into(), ms(t.elapsed())));
        if way == Way::Rollback {
            // The source takes writes again; the target goes back to how it was.
            within(left(), new.set_read_only(false)).await??;
            within(left(), old.set_read_only(false)).await??;
        }
        let reason = format!(
            "{} (no proxy) by {}: writes stopped at {at} and applied there",
            way.kind(),
            opts.actor
        );
        within(left(), stream.record(held, &reason, report)).await??;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            report.pause_ms = Some(ms(started.elapsed()));
            Ok(())
        }
        Err(e) => Err((e, true)),
    }
}

/// Abort path: makes `side` read-only (`on`) or writable again, as it was before the switch.
/// A failure is logged for the operator: the switch is aborted either way.
pub(crate) async fn restore_read_only<S: SwitchSide>(side: &S, on: bool) {
    if let Err(e) = side.set_read_only(on).await {
        tracing::error!(
            error = %e,
            "could not make the {} {} again: do it by hand",
            side.side(),
            if on { "read-only" } else { "writable" }
        );
    }
}

/// At start, a switch interrupted by a crash is finished or undone to match where traffic may
/// have gone: `cutover` (never past the point of no return) goes back to `cdc`, `rollback`
/// back to `cut_over`, `rolled_back` on to `cdc`. Returns the phase to run in.
pub async fn recover(req: &CheckRequest, store: &StateStore, phase: Phase, actor: &str) -> anyhow::Result<Phase> {
    let c = req.target.connect("switch-state").await?;
    // The target side only drops the reverse stream here, on a session of its own.
    let target = PgSide::new(&c, &req.target, "target").with_reverse(ReverseStream::of(&req.slot, &req.publication));
    let id = &req.migration_id;
    match phase {
        Phase::Cutover => {
            let s = req.source.connect("switch").await?;
            PgSide::new(&s, &req.source, "source").set_read_only(false).await?;
            target.drop_reverse().await?;
            store
                .transition(
                    &c,
                    id,
                    Phase::Cdc,
                    actor,
                    "a cutover was interrupted before traffic moved: it stays on the source",
                )
                .await?;
            Ok(Phase::Cdc)
        }
        Phase::Rollback => {
            let s = req.source.connect("switch").await?;
            PgSide::new(&s, &req.source, "source").set_read_only(true).await?;
            store
                .transition(
                    &c,
                    id,
                    Phase::CutOver,
                    actor,
                    "a rollback was interrupted before traffic moved: it stays on the target",
                )
                .await?;
            Ok(Phase::CutOver)
        }
        Phase::RolledBack => {
            target.drop_reverse().await?;
            store
                .transition(
                    &c,
                    id,
                    Phase::Cdc,
                    actor,
                    "rolled back: forward replication resumes from where writes stopped",
                )
                .await?;
            Ok(Phase::Cdc)
        }
        p => Ok(p),
    }
}

/// The proxy's users and its two upstreams, from the migration's endpoints and an optional
/// users file (`user:password` per line; `#` comments).
pub fn proxy_config(
    req: &CheckRequest,
    listen: std::net::SocketAddr,
    users_file: Option<&std::path::Path>,
) -> anyhow::Result<(ferry_proxy::ProxyConfig, ferry_proxy::Upstream, ferry_proxy::Upstream)> {
    use std::collections::HashMap;
    let secret = |e: &Endpoint| e.password().map(|p| p.expose().to_string());
    let mut users = Vec::new();
    let (mut src_logins, mut tgt_logins) = (HashMap::new(), HashMap::new());
    match users_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| crate::exit::UsageError(format!("--proxy-users-file: cannot read {}: {e}", path.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((user, password)) = line.split_once(':') else {
                    return Err(crate::exit::UsageError(format!(
                        "--proxy-users-file {} line {}: expected user:password",
                        path.display(),
                        n + 1
                    ))
                    .into());
                };
                let login = ferry_proxy::Login {
                    user: user.to_string(),
                    password: Some(password.to_string()),
                };
                src_logins.insert(user.to_string(), login.clone());
                tgt_logins.insert(user.to_string(), login);
                users.push(ferry_proxy::ProxyUser {
                    name: user.to_string(),
                    password: password.to_string(),
                });
            }
        }
        None => {
            let Some(password) = secret(&req.source) else {
                return Err(crate::exit::UsageError(
                    "--proxy-listen: the proxy authenticates clients with the source URL's password, and it has none; give one, or pass --proxy-users-file".into(),
                )
                .into());
            };
            let user = req.source.user().to_string();
            src_logins.insert(
                user.clone(),
                ferry_proxy::Login {
                    user: user.clone(),
                    password: Some(password.clone()),
                },
            );
            tgt_logins.insert(
                user.clone(),
                ferry_proxy::Login {
                    user: req.target.user().to_string(),
                    password: secret(&req.target),
                },
            );
            users.push(ferry_proxy::ProxyUser { name: user, password });
        }
    }
    let upstream = |name: &str, e: &Endpoint, logins| {
        let (host, port) = match e.host() {
            ferry_postgres::endpoint::HostAddr::Tcp(h, p) => (h, p),
            ferry_postgres::endpoint::HostAddr::Unix(d, p) => (d.display().to_string(), p),
        };
        ferry_proxy::Upstream {
            name: name.to_string(),
            host,
            port,
            dbname: e.dbname().to_string(),
            logins,
            tls: upstream_tls(e),
        }
    };
    Ok((
        ferry_proxy::ProxyConfig::new(listen, users, req.source.dbname()),
        upstream("source", &req.source, src_logins),
        upstream("target", &req.target, tgt_logins),
    ))
}

/// TLS of the proxy's connections to one upstream (source or target): the same sslmode,
/// certificates and verification as Ferry's own connections to that server. `allow` is
/// treated as `prefer` (the proxy does not retry a refused plain login over TLS).
pub fn upstream_tls(e: &Endpoint) -> ferry_proxy::UpstreamTls {
    use ferry_postgres::pgtls::SslMode;
    let tls = e.tls();
    match (&tls.config, tls.mode) {
        (None, _) | (_, SslMode::Disable) => ferry_proxy::UpstreamTls::Disable,
        (Some(c), SslMode::Allow | SslMode::Prefer) => ferry_proxy::UpstreamTls::Prefer(c.clone()),
        (Some(c), _) => ferry_proxy::UpstreamTls::Require(c.clone()),
    }
}

/// The proxy's own listener: TLS from `--proxy-tls-cert`/`--proxy-tls-key`, `--proxy-require-tls`
/// and `--proxy-max-connections`. Usage errors name the flag.
pub fn proxy_listener(
    config: &mut ferry_proxy::ProxyConfig,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    require_tls: bool,
    max_connections: usize,
) -> Result<(), crate::exit::UsageError> {
    use crate::exit::UsageError;
    config.tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            Some(ferry_tls::server_config(cert, key).map_err(|e| UsageError(format!("--proxy-tls-cert/--proxy-tls-key: {e}")))?)
        }
        (None, None) => None,
        _ => {
            return Err(UsageError(
                "--proxy-tls-cert and --proxy-tls-key go together: give both, or neither".into(),
            ))
        }
    };
    if require_tls && config.tls.is_none() {
        return Err(UsageError(
            "--proxy-require-tls needs --proxy-tls-cert and --proxy-tls-key (the certificate the proxy presents)".into(),
        ));
    }
    if max_connections == 0 {
        return Err(UsageError("--proxy-max-connections must be at least 1".into()));
    }
    config.require_tls = require_tls;
    config.max_connections = max_connections;
    // The share of them that may be logging in at once.
    config.max_unauthenticated = ferry_proxy::DEFAULT_MAX_UNAUTHENTICATED.min(max_connections);
    Ok(())
}

/// Opt-in automatic rollback after cutover.
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoRollback {
    /// Reverse replication lag above this.
    pub lag: Option<Duration>,
    /// Reverse apply errors at or above this.
    pub apply_errors: Option<u64>,
}

impl AutoRollback {
    fn armed(&self) -> bool {
        self.lag.is_some() || self.apply_errors.is_some()
    }
}

/// While the migration is cut over, checks the triggers once a second and rolls back (through
/// the proxy) when one fires. A rollback that cannot finish within its pause aborts and leaves
/// traffic on the target, as any rollback would; the trigger is then checked again.
pub async fn auto_rollback(board: Arc<Switchboard>, triggers: AutoRollback) {
    if !triggers.armed() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut errors_at_cutover: Option<u64> = None;
    loop {
        tick.tick().await;
        let Ok(st) = board.live.status() else { continue };
        if st.phase != "cut_over" {
            errors_at_cutover = None;
            continue;
        }
        let Some(rev) = st.live.as_ref().and_then(|l| l.reverse.clone()) else {
            continue;
        };
        let base = *errors_at_cutover.get_or_insert(0);
        let mut why = None;
        if let (Some(limit), Some(lag)) = (triggers.lag, rev.lag_seconds) {
            if lag > limit.as_secs_f64() {
                why = Some(format!("reverse replication lag {lag:.1} s is over {} s", limit.as_secs_f64()));
            }
        }
        if let Some(limit) = triggers.apply_errors {
            if rev.errors.saturating_sub(base) >= limit {
                why = Some(format!(
                    "reverse replication reported {} apply error(s) (limit {limit})",
                    rev.errors
                ));
            }
        }
        let Some(why) = why else { continue };
        tracing::warn!(reason = %why, "automatic rollback triggered");
        let opts = SwitchOptions {
            max_pause: Duration::from_secs(5),
            max_lag: Duration::from_secs(86_400),
            catch_up: Duration::ZERO,
            allow_direct_sessions: true,
            no_proxy: board.live.proxy().is_none(),
            grace: Duration::from_secs(10),
            skip_verify_check: true,
            shadow_clean_for: None,
            actor: format!("auto-rollback ({why})"),
        };
        let r = board.rollback(&opts).await;
        tracing::warn!(
            outcome = r.outcome,
            reason = r.reason.as_deref().unwrap_or(""),
            "automatic rollback finished"
        );
    }
}

/// A switch report (or an API error) for people.
pub fn render(v: &serde_json::Value) -> String {
    let mut o = String::new();
    let kind = v["kind"].as_str().unwrap_or("switch");
    match v["outcome"].as_str() {
        Some("done") if v["source_engine"] == ferry_postgres::state::ENGINE_MYSQL => {
            // A MySQL/MariaDB source: no proxy held anything; the source was read-only.
            o.push_str(&format!(
                "{kind} done: writes stopped on the source for {:.1} ms while the target applied everything up to binlog {}\n",
                v["pause_ms"].as_f64().unwrap_or(0.0),
                v["final_lsn"].as_str().unwrap_or("?")
            ));
            o.push_str(
                "  point the application at the target now; the source stays read-only (rollback to MySQL/MariaDB is not built yet)\n",
            );
            for i in v["identities"].as_array().into_iter().flatten() {
                o.push_str(&format!("  identity {}\n", i.as_str().unwrap_or("")));
            }
            for k in v["killed"].as_array().into_iter().flatten() {
                o.push_str(&format!("  killed after the grace period: session {}\n", k.as_str().unwrap_or("")));
            }
            for c in v["still_connected"].as_array().into_iter().flatten() {
                o.push_str(&format!(
                    "  still connected to the source (read-only now; users with SUPER or READ ONLY ADMIN could still write): {}\n",
                    c.as_str().unwrap_or("")
                ));
            }
        }
        Some("done") => {
            o.push_str(&format!(
                "{kind} done: application paused {:.1} ms ({} request(s) held, longest wait {:.1} ms)\n",
                v["pause_ms"].as_f64().unwrap_or(0.0),
                v["held_requests"].as_u64().unwrap_or(0),
                v["max_wait_ms"].as_f64().unwrap_or(0.0)
            ));
            o.push_str(&format!(
                "  writes stopped at {} on the {}; {} sequence(s) synced\n",
                v["final_lsn"].as_str().unwrap_or("?"),
                if kind == "cutover" { "source" } else { "target" },
                v["sequences"].as_u64().unwrap_or(0)
            ));
            if kind == "cutover" {
                o.push_str("  writes now go to the target; the source is read-only and kept current by reverse replication (ferry rollback switches back)\n");
            } else {
                o.push_str("  writes go to the source again; forward replication resumes\n");
            }
        }
        Some("aborted") | Some("no_go") => {
            o.push_str(&format!("{}\n", v["reason"].as_str().unwrap_or("refused")));
            for b in v["blockers"].as_array().into_iter().flatten() {
                o.push_str(&format!("  - {}\n", b.as_str().unwrap_or("")));
            }
        }
        _ => {
            o.push_str(&format!("{kind} failed: {}\n", v["error"].as_str().unwrap_or(&v.to_string())));
            if let Some(fix) = v["fix"].as_str() {
                o.push_str(&format!("  fix: {fix}\n"));
            }
        }
    }
    if let Some(steps) = v["steps"].as_array().filter(|s| !s.is_empty()) {
        o.push_str("  steps:\n");
        for s in steps {
            o.push_str(&format!(
                "    {:>8.1} ms  {}\n",
                s[1].as_f64().unwrap_or(0.0),
                s[0].as_str().unwrap_or("")
            ));
        }
    }
    for d in v["direct_sessions"].as_array().into_iter().flatten() {
        o.push_str(&format!("  direct session (allowed): {}\n", d.as_str().unwrap_or("")));
    }
    o
}
