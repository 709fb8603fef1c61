//! `ferry migrate --via kafka://BROKERS/PREFIX`: a migration's change stream through Kafka.
//!
//! ```text
//! slot ──cdc::run──> Kafka sink ──> topics (+ watermarks) ──> apply::run ──> Applier ──> target
//!   ^   (capture leg)    │ acknowledged                       (apply leg)      │ applied_lsn,
//!   └── confirmed ───────┘                                                     │ kafka_offsets
//! ```
//! The full load stays direct (parallel binary COPY from the slot's snapshot); from the slot's
//! consistent point on, two legs run in the migration's process:
//!
//! * the **capture leg** streams the migration's slot into the Kafka sink, the same driver
//!   (`ferry_postgres::cdc::run`) and sink as `ferry capture`: the slot moves on as soon as the
//!   broker holds the changes, however far behind the target is. While the source is idle it
//!   publishes watermarks (`<prefix>.ferry.watermark`), so that the apply leg can reach a
//!   position no transaction carries. It leaves out the transactions the migration's reverse
//!   stream wrote on the source (after a rollback: they came from the target).
//! * the **apply leg** is `ferry apply`'s single applier under the migration's id: the same
//!   Applier, state record (`applied_lsn`), dead letters and exactly-once offsets as a direct
//!   stream, with the migration's hold (verification, cutover) and pause, and its figures in
//!   the migration's status, metrics and dashboard.
//!
//! Cutover and rollback work as they do directly: the hold at the final position is reached
//! through Kafka (the last transactions, then a watermark past them). The reverse stream
//! after a cutover runs directly (target to source).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Lsn, TableName};
use ferry_postgres::apply::PgSource;
use ferry_postgres::cdc::{self, CdcOptions, CdcProgress, Hold};
use ferry_postgres::{Endpoint, PgError};
use tokio::sync::watch;

use crate::apply::{ApplyOptions, ApplyProgress};
use crate::capture::{read_state, state_topic, write_state, CaptureState};
use crate::endpoint::KafkaEndpoint;
use crate::envelope::{table_topic, Engine};
use crate::sink::KafkaSinks;

/// How often an idle capture leg publishes a watermark: bounds what reaching a position no
/// transaction carries adds to a cutover's pause.
pub const WATERMARK_EVERY: Duration = Duration::from_millis(100);

/// What the two legs need.
#[derive(Debug, Clone)]
pub struct ViaOptions {
    /// The cluster and the migration's topic prefix.
    pub kafka: KafkaEndpoint,
    /// The migration's source (where its slot is) and target.
    pub source: Endpoint,
    pub target: Endpoint,
    /// Ferry's state schema on the target and the migration's id there.
    pub state_schema: String,
    pub migration_id: String,
    /// The migration's slot and publication.
    pub slot: String,
    pub publication: String,
    /// The slot's consistent point (the full load's snapshot).
    pub consistent_lsn: Lsn,
    /// The migration's tables (their topics are made before either leg starts).
    pub tables: Vec<TableName>,
    /// The source as the apply leg may use it: tables created there mid-stream are created on
    /// the target from their definition.
    pub pg_source: PgSource,
    /// Most changes in one target transaction.
    pub max_batch: usize,
    /// Longest a capture batch stays open.
    pub max_delay: Duration,
    /// The replication stream's dead-peer timeout.
    pub stream_timeout: Duration,
    /// Record dead letters and go on.
    pub skip_dead_letters: bool,
    /// The migration's pause (the apply leg pauses; the capture leg goes on, into Kafka).
    pub pause: Option<watch::Receiver<bool>>,
    /// The migration's hold (verification and cutover hold the apply leg).
    pub hold: Option<Arc<Hold>>,
    /// The migration's change-capture figures: the apply leg's.
    pub progress: Arc<CdcProgress>,
    /// The apply leg's Kafka figures (per partition lag, for /metrics).
    pub kafka_progress: Arc<ApplyProgress>,
}

/// Runs both legs until `stop` (Ok once both stopped at a checkpoint) or a definite error of
/// either (the other is stopped first).
pub async fn forward(o: ViaOptions, stop: watch::Receiver<bool>) -> Result<(), PgError> {
    crate::sink::probe(&o.kafka).await?;
    let (_, reverse_origin) = ferry_postgres::apply::origin_names(&o.migration_id);
    let sinks = KafkaSinks::connect(
        o.kafka.clone(),
        Engine::Postgres {
            db: o.source.dbname().to_string(),
        },
    )
    .await?
    .with_watermarks(WATERMARK_EVERY)
    .await?
    .skipping_origin(reverse_origin);
    sinks.topics().ensure(&state_topic(&o.kafka.prefix)).await?;
    // The prefix is the migration's: its state record names the migration's slot, and says
    // the snapshot is complete (the full load copied it directly; no `r` record is published).
    match read_state(&o.kafka).await? {
        Some(s) if s.slot != o.slot => {
            return Err(PgError::config(
                format!("streaming migration {} through {}", o.migration_id, o.kafka.describe()),
                format!(
                    "topic {} says prefix {} carries the changes of slot {}, not of this migration's slot {}",
                    state_topic(&o.kafka.prefix),
                    o.kafka.prefix,
                    s.slot,
                    o.slot
                ),
                "give the migration a topic prefix of its own (--via kafka://BROKERS/ANOTHER_PREFIX)",
            ))
        }
        Some(_) => {}
        None => {
            let state = CaptureState {
                slot: o.slot.clone(),
                snapshot_complete: true,
                consistent_point: o.consistent_lsn.to_string(),
                tables: o.tables.len() as u64,
                rows: 0,
                table_rows: Default::default(),
                position: None,
                target_ddl: Vec::new(),
                snapshot_ts_ms: None,
                table_ddl: Default::default(),
            };
            write_state(&o.kafka, &state).await?;
        }
    }
    // Every table's topic now: the apply leg reads the topics it finds at its start.
    for t in &o.tables {
        sinks.topics().ensure(&table_topic(&o.kafka.prefix, t)).await?;
    }
    tracing::info!(prefix = %o.kafka.prefix, cluster = %o.kafka.describe(), "streaming changes through Kafka");

    let copts = CdcOptions {
        source: o.source.clone(),
        slot: o.slot.clone(),
        publication: o.publication.clone(),
        max_batch: o.max_batch,
        max_delay: o.max_delay,
        commit_interval: Duration::from_millis(2),
        skip_dead_letters: o.skip_dead_letters,
        pause: None,
        hold: None,
        stream_timeout: o.stream_timeout,
        apply_timeout: cdc::DEFAULT_APPLY_TIMEOUT,
    };
    let aopts = ApplyOptions {
        kafka: o.kafka.clone(),
        target: o.target.clone(),
        state_schema: o.state_schema.clone(),
        id: o.migration_id.clone(),
        max_batch: o.max_batch,
        skip_dead_letters: o.skip_dead_letters,
        progress: o.kafka_progress.clone(),
        group: None,
        member: String::new(),
        hold: o.hold.clone(),
        pause: o.pause.clone(),
        cdc: Some(o.progress.clone()),
        source: Some(o.pg_source.clone()),
    };
    let (capture_stop_tx, capture_stop) = watch::channel(false);
    let (apply_stop_tx, apply_stop) = watch::channel(false);
    let relay = {
        let (mut stop, c, a) = (stop, capture_stop_tx.clone(), apply_stop_tx.clone());
        tokio::spawn(async move {
            let _ = stop.wait_for(|v| *v).await;
            let _ = c.send(true);
            let _ = a.send(true);
        })
    };
    let capture_progress = Arc::new(CdcProgress::default());
    let capture = cdc::run(copts, &sinks, capture_stop, capture_progress.clone());
    let apply = crate::apply::run(aopts, apply_stop);
    tokio::pin!(capture, apply);
    // Either leg ending ends the other: at a stop both end Ok; a failure is returned once the
    // other has stopped at a checkpoint.
    let result = tokio::select! {
        r = &mut capture => {
            let _ = apply_stop_tx.send(true);
            let a = apply.await;
            r.map_err(|e| leg("the capture leg (source to Kafka)", e)).and(a)
        }
        r = &mut apply => {
            let _ = capture_stop_tx.send(true);
            let c = capture.await;
            r.map_err(|e| leg("the apply leg (Kafka to target)", e)).and(c)
        }
    };
    relay.abort();
    tracing::info!(
        published_up_to = %Lsn(capture_progress.flushed_lsn.load(std::sync::atomic::Ordering::Relaxed)),
        "change stream through Kafka stopped"
    );
    result
}

/// Names the leg an error stopped.
fn leg(which: &str, mut e: PgError) -> PgError {
    e.context = format!("{which}: {}", e.context);
    e
}
