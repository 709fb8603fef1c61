//! The HTTP side of `ferry migrate --listen`: status API, events, control endpoints, Prometheus
//! metrics and the dashboard.
//!
//! ```text
//! GET  /                 dashboard (one self-contained page)
//! GET  /api/status       phase, tables, lag, rates, transitions, dead letters, history (JSON)
//! GET  /api/events       the event log (?after=ID&limit=N)
//! GET  /metrics          Prometheus / OpenMetrics text
//! GET  /healthz          200 while the process runs
//! POST /api/pause        stop change capture at a checkpoint (the slot keeps the changes)
//! POST /api/resume       resume change capture
//! POST /api/verify       start a verification at one consistent point (?repair=true to fix
//!                        what differs); 202 with the run id
//! GET  /api/verify/ID    a run: status, progress while running, the report when done
//! POST /api/cutover      ?max_pause_ms&max_lag_ms&catch_up_ms&allow_direct_sessions&no_proxy&grace_ms&skip_verify_check
//! POST /api/rollback     same options; both answer with the switch's report
//! ```
//! Control endpoints (POST) require `Authorization: Bearer TOKEN` when a token is configured,
//! and a token is required whenever the listener is not a loopback address: `serve` refuses to
//! start otherwise. Reads are open, as Prometheus scrapes usually are; they hold no secrets.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::{Phase, Secret};
use ferry_postgres::state::StateStore;
use ferry_postgres::Endpoint;
use serde::Deserialize;
use serde_json::json;

use crate::live::Live;
use crate::metrics::Metrics;

const DASHBOARD: &str = include_str!("dashboard.html");

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct Api {
    /// Live state.
    pub live: Arc<Live>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Bearer token for control endpoints.
    pub token: Option<Arc<Secret>>,
    /// Target (state schema).
    pub target: Endpoint,
    /// State schema.
    pub store: StateStore,
    /// Migration id.
    pub migration_id: String,
    /// Verification against this migration (None: not offered).
    pub verify: Option<Arc<crate::verify_cmd::VerifyCtx>>,
    /// Cutover and rollback (None: not offered).
    pub switchboard: Option<Arc<crate::cutover::Switchboard>>,
}

/// Binds `addr` and serves until the process ends. Refuses a non-loopback address without a
/// token, and says what to do when the address is taken.
pub async fn serve(addr: SocketAddr, api: Api) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() && api.token.is_none() {
        anyhow::bail!(
            "refusing to serve the control API on {addr} without a token: anyone who can reach it could pause or cut over the migration; \
             pass --api-token-file FILE (or set FERRY_API_TOKEN), or listen on a loopback address such as 127.0.0.1:7117"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for the HTTP API: {e}; if another `ferry migrate` runs on this machine, give this one another --listen address (port 0 picks a free one), or --listen off"
        )
    })?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/pause", post(pause))
        .route("/api/resume", post(resume))
        .route("/api/verify", post(verify))
        .route("/api/verify/{id}", get(verify_run))
        .route("/api/cutover", post(cutover))
        .route("/api/rollback", post(rollback))
        .with_state(api);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    tracing::info!(url = %format!("http://{local}/"), "HTTP API, metrics and dashboard listening");
    Ok(local)
}

/// A refusal: the HTTP status that fits, what went wrong and what to do, as JSON.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    message: String,
    fix: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, Json(json!({ "error": self.message, "fix": self.fix }))).into_response()
    }
}

fn error(code: StatusCode, message: impl Into<String>, fix: &'static str) -> ApiError {
    ApiError {
        code,
        message: message.into(),
        fix,
    }
}

async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self' 'unsafe-inline'"),
        ],
        Html(DASHBOARD),
    )
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        api.metrics.render(&api.live),
    )
}

async fn status(State(api): State<Api>) -> Response {
    match api.live.status() {
        Ok(st) => Json(st).into_response(),
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, why, "retry in a second; the migration is starting").into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn events(State(api): State<Api>, Query(q): Query<EventsQuery>) -> Response {
    let read = async {
        let c = api.target.connect("api").await?;
        let rows = c
            .query(
                &format!(
                    "SELECT id, {}, phase, kind, message
                     FROM {}.events WHERE migration_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    crate::status::iso_sql("at"),
                    api.store.quoted()
                ),
                &[&api.migration_id, &q.after.unwrap_or(0), &q.limit.unwrap_or(100).clamp(1, 1000)],
            )
            .await
            .map_err(|e| ferry_postgres::PgError::query("reading the event log", e))?;
        Ok::<_, ferry_postgres::PgError>(
            rows.iter()
                .map(|r| {
                    json!({
                        "id": r.get::<_, i64>(0), "at": r.get::<_, String>(1), "phase": r.get::<_, String>(2),
                        "kind": r.get::<_, String>(3), "message": r.get::<_, String>(4),
                    })
                })
                .collect::<Vec<_>>(),
        )
    };
    match read.await {
        Ok(events) => Json(json!({ "events": events })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "check that the target is reachable").into_response(),
    }
}

/// Who asked, for the event log.
fn actor(peer: SocketAddr) -> String {
    format!("api {}", peer.ip())
}

/// Checks the bearer token of a control request.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &api.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "this control endpoint needs the migration's API token",
            "send `Authorization: Bearer TOKEN` with the token given to ferry migrate (--api-token-file or FERRY_API_TOKEN)",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The current phase, read from the state schema (not the sample, which may be a second old).
async fn phase(api: &Api) -> Result<Phase, ApiError> {
    let read =
        async {
            let c = api.target.connect("api").await?;
            api.store.load(&c, &api.migration_id).await?.map(|r| r.phase).ok_or_else(|| {
                ferry_postgres::PgError::config("reading the phase", "the migration is not recorded yet", "retry in a second")
            })
        };
    read.await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            "retry in a second; the migration may be starting",
        )
    })
}

async fn record(api: &Api, phase: Phase, kind: &str, message: &str) {
    let r = async {
        let c = api.target.connect("api").await?;
        api.store.event(&c, &api.migration_id, phase, kind, message).await
    };
    if let Err(e) = r.await {
        tracing::warn!(error = %e, "could not record {kind} in the event log");
    }
}

async fn set_pause(api: Api, peer: SocketAddr, headers: HeaderMap, paused: bool) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let phase = match phase(&api).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if phase != Phase::Cdc {
        return error(
            StatusCode::CONFLICT,
            format!("the migration is in phase {phase}; pause and resume apply to change capture (phase cdc)"),
            "wait for the full load to finish",
        )
        .into_response();
    }
    let was = api.live.set_paused(paused);
    let (kind, what) = if paused { ("paused", "paused") } else { ("resumed", "resumed") };
    if was != paused {
        let message = format!("change capture {what} by {}", actor(peer));
        tracing::info!(actor = %actor(peer), "change capture {what} through the API");
        record(&api, phase, kind, &message).await;
    }
    Json(json!({ "ok": true, "paused": paused, "changed": was != paused })).into_response()
}

async fn pause(State(api): State<Api>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    set_pause(api, peer, headers, true).await
}

async fn resume(State(api): State<Api>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    set_pause(api, peer, headers, false).await
}

#[derive(Debug, Deserialize)]
struct VerifyQuery {
    repair: Option<bool>,
}

async fn verify(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<VerifyQuery>,
) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let Some(ctx) = api.verify.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this process does not offer verification",
            "run ferry verify --source --target",
        )
        .into_response();
    };
    let from = match phase(&api).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if let Err(e) = from.check_transition(Phase::Verify) {
        return error(
            StatusCode::CONFLICT,
            e.to_string(),
            "verification runs during change capture (phase cdc)",
        )
        .into_response();
    }
    if api.live.paused() {
        return error(
            StatusCode::CONFLICT,
            "change capture is paused: a verification needs the applier to reach its consistent point",
            "POST /api/resume first",
        )
        .into_response();
    }
    if let Some((id, _)) = &*api.live.verify_run.lock().expect("lock") {
        return error(
            StatusCode::CONFLICT,
            format!("verification run {id} is still running"),
            "wait for it: GET /api/verify/ID",
        )
        .into_response();
    }
    let repair = q.repair.unwrap_or(false);
    let who = actor(peer);
    let started = async {
        let c = api.target.connect("api").await?;
        let run = crate::verify_cmd::start_run(&c, &api.store, &api.migration_id, &who).await?;
        api.store
            .transition(
                &c,
                &api.migration_id,
                Phase::Verify,
                &who,
                &format!("verification run {run}{} requested", if repair { " with repair" } else { "" }),
            )
            .await?;
        Ok::<_, ferry_postgres::PgError>(run)
    };
    let run = match started.await {
        Ok(run) => run,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "check that the target is reachable").into_response(),
    };
    let progress = Arc::new(ferry_postgres::verify::Progress::default());
    *api.live.verify_run.lock().expect("lock") = Some((run, progress.clone()));
    let a = api.clone();
    tokio::spawn(async move {
        let outcome = crate::verify_cmd::verify_and_repair(&ctx, repair, progress).await;
        match &outcome {
            Ok((r, repaired)) => tracing::info!(
                run,
                rows = r.rows_compared,
                differences = r.differences,
                repaired,
                "verification finished"
            ),
            Err(e) => tracing::error!(run, error = %e, "verification failed"),
        }
        let reason = match &outcome {
            Ok((r, _)) if r.identical() => format!("verification run {run}: identical ({} rows)", r.rows_compared),
            Ok((r, _)) => format!("verification run {run}: {} difference(s)", r.differences),
            Err(e) => format!("verification run {run} failed: {e}"),
        };
        let stored = async {
            let c = a.target.connect("api").await?;
            crate::verify_cmd::finish_run(&c, &a.store, run, &outcome).await?;
            a.store
                .transition(&c, &a.migration_id, Phase::Cdc, "ferry migrate", &reason)
                .await?;
            Ok::<_, ferry_postgres::PgError>(())
        };
        if let Err(e) = stored.await {
            tracing::error!(run, error = %e, "could not record the verification run");
        }
        *a.live.verify_run.lock().expect("lock") = None;
    });
    (StatusCode::ACCEPTED, Json(json!({ "run": run, "repair": repair }))).into_response()
}

async fn verify_run(State(api): State<Api>, axum::extract::Path(id): axum::extract::Path<i64>) -> Response {
    let read = async {
        let c = api.target.connect("api").await?;
        c.query_opt(
            &format!(
                "SELECT jsonb_build_object('id', id, 'status', status, 'actor', actor, 'source_lsn', source_lsn::text,
                    'rows_compared', rows_compared, 'differences', differences, 'repaired', repaired, 'error', error,
                    'report', report)
                 FROM {}.verify_runs WHERE id = $1 AND migration_id = $2",
                api.store.quoted()
            ),
            &[&id, &api.migration_id],
        )
        .await
        .map_err(|e| ferry_postgres::PgError::query("reading a verification run", e))
    };
    match read.await {
        Ok(Some(row)) => {
            let mut v: serde_json::Value = row.get(0);
            if let Some((run, p)) = &*api.live.verify_run.lock().expect("lock") {
                if *run == id {
                    // Still running until its result is stored and the phase is back to cdc
                    // (a client that waits for the end may cut over right after).
                    v["status"] = json!("running");
                    v["progress"] = json!({
                        "rows": p.rows.load(std::sync::atomic::Ordering::Relaxed),
                        "differences": p.differences.load(std::sync::atomic::Ordering::Relaxed),
                    });
                }
            }
            Json(v).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no verification run {id} for this migration"),
            "POST /api/verify starts one",
        )
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "check that the target is reachable").into_response(),
    }
}

/// Options of POST /api/cutover and /api/rollback (durations in milliseconds).
#[derive(Debug, Deserialize)]
struct SwitchQuery {
    max_pause_ms: Option<u64>,
    max_lag_ms: Option<u64>,
    catch_up_ms: Option<u64>,
    allow_direct_sessions: Option<bool>,
    no_proxy: Option<bool>,
    grace_ms: Option<u64>,
    skip_verify_check: Option<bool>,
}

impl SwitchQuery {
    fn options(&self, actor: String) -> crate::cutover::SwitchOptions {
        let ms = |v: Option<u64>, d: u64| std::time::Duration::from_millis(v.unwrap_or(d));
        crate::cutover::SwitchOptions {
            max_pause: ms(self.max_pause_ms, 2000),
            max_lag: ms(self.max_lag_ms, 5000),
            catch_up: ms(self.catch_up_ms, 60_000),
            allow_direct_sessions: self.allow_direct_sessions.unwrap_or(false),
            no_proxy: self.no_proxy.unwrap_or(false),
            grace: ms(self.grace_ms, 10_000),
            skip_verify_check: self.skip_verify_check.unwrap_or(false),
            actor,
        }
    }
}

/// Runs a cutover or rollback and answers with its report: 200 when done, 409 when it was
/// refused (no_go) or aborted (traffic stayed where it was).
async fn switch(api: Api, peer: SocketAddr, headers: HeaderMap, q: SwitchQuery, rollback: bool) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let Some(board) = api.switchboard.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this process does not offer cutover".to_string(),
            "run ferry migrate (cutover and rollback are served by the process that streams changes)",
        )
        .into_response();
    };
    let opts = q.options(actor(peer));
    // The switch runs to its end even if the client goes away.
    let report = tokio::spawn(async move {
        if rollback {
            board.rollback(&opts).await
        } else {
            board.cutover(&opts).await
        }
    })
    .await;
    match report {
        Ok(r) => {
            let code = if r.outcome == "done" {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (code, Json(r)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "report this as a bug").into_response(),
    }
}

async fn cutover(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<SwitchQuery>,
) -> Response {
    switch(api, peer, headers, q, false).await
}

async fn rollback(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<SwitchQuery>,
) -> Response {
    switch(api, peer, headers, q, true).await
}
