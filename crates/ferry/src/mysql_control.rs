//! What the API of a `ferry migrate --source mysql://...` runs for verification, cutover and
//! rollback
//! (`server` calls it; `mysql_cmd` wires it): the same code as the standalone commands.

use std::time::Duration;

use ferry_mysql::preflight::MyCheckRequest;
use ferry_mysql::state::MyState;

/// How long a MySQL/MariaDB cutover waits for the stream to apply the final position, once the
/// writers are gone (the switch's `max_pause` without a proxy).
pub const MYSQL_FINAL_WAIT: Duration = Duration::from_secs(60);

/// Verification and cutover of a MySQL/MariaDB migration through the API of the `ferry
/// migrate` that streams it (`POST /api/verify`, `POST /api/cutover`): the same code as `ferry
/// verify --source mysql://...` and `ferry cutover --source mysql://...`, run in this process.
#[derive(Debug)]
pub struct ApiControl {
    /// The migration's endpoints and options.
    pub req: MyCheckRequest,
    /// Its state on the target.
    pub state: MyState,
    /// `--webhook`: POSTed the report of a cutover made through the API.
    pub webhook: Option<crate::status::Webhook>,
    /// One cutover at a time.
    busy: tokio::sync::Mutex<()>,
}

impl ApiControl {
    /// The control of the migration `state` records, between `req`'s source and target.
    pub fn new(req: MyCheckRequest, state: MyState, webhook: Option<crate::status::Webhook>) -> Self {
        Self {
            req,
            state,
            webhook,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Compares every table the stream moves at one binlog position (the stream in this process
    /// answers the hold), and records the outcome for the cutover's pre-check, as `ferry verify
    /// --source mysql://...` does.
    pub async fn verify(&self) -> Result<ferry_postgres::verify::Report, ferry_mysql::MyError> {
        let c = self.req.target.connect("mysql-verify").await?;
        let tables = self.state.stored_tables(&c).await?.ok_or_else(|| {
            ferry_mysql::MyError::new(
                "verifying",
                "the stream's tables are not recorded yet",
                "retry once ferry migrate streams changes (phase cdc)",
            )
        })?;
        let opts = ferry_mysql::verify::VerifyOptions {
            max_details: ferry_postgres::verify::Options::default().max_details,
            state: Some(self.state.clone()),
        };
        let report = ferry_mysql::verify::verify(&self.req, &tables, &opts).await?;
        ferry_mysql::verify::record(&c, &opts, &report).await?;
        Ok(report)
    }

    /// `crate::mysql_switch::mysql_cutover` with `opts`; the report as the API answers it
    /// (`outcome` done, no_go or aborted). When done, the report goes to `--webhook` in the
    /// body `ferry cutover --source mysql://... --webhook` sends, in the background (at most
    /// `status::WEBHOOK_TIMEOUT`; a failure is logged).
    pub async fn cutover(&self, opts: &crate::cutover::SwitchOptions) -> serde_json::Value {
        let Ok(_busy) = self.busy.try_lock() else {
            return serde_json::json!({
                "kind": "cutover", "outcome": "no_go", "reason": "cutover cannot start: another cutover is running",
                "blockers": ["another cutover is running"], "source_engine": ferry_postgres::state::ENGINE_MYSQL,
            });
        };
        let (answer, gate) = crate::mysql_switch::mysql_cutover_report(&self.req, &self.state, opts).await;
        if let (Some(hook), Some(gate)) = (&self.webhook, gate) {
            let body = cutover_webhook_body(&self.req, &gate);
            hook.announce_in_background("cutover", body);
        }
        answer
    }

    /// `crate::mysql_switch::mysql_rollback` with `opts`; the report as the API answers it
    /// (`outcome` done, no_go or aborted). When done, `--webhook` gets it in the background.
    pub async fn rollback(&self, opts: &crate::cutover::SwitchOptions) -> serde_json::Value {
        let Ok(_busy) = self.busy.try_lock() else {
            return serde_json::json!({
                "kind": "rollback", "outcome": "no_go", "reason": "rollback cannot start: another cutover or rollback is running",
                "blockers": ["another cutover or rollback is running"], "source_engine": ferry_postgres::state::ENGINE_MYSQL,
            });
        };
        let answer = crate::mysql_switch::mysql_rollback_report(&self.req, &self.state, opts).await;
        if let Some(hook) = self.webhook.as_ref().filter(|_| answer["outcome"] == "done") {
            let body = serde_json::json!({
                "event": "rolled_back",
                "source": self.req.source.describe(),
                "target": self.req.target.describe(),
                "writes_go_to": self.req.source.describe(),
                "report": answer,
            });
            hook.announce_in_background("rollback", body);
        }
        answer
    }
}

/// What `--webhook` receives after a rollback to a MySQL/MariaDB source (the command's and the
/// API's alike).
pub fn rollback_webhook_body(req: &MyCheckRequest, report: &crate::cutover::Report) -> serde_json::Value {
    serde_json::json!({
        "event": "rolled_back",
        "source": req.source.describe(),
        "target": req.target.describe(),
        "writes_go_to": req.source.describe(),
        "report": report,
    })
}

/// What `--webhook` receives after a cutover of a MySQL/MariaDB source (the command's and the
/// API's alike).
pub fn cutover_webhook_body(req: &MyCheckRequest, report: &ferry_mysql::cutover::GateReport) -> serde_json::Value {
    serde_json::json!({
        "event": "cutover",
        "source": req.source.describe(),
        "target": req.target.describe(),
        "report": report,
    })
}

/// What a rollback of a MySQL/MariaDB migration may do (the command's and the API's).
pub fn rollback_options(max_lag: Duration, grace: Duration, actor: &str) -> crate::cutover::SwitchOptions {
    crate::cutover::SwitchOptions {
        // Without a proxy, the reverse stream gets this long to apply the final position once
        // the target's writers are gone, as a cutover's stream does.
        max_pause: MYSQL_FINAL_WAIT,
        max_lag,
        catch_up: Duration::ZERO,
        allow_direct_sessions: true,
        no_proxy: true,
        grace,
        skip_verify_check: true,
        shadow_clean_for: None,
        actor: actor.into(),
    }
}
