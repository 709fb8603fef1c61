//! `ferry capture` and `ferry apply`: wiring of a PostgreSQL source to the Kafka sink
//! (`ferry_kafka::capture`), and of Kafka to a PostgreSQL target (`ferry_kafka::apply`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Lsn;
use ferry_kafka::capture::{self, CaptureOptions};
use ferry_kafka::KafkaEndpoint;
use ferry_postgres::cdc::CdcProgress;

use crate::cli::{ApplyArgs, CaptureArgs};
use crate::exit::{self, UsageError};
use crate::settings;

pub async fn capture(args: &CaptureArgs) -> anyhow::Result<i32> {
    if ferry_mysql::is_mysql_url(&args.source) {
        return capture_mysql(args).await;
    }
    if !args.include.is_empty() || !args.exclude.is_empty() || args.tinyint1_boolean {
        return Err(UsageError(
            "--include, --exclude and --tinyint1-boolean are for MySQL/MariaDB sources (a PostgreSQL capture publishes every table of its publication)".into(),
        )
        .into());
    }
    let source = settings::pg_endpoint(
        &args.source,
        args.source_password_file.as_deref(),
        "FERRY_SOURCE_PASSWORD",
        "source",
    )?;
    let kafka = kafka_endpoint(&args.to, "to")?;
    let slot = args.slot.clone().unwrap_or_else(|| capture::default_slot(&kafka.prefix));
    if args.drop {
        let had = capture::drop_capture(&source, &slot).await?;
        println!(
            "{} slot and publication {slot} on {}; the topics under {} stay",
            if had { "dropped" } else { "no slot left; dropped the" },
            source.describe(),
            kafka.describe()
        );
        return Ok(exit::OK);
    }
    let opts = CaptureOptions {
        source,
        kafka,
        slot,
        max_batch: args.max_batch.max(1),
        max_delay: Duration::from_millis(args.max_delay_ms),
        stream_timeout: args.stream_timeout,
        skip_dead_letters: args.skip_dead_letters,
        stats: Arc::default(),
    };
    if let Some(addr) = args.listen {
        let stats = opts.stats.clone();
        serve_metrics(addr, move || stats.render()).await?;
    }
    let stop = stop_on_signal("stopping: the last events are acknowledged first");
    let progress = Arc::new(CdcProgress::default());
    let reporter = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let flushed = progress.flushed_lsn.load(Ordering::Relaxed);
                if flushed != last {
                    tracing::info!(acknowledged = %Lsn(flushed), "events acknowledged by the broker up to this source position");
                    last = flushed;
                }
            }
        })
    };
    let r = capture::run(opts, stop, progress).await;
    reporter.abort();
    r?;
    Ok(exit::OK)
}

/// `ferry capture --source mysql://...`.
async fn capture_mysql(args: &CaptureArgs) -> anyhow::Result<i32> {
    let source = settings::my_endpoint(
        &args.source,
        args.source_password_file.as_deref(),
        "FERRY_SOURCE_PASSWORD",
        "source",
    )?;
    let kafka = kafka_endpoint(&args.to, "to")?;
    let name = args.slot.clone().unwrap_or_else(|| capture::default_slot(&kafka.prefix));
    if args.drop {
        println!(
            "a MySQL/MariaDB capture leaves nothing on the source (its position is in topic {}); the topics under {} stay",
            capture::state_topic(&kafka.prefix),
            kafka.describe()
        );
        return Ok(exit::OK);
    }
    let filter = ferry_core::TableFilter::new(&args.include, &args.exclude).map_err(|e| UsageError(e.to_string()))?;
    let opts = ferry_kafka::mycapture::MyCaptureOptions {
        server_id: ferry_mysql::state::replica_server_id(&source.describe(), &kafka.describe()),
        source,
        kafka,
        name,
        filter,
        map: ferry_mysql::types::MapOptions {
            tinyint1_boolean: args.tinyint1_boolean,
            ..Default::default()
        },
        max_batch: args.max_batch.max(1),
        max_delay: Duration::from_millis(args.max_delay_ms),
        skip_dead_letters: args.skip_dead_letters,
        stats: Arc::default(),
    };
    if let Some(addr) = args.listen {
        let stats = opts.stats.clone();
        serve_metrics(addr, move || stats.render()).await?;
    }
    let stop = stop_on_signal("stopping: the last events are acknowledged first");
    ferry_kafka::mycapture::run(opts, stop).await?;
    Ok(exit::OK)
}

pub async fn apply(args: &ApplyArgs) -> anyhow::Result<i32> {
    let target = settings::pg_endpoint(
        &args.target,
        args.target_password_file.as_deref(),
        "FERRY_TARGET_PASSWORD",
        "target",
    )?;
    let kafka = kafka_endpoint(&args.from, "from")?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| capture::default_slot(&kafka.prefix).replacen("ferry_capture_", "kafka_", 1));
    let opts = ferry_kafka::apply::ApplyOptions {
        kafka,
        target,
        state_schema: args.state_schema.clone(),
        id,
        max_batch: args.max_batch.max(1),
        skip_dead_letters: args.skip_dead_letters,
        progress: Arc::new(ferry_kafka::apply::ApplyProgress::default()),
        group: args.group.clone(),
        member: args.member.clone().unwrap_or_else(host_name),
        hold: None,
        pause: None,
        cdc: None,
        source: None,
    };
    if let Some(addr) = args.listen {
        let progress = opts.progress.clone();
        serve_metrics(addr, move || progress.render()).await?;
    }
    let stop = stop_on_signal("stopping at a transaction boundary");
    if opts.group.is_some() {
        ferry_kafka::group::run(opts, stop).await?;
    } else {
        ferry_kafka::apply::run(opts, stop).await?;
    }
    Ok(exit::OK)
}

/// `--to`/`--from`: a Kafka URL, the SASL password from FERRY_KAFKA_PASSWORD.
pub(crate) fn kafka_endpoint(url: &str, flag: &str) -> anyhow::Result<KafkaEndpoint> {
    Ok(
        KafkaEndpoint::parse(url, std::env::var("FERRY_KAFKA_PASSWORD").ok().filter(|p| !p.is_empty()))
            .map_err(|e| UsageError(format!("--{flag}: {e}")))?,
    )
}

/// A stop that turns true at SIGINT or SIGTERM, saying `what` happens then.
fn stop_on_signal(what: &'static str) -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        tracing::info!("{what}");
        let _ = stop_tx.send(true);
    });
    stop
}

/// The host's name (a group member's default name).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "member".to_string())
}

/// `ferry capture --listen` and `ferry apply --listen`: GET /metrics and GET /healthz, read-only and without row values
/// (like `ferry migrate`'s /metrics, open to scrapers).
async fn serve_metrics(addr: std::net::SocketAddr, render: impl Fn() -> String + Clone + Send + Sync + 'static) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError(format!("--listen {addr}: {e}; pick a free address, or leave --listen out")))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tracing::info!(url = %format!("http://{addr}/metrics"), "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}
