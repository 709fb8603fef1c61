//! Cutover and rollback of a MySQL/MariaDB source: the switchboard's pause without a proxy
//! ([`pause_without_proxy`]) between [`MySqlSide`] and [`PgSide`], with the change stream of the
//! `ferry migrate` process followed through Ferry's state: the binlog stream on the target for
//! a cutover ([`MyStream`]), the reverse stream's position on the source for a rollback
//! ([`MyReverse`]).

use std::time::{Duration, Instant};

use ferry_core::switch::SwitchSide;
use ferry_core::{BinlogPosition, Phase, SourcePosition, TableName};
use ferry_mysql::cutover::{self as my_cutover, GateReport};
use ferry_mysql::preflight::{MyCheckRequest, MyTable};
use ferry_mysql::state::MyState;
use ferry_mysql::switch::MySqlSide;
use ferry_mysql::MyError;
use ferry_postgres::apply::order_key;
use ferry_postgres::switch::PgSide;
use serde_json::json;
use tokio_postgres::Client;

use crate::cutover::{pause_without_proxy, Abort, Report, Stream, SwitchOptions, Way};

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The migrated tables as the target names them (in the migration's target schema).
fn target_tables(tables: &[MyTable], schema: &str) -> Vec<TableName> {
    tables.iter().map(|t| TableName::new(schema, &t.name)).collect()
}

/// Who moves the phases of a MySQL/MariaDB cutover.
const MYSQL_ACTOR: &str = "ferry cutover";

/// The stream of a MySQL/MariaDB source: it runs in the `ferry migrate` process and records the
/// position it applied on the target with every batch it commits; it stops by itself when it
/// sees the phase `cut_over` (`ferry_mysql::state::Hold::CutOver`). Nothing holds it here: no
/// write follows the final position (the source is read-only).
struct MyStream<'a> {
    state: &'a MyState,
    /// Ferry's session on the target (recording the cutover takes a transaction: `&mut`).
    pg: tokio::sync::Mutex<Client>,
    /// The target, for messages.
    target: String,
    /// Deadline of each answer of the target.
    limit: Duration,
    /// The source: the sessions still connected when the cutover is recorded are reported.
    old: &'a MySqlSide<'a>,
}

impl MyStream<'_> {
    /// A deadline on the target, as [`ferry_mysql::cutover`] sets them.
    async fn on_target<T>(&self, what: &str, fut: impl std::future::Future<Output = Result<T, MyError>>) -> Result<T, MyError> {
        ferry_mysql::endpoint::deadline(&format!("the PostgreSQL target {}", self.target), self.limit, what, fut).await
    }
}

impl Stream for MyStream<'_> {
    type Held = ();

    async fn reach(&self, p: &SourcePosition, within: Duration) -> Result<(), Abort> {
        let want = p
            .as_mysql()
            .ok_or_else(|| Abort(format!("the final position {p} is not a binlog position (report this as a bug)")))?;
        let pg = self.pg.lock().await;
        if my_cutover::wait_applied(self.state, &pg, &self.target, self.limit, want, within).await? {
            Ok(())
        } else {
            Err(Abort(format!(
                "the stream did not apply up to {} within {} (check ferry migrate's log)",
                want.file_pos(),
                ferry_mysql::endpoint::human(within)
            )))
        }
    }

    /// The phase `cut_over` and the report in one target transaction: the running stream
    /// stops when it sees the phase.
    async fn record(&self, (): (), _reason: &str, report: &mut Report) -> Result<(), Abort> {
        // Users holding SUPER or READ_ONLY ADMIN could still write: named in the report.
        report.direct_sessions = self.old.direct_sessions(&[]).await?.into_iter().map(|d| d.description).collect();
        let json = serde_json::to_value(gate_report(report)).unwrap_or_default();
        let mut pg = self.pg.lock().await;
        self.on_target("recording the cutover", self.state.record_cutover(&mut pg, &json, MYSQL_ACTOR))
            .await?;
        Ok(())
    }
}

/// The report of a MySQL/MariaDB cutover, from the switch's.
pub fn gate_report(r: &Report) -> GateReport {
    GateReport {
        final_position: r.final_lsn.clone().unwrap_or_default(),
        write_pause_ms: r.pause_ms.unwrap_or(0.0),
        killed: r.ended.clone(),
        still_connected: r.direct_sessions.clone(),
        identities: r.identities.clone(),
    }
}

/// `ferry cutover --source mysql://...`: a MySQL/MariaDB source cut over to its PostgreSQL
/// target by the pause of a switch without a proxy ([`pause_without_proxy`]), [`MySqlSide`]
/// the old side and [`PgSide`] the new one; the reverse stream's slot and publication are
/// created on the target first, so that `ferry migrate` keeps the source current afterwards
/// and [`mysql_rollback`] loses nothing. Before it: the migration may be cut over
/// ([`my_cutover::ready`]) and its stream, in the running `ferry migrate`, catches up with the
/// source within `opts.max_lag`. `opts.max_pause` bounds what follows the grace period.
///
/// Err: refused, or aborted with the source writable again and the migration back in `cdc`
/// (or the error says what could not be put back, and how to do it by hand).
pub async fn mysql_cutover(req: &MyCheckRequest, state: &MyState, opts: &SwitchOptions) -> Result<GateReport, MyError> {
    mysql_switch(req, state, opts).await.map(|r| gate_report(&r))
}

/// What the error of an aborted MySQL/MariaDB cutover says it was doing (the others are
/// refusals: nothing was changed).
const MYSQL_ABORTED: &str = "cutover aborted";

/// [`mysql_cutover`] as the API answers it: the switch's report (`outcome` done, no_go when it
/// was refused before anything changed, aborted when writes were stopped and put back), with
/// `source_engine` and, when done, the fields of [`GateReport`] added; and that report.
pub async fn mysql_cutover_report(req: &MyCheckRequest, state: &MyState, opts: &SwitchOptions) -> (serde_json::Value, Option<GateReport>) {
    let report = match mysql_switch(req, state, opts).await {
        Ok(r) => r,
        Err(e) if e.context == MYSQL_ABORTED => {
            let mut r = Report::new("cutover");
            r.outcome = "aborted";
            r.reason = Some(e.to_string());
            r
        }
        Err(e) => Report::new("cutover").no_go(vec![e.to_string()]),
    };
    let mut v = serde_json::to_value(&report).unwrap_or_default();
    let gate = (report.outcome == "done").then(|| gate_report(&report));
    if let (Some(o), Some(Ok(serde_json::Value::Object(fields)))) = (v.as_object_mut(), gate.as_ref().map(serde_json::to_value)) {
        o.extend(fields);
    }
    v["source_engine"] = json!(ferry_postgres::state::ENGINE_MYSQL);
    (v, gate)
}

/// [`mysql_cutover`], with the switch's whole report (outcome `done`).
async fn mysql_switch(req: &MyCheckRequest, state: &MyState, opts: &SwitchOptions) -> Result<Report, MyError> {
    let limit = req.source.query_timeout();
    let target = req.target.describe();
    let pg = req.target.connect("mysql-cutover").await?;
    let tables = my_cutover::ready(state, &pg, &target, limit, opts.skip_verify_check).await?;
    let new_c = req.target.connect("switch").await?;
    let old = MySqlSide::new(&req.source, "source")
        .with_tables(&tables, state.target_schema())
        .with_reverse_sink();
    let new = PgSide::new(&new_c, &req.target, "target").with_reverse(state.reverse_stream());
    old.prepare_session().await?;
    new.prepare_session().await?;
    // The way back must exist before the way there: what reverse replication needs on the
    // target (logical decoding) and on the source (Ferry's writes while it is read-only).
    let mut blockers = new.reverse_blockers().await;
    blockers.extend(ferry_mysql::switch::reverse_sink_blockers(&req.source, state.store().schema(), &tables).await);
    if !blockers.is_empty() {
        return Err(MyError::new(
            "starting the cutover",
            &format!(
                "reverse replication, which keeps the source current for a rollback, is not possible: {}",
                blockers.join("; ")
            ),
            "fix what is named above, then cut over again",
        ));
    }
    // Catch up first, nobody held: the stream applies what the source has now.
    let now = old.final_position().await?;
    let Some(now) = now.as_mysql().cloned() else {
        return Err(MyError::new(
            "starting the cutover",
            &format!("the source's position {now} is not a binlog position"),
            "report this as a bug",
        ));
    };
    if !my_cutover::wait_applied(state, &pg, &target, limit, &now, opts.max_lag).await? {
        let at = my_cutover::applied(state, &pg, &target, limit).await?;
        return Err(MyError::new(
            "starting the cutover",
            &format!(
                "the stream is behind: applied up to {}, the source is at {} (waited {:?})",
                at.map(|a| a.file_pos()).unwrap_or_else(|| "nothing yet".into()),
                now.file_pos(),
                opts.max_lag
            ),
            "make sure ferry migrate is running and caught up (ferry status), then cut over",
        ));
    }
    let stream = MyStream {
        state,
        pg: tokio::sync::Mutex::new(pg),
        target,
        limit,
        old: &old,
    };
    {
        let pg = stream.pg.lock().await;
        stream
            .on_target(
                "recording the cutover's start",
                state.gate_phase(&pg, Phase::Cutover, MYSQL_ACTOR, "cutover gate: stopping writes on the source"),
            )
            .await?;
    }
    let mut report = Report::new("cutover");
    // Before the pause, nobody held: the reverse stream's slot and publication, so that every
    // write on the target after the switch is captured.
    let t = Instant::now();
    let prepared = new.prepare_reverse(&target_tables(&tables, state.target_schema())).await;
    report.steps.push(("prepare reverse replication".into(), ms(t.elapsed())));
    let outcome = match prepared {
        Ok(()) => pause_without_proxy(Way::Cutover, opts, &mut report, &old, &new, &stream).await,
        Err(e) => Err((Abort(format!("preparing reverse replication: {e}")), false)),
    };
    let (Abort(reason), read_only_set) = match outcome {
        Ok(()) => {
            report.outcome = "done";
            return Ok(report);
        }
        Err(e) => e,
    };
    if let Err(w) = new.drop_reverse().await {
        tracing::warn!(error = %w, "could not drop the reverse slot and publication on the target; the next cutover drops them");
    }
    // Aborted: the source takes writes again, the migration goes back to `cdc` (traffic stays
    // on the source). The error says whether that worked.
    let mut e = MyError::new(
        MYSQL_ABORTED,
        &reason,
        "the stream goes on; fix what stopped the cutover, then cut over again",
    );
    if read_only_set {
        // Writable again only when SET GLOBAL read_only = OFF answered and read back 0
        // (`MySqlSide::set_read_only`).
        let reset = old.set_read_only(false).await;
        if let Err(w) = &reset {
            tracing::error!(error = %w, "the source could not be made writable again");
        }
        put_back(
            &mut e,
            "source",
            Back::Writable,
            reset,
            "run SET GLOBAL read_only = OFF (and super_read_only = OFF on MySQL) on the source now, check that \
             SELECT @@GLOBAL.read_only reads 0; then cut over again",
        );
    }
    let why = format!("cutover aborted: {}", e.reason);
    let pg = stream.pg.lock().await;
    if let Err(w) = stream
        .on_target(
            "recording the aborted cutover",
            state.gate_phase(&pg, Phase::Cdc, MYSQL_ACTOR, &why),
        )
        .await
    {
        e.reason
            .push_str(&format!("; and recording the abort failed ({w}): ferry cutover again takes over"));
    }
    Err(e)
}

/// Who moves the phases of a MySQL/MariaDB rollback.
const ROLLBACK_ACTOR: &str = "ferry rollback";

/// The reverse stream of a MySQL/MariaDB migration after its cutover (PostgreSQL target to
/// MySQL/MariaDB source), in the `ferry migrate` process: its sink records the position it
/// applied on the source with every batch, and, while the target is idle, how far the target
/// has sent (`ferry_mysql::apply`). It stops by itself when it sees the phase leave
/// `cut_over`/`rollback`.
struct MyReverse<'a> {
    req: &'a MyCheckRequest,
    state: &'a MyState,
    /// Ferry's session on the target (recording the rollback takes a transaction: `&mut`).
    pg: tokio::sync::Mutex<Client>,
    /// Where the forward stream resumes: the source's binlog end once the final position is
    /// applied there (read in `reach`, recorded in `record`).
    forward_from: std::sync::Mutex<Option<BinlogPosition>>,
}

impl Stream for MyReverse<'_> {
    type Held = ();

    async fn reach(&self, p: &SourcePosition, within: Duration) -> Result<(), Abort> {
        let want = order_key(p);
        if !my_cutover::wait_reverse_applied(&self.req.source, self.state.store().schema(), self.state.id(), want, within).await? {
            return Err(Abort(format!(
                "the reverse stream did not apply the target's final position {want} on the source within {} (is ferry migrate running? see its log)",
                ferry_mysql::endpoint::human(within)
            )));
        }
        // The source is still read-only and the reverse stream idle: nothing follows this
        // position but the application's writes once the source is writable.
        let end = my_cutover::binlog_end(&self.req.source).await?;
        *self.forward_from.lock().expect("not poisoned") = Some(end);
        Ok(())
    }

    async fn record(&self, (): (), reason: &str, _report: &mut Report) -> Result<(), Abort> {
        let from = self
            .forward_from
            .lock()
            .expect("not poisoned")
            .clone()
            .ok_or_else(|| Abort("the source's binlog position after the reverse stream is not known (report this as a bug)".into()))?;
        let mut pg = self.pg.lock().await;
        let reason = format!("{reason}; the forward stream resumes at binlog {}", from.file_pos());
        self.state.record_rollback(&mut pg, &from, ROLLBACK_ACTOR, &reason).await?;
        Ok(())
    }
}

/// `ferry rollback --source mysql://...` (and `POST /api/rollback`): the application's writes go
/// back from the PostgreSQL target to the MySQL/MariaDB source by the pause of a switch without
/// a proxy: the target read-only for all but Ferry and its writers ended after the grace
/// period, the target's final position applied on the source by the reverse stream, every
/// AUTO_INCREMENT counter moved past the values the target handed out, the source writable,
/// the phase `rolled_back` recorded with the binlog position the forward stream resumes at
/// (`ferry migrate` then drops the reverse stream and streams forward again: a later cutover
/// works as the first did).
///
/// Err: refused (nothing changed), or aborted with the target writable again, the source
/// read-only again and the migration back in `cut_over` (or the error says what could not be
/// put back).
pub async fn mysql_rollback(req: &MyCheckRequest, state: &MyState, opts: &SwitchOptions) -> Result<Report, MyError> {
    let limit = req.source.query_timeout();
    let target = req.target.describe();
    let pg = req.target.connect("mysql-rollback").await?;
    let tables = my_cutover::rollback_ready(state, &pg, &target, limit).await?;
    let old_c = req.target.connect("switch").await?;
    // The target names its generators by table and column, as MySQL's AUTO_INCREMENT is.
    let old = PgSide::new(&old_c, &req.target, "target").with_column_identities();
    let new = MySqlSide::new(&req.source, "source")
        .with_tables(&tables, state.target_schema())
        .with_reverse_sink();
    old.prepare_session().await?;
    new.prepare_session().await?;
    // Catch up first, nobody held: the reverse stream applies what the target has now.
    let now = old.final_position().await?;
    let want = order_key(&now);
    if !my_cutover::wait_reverse_applied(&req.source, state.store().schema(), state.id(), want, opts.max_lag).await? {
        return Err(MyError::new(
            "starting the rollback",
            &format!(
                "the reverse stream has not applied the target's position {want} on the source within {}",
                ferry_mysql::endpoint::human(opts.max_lag)
            ),
            "make sure ferry migrate is running (it streams the target's writes back to the source after a cutover) and caught up, then roll back",
        ));
    }
    state
        .gate_phase(&pg, Phase::Rollback, ROLLBACK_ACTOR, "rollback: stopping writes on the target")
        .await?;
    let stream = MyReverse {
        req,
        state,
        pg: tokio::sync::Mutex::new(pg),
        forward_from: std::sync::Mutex::new(None),
    };
    let mut report = Report::new("rollback");
    let (Abort(reason), read_only_set) = match pause_without_proxy(Way::Rollback, opts, &mut report, &old, &new, &stream).await {
        Ok(()) => {
            report.outcome = "done";
            return Ok(report);
        }
        Err(e) => e,
    };
    // Aborted: the application stays on the target (writable again), the source stays
    // read-only, the migration goes back to `cut_over` and the reverse stream goes on.
    let mut e = MyError::new(
        "rollback aborted",
        &reason,
        "the reverse stream goes on; fix what stopped the rollback, then roll back again",
    );
    // The source read-only again (the pause may have made it writable): while the application
    // writes to the target, a writable source would take writes the target never sees.
    let source_back = new.set_read_only(true).await;
    if let Err(w) = &source_back {
        tracing::error!(error = %w, "the source could not be made read-only again");
        put_back(
            &mut e,
            "source",
            Back::ReadOnly,
            source_back,
            "run SET GLOBAL read_only = ON on the source now (check that SELECT @@GLOBAL.read_only reads 1) and keep the \
             application off it; then roll back again",
        );
    }
    if read_only_set {
        let reset = old.set_read_only(false).await;
        put_back(
            &mut e,
            "target",
            Back::Writable,
            reset,
            &format!("run ALTER DATABASE ... RESET default_transaction_read_only on {target} now; then roll back again"),
        );
    }
    let why = format!("rollback aborted: {}", e.reason);
    let pg = stream.pg.lock().await;
    if let Err(w) = state.gate_phase(&pg, Phase::CutOver, ROLLBACK_ACTOR, &why).await {
        e.reason
            .push_str(&format!("; and recording the abort failed ({w}): ferry rollback again takes over"));
    }
    Err(e)
}

/// The state an aborted switch puts a side back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    Writable,
    ReadOnly,
}

/// Adds to an aborted switch's error what became of putting `side` back: "(the source is
/// writable again)" only when `result` is Ok (the side's own check: for MySQL, SET GLOBAL
/// read_only answered and read back as asked); otherwise that it may still be in the other
/// state, why, and `by_hand` as the fix (the first such fix stays: it is the most urgent).
fn put_back(e: &mut MyError, side: &str, back: Back, result: Result<(), impl std::fmt::Display>, by_hand: &str) {
    let (state, other) = match back {
        Back::Writable => ("writable", "READ-ONLY"),
        Back::ReadOnly => ("read-only", "WRITABLE"),
    };
    match result {
        Ok(()) => e.reason.push_str(&format!(" (the {side} is {state} again)")),
        Err(w) => {
            e.reason.push_str(&format!(
                "; and the {side} may still be {other}: making it {state} again failed ({w})"
            ));
            if e.fix.as_deref().is_none_or(|f| !f.starts_with("run ")) {
                e.fix = Some(by_hand.to_string());
            }
        }
    }
}

/// [`mysql_rollback`] as the API answers it: the switch's report with `source_engine`.
pub async fn mysql_rollback_report(req: &MyCheckRequest, state: &MyState, opts: &SwitchOptions) -> serde_json::Value {
    let report = match mysql_rollback(req, state, opts).await {
        Ok(r) => r,
        Err(e) if e.context == "rollback aborted" => {
            let mut r = Report::new("rollback");
            r.outcome = "aborted";
            r.reason = Some(e.to_string());
            r
        }
        Err(e) => Report::new("rollback").no_go(vec![e.to_string()]),
    };
    let mut v = serde_json::to_value(&report).unwrap_or_default();
    v["source_engine"] = json!(ferry_postgres::state::ENGINE_MYSQL);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aborted() -> MyError {
        MyError::new("cutover aborted", "the stream did not apply up to x", "the stream goes on")
    }

    #[test]
    fn an_aborted_switch_says_writable_again_only_when_it_is() {
        let mut e = aborted();
        put_back(&mut e, "source", Back::Writable, Ok::<(), MyError>(()), "by hand");
        assert!(e.reason.ends_with(" (the source is writable again)"), "{e}");
        assert_eq!(e.fix.as_deref(), Some("the stream goes on"));

        let failed = MyError::transient(
            "making the source writable again (SET GLOBAL read_only = OFF)",
            "the statement answered, but @@GLOBAL.read_only reads 1 afterwards",
            "...",
        );
        let mut e = aborted();
        put_back(&mut e, "source", Back::Writable, Err(failed), "run SET GLOBAL read_only = OFF now");
        assert!(!e.reason.contains("writable again)"), "{e}");
        assert!(
            e.reason
                .contains("; and the source may still be READ-ONLY: making it writable again failed (making the source writable again"),
            "{e}"
        );
        assert!(e.reason.contains("reads 1"), "{e}");
        assert_eq!(e.fix.as_deref(), Some("run SET GLOBAL read_only = OFF now"));

        // A rollback that could not make the source read-only again says so first, and keeps
        // that fix when the target's reset fails too.
        let mut e = aborted();
        put_back(&mut e, "source", Back::ReadOnly, Err("refused"), "run SET GLOBAL read_only = ON");
        put_back(&mut e, "target", Back::Writable, Err("gone"), "run ALTER DATABASE");
        assert!(
            e.reason
                .contains("the source may still be WRITABLE: making it read-only again failed (refused)"),
            "{e}"
        );
        assert!(e.reason.contains("the target may still be READ-ONLY"), "{e}");
        assert_eq!(e.fix.as_deref(), Some("run SET GLOBAL read_only = ON"));
    }
}
