//! The `ferry` binary: command line, wiring, output. Protocols live in the library crates.

mod capture_cmd;
mod check_cmd;
mod cli;
mod cluster;
mod complete;
mod cutover;
mod demo;
mod exit;
mod live;
mod metrics;
mod migrate;
mod mysql_cmd;
mod mysql_control;
mod mysql_switch;
mod progress;
mod server;
mod settings;
mod shadow_cmd;
mod status;
mod verify_cmd;

use cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

/// Every crate of Ferry's at `level`, everything else (drivers, HTTP) at warn.
fn default_filter(level: &str) -> String {
    const CRATES: [&str; 7] = [
        "ferry",
        "ferry_core",
        "ferry_postgres",
        "ferry_mysql",
        "ferry_kafka",
        "ferry_proxy",
        "ferry_tls",
    ];
    std::iter::once("warn".to_string())
        .chain(CRATES.iter().map(|c| format!("{c}={level}")))
        .collect::<Vec<_>>()
        .join(",")
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(default)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Check(args) if ferry_mysql::is_mysql_url(&args.endpoints.source) => {
            refuse_flags("check", &["roles", "roles_map", "pg_bin_dir"])?;
            let req = settings::resolve_mysql(&args.endpoints)?;
            let report = ferry_mysql::preflight::check(&req).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check_cmd::render_mysql(&report));
            }
            Ok(if report.blocked() { exit::FOUND_PROBLEM } else { exit::OK })
        }
        Command::Check(args) => {
            let mut req = settings::resolve(&args.endpoints)?;
            req.roles = args.roles.policy().map_err(exit::UsageError)?;
            let report = ferry_postgres::preflight::check(&req).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check_cmd::render(&report));
            }
            Ok(if report.blocked() { exit::FOUND_PROBLEM } else { exit::OK })
        }
        Command::Migrate(args) if ferry_mysql::is_mysql_url(&args.endpoints.source) => {
            refuse_flags("migrate", POSTGRES_ONLY_MIGRATE_FLAGS)?;
            if args.via.is_some() {
                return Err(exit::UsageError(
                    "--via kafka:// is built for PostgreSQL sources; for a MySQL/MariaDB source run `ferry capture --source mysql://... --to kafka://...` and `ferry apply --from kafka://...` (docs/kafka.md)".into(),
                )
                .into());
            }
            mysql_cmd::migrate(&args).await
        }
        Command::Migrate(args) => {
            // Checked at start, not at cutover time.
            let webhook = args
                .webhook
                .as_deref()
                .map(|u| status::Webhook::new(u, args.webhook_ca.as_deref()))
                .transpose()?;
            let mut req = settings::resolve(&args.endpoints)?;
            req.roles = args.roles.policy().map_err(exit::UsageError)?;
            let live = match args.listen {
                cli::Listen::Off => None,
                cli::Listen::At(addr) => {
                    let live = std::sync::Arc::new(live::Live::new());
                    let api = server::Api {
                        live: live.clone(),
                        metrics: std::sync::Arc::new(metrics::Metrics::new()),
                        token: api_token(args.api_token_file.as_deref())?.map(std::sync::Arc::new),
                        target: req.target.clone(),
                        store: ferry_postgres::state::StateStore::new(&req.state_schema),
                        migration_id: req.migration_id.clone(),
                        verify: Some(std::sync::Arc::new(verify_cmd::VerifyCtx {
                            source: req.source.clone(),
                            target: req.target.clone(),
                            filter: req.filter.clone(),
                            state_schema: req.state_schema.clone(),
                            options: ferry_postgres::verify::Options {
                                jobs: req.jobs,
                                ..Default::default()
                            },
                            hold: Some(live.hold.clone()),
                        })),
                        switchboard: None,
                        mysql: None,
                    };
                    let mut api = api;
                    let upstreams = match args.proxy_listen {
                        Some(listen) => {
                            let (mut config, source, target) = cutover::proxy_config(&req, listen, args.proxy_users_file.as_deref())?;
                            cutover::proxy_listener(
                                &mut config,
                                args.proxy_tls_cert.as_deref(),
                                args.proxy_tls_key.as_deref(),
                                args.proxy_require_tls,
                                args.proxy_max_connections,
                            )?;
                            // After a cutover (restart included) the application belongs on the target.
                            let on_target = initial_phase(&req)
                                .await
                                .is_some_and(|p| matches!(p, ferry_core::Phase::CutOver | ferry_core::Phase::Rollback));
                            let first = if on_target { target.clone() } else { source.clone() };
                            config.read_listen = args.proxy_read_listen;
                            let proxy = ferry_proxy::Proxy::start(config, first)
                                .await
                                .map_err(|e| exit::UsageError(format!("--proxy-listen {listen}: {e}")))?;
                            tracing::info!(listen = %proxy.local_addr(), upstream = if on_target { "target" } else { "source" }, "proxy listening");
                            if let Some(read) = proxy.read_addr() {
                                tracing::info!(listen = %read, max_read_lag_ms = args.max_read_lag.as_millis() as u64, "proxy read endpoint listening; reads stay on the source until `ferry shift --reads N%`");
                            }
                            // The target serves shifted reads and shadow traffic while its lag
                            // stays under --max-read-lag.
                            proxy.set_replica(Some(target.clone()));
                            tokio::spawn(live::steer_reads(live.clone(), proxy.clone(), args.max_read_lag));
                            live.set_proxy(proxy);
                            Some((source, target))
                        }
                        None => None,
                    };
                    let board = std::sync::Arc::new(cutover::Switchboard::new(req.clone(), live.clone(), upstreams, webhook.clone()));
                    tokio::spawn(cutover::auto_rollback(
                        board.clone(),
                        cutover::AutoRollback {
                            lag: args.auto_rollback_lag,
                            apply_errors: args.auto_rollback_apply_errors,
                        },
                    ));
                    api.switchboard = Some(board);
                    let listen =
                        server::ListenOptions::new(args.api_tls_cert.as_deref(), args.api_tls_key.as_deref(), &args.api_allowed_host)
                            .map_err(|e| exit::UsageError(format!("{e:#}")))?;
                    server::serve(addr, api, &listen)
                        .await
                        .map_err(|e| exit::UsageError(format!("--listen: {e:#}")))?;
                    tokio::spawn(live.clone().sample_forever(
                        req.target.clone(),
                        req.source.clone(),
                        req.migration_id.clone(),
                        req.state_schema.clone(),
                        args.wal_warn,
                    ));
                    Some(live)
                }
            };
            if args.proxy_listen.is_some() && live.is_none() {
                return Err(exit::UsageError("--proxy-listen needs the API (--listen): ferry cutover talks to it".into()).into());
            }
            let opts = migrate::MigrateOptions {
                skip_dead_letters: args.skip_dead_letters,
                max_batch: args.max_batch,
                max_delay_ms: args.max_delay_ms,
                stream_timeout: args.stream_timeout,
                commit_interval: args.commit_interval,
                apply_timeout: args.apply_timeout,
                maintenance_work_mem: args.maintenance_work_mem.clone(),
                analyze: !args.no_analyze,
                quiet_check: true,
                live,
                via: args
                    .via
                    .as_deref()
                    .map(|u| crate::capture_cmd::kafka_endpoint(u, "via"))
                    .transpose()?,
            };
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("stop requested: finishing at the next checkpoint");
                let _ = stop_tx.send(true);
                // A second signal means now.
                shutdown_signal().await;
                eprintln!("ferry: stopped immediately; committed work is kept, rerun the same command to resume");
                std::process::exit(exit::RUNTIME);
            });
            let mut waiter = stop.clone();
            let summary = tokio::select! {
                s = migrate::run(&req, &opts) => s?,
                _ = waiter.wait_for(|v| *v) => {
                    // The full load's units commit atomically: what committed is kept.
                    eprintln!("ferry: stopped during the full load; committed work is kept, rerun the same command to resume");
                    return Ok(exit::RUNTIME);
                }
            };
            if let Some(summary) = &summary {
                print!("{}", migrate::render(summary));
                if let Some(path) = &args.summary_json {
                    std::fs::write(path, serde_json::to_vec_pretty(summary)?)
                        .map_err(|e| anyhow::anyhow!("cannot write the summary to {}: {e}", path.display()))?;
                }
            }
            if args.stop_after.is_none() && !*stop.borrow() {
                migrate::cdc(&req, &opts, stop.clone()).await?;
                if let Some(live) = opts.live.as_ref().filter(|l| l.completed().is_some() && !*stop.borrow()) {
                    // `ferry complete` ran through the API: the proxy (if any) keeps serving the
                    // target, with no migration behind it, until SIGTERM/SIGINT, then drains.
                    after_complete(live, stop).await;
                }
            }
            Ok(exit::OK)
        }
        Command::Pause(args) => status::pause_cmd(&args, true).await,
        Command::Resume(args) => status::pause_cmd(&args, false).await,
        Command::Cutover(args) => switch_cmd(&args, false).await,
        Command::Rollback(args) => switch_cmd(&args, true).await,
        Command::Status(args) => {
            if args.source.as_deref().is_some_and(ferry_mysql::is_mysql_url) {
                return mysql_cmd::status(&args).await;
            }
            if args.target_schema.is_some() {
                return Err(exit::UsageError(settings::TARGET_SCHEMA_NEEDS_SOURCE.into()).into());
            }
            let st = match &args.target {
                Some(url) => {
                    let target = settings::pg_endpoint(url, None, "FERRY_TARGET_PASSWORD", "target")?;
                    let source = match &args.source {
                        Some(s) => Some(settings::pg_endpoint(s, None, "FERRY_SOURCE_PASSWORD", "source")?),
                        None => None,
                    };
                    status::read(
                        &target,
                        source.as_ref(),
                        args.migration_id.as_deref(),
                        &args.state_schema,
                        args.wal_warn,
                    )
                    .await?
                }
                None => {
                    status::fetch_with(&status::ApiClient::new(
                        &args.api,
                        args.api_token_file.as_deref(),
                        args.api_ca.as_deref(),
                    )?)
                    .await?
                }
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", status::render(&st));
            }
            Ok(exit::OK)
        }
        Command::Verify(args) => verify_cmd::command(args).await,
        Command::Complete(args) => complete::command(&args).await,
        Command::Proxy(args) => complete::proxy_command(&args).await,
        Command::Shift(args) => status::shift_cmd(&args).await,
        Command::Shadow(args) => shadow_cmd::command(&args).await,
        Command::Abandon(args) => {
            let req = settings::resolve(&args.endpoints)?;
            migrate::abandon(&req, args.yes).await?;
            Ok(exit::OK)
        }
        Command::Demo(args) => {
            demo::run(args).await?;
            Ok(exit::OK)
        }
        Command::Capture(args) => capture_cmd::capture(&args).await,
        Command::Apply(args) => capture_cmd::apply(&args).await,
    }
}

/// After `ferry complete` through the API: with a proxy, serve the target until told to stop,
/// then drain it (refuse new connections, wait up to `complete::DRAIN_TIMEOUT` for sessions to
/// end, close the rest); without one, return (the process exits) once the API's answer is out.
async fn after_complete(live: &live::Live, mut stop: tokio::sync::watch::Receiver<bool>) {
    match live.proxy() {
        Some(proxy) => {
            tracing::info!(
                listen = %proxy.local_addr(),
                "migration complete: the proxy keeps serving the target (no migration behind it) until SIGTERM/SIGINT; then it drains and this process exits"
            );
            let _ = stop.wait_for(|v| *v).await;
            let left = proxy.drain(complete::DRAIN_TIMEOUT).await;
            tracing::info!(closed = left, "proxy drained; exiting");
        }
        None => {
            tracing::info!("migration complete and no proxy runs: exiting");
            // Let the API's answer reach its client.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// The phase recorded on the target, when the migration is recorded already.
async fn initial_phase(req: &ferry_postgres::preflight::CheckRequest) -> Option<ferry_core::Phase> {
    let c = req.target.connect("control").await.ok()?;
    let store = ferry_postgres::state::StateStore::new(&req.state_schema);
    if !store.exists(&c).await.ok()? {
        return None;
    }
    store.load(&c, &req.migration_id).await.ok()?.map(|r| r.phase)
}

/// `ferry cutover` / `ferry rollback`: asks the running `ferry migrate` and prints its report.
async fn switch_cmd(args: &cli::SwitchArgs, rollback: bool) -> anyhow::Result<i32> {
    if let Some(source) = &args.source {
        if !ferry_mysql::is_mysql_url(source) {
            return Err(exit::UsageError(
                "--source is for MySQL/MariaDB sources; a PostgreSQL migration is switched through its API (--api)".into(),
            )
            .into());
        }
        if rollback {
            return mysql_cmd::rollback(args).await;
        }
        return mysql_cmd::cutover(args).await;
    }
    if args.target_schema.is_some() {
        return Err(exit::UsageError(settings::TARGET_SCHEMA_NEEDS_SOURCE.into()).into());
    }
    let api = status::ApiClient::new(&args.api, args.api_token_file.as_deref(), args.api_ca.as_deref())?;
    let path = format!(
        "/api/{}{}",
        if rollback { "rollback" } else { "cutover" },
        switch_query(args, &given(if rollback { "rollback" } else { "cutover" }, SWITCH_OPTIONS))
    );
    let (code, body) = api.request("POST", &path).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body) }));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", cutover::render(&v));
    }
    Ok(match (code, v["outcome"].as_str()) {
        (200, Some("done")) => exit::OK,
        (409, _) => exit::FOUND_PROBLEM,
        (401, _) | (403, _) => exit::USAGE,
        _ => exit::RUNTIME,
    })
}

/// The options of `ferry cutover`/`ferry rollback` that go to the API (argument ids).
const SWITCH_OPTIONS: &[&str] = &[
    "max_pause",
    "max_lag",
    "catch_up_timeout",
    "allow_direct_sessions",
    "no_proxy",
    "grace",
    "skip_verify_check",
    "require_shadow_clean",
];

/// The query of a switch request: the options given on the command line (`flags`, as
/// [`given`] names them), so that the running `ferry migrate` applies its own defaults (the
/// same as the command's) to the rest and refuses only what was asked (a MySQL/MariaDB source
/// answers 400 to an option that does not apply to it).
fn switch_query(args: &cli::SwitchArgs, flags: &[String]) -> String {
    let mut q = Vec::new();
    for flag in flags {
        match flag.as_str() {
            "--max-pause" => q.push(format!("max_pause_ms={}", args.max_pause.as_millis())),
            "--max-lag" => q.push(format!("max_lag_ms={}", args.max_lag.as_millis())),
            "--catch-up-timeout" => q.push(format!("catch_up_ms={}", args.catch_up_timeout.as_millis())),
            "--allow-direct-sessions" => q.push(format!("allow_direct_sessions={}", args.allow_direct_sessions)),
            "--no-proxy" => q.push(format!("no_proxy={}", args.no_proxy)),
            "--grace" => q.push(format!("grace_ms={}", args.grace.as_millis())),
            "--skip-verify-check" => q.push(format!("skip_verify_check={}", args.skip_verify_check)),
            "--require-shadow-clean" => {
                if let Some(d) = args.require_shadow_clean {
                    q.push(format!("shadow_clean_ms={}", d.as_millis()));
                }
            }
            _ => {}
        }
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// The API token: from --api-token-file (readable by its owner only), else FERRY_API_TOKEN,
/// else none (`ferry migrate` then makes one, see `server::auto_token`).
pub(crate) fn api_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<ferry_core::Secret>> {
    let token = match file {
        Some(path) => Some(server::read_token_file(path).map_err(|e| exit::UsageError(format!("--api-token-file: {e:#}")))?),
        None => std::env::var("FERRY_API_TOKEN").ok(),
    };
    match token {
        Some(t) if t.len() < 16 => {
            Err(exit::UsageError("the API token is shorter than 16 characters; generate one with `openssl rand -hex 32`".into()).into())
        }
        Some(t) => Ok(Some(ferry_core::Secret::new(t))),
        None => Ok(None),
    }
}

pub(crate) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The parsed command line, for [`given`].
static MATCHES: std::sync::OnceLock<clap::ArgMatches> = std::sync::OnceLock::new();

/// Which of `ids` (argument ids: the field names) the user gave to subcommand `sub` on the
/// command line, as the flags they type (`--proxy-listen`). Values from the environment
/// (FERRY_LISTEN, say, exported for every run) do not count.
fn given(sub: &str, ids: &[&str]) -> Vec<String> {
    use clap::parser::ValueSource;
    let Some(m) = MATCHES.get().and_then(|m| m.subcommand_matches(sub)) else {
        return Vec::new();
    };
    ids.iter()
        .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect()
}

/// Flags of `ferry migrate` that only a PostgreSQL source uses (the MySQL path has the API,
/// `--listen` and its token, TLS and host flags, and `--webhook` for a cutover through the
/// API, but not the proxy, automatic rollback or roles handling yet): given with a MySQL source
/// they are a usage error naming them, never silently ignored.
const POSTGRES_ONLY_MIGRATE_FLAGS: &[&str] = &[
    "wal_warn",
    "proxy_listen",
    "proxy_users_file",
    "proxy_tls_cert",
    "proxy_tls_key",
    "proxy_require_tls",
    "proxy_max_connections",
    "auto_rollback_lag",
    "auto_rollback_apply_errors",
    "stream_timeout",
    "commit_interval",
    "apply_timeout",
    "maintenance_work_mem",
    "no_analyze",
    "roles",
    "roles_map",
    "pg_bin_dir",
];

fn refuse_flags(sub: &str, ids: &[&str]) -> anyhow::Result<()> {
    let flags = given(sub, ids);
    if flags.is_empty() {
        return Ok(());
    }
    Err(exit::UsageError(format!(
        "{} {} not apply to a MySQL/MariaDB source (ferry {sub} does not use {}): leave {} out",
        flags.join(", "),
        if flags.len() == 1 { "does" } else { "do" },
        if flags.len() == 1 { "it" } else { "them" },
        if flags.len() == 1 { "it" } else { "them" }
    ))
    .into())
}

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command().try_get_matches().and_then(|m| {
        let cli = Cli::from_arg_matches(&m)?;
        let _ = MATCHES.set(m);
        Ok(cli)
    });
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            std::process::exit(exit::RUNTIME);
        }
    };
    let code = runtime.block_on(async {
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ferry: error: {}", exit::render(&e));
                exit::code_for(&e)
            }
        }
    });
    // Spawned connection tasks may still be winding down; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}
