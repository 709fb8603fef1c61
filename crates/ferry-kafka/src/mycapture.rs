//! `ferry capture` from MySQL/MariaDB: a database's rows and binlog changes published to Kafka
//! in the envelope of Debezium's MySQL connector, through the same Kafka sink as PostgreSQL's.
//!
//! The first run reads a consistent snapshot (`ferry_mysql::snapshot::open_snapshot`: the same
//! short read lock and binlog position as `ferry migrate`), publishes every row as an `op: r`
//! event, waits until the broker holds all of them, and records the capture in its state topic
//! (`<prefix>.ferry.capture`): the snapshot's position, the rows per table, and the PostgreSQL
//! tables the plan maps them to (so that `ferry apply` can create them). Then it streams the
//! binlog from the snapshot's position (`ferry_mysql::capture::stream_to`) into the Kafka sink.
//!
//! MySQL has no slot to keep the position: the capture writes it to its state topic, at most
//! once a second, and only positions the broker has acknowledged every event before (the sink's
//! durable position). A restart, after anything, resumes from the last one written: events
//! after it may be published twice (at least once into Kafka; `ferry apply` applies each
//! transaction once). The source keeps its binlogs only as its own expiry says: a capture
//! stopped longer than that cannot resume (the error says so).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::ident::quote_ident;
use ferry_core::sink::Sink;
use ferry_core::{BinlogPosition, SourcePosition, TableFilter};
use ferry_mysql::capture::{self as mysrc, Outcome, SnapshotItem, StreamError, StreamOptions};
use ferry_mysql::preflight::{MyPlan, SourceScope};
use ferry_mysql::types::MapOptions;
use ferry_mysql::{MyEndpoint, MyError};
use ferry_postgres::apply::{order_key, ApplyError};
use ferry_postgres::finding::Severity;
use tokio::sync::watch;

use crate::capture::{read_state, state_topic, write_state, write_state_with, CaptureState};
use crate::endpoint::KafkaEndpoint;
use crate::envelope::Engine;
use crate::sink::KafkaSinks;

/// What a MySQL capture needs.
#[derive(Debug, Clone)]
pub struct MyCaptureOptions {
    /// The MySQL/MariaDB database captured.
    pub source: MyEndpoint,
    /// Where events go.
    pub kafka: KafkaEndpoint,
    /// The capture's name in its state topic.
    pub name: String,
    /// Tables in scope.
    pub filter: TableFilter,
    /// Type-map options (the PostgreSQL types the events are encoded as).
    pub map: MapOptions,
    /// The binlog connection's replica server id.
    pub server_id: u32,
    /// Most changes between two looks at the producer's acknowledgements.
    pub max_batch: usize,
    /// Longest a batch stays open.
    pub max_delay: Duration,
    /// Record values Kafka cannot carry as dead letters and go on.
    pub skip_dead_letters: bool,
    /// What the capture publishes, counted (`ferry capture --listen`).
    pub stats: std::sync::Arc<crate::sink::SinkStats>,
}

fn my(e: ferry_postgres::PgError) -> MyError {
    MyError::from(e)
}

fn apply_err(e: ApplyError) -> MyError {
    match e {
        ApplyError::Db(e) => MyError::from(e),
        other => MyError::new(
            "publishing the snapshot",
            &other.to_string(),
            "fix the value at the source, or leave its table out",
        ),
    }
}

/// The PostgreSQL tables the plan maps the source's to, in schema `schema` (the source's
/// database, as the topics name it), with their primary keys: what `ferry apply` creates on
/// an empty target.
pub fn target_ddl(plan: &MyPlan, schema: &str) -> Vec<String> {
    let mut out = ferry_mysql::snapshot::schema_sql(plan, schema);
    for t in plan.tables.iter().filter(|t| !t.primary_key.is_empty()) {
        out.push(format!(
            "ALTER TABLE {}.{} ADD PRIMARY KEY ({})",
            quote_ident(schema),
            quote_ident(&t.name),
            t.primary_key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// Reads the source's plan; a blocker (binlog off, not ROW, missing privileges) stops with
/// its fix.
async fn plan(opts: &MyCaptureOptions) -> Result<MyPlan, MyError> {
    let db = opts.source.database().to_string();
    let scope = SourceScope {
        source: &opts.source,
        filter: &opts.filter,
        map: &opts.map,
        target_schema: &db,
    };
    let (_, plan, findings) = ferry_mysql::preflight::source_plan(scope).await?;
    // Findings about the cutover and the target do not concern a capture.
    if let Some(b) = findings
        .iter()
        .find(|f| f.severity == Severity::Blocker && f.side == "source" && !f.check.contains("cutover"))
    {
        return Err(MyError::new(
            "starting change capture",
            &b.message,
            b.fix.as_deref().unwrap_or("run ferry check --source ... for the details"),
        ));
    }
    if plan.tables.is_empty() {
        return Err(MyError::new(
            "starting change capture",
            &format!("database {db} has no tables to capture (after --include/--exclude)"),
            "create the tables first, or check the patterns",
        ));
    }
    Ok(plan)
}

/// Publishes the snapshot; returns the state recorded.
async fn snapshot(opts: &MyCaptureOptions, sinks: &KafkaSinks, plan: &MyPlan) -> Result<CaptureState, MyError> {
    let db = opts.source.database().to_string();
    let convs = Arc::new(mysrc::tables(plan, &db)?);
    let (at, mut rows_rx) = mysrc::read_snapshot(&opts.source, plan, convs.clone(), opts.map.zero_dates).await?;
    tracing::info!(position = %at, tables = plan.tables.len(), "snapshot open; publishing it");
    let at_pos = SourcePosition::Mysql(at.clone());
    let mut sink = sinks.sink(Default::default());
    for c in convs.iter() {
        sink.describe_table(&c.relation).await.map_err(apply_err)?;
    }
    let ts_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut rows = 0u64;
    let mut table_rows = std::collections::BTreeMap::new();
    let mut current: Option<usize> = None;
    // One row held back, so that the snapshot's last row says "last", as Debezium's does.
    let mut held: Option<(u32, ferry_core::change::Row)> = None;
    while let Some(item) = rows_rx.recv().await {
        match item? {
            SnapshotItem::Table(i) => {
                current = Some(i);
                table_rows.insert(format!("{db}.{}", plan.tables[i].name), 0u64);
            }
            SnapshotItem::Rows(page) => {
                let i = current.expect("a table before its rows");
                let id = convs[i].relation.id;
                *table_rows.get_mut(&format!("{db}.{}", plan.tables[i].name)).expect("table") += page.len() as u64;
                for row in page {
                    if let Some((hid, r)) = held.replace((id, row)) {
                        sink.snapshot_row(hid, &r, &at_pos, ts_us, false).await.map_err(apply_err)?;
                        rows += 1;
                    }
                }
                sink.try_settle().await.map_err(apply_err)?;
            }
        }
    }
    if table_rows.len() != plan.tables.len() {
        return Err(MyError::transient(
            "publishing the snapshot",
            "the snapshot reader stopped before the last table",
            "Ferry takes the snapshot again",
        ));
    }
    if let Some((id, r)) = held.take() {
        sink.snapshot_row(id, &r, &at_pos, ts_us, true).await.map_err(apply_err)?;
        rows += 1;
    }
    sink.flush().await.map_err(apply_err)?;
    for (t, n) in &table_rows {
        tracing::info!(table = %t, rows = n, "table published");
    }
    let state = CaptureState {
        slot: opts.name.clone(),
        snapshot_complete: true,
        consistent_point: at_pos.to_string(),
        tables: plan.tables.len() as u64,
        rows,
        table_rows,
        position: Some(at_pos.to_string()),
        target_ddl: target_ddl(plan, &db),
        snapshot_ts_ms: Some(ts_us.div_euclid(1000)),
        table_ddl: Default::default(),
    };
    write_state(&opts.kafka, &state).await.map_err(my)?;
    tracing::info!(tables = plan.tables.len(), rows, "snapshot published; streaming the binlog");
    Ok(state)
}

/// Runs a capture until `stop` turns true (Ok) or a definite error.
pub async fn run(opts: MyCaptureOptions, mut stop: watch::Receiver<bool>) -> Result<(), MyError> {
    crate::sink::probe(&opts.kafka).await.map_err(my)?;
    let mut plan = plan(&opts).await?;
    let server_id = mysrc::source_server_id(&opts.source).await?;
    let sinks = KafkaSinks::connect(opts.kafka.clone(), Engine::Mysql { server_id })
        .await
        .map_err(my)?
        .with_stats(opts.stats.clone());
    sinks.topics().ensure(&state_topic(&opts.kafka.prefix)).await.map_err(my)?;
    let mut state = match read_state(&opts.kafka).await.map_err(my)?.filter(|s| s.slot == opts.name) {
        Some(s) if s.snapshot_complete => {
            tracing::info!(capture = %opts.name, position = ?s.position, "resuming change capture from the position in the state topic");
            s
        }
        _ => snapshot(&opts, &sinks, &plan).await?,
    };
    let mut start: BinlogPosition = match state.position.as_deref().map(str::parse::<SourcePosition>) {
        Some(Ok(SourcePosition::Mysql(p))) => p,
        other => {
            return Err(MyError::new(
                "resuming change capture",
                &format!("the capture's state topic holds no binlog position ({other:?})"),
                &format!(
                    "is a PostgreSQL capture writing under this prefix? use another prefix, or delete topic {} to take a new snapshot",
                    state_topic(&opts.kafka.prefix)
                ),
            ))
        }
    };
    let db = opts.source.database().to_string();
    let sopts = StreamOptions {
        server_id: opts.server_id,
        max_batch: opts.max_batch,
        max_delay: opts.max_delay,
        silence: ferry_mysql::cdc::BINLOG_SILENCE,
    };
    // One producer for the state records (the position, every second).
    let state_producer = crate::sink::producer(&opts.kafka).map_err(my)?;
    let write_state = |ep: &KafkaEndpoint, st: &CaptureState| {
        let (p, ep, st) = (state_producer.clone(), ep.clone(), st.clone());
        async move { write_state_with(&p, &ep, &st).await }
    };
    let mut skip: HashSet<(ferry_core::Lsn, u32)> = HashSet::new();
    let mut backoff = mysrc::Backoff::default();
    loop {
        let convs = mysrc::tables(&plan, &db)?;
        let mut sink = sinks.sink(skip.clone());
        // The sink's durable position, written to the state topic at most once a second.
        let (durable_tx, mut durable_rx) = watch::channel::<Option<BinlogPosition>>(None);
        let writer = {
            let (kafka, mut st, producer) = (opts.kafka.clone(), state.clone(), state_producer.clone());
            tokio::spawn(async move {
                let mut logged = std::time::Instant::now();
                while durable_rx.changed().await.is_ok() {
                    let p = durable_rx.borrow_and_update().clone();
                    if let Some(p) = p {
                        st.position = Some(SourcePosition::Mysql(p.clone()).to_string());
                        if let Err(e) = write_state_with(&producer, &kafka, &st).await {
                            tracing::warn!(error = %e, "could not record the capture's position; trying again with the next one");
                        } else {
                            if logged.elapsed() >= Duration::from_secs(10) {
                                tracing::info!(acknowledged = %p, "events acknowledged by the broker up to this binlog position");
                                logged = std::time::Instant::now();
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let r = mysrc::stream_to(
            &opts.source,
            &plan,
            &convs,
            opts.map.zero_dates,
            &start,
            &mut sink,
            &sopts,
            &skip,
            &mut stop,
            &durable_tx,
        )
        .await;
        // The last durable position, recorded before anything else happens.
        let durable = match sink.durable() {
            Some(SourcePosition::Mysql(p)) => Some(p),
            _ => None,
        };
        // Whatever it was writing is superseded by what is written next (one producer: in order).
        drop(durable_tx);
        writer.abort();
        if let Some(p) = &durable {
            state.position = Some(SourcePosition::Mysql(p.clone()).to_string());
            start = p.clone();
        }
        match r {
            Ok(Outcome::Stopped(_)) => {
                write_state(&opts.kafka, &state).await.map_err(my)?;
                tracing::info!(position = %start, "capture stopped; the broker holds every event before this position");
                return Ok(());
            }
            Ok(Outcome::SchemaChanged { resume, query }) => {
                tracing::warn!(statement = %query.trim(), position = %resume, "the source's schema changed: reading the tables again, then streaming on after the statement");
                start = resume;
                state.position = Some(SourcePosition::Mysql(start.clone()).to_string());
                write_state(&opts.kafka, &state).await.map_err(my)?;
                plan = self::plan(&opts).await?;
                state.target_ddl = target_ddl(&plan, &db);
                write_state(&opts.kafka, &state).await.map_err(my)?;
            }
            Err(StreamError::DeadLetter(d)) => {
                let _ = sink.record_dead_letter(&d, opts.skip_dead_letters).await;
                if !opts.skip_dead_letters {
                    return Err(MyError::new(
                        &format!("publishing a change to {} ({}, binlog {})", d.table, d.operation, d.commit),
                        &d.error,
                        "the change is recorded in topic PREFIX.ferry.dead_letters; fix the value at the source, or run with --skip-dead-letters to record such changes and go on",
                    ));
                }
                skip.insert((order_key(&d.commit), d.change_index));
            }
            Err(StreamError::Failed(e)) if e.class == ferry_core::ErrorClass::Transient => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, position = %start, "capture interrupted; resuming from the last acknowledged position");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    write_state(&opts.kafka, &state).await.map_err(my)?;
                    return Ok(());
                }
            }
            Err(StreamError::Failed(e)) => {
                let _ = write_state(&opts.kafka, &state).await;
                return Err(e);
            }
        }
    }
}
