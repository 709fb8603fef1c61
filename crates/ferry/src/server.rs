//! The HTTP side of `ferry migrate --listen`: status API, events, control endpoints, Prometheus
//! metrics and the dashboard, over HTTP or HTTPS (`--api-tls-cert`/`--api-tls-key`).
//!
//! ```text
//! GET  /                 dashboard (one self-contained page; `/#token=TOKEN` shows row values)
//! GET  /api/status       phase, tables, lag, rates, transitions, dead letters, history (JSON)
//! GET  /api/events       the event log (?after=ID&limit=N)                         token
//! GET  /metrics          Prometheus / OpenMetrics text
//! GET  /healthz          200 while the process runs
//! POST /api/pause        stop change capture at a checkpoint (the slot keeps the changes)  token
//! POST /api/resume       resume change capture                                     token
//! POST /api/verify       start a verification at one consistent point (?repair=true to fix
//!                        what differs); 202 with the run id                        token
//! GET  /api/verify/ID    a run: status, progress while running, the report when done
//! POST /api/cutover      ?max_pause_ms&max_lag_ms&catch_up_ms&allow_direct_sessions&no_proxy&grace_ms&skip_verify_check&shadow_clean_ms
//! POST /api/rollback     same options; both answer with the switch's report       token
//! POST /api/complete     ?source_writable&keep_state&skip_verify: finish after cutover (verify, drop
//!                        Ferry's replication, record, state); answers with the report  token
//! ```
//!
//! A migration from a MySQL/MariaDB source is served by the same server (`Live::for_mysql`):
//! the reads in the same shapes, pause and resume (its stream stops at a transaction boundary
//! and starts again from the stored position), verify (the cross-engine comparison at one
//! binlog position, stored as a run like a PostgreSQL one and recorded for the cutover's
//! pre-check: [`mysql_verify`]), cutover and rollback (the switch without a proxy, then
//! `--webhook`: [`mysql_switch`]); complete answers 409 saying why and what to do, after the
//! token check ([`mysql_not_yet`]).
//!
//! Safe by default (docs/operations.md, "Security"):
//! * **A token always exists.** `--api-token-file` or `FERRY_API_TOKEN`; without either, a
//!   loopback listener makes one ([`auto_token`]: `~/.ferry/api-PORT.token`, mode 0600, new at
//!   every start) and logs where it is; a non-loopback listener without a token is refused.
//!   Every POST and `/api/events` require `Authorization: Bearer TOKEN`, on loopback too.
//!   `/api/status` and `/api/verify/ID` answer without it, with row values left out (dead
//!   letters' keys and errors, the verification's differing rows).
//! * **Host and Origin must be this listener's** (DNS rebinding, cross-site requests from a
//!   page in the operator's browser): `Host` is the address the connection arrived on, or
//!   `localhost:PORT` on loopback, or a name given with `--api-allowed-host`; an `Origin`, when
//!   sent, must be the same host. `/metrics` and `/healthz` are exempt (scrapers use any name).
//! * **Bounded**: [`MAX_REQUESTS`] requests at once (more get 503 at once), [`MAX_CONNECTIONS`]
//!   connections, bodies up to [`MAX_BODY`] (413), request headers within [`HEADER_TIMEOUT`]
//!   of connecting or of the previous request, a TLS handshake within the same time, and at most
//!   [`MAX_DB_CONNECTIONS`] target connections for handlers at once.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::{Phase, Secret};
use ferry_postgres::state::StateStore;
use ferry_postgres::Endpoint;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::live::Live;
use crate::metrics::Metrics;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Requests served at once; more are answered 503 at once.
pub const MAX_REQUESTS: usize = 32;
/// Open connections at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request body (no endpoint takes one today; options are query parameters).
pub const MAX_BODY: usize = 64 * 1024;
/// Time a client has to send a request's headers (and to finish a TLS handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Target connections the handlers hold at once (events, phase checks, verification runs).
pub const MAX_DB_CONNECTIONS: usize = 4;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct Api {
    /// Live state.
    pub live: Arc<Live>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Bearer token for control endpoints and row data; None: [`serve`] makes one (loopback
    /// listeners only).
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
    /// Verification and cutover of a MySQL/MariaDB migration (None: not offered).
    pub mysql: Option<Arc<crate::mysql_control::ApiControl>>,
}

/// How the listener is exposed.
#[derive(Clone, Debug, Default)]
pub struct ListenOptions {
    /// Serve HTTPS with this configuration (`--api-tls-cert`/`--api-tls-key`).
    pub tls: Option<Arc<ferry_tls::rustls::ServerConfig>>,
    /// Host names clients may use besides the listener's address (`--api-allowed-host`).
    pub allowed_hosts: Vec<String>,
}

impl ListenOptions {
    /// From the command line: reads the certificate and key (refusing a key others can read).
    pub fn new(cert: Option<&Path>, key: Option<&Path>, allowed_hosts: &[String]) -> anyhow::Result<Self> {
        let tls = match (cert, key) {
            (Some(c), Some(k)) => Some(ferry_tls::server_config(c, k).map_err(|e| anyhow::anyhow!("--api-tls-cert/--api-tls-key: {e}"))?),
            (None, None) => None,
            _ => anyhow::bail!("HTTPS for the API needs both --api-tls-cert and --api-tls-key"),
        };
        Ok(Self {
            tls,
            allowed_hosts: allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
        })
    }
}

/// Per-connection facts the checks need.
#[derive(Clone, Copy, Debug)]
struct Conn {
    /// The address the connection arrived on.
    local: SocketAddr,
}

/// What the guard middleware shares.
#[derive(Debug)]
struct Guard {
    requests: Arc<tokio::sync::Semaphore>,
    https: bool,
    allowed_hosts: Vec<String>,
}

/// Binds `addr` and serves until the process ends. Refuses a non-loopback address without a
/// token, makes a token file for a loopback one without a token, and says what to do when the
/// address is taken.
pub async fn serve(addr: SocketAddr, mut api: Api, opts: &ListenOptions) -> anyhow::Result<SocketAddr> {
    check_exposure(addr, api.token.is_some())?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for the HTTP API: {e}; if another `ferry migrate` runs on this machine, give this one another --listen address (port 0 picks a free one), or --listen off"
        )
    })?;
    let local = listener.local_addr()?;
    if api.token.is_none() {
        let (token, path) = auto_token(local.port())?;
        tracing::info!(
            file = %path.display(),
            "API token written to {} (readable by this user only; `ferry pause`, `ferry cutover` and the other API clients on this host read it)",
            path.display()
        );
        api.token = Some(Arc::new(token));
    }
    let guard = Arc::new(Guard {
        requests: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
        https: opts.tls.is_some(),
        allowed_hosts: opts.allowed_hosts.clone(),
    });
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
        .route("/api/complete", post(complete))
        .route("/api/shift", post(shift))
        .route("/api/shadow", post(shadow_set).get(shadow_report))
        .with_state(api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(guard.clone(), check_request))
        .layer(axum::middleware::from_fn_with_state(guard, limit_requests));
    let tls = opts.tls.clone().map(tokio_rustls_acceptor);
    tokio::spawn(accept_loop(listener, app, tls));
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    tracing::info!(url = %format!("{scheme}://{local}/"), "HTTP API, metrics and dashboard listening");
    Ok(local)
}

/// Refuses a non-loopback address without a token ([`serve`] does it too; callers that must
/// say so before changing anything call it first).
pub fn check_exposure(addr: SocketAddr, has_token: bool) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !has_token {
        anyhow::bail!(
            "refusing to serve the control API on {addr} without a token: anyone who can reach it could pause or cut over the migration; \
             pass --api-token-file FILE (or set FERRY_API_TOKEN), or listen on a loopback address such as 127.0.0.1:7117"
        );
    }
    Ok(())
}

fn tokio_rustls_acceptor(c: Arc<ferry_tls::rustls::ServerConfig>) -> ferry_tls::tokio_rustls::TlsAcceptor {
    ferry_tls::tokio_rustls::TlsAcceptor::from(c)
}

/// Accepts connections; each is served (TLS handshake included) in its own task, so a slow
/// client never delays the next accept.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, tls: Option<ferry_tls::tokio_rustls::TlsAcceptor>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "the HTTP API could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP API: too many connections, closing a new one");
            continue;
        };
        let Ok(local) = tcp.local_addr() else { continue };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = Conn { local };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(conn);
                tower::ServiceExt::oneshot(app.clone(), req)
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let served = match tls {
                None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await,
                Some(acceptor) => {
                    // Plain HTTP sent to the HTTPS port gets a plain answer saying so, not a
                    // closed connection.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] != 0x16 => {
                            refuse_plain_http(tcp, local).await;
                            return;
                        }
                        Ok(Ok(1)) => {}
                        _ => return,
                    }
                    let stream = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "HTTP API: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP API connection ended");
            }
        });
    }
}

async fn refuse_plain_http(mut tcp: tokio::net::TcpStream, local: SocketAddr) {
    let body = json!({
        "error": format!("this Ferry API serves HTTPS, and this request came in plain HTTP"),
        "fix": format!("use https://{local}/ (ferry commands: --api https://HOST:{} --api-ca CA_FILE)", local.port()),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Whatever the client sent is left unread: the answer is all it gets.
    let _ = tokio::time::timeout(HEADER_TIMEOUT, tcp.write_all(answer.as_bytes())).await;
    let _ = tcp.shutdown().await;
}

/// At most [`MAX_REQUESTS`] at once: the rest are answered 503 without waiting.
async fn limit_requests(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let Ok(_permit) = guard.requests.clone().try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the API is serving {MAX_REQUESTS} requests already"),
            "retry in a moment",
        )
        .into_response();
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    next.run(req).await
}

/// Refuses oversized bodies, and requests whose `Host` or `Origin` is not this listener.
async fn check_request(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
            "the API takes its options as query parameters",
        )
        .into_response();
    }
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        let checked = match req.extensions().get::<Conn>() {
            Some(conn) => check_origin(req.headers(), conn.local, &guard),
            None => Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no connection facts",
                "report this as a bug",
            )),
        };
        if let Err(e) = checked {
            tracing::warn!(
                host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                path,
                "HTTP API: refused a request from another origin"
            );
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Splits `host[:port]` (`[v6]:port` too); the name is lower-cased, brackets removed.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (&rest[..end], port)
    } else {
        match s.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p.parse().ok()?)),
            Some(_) => return None,
            None => (s, None),
        }
    };
    Some((name.to_ascii_lowercase(), port))
}

/// Whether `host` (a Host header) names this listener.
fn host_allowed(host: &str, local: SocketAddr, guard: &Guard) -> bool {
    let Some((name, port)) = split_host_port(host) else {
        return false;
    };
    if guard.allowed_hosts.iter().any(|a| *a == name || *a == host.to_ascii_lowercase()) {
        return true;
    }
    if port.unwrap_or(if guard.https { 443 } else { 80 }) != local.port() {
        return false;
    }
    let ip = local.ip().to_canonical();
    match name.parse::<IpAddr>() {
        Ok(named) => named.to_canonical() == ip,
        Err(_) => name == "localhost" && ip.is_loopback(),
    }
}

fn check_origin(headers: &HeaderMap, local: SocketAddr, guard: &Guard) -> Result<(), ApiError> {
    let fix = "use the address ferry migrate listens on (or localhost:PORT on loopback); another name needs --api-allowed-host NAME";
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !host_allowed(host, local, guard) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not this API's address ({local})"),
            fix,
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let same = origin
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .and_then(|(scheme, rest)| {
            let default = if scheme == "https" { 443 } else { 80 };
            let (oname, oport) = split_host_port(rest.trim_end_matches('/'))?;
            let (hname, hport) = split_host_port(host)?;
            Some(oname == hname && oport.unwrap_or(default) == hport.unwrap_or(if guard.https { 443 } else { 80 }))
        })
        .unwrap_or(false);
    if same {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            format!("requests from another origin ({origin}) are refused: a web page must not control the migration"),
            "call the API from the dashboard it serves, or from a client that sends no Origin (ferry, curl)",
        ))
    }
}

/// Where a loopback listener's generated token lives: `~/.ferry/api-PORT.token`.
pub fn auto_token_path(port: u16) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("HOME is not set, so there is no ~/.ferry for the API token: pass --api-token-file FILE (or set FERRY_API_TOKEN)")
    })?;
    Ok(PathBuf::from(home).join(".ferry").join(format!("api-{port}.token")))
}

fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Makes a new random token for the listener on `port` and writes it to
/// [`auto_token_path`]: the directory is created mode 0700 (an existing one must be this
/// user's and writable by nobody else), the file is created exclusively, mode 0600, under a
/// temporary name and renamed into place (a link planted there is replaced, never followed).
pub fn auto_token(port: u16) -> anyhow::Result<(Secret, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let path = auto_token_path(port)?;
    let dir = path.parent().expect("a directory").to_path_buf();
    let fix = "or pass --api-token-file FILE (or set FERRY_API_TOKEN)";
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create {} for the API token: {e}; {fix}", dir.display()),
    }
    let meta = std::fs::metadata(&dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}; {fix}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory; move it away, {fix}", dir.display());
    }
    if own_uid().is_some_and(|u| u != meta.uid()) || meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} must belong to this user and be writable by nobody else (mode {:o}): run chmod 700 {}, {fix}",
            dir.display(),
            meta.mode() & 0o777,
            dir.display()
        );
    }
    let token = random_hex(32)?;
    let tmp = dir.join(format!(".api-{port}.token.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}; {fix}", tmp.display()))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write {}: {e}; {fix}", path.display())
        })?;
    Ok((Secret::new(token), path))
}

/// `bytes` random bytes from the kernel's CSPRNG, in hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for the API token: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a token file, refusing one that other users may read.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} can be read by other users (mode {mode:o}); a token file must be readable by its owner only: run chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
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

/// What a migration from a MySQL/MariaDB source does not offer through the API: complete is
/// refused with 409, saying why and what to do (never pretended).
fn mysql_not_yet(api: &Api, action: &str) -> Option<Response> {
    if !api.live.mysql_source() {
        return None;
    }
    let (why, fix) = (
        ": there is nothing of Ferry's to remove from a MySQL/MariaDB source",
        "after the cutover (POST /api/cutover, ferry cutover --api URL, or ferry cutover --source mysql://... --target postgres://...) \
         the stream runs backwards until a rollback or SIGTERM: stop ferry migrate (SIGTERM) once no rollback is wanted; the \
         migration's record stays in the state schema on the target (drop it when no longer needed)",
    );
    let body = json!({
        "error": format!("{action} through the API is not available for a MySQL/MariaDB source yet{why}"),
        "fix": fix,
        "kind": action,
        "source_engine": ferry_postgres::state::ENGINE_MYSQL,
    });
    Some((StatusCode::CONFLICT, Json(body)).into_response())
}

/// `POST /api/verify` for a MySQL/MariaDB source: the cross-engine comparison of `ferry verify
/// --source mysql://...` ([`crate::mysql_control::ApiControl::verify`]) in this process, at one
/// binlog position (the stream here answers the hold), stored as a run (`GET /api/verify/ID`,
/// the report's `source_lsn` is the binlog position) and recorded for the cutover's pre-check.
/// The same answers as for PostgreSQL: 202 with the run id; 409 outside change capture, while
/// paused or while another run is going; `repair` is a 400 (not built for MySQL/MariaDB).
async fn mysql_verify(api: Api, peer: SocketAddr, q: VerifyQuery) -> Response {
    let Some(ctl) = api.mysql.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this process does not offer verification",
            "run ferry verify --source mysql://... --target postgres://...",
        )
        .into_response();
    };
    if q.repair == Some(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "repair does not apply to a MySQL/MariaDB source: repairing differing rows is not built for it yet",
            "verify without repair; rows that differ are named in the report",
        )
        .into_response();
    }
    let phase = match phase(&api).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if phase != Phase::Cdc {
        return error(
            StatusCode::CONFLICT,
            format!("the migration is in phase {phase}; verification runs during change capture (phase cdc)"),
            "verification runs during change capture (phase cdc)",
        )
        .into_response();
    }
    if api.live.paused() {
        return error(
            StatusCode::CONFLICT,
            "change capture is paused: a verification needs the stream to reach its consistent point",
            "POST /api/resume first",
        )
        .into_response();
    }
    // Claimed before the run is recorded: two requests at once never both start.
    let progress = Arc::new(ferry_postgres::verify::Progress::default());
    {
        let mut running = api.live.verify_run.lock().expect("lock");
        if let Some((id, _)) = &*running {
            return error(
                StatusCode::CONFLICT,
                format!("verification run {id} is still running"),
                "wait for it: GET /api/verify/ID",
            )
            .into_response();
        }
        *running = Some((0, progress.clone()));
    }
    let who = actor(peer);
    let started = async {
        let c = db(&api).await?;
        let run = crate::verify_cmd::start_run(&c, &api.store, &api.migration_id, &who).await?;
        api.store
            .event(
                &*c,
                &api.migration_id,
                phase,
                "verify",
                &format!("verification run {run} requested by {who}"),
            )
            .await?;
        Ok::<_, ferry_postgres::PgError>(run)
    };
    let run = match started.await {
        Ok(run) => run,
        Err(e) => {
            *api.live.verify_run.lock().expect("lock") = None;
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "check that the target is reachable").into_response();
        }
    };
    *api.live.verify_run.lock().expect("lock") = Some((run, progress));
    let a = api.clone();
    tokio::spawn(async move {
        let outcome = ctl.verify().await.map(|r| (r, 0u64));
        match &outcome {
            Ok((r, _)) => tracing::info!(run, rows = r.rows_compared, differences = r.differences, "verification finished"),
            Err(e) => tracing::error!(run, error = %e, "verification failed"),
        }
        let stored = async {
            let c = db(&a).await?;
            crate::verify_cmd::finish_run(&c, &a.store, run, &outcome).await
        };
        if let Err(e) = stored.await {
            tracing::error!(run, error = %e, "could not record the verification run");
        }
        *a.live.verify_run.lock().expect("lock") = None;
    });
    (StatusCode::ACCEPTED, Json(json!({ "run": run, "repair": false }))).into_response()
}

/// `POST /api/cutover` and `POST /api/rollback` for a MySQL/MariaDB source: `ferry cutover` (or
/// `ferry rollback`) `--source mysql://...` in this process
/// ([`crate::mysql_control::ApiControl::cutover`], [`crate::mysql_control::ApiControl::rollback`],
/// which always skips the verification check), the request's options mapped as for
/// PostgreSQL where they apply (`max_lag_ms`: how long the stream may take to catch up before
/// writes stop; `grace_ms`; `max_pause_ms`: how long it may take to apply the final position
/// after that, 60 s by default; `skip_verify_check`); an option that cannot apply is a 400
/// naming it. 200 with the report when done (then `--webhook`, and the stream ends; this API
/// keeps serving), 409 when refused (no_go) or aborted (the source writable again).
async fn mysql_switch(api: Api, peer: SocketAddr, q: SwitchQuery, rollback: bool) -> Response {
    let Some(ctl) = api.mysql.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this process does not offer cutover or rollback",
            "run ferry cutover (or ferry rollback) --source mysql://... --target postgres://...",
        )
        .into_response();
    };
    let refused = if q.catch_up_ms.is_some() {
        Some((
            "catch_up_ms does not apply to a MySQL/MariaDB source: max_lag_ms is how long its stream may take to catch up",
            "leave catch_up_ms out (ferry cutover: --catch-up-timeout); give max_lag_ms instead",
        ))
    } else if q.no_proxy == Some(false) {
        Some((
            "no_proxy=false does not apply to a MySQL/MariaDB source: it is always cut over without a proxy",
            "leave no_proxy out",
        ))
    } else if q.shadow_clean_ms.is_some() {
        Some((
            "shadow_clean_ms does not apply to a MySQL/MariaDB source: shadow traffic runs through the PostgreSQL proxy",
            "leave shadow_clean_ms out (ferry cutover: --require-shadow-clean)",
        ))
    } else if q.allow_direct_sessions == Some(false) {
        Some((
            "allow_direct_sessions=false does not apply to a MySQL/MariaDB source: every session is direct (no proxy), \
             and writers still connected are ended after grace_ms",
            "leave allow_direct_sessions out",
        ))
    } else {
        None
    };
    if let Some((message, fix)) = refused {
        return error(StatusCode::BAD_REQUEST, message, fix).into_response();
    }
    let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
    let opts = crate::cutover::SwitchOptions {
        max_pause: ms(q.max_pause_ms, crate::mysql_control::MYSQL_FINAL_WAIT),
        max_lag: ms(q.max_lag_ms, Duration::from_secs(5)),
        catch_up: Duration::ZERO,
        allow_direct_sessions: true,
        no_proxy: true,
        grace: ms(q.grace_ms, Duration::from_secs(10)),
        skip_verify_check: q.skip_verify_check.unwrap_or(false),
        shadow_clean_for: None,
        actor: actor(peer),
    };
    let live = api.live.clone();
    // The switch runs to its end even if the client goes away.
    let report = tokio::spawn(async move {
        let r = if rollback {
            ctl.rollback(&crate::mysql_control::rollback_options(opts.max_lag, opts.grace, &opts.actor))
                .await
        } else {
            ctl.cutover(&opts).await
        };
        live.set_last_switch(r.clone());
        r
    })
    .await;
    match report {
        Ok(r) => {
            let code = if r["outcome"] == "done" {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (code, Json(r)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "report this as a bug").into_response(),
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

async fn status(State(api): State<Api>, headers: HeaderMap) -> Response {
    match api.live.status() {
        Ok(st) if authorized(&api, &headers) => Json(st).into_response(),
        Ok(mut st) => {
            // Keys and error texts of dead letters carry row values.
            for d in &mut st.recent_dead_letters {
                d.key = None;
                d.error = HIDDEN.into();
            }
            let mut v = serde_json::to_value(st).unwrap_or_default();
            v["row_values_hidden"] = json!(true);
            Json(v).into_response()
        }
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, why, "retry in a second; the migration is starting").into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn events(State(api): State<Api>, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let read = async {
        let c = db(&api).await?;
        let rows = api
            .store
            .events_after(&*c, &api.migration_id, q.after.unwrap_or(0), q.limit.unwrap_or(100).clamp(1, 1000))
            .await?;
        Ok::<_, ferry_postgres::PgError>(
            rows.into_iter()
                .map(|r| {
                    json!({
                        "id": r.id, "at": r.at, "phase": r.phase,
                        "kind": r.kind, "message": r.message,
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

/// What replaces a value left out of an answer without the token.
const HIDDEN: &str = "(hidden: send the API token to see row values)";

/// Whether the request carries the API's bearer token (always false when the API has none,
/// which [`serve`] never lets happen).
fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let Some(token) = &api.token else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.expose().as_bytes())
}

/// Checks the bearer token of a control request or of a read that carries row values.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    if authorized(api, headers) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the migration's API token",
            "send `Authorization: Bearer TOKEN` with the token of ferry migrate: --api-token-file or FERRY_API_TOKEN, \
             or the file it wrote and logged at start (~/.ferry/api-PORT.token on its host), which ferry commands on that host read by themselves",
        ))
    }
}

/// Holds one of the [`MAX_DB_CONNECTIONS`] slots for as long as the connection lives.
struct DbConn {
    client: tokio_postgres::Client,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

impl std::ops::Deref for DbConn {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

/// A target connection for a handler, within the API's bound.
async fn db(api: &Api) -> Result<DbConn, ferry_postgres::PgError> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_DB_CONNECTIONS);
    let slot = tokio::time::timeout(Duration::from_secs(10), SLOTS.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ferry_postgres::PgError::config(
                "reaching the target",
                format!("the API's {MAX_DB_CONNECTIONS} target connections stayed busy for 10 s"),
                "retry in a moment",
            )
        })?;
    Ok(DbConn {
        client: api.target.connect("api").await?,
        _slot: slot,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The current phase, read from the state schema (not the sample, which may be a second old).
async fn phase(api: &Api) -> Result<Phase, ApiError> {
    let read = async {
        let c = db(api).await?;
        let recorded = if api.live.mysql_source() {
            api.store.phase(&*c, &api.migration_id).await?
        } else {
            api.store.load(&c, &api.migration_id).await?.map(|r| r.phase)
        };
        recorded
            .ok_or_else(|| ferry_postgres::PgError::config("reading the phase", "the migration is not recorded yet", "retry in a second"))
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
        let c = db(api).await?;
        api.store.event(&*c, &api.migration_id, phase, kind, message).await
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
    if api.live.mysql_source() {
        return mysql_verify(api, peer, q).await;
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
        let c = db(&api).await?;
        let run = crate::verify_cmd::start_run(&c, &api.store, &api.migration_id, &who).await?;
        api.store
            .transition(
                &*c,
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
            let c = db(&a).await?;
            crate::verify_cmd::finish_run(&c, &a.store, run, &outcome).await?;
            a.store
                .transition(&*c, &a.migration_id, Phase::Cdc, "ferry migrate", &reason)
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

async fn verify_run(State(api): State<Api>, headers: HeaderMap, axum::extract::Path(id): axum::extract::Path<i64>) -> Response {
    let read = async {
        let c = db(&api).await?;
        api.store.verify_run_json(&*c, &api.migration_id, id).await
    };
    match read.await {
        Ok(Some(mut v)) => {
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
            if !authorized(&api, &headers) {
                hide_row_values(&mut v);
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

/// Leaves the differing rows' keys and values out of a verification run: the summary (counts
/// per table, kinds of difference) stays.
fn hide_row_values(v: &mut serde_json::Value) {
    if let Some(tables) = v["report"]["tables"].as_array_mut() {
        for t in tables {
            if let Some(details) = t["details"].as_array_mut() {
                for d in details {
                    *d = json!({ "table": d["table"], "kind": d["kind"], "key": HIDDEN, "columns": [] });
                }
            }
        }
    }
    v["row_values_hidden"] = json!(true);
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
    shadow_clean_ms: Option<u64>,
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
            shadow_clean_for: self.shadow_clean_ms.map(std::time::Duration::from_millis),
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
    if api.live.mysql_source() {
        return mysql_switch(api, peer, q, rollback).await;
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

/// Options of POST /api/shift.
#[derive(Debug, Deserialize)]
struct ShiftQuery {
    reads: Option<u8>,
}

/// Sets the share of read-endpoint sessions the target serves: 200 with the new and previous
/// share and whether the target serves reads now; 409 when there is no read endpoint.
async fn shift(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<ShiftQuery>,
) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let Some(reads) = q.reads.filter(|r| *r <= 100) else {
        return error(
            StatusCode::BAD_REQUEST,
            "reads must be a percentage from 0 to 100".to_string(),
            "POST /api/shift?reads=25",
        )
        .into_response();
    };
    let Some(proxy) = api.live.proxy().filter(|p| p.read_addr().is_some()) else {
        return error(
            StatusCode::CONFLICT,
            "this migration has no read endpoint".to_string(),
            "restart ferry migrate with --proxy-read-listen ADDR (next to --proxy-listen) and point read-only traffic there",
        )
        .into_response();
    };
    if api.live.completed().is_some() {
        return error(
            StatusCode::CONFLICT,
            "the migration is complete; every session is on the target".to_string(),
            "nothing to shift",
        )
        .into_response();
    }
    let previous = proxy.set_read_share(reads);
    let lag = api.live.read_lag();
    let ready = proxy.stats().read.is_some_and(|r| r.replica_ready);
    if previous != reads {
        let message = format!(
            "reads shifted from {previous}% to {reads}% of read sessions on the target by {}",
            actor(peer)
        );
        tracing::info!(actor = %actor(peer), from = previous, to = reads, "read share changed through the API");
        if let Ok(phase) = phase(&api).await {
            record(&api, phase, "reads_shifted", &message).await;
        }
    }
    let why_not = match (ready, lag) {
        (true, _) => None,
        (false, Some(l)) => Some(format!("the target lags {l:.3} s")),
        (false, None) => {
            Some("the target does not follow the source now (change capture is not streaming, or after a cutover)".to_string())
        }
    };
    Json(json!({
        "ok": true,
        "reads": reads,
        "previous": previous,
        "target_ready": ready,
        "lag_seconds": lag,
        "why_not": why_not,
    }))
    .into_response()
}

/// Options of POST and GET /api/shadow.
#[derive(Debug, Deserialize)]
struct ShadowQuery {
    sample: Option<f64>,
    top: Option<usize>,
}

/// The proxy, when it can shadow (it runs, and knows the target): else the error to answer.
fn shadowing_proxy(api: &Api) -> Result<ferry_proxy::Proxy, ApiError> {
    let proxy = api.live.proxy().ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            "this migration has no proxy: shadow traffic runs through it".to_string(),
            "restart ferry migrate with --proxy-listen ADDR and point the application at it",
        )
    })?;
    if proxy.stats().upstream != "source" {
        return Err(error(
            StatusCode::CONFLICT,
            "the application is on the target already: there is nothing to shadow".to_string(),
            "shadow traffic compares the target with the source before a cutover",
        ));
    }
    Ok(proxy)
}

/// Sets the shadow sample: 200 with the new and previous share.
async fn shadow_set(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<ShadowQuery>,
) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let Some(sample) = q.sample.filter(|s| (0.0..=100.0).contains(s)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "sample must be a percentage from 0 to 100".to_string(),
            "POST /api/shadow?sample=10",
        )
        .into_response();
    };
    let proxy = match shadowing_proxy(&api) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let previous = proxy.set_shadow_sample(sample);
    if previous != sample {
        let message = format!("shadow traffic sample set from {previous}% to {sample}% by {}", actor(peer));
        tracing::info!(actor = %actor(peer), from = previous, to = sample, "shadow sample changed through the API");
        if let Ok(phase) = phase(&api).await {
            record(&api, phase, "shadow_sample", &message).await;
        }
    }
    Json(json!({ "ok": true, "sample": sample, "previous": previous })).into_response()
}

/// What shadow traffic found; the examples' statements and messages only with the token.
async fn shadow_report(State(api): State<Api>, headers: HeaderMap, Query(q): Query<ShadowQuery>) -> Response {
    let Some(proxy) = api.live.proxy() else {
        return error(
            StatusCode::CONFLICT,
            "this migration has no proxy: shadow traffic runs through it".to_string(),
            "restart ferry migrate with --proxy-listen ADDR",
        )
        .into_response();
    };
    let report = proxy.shadow_report();
    Json(crate::shadow_cmd::report_json(
        &report,
        authorized(&api, &headers),
        q.top.unwrap_or(50),
    ))
    .into_response()
}

/// Options of POST /api/complete.
#[derive(Debug, Deserialize)]
struct CompleteQuery {
    source_writable: Option<bool>,
    keep_state: Option<bool>,
    skip_verify: Option<bool>,
}

/// Finishes the migration after cutover (`ferry complete`): 200 when done (or done already),
/// 409 when refused or a difference stopped it, 500 when a step failed (rerun it).
async fn complete(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CompleteQuery>,
) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    if let Some(r) = mysql_not_yet(&api, "complete") {
        return r;
    }
    let Some(board) = api.switchboard.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this process does not offer complete".to_string(),
            "run ferry complete --source URL --target URL with ferry migrate stopped",
        )
        .into_response();
    };
    let opts = crate::complete::CompleteOptions {
        source_writable: q.source_writable.unwrap_or(false),
        keep_state: q.keep_state.unwrap_or(false),
        actor: actor(peer),
        record_file: crate::complete::default_record_file(&api.migration_id, true),
        skip_verify: q.skip_verify.unwrap_or(false),
    };
    let live = api.live.clone();
    // It runs to its end even if the client goes away.
    let report = tokio::spawn(async move {
        let mode = crate::complete::Mode::Api {
            live: &live,
            board: &board,
        };
        crate::complete::run(&board.req, &opts, mode).await
    })
    .await;
    match report {
        Ok(r) => {
            let code = match r.outcome {
                "done" | "already_complete" => StatusCode::OK,
                "refused" | "different" => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(r)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "report this as a bug").into_response(),
    }
}
