//! `ferry apply --group NAME`: several appliers share a capture's topics, each table partition
//! applied by one of them, Kafka's consumer-group protocol deciding which.
//!
//! **Assignment.** Every member subscribes to the prefix's table topics in the consumer group
//! `NAME` (round-robin assignment, so that a topic set of one partition per table spreads over
//! the members). When the group gives a member partitions, the member first *claims* each one
//! on the target: a row of `<state>.kafka_offsets` (group, topic, partition) gets the member's
//! name and a fresh claim token, and says where the partition's next record to apply is. The
//! consumer is assigned the partitions at those offsets: the broker's committed offsets are
//! never used (nothing is committed to the broker).
//!
//! **Exactly once.** A member applies its partitions' records in partition order (so every
//! key's changes in order) through the PostgreSQL sink, batching many records into one target
//! transaction. With each batch it records, per partition, the next offset and the last source
//! change applied, in the same target transaction, through `kafka_advance`, which refuses
//! (SQLSTATE 40001) if the partition's claim is no longer the member's: a member that lost a
//! partition in a rebalance, or was thought dead, can never commit over its successor, whose
//! claim comes first. The successor resumes exactly where the last committed batch ended. The
//! same change twice in a partition (a capture that resent transactions after a crash) is
//! recognised by its source commit and `transaction.total_order`, and applied once.
//!
//! **What is given up.** A source transaction that touched tables applied by different
//! members is applied by each of them separately: each table's part is whole and in order, but
//! another member may not have applied its part yet, so the target does not pass through the
//! source's states (pgbench's invariant holds only once all members have caught up). The
//! single applier (`ferry apply` without `--group`) keeps source transactions whole. Which one
//! to run is the user's choice; docs/kafka.md says how to decide.
//!
//! The snapshot (`op: r` records) is applied as inserts, partition by partition, as any other
//! record: the target's tables must be empty (an existing row makes the insert a dead letter).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::change::ChangeEvent;
use ferry_core::sink::{DeadLetter, Sink};
use ferry_core::{Lsn, Phase, SourcePosition};
use ferry_postgres::apply::{Applier, ApplyContext, ApplyError, Direction, TextSettings};
use ferry_postgres::state::{StateStore, ENGINE_POSTGRESQL};
use ferry_postgres::PgError;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::apply::{
    change_of, consistent_point, table_of, target_relation, topics_and_snapshot, watermarks, whole, ApplyOptions, ApplyProgress, Head,
    Shape, BATCH_TIME,
};
use crate::endpoint::KafkaEndpoint;
use crate::offsets::BACKSTEP;
use crate::sink::kafka_error;

/// How long a member may be silent before the group gives its partitions to the others
/// (Kafka's `session.timeout.ms`): a member killed with kill -9 is replaced this fast.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a member records its partitions' high watermarks (for `ferry status`'s lag).
const WATERMARK_EVERY: Duration = Duration::from_secs(5);
/// How often a member looks for partitions another member holds without applying them.
const PEERS_EVERY: Duration = Duration::from_secs(10);
/// A partition whose holder has not advanced it for this long while records wait is held by a
/// member that is gone.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// A record of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RecordId {
    topic: String,
    partition: i32,
    offset: i64,
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// What the consumer's thread hands the member.
enum GItem {
    /// The group gave these partitions: claim them, answer each one's next offset (None: not
    /// a table topic, nothing to read).
    Assigned(Vec<(String, i32)>, std::sync::mpsc::SyncSender<HashMap<(String, i32), i64>>),
    /// The group takes the partitions back: commit what is applied, then answer.
    Revoked(std::sync::mpsc::SyncSender<()>),
    /// A record (None: a tombstone).
    Record(RecordId, Option<Vec<u8>>),
    /// Nothing to read for a moment.
    Idle,
    Failed(PgError),
}

/// The consumer's context: rebalances are handed to the member, which claims the partitions on
/// the target before the consumer starts reading them at the claimed offsets.
struct Rebalancer {
    tx: mpsc::Sender<GItem>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let wanted: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                let offsets = match self.tx.blocking_send(GItem::Assigned(wanted.clone(), reply)) {
                    Ok(()) => answer.recv_timeout(Duration::from_secs(120)).ok(),
                    Err(_) => None,
                };
                let Some(offsets) = offsets else {
                    // The member is gone or could not claim: take nothing; its session ends.
                    let _ = consumer.unassign();
                    return;
                };
                for (t, p) in &wanted {
                    let at = match offsets.get(&(t.clone(), *p)) {
                        Some(n) if *n <= BACKSTEP => Offset::Beginning,
                        Some(n) => Offset::Offset(n - BACKSTEP),
                        None => Offset::End,
                    };
                    let _ = tpl.set_partition_offset(t, *p, at);
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::warn!(error = %e, "taking the partitions the group assigned failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                if self.tx.blocking_send(GItem::Revoked(reply)).is_ok() {
                    let _ = answer.recv_timeout(Duration::from_secs(120));
                }
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "the consumer group's rebalance failed");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The regular expression of the prefix's table topics (`<prefix>.<schema>.<table>`).
fn topic_pattern(prefix: &str) -> String {
    let mut re = String::from("^");
    for ch in prefix.chars() {
        if !ch.is_ascii_alphanumeric() && ch != '_' {
            re.push('\\');
        }
        re.push(ch);
    }
    re.push_str("\\.[^.]+\\.[^.]+$");
    re
}

/// The consumer's thread: joins the group, hands records over in partition order.
fn consume(ep: KafkaEndpoint, group: String, tx: mpsc::Sender<GItem>, halt: Arc<AtomicBool>, rejoin: Arc<AtomicBool>) {
    let fail = |tx: &mpsc::Sender<GItem>, e: PgError| {
        let _ = tx.blocking_send(GItem::Failed(e));
    };
    let consumer: BaseConsumer<Rebalancer> = match ep
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "roundrobin")
        .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
        .set("heartbeat.interval.ms", "1000")
        // Records deleted by retention before they were applied: stop, never skip them.
        .set("auto.offset.reset", "error")
        // A table created later gets its topic: the subscription sees it this soon.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .create_with_context(Rebalancer { tx: tx.clone() })
    {
        Ok(c) => c,
        Err(e) => return fail(&tx, kafka_error("starting the Kafka consumer", &ep, &e)),
    };
    let pattern = topic_pattern(&ep.prefix);
    if let Err(e) = consumer.subscribe(&[&pattern]) {
        return fail(&tx, kafka_error("joining the consumer group", &ep, &e));
    }
    while !halt.load(Ordering::Relaxed) {
        if rejoin.swap(false, Ordering::Relaxed) {
            // Leaving and joining again makes the coordinator form the group anew, without the
            // members it has not heard from.
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[&pattern]) {
                return fail(&tx, kafka_error("joining the consumer group again", &ep, &e));
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let id = RecordId {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                };
                if tx.blocking_send(GItem::Record(id, m.payload().map(<[u8]>::to_vec))).is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::AutoOffsetReset) | Some(RDKafkaErrorCode::OffsetOutOfRange)
                ) {
                    return fail(
                        &tx,
                        PgError::config(
                            "reading a partition from its recorded offset",
                            format!("the broker no longer holds the records from that offset ({e}): retention deleted them before they were applied"),
                            "the target misses changes it cannot get back from Kafka: start over (an empty target and a new capture), and give the topics a retention longer than the longest an applier may be stopped",
                        ),
                    );
                }
                if matches!(e, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
                    tracing::warn!(error = %e, "no Kafka broker answers; retrying");
                } else {
                    tracing::debug!(error = %e, "Kafka consumer");
                }
            }
            None => {
                if tx.try_send(GItem::Idle).is_err() && tx.is_closed() {
                    return;
                }
            }
        }
    }
    // Leave the group at once (the others take the partitions without waiting the session out).
    consumer.unsubscribe();
    let _ = consumer.poll(Duration::from_millis(0));
}

/// A partition this member holds.
#[derive(Debug)]
struct Claim {
    token: i64,
    /// The next record to apply.
    next: i64,
    /// The last change applied: source commit position and `transaction.total_order`.
    last: (i64, i64),
    /// Moved since the last batch recorded it.
    dirty: bool,
    /// A record of it was read since the claim.
    read: bool,
}

/// How a member's session ended badly.
enum GroupError {
    Apply(ApplyError),
    /// A record that cannot be applied (the target rejected it, or it does not fit the table).
    Dead(RecordId, DeadLetter),
}

impl From<ApplyError> for GroupError {
    fn from(e: ApplyError) -> Self {
        GroupError::Apply(e)
    }
}

impl From<PgError> for GroupError {
    fn from(e: PgError) -> Self {
        GroupError::Apply(ApplyError::Db(e))
    }
}

/// The member's id in the state schema (its migrations row and replication origin).
pub fn member_id(id: &str, member: &str) -> String {
    let clean: String = member
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    format!("{id}__{clean}")
}

/// A fresh claim token.
fn token() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (nanos ^ ((std::process::id() as u64) << 40)) as i64 & i64::MAX
}

/// Applies as a member of the group `opts.group` until `stop` (Ok) or a definite error.
pub async fn run(opts: ApplyOptions, stop: watch::Receiver<bool>) -> Result<(), PgError> {
    let Some(group) = opts.group.clone() else {
        return Err(PgError::config("ferry apply --group", "no group named", "report this as a bug"));
    };
    crate::sink::probe(&opts.kafka).await?;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ep, progress, done) = (opts.kafka.clone(), opts.progress.clone(), done.clone());
        std::thread::spawn(move || watermarks(ep, progress, done))
    };
    let r = member(&opts, &group, &opts.member, stop).await;
    done.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    r
}

async fn member(opts: &ApplyOptions, group: &str, member: &str, mut stop: watch::Receiver<bool>) -> Result<(), PgError> {
    let mut ordered_until = Lsn(0);
    let mut backoff = Duration::from_millis(500);
    let mut skip: HashSet<RecordId> = HashSet::new();
    let me = member_id(&opts.id, member);
    loop {
        match session(opts, group, member, &me, &mut stop, ordered_until, &skip).await {
            Ok(()) => return Ok(()),
            Err(GroupError::Apply(ApplyError::Reapply { until })) => {
                tracing::info!(until = %until, "replaying a batch row by row");
                ordered_until = ordered_until.max(until);
            }
            Err(GroupError::Dead(record, d)) => {
                let client = opts.target.connect("kafka-apply").await?;
                let store = StateStore::new(&opts.state_schema);
                store.record_dead_letter(&client, &me, &d, opts.skip_dead_letters).await?;
                if !opts.skip_dead_letters || !skip.insert(record.clone()) {
                    return Err(PgError::config(
                        format!("applying record {record} to {} ({}, key {})", d.table, d.operation, d.key),
                        d.error.clone(),
                        "the record is in the dead_letters table of Ferry's state schema on the target: fix the cause on the target and start again, or start again with --skip-dead-letters to step over it",
                    ));
                }
                tracing::warn!(record = %record, table = %d.table, error = %d.error, "dead letter recorded and stepped over (--skip-dead-letters)");
            }
            Err(GroupError::Apply(ApplyError::Db(e))) if e.class == ferry_core::ErrorClass::Transient => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "applying from Kafka interrupted; joining the group again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(GroupError::Apply(ApplyError::Db(e))) => return Err(e),
            Err(GroupError::Apply(e)) => return Err(PgError::transient("applying from Kafka", e)),
        }
    }
}

/// One membership: claims, records and batches until a stop, a rebalance failure or an error.
#[allow(clippy::too_many_arguments)]
async fn session(
    opts: &ApplyOptions,
    group: &str,
    member: &str,
    me: &str,
    stop: &mut watch::Receiver<bool>,
    ordered_until: Lsn,
    skip: &HashSet<RecordId>,
) -> Result<(), GroupError> {
    let ep = &opts.kafka;
    let (topics, state) = topics_and_snapshot(ep).await?;
    let consistent = match &state {
        Some(_) => Some(consistent_point(&state)?),
        None => None,
    };
    let snapshot_ts_ms = state.as_ref().and_then(|s| s.snapshot_ts_ms);
    let mut claims_client = opts.target.connect("kafka-group").await?;
    let tables: Vec<ferry_core::TableName> = topics.iter().filter_map(|t| table_of(&ep.prefix, t)).collect();
    crate::apply::create_tables(&mut claims_client, &state, &tables).await?;
    let store = StateStore::new(&opts.state_schema);
    store.ensure(&claims_client).await?;
    crate::offsets::ensure(&mut claims_client, &store).await?;
    if store.phase(&claims_client, me).await?.is_none() {
        store
            .create_for(
                &claims_client,
                me,
                ENGINE_POSTGRESQL,
                &ep.describe(),
                &ep.prefix,
                "",
                "ferry apply --group",
            )
            .await?;
        // The member's own positions start at 0/0 (see `next_pos` below).
        store.set_consistent_lsn(&claims_client, me, Some(Lsn(0))).await?;
        for (to, why) in [
            (Phase::Schema, "tables exist on the target"),
            (Phase::FullLoad, "member of a consumer group"),
            (Phase::PostLoad, "member of a consumer group"),
            (Phase::Cdc, "applying its partitions from Kafka"),
        ] {
            store.transition(&claims_client, me, to, "ferry apply --group", why).await?;
        }
    }
    // The sink applies the tables of its migration only: the member's are every table topic's.
    let mut planned: HashSet<String> = topics.iter().cloned().collect();
    let tables: Vec<(ferry_core::TableName, i64)> = topics.iter().filter_map(|t| table_of(&ep.prefix, t)).map(|t| (t, 0)).collect();
    store.plan_tables(&claims_client, me, &tables).await?;
    let q = store.quoted().to_string();
    let claim_sql = crate::offsets::claim_sql(&store);
    let advance_sql = crate::offsets::advance_sql(&store);
    let settings = TextSettings::utc();
    let ctx = ApplyContext {
        source: None,
        target: opts.target.clone(),
        store: store.clone(),
        migration_id: me.to_string(),
        direction: Direction::Forward,
    };
    let mut sink = Applier::new(ctx, &settings, HashSet::new(), ordered_until, None).await?;
    // Each record is one transaction for the sink, at a position of this member's own (the
    // record's place in the member's stream): the sink needs positions that grow; where the
    // member stands in the topics is in kafka_offsets.
    let mut next_pos = (Sink::durable(&sink).and_then(|p| p.as_lsn()).unwrap_or_default().0 / 2 + 1) * 2;
    let mut recent: BTreeMap<u64, (RecordId, Option<(i64, i64)>)> = BTreeMap::new();

    let (tx, mut rx) = mpsc::channel::<GItem>(4096);
    let halt = Arc::new(AtomicBool::new(false));
    let rejoin = Arc::new(AtomicBool::new(false));
    let consumer_thread = {
        let (ep, group, halt, rejoin) = (ep.clone(), group.to_string(), halt.clone(), rejoin.clone());
        std::thread::spawn(move || consume(ep, group, tx, halt, rejoin))
    };
    let mut peers = Peers::new(ep, &q, group, member)?;
    tracing::info!(group, member, "joining the consumer group");
    let mut claims: HashMap<(String, i32), Claim> = HashMap::new();
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    let mut described: HashSet<String> = HashSet::new();
    let mut last_watermarks = Instant::now();
    let result: Result<(), GroupError> = async {
        loop {
            let item = tokio::select! {
                i = rx.recv() => i,
                _ = stop.changed() => None,
            };
            if peers.due() && peers.stale(&claims_client).await {
                rejoin.store(true, Ordering::Relaxed);
            }
            let Some(item) = item else {
                commit_batch(&mut sink, &claims_client, &mut claims, group, &advance_sql, &opts.progress).await?;
                sink.settle().await?;
                sink.flush_now().await?;
                return Ok(());
            };
            match item {
                GItem::Assigned(parts, reply) => {
                    let mut offsets = HashMap::new();
                    for (topic, partition) in parts {
                        if table_of(&ep.prefix, &topic).is_none_or(|t| t.schema == "ferry") {
                            continue;
                        }
                        let tok = token();
                        let row = claims_client
                            .query_one(&claim_sql, &[&group, &topic, &partition, &member, &tok, &me])
                            .await
                            .map_err(|e| PgError::query(format!("claiming partition {partition} of {topic} on the target"), e))?;
                        let next: i64 = row.get(0);
                        tracing::info!(topic = %topic, partition, next_offset = next, "partition assigned");
                        opts.progress
                            .partitions
                            .lock()
                            .expect("progress lock")
                            .insert((topic.clone(), partition), (next, next));
                        offsets.insert((topic.clone(), partition), next);
                        claims.insert(
                            (topic, partition),
                            Claim {
                                token: tok,
                                next,
                                last: (row.get(1), row.get(2)),
                                dirty: false,
                                read: false,
                            },
                        );
                    }
                    let _ = reply.send(offsets);
                }
                GItem::Revoked(reply) => {
                    // What is applied of the partitions is committed before another member
                    // may claim them (it would wait on the row, then start after it).
                    commit_batch(&mut sink, &claims_client, &mut claims, group, &advance_sql, &opts.progress).await?;
                    sink.settle().await?;
                    claims.clear();
                    opts.progress.partitions.lock().expect("progress lock").clear();
                    tracing::info!("partitions revoked");
                    let _ = reply.send(());
                }
                GItem::Record(id, raw) => {
                    let key = (id.topic.clone(), id.partition);
                    let Some(claim) = claims.get_mut(&key) else { continue };
                    let first = !claim.read;
                    claim.read = true;
                    if id.offset < claim.next {
                        continue;
                    }
                    if first && id.offset > claim.next {
                        // Not one record from BACKSTEP before the claimed offset on: the
                        // broker has none there (compacted or deleted), or it skipped more
                        // than a batch.
                        tracing::warn!(record = %id, claimed = claim.next, "the broker's first record after the claimed offset is past it: records between were compacted or deleted");
                    }
                    claim.next = id.offset + 1;
                    claim.dirty = true;
                    let Some(raw) = raw else { continue };
                    if skip.contains(&id) {
                        tracing::warn!(record = %id, "stepping over a dead letter (--skip-dead-letters)");
                        continue;
                    }
                    if !shapes.contains_key(&id.topic) {
                        let table = table_of(&ep.prefix, &id.topic).expect("a table topic");
                        if planned.insert(id.topic.clone()) {
                            // A topic that appeared since the session started (a new table):
                            // the next session's sink takes it.
                            store.plan_tables(&claims_client, me, &[(table.clone(), 0)]).await?;
                            return Err(PgError::transient(
                                format!("applying {}", id.topic),
                                "a table topic appeared since the member joined; joining again with it",
                            )
                            .into());
                        }
                        let rel = target_relation(&claims_client, &table, shapes.len() as u32 + 1).await?;
                        shapes.insert(id.topic.clone(), Shape::new(rel));
                    }
                    let shape = shapes.get_mut(&id.topic).expect("just made");
                    let head = match Head::read(raw) {
                        Ok(h) => h,
                        Err(e) => {
                            let letter = DeadLetter {
                                commit: SourcePosition::Postgres(Lsn(0)),
                                change_index: id.offset as u32,
                                table: shape.rel.table.clone(),
                                operation: "unknown",
                                key: String::new(),
                                payload: format!("record {id}"),
                                error: format!("the record is not JSON: {e}"),
                            };
                            return Err(GroupError::Dead(id, letter));
                        }
                    };
                    // A change applied already (the capture resent its transaction), or a row
                    // of a snapshot that was abandoned and taken again.
                    let order = match head.txn {
                        Some((_, lsn)) => {
                            let at = (lsn.0 as i64, head.total_order);
                            if at <= claim.last {
                                continue;
                            }
                            claim.last = at;
                            Some(at)
                        }
                        None if head.op_is("r") => {
                            if consistent.is_some_and(|cp| !head.of_snapshot(cp, snapshot_ts_ms)) {
                                continue;
                            }
                            None
                        }
                        None => None,
                    };
                    if described.insert(id.topic.clone()) {
                        shape.learn(&whole(&head.raw));
                        sink.apply(ChangeEvent::Relation(shape.rel.clone())).await?;
                    }
                    let pos = next_pos;
                    next_pos += 2;
                    let (grown, event) = match change_of(shape, &head.raw) {
                        Ok(x) => x,
                        Err(u) => {
                            let (commit, index) = letter_place(order, &id);
                            let letter = u.letter(shape, commit, index, &head.raw);
                            return Err(GroupError::Dead(id, letter));
                        }
                    };
                    recent.insert(pos, (id, order));
                    sink.apply(ChangeEvent::Begin {
                        commit: SourcePosition::Postgres(Lsn(pos)),
                        commit_time_us: 0,
                        xid: 0,
                    })
                    .await?;
                    if grown {
                        tracing::info!(table = %shape.rel.table, "the events have columns the table lacks: adding them");
                        sink.apply(ChangeEvent::Relation(shape.rel.clone())).await?;
                    }
                    sink.apply(event).await?;
                    sink.apply(ChangeEvent::Commit {
                        end: SourcePosition::Postgres(Lsn(pos + 1)),
                        commit_time_us: 0,
                    })
                    .await?;
                    opts.progress.changes.fetch_add(1, Ordering::Relaxed);
                    opts.progress.transactions.fetch_add(1, Ordering::Relaxed);
                    if sink.batch_len() >= opts.max_batch || sink.batch_age() >= BATCH_TIME {
                        commit_batch(&mut sink, &claims_client, &mut claims, group, &advance_sql, &opts.progress).await?;
                    }
                    sink.try_settle().await?;
                }
                GItem::Idle => {
                    commit_batch(&mut sink, &claims_client, &mut claims, group, &advance_sql, &opts.progress).await?;
                    sink.try_settle().await?;
                    if let Some(done) = Sink::committed(&sink).and_then(|p| p.as_lsn()) {
                        recent = recent.split_off(&done.0);
                    }
                    if last_watermarks.elapsed() >= WATERMARK_EVERY {
                        last_watermarks = Instant::now();
                        record_watermarks(&claims_client, &q, group, &claims, opts).await;
                    }
                }
                GItem::Failed(e) => return Err(e.into()),
            }
        }
    }
    .await;
    // A change the target rejected names the member's own position: name the record instead.
    let result = match result {
        Err(GroupError::Apply(ApplyError::Rejected(mut d))) => {
            let pos = d.commit.as_lsn().unwrap_or_default().0;
            match recent.get(&pos) {
                Some((id, order)) => {
                    let (commit, index) = letter_place(*order, id);
                    d.commit = commit;
                    d.change_index = index;
                    d.payload = format!("record {id}: {}", d.payload);
                    Err(GroupError::Dead(id.clone(), *d))
                }
                None => Err(GroupError::Apply(ApplyError::Rejected(d))),
            }
        }
        other => other,
    };
    if result.is_err() {
        sink.rollback().await;
    }
    halt.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || consumer_thread.join()).await;
    result
}

/// Watches the partitions other members hold. Kafka's coordinator gives a member's partitions
/// to the others once it stops heartbeating; a coordinator that only notices at the next join
/// (tansu, the test broker) leaves them with the dead member until someone joins. A partition
/// whose holder has not advanced it for [`STALE_AFTER`] while the broker has records after its
/// offset is such a one: the member leaves and joins again, and the group is formed without
/// the dead member. With a live holder (a long batch) that costs one rebalance and nothing
/// else: the assignment stays.
struct Peers {
    client: Arc<BaseConsumer>,
    sql: String,
    group: String,
    member: String,
    last: Instant,
}

impl Peers {
    fn new(ep: &KafkaEndpoint, q: &str, group: &str, member: &str) -> Result<Peers, PgError> {
        let client = ep
            .client_config()
            .create::<BaseConsumer>()
            .map_err(|e| kafka_error("starting the Kafka consumer", ep, &e))?;
        Ok(Peers {
            client: Arc::new(client),
            sql: format!(
                "SELECT topic, partition, next_offset, member,
                        extract(epoch FROM now() - GREATEST(updated_at, claimed_at))::float8
                   FROM {q}.kafka_offsets WHERE group_id = $1 AND member <> $2"
            ),
            group: group.to_string(),
            member: member.to_string(),
            last: Instant::now(),
        })
    }

    fn due(&mut self) -> bool {
        if self.last.elapsed() < PEERS_EVERY {
            return false;
        }
        self.last = Instant::now();
        true
    }

    /// Whether another member holds a partition it does not apply (best effort: a failed look
    /// says no).
    async fn stale(&self, c: &tokio_postgres::Client) -> bool {
        let Ok(rows) = c.query(&self.sql, &[&self.group, &self.member]).await else {
            return false;
        };
        let idle: Vec<(String, i32, i64, String)> = rows
            .iter()
            .filter(|r| r.get::<_, f64>(4) >= STALE_AFTER.as_secs_f64())
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        if idle.is_empty() {
            return false;
        }
        let client = self.client.clone();
        let waiting = tokio::task::spawn_blocking(move || {
            idle.into_iter().find(|(t, p, next, _)| {
                client
                    .fetch_watermarks(t, *p, Duration::from_secs(5))
                    .is_ok_and(|(_, high)| high > *next)
            })
        })
        .await
        .ok()
        .flatten();
        match waiting {
            Some((topic, partition, next, holder)) => {
                tracing::warn!(
                    topic = %topic, partition, next_offset = next, holder = %holder, stale_s = STALE_AFTER.as_secs(),
                    "a partition's holder has not applied it for a while although records wait: joining the group again so that it is formed without members that are gone"
                );
                true
            }
            None => false,
        }
    }
}

/// Where a dead letter of a record stands: its source transaction's commit and its place in it
/// (a snapshot row has neither: its offset instead).
fn letter_place(order: Option<(i64, i64)>, id: &RecordId) -> (SourcePosition, u32) {
    match order {
        Some((lsn, n)) => (SourcePosition::Postgres(Lsn(lsn as u64)), n as u32),
        None => (SourcePosition::Postgres(Lsn(0)), id.offset as u32),
    }
}

/// Commits the open batch with every moved partition's offset. With no batch open (the
/// records read were applied already, or tombstones), the offsets alone are recorded once the
/// batches before them are committed.
async fn commit_batch(
    sink: &mut Applier,
    claims_client: &tokio_postgres::Client,
    claims: &mut HashMap<(String, i32), Claim>,
    group: &str,
    advance_sql: &str,
    progress: &ApplyProgress,
) -> Result<(), ApplyError> {
    let open = sink.batch_open();
    if !open {
        if !claims.values().any(|c| c.dirty) {
            return Ok(());
        }
        sink.settle().await?;
    }
    // What /metrics shows as read, once a batch rather than once a record.
    if let Ok(mut map) = progress.partitions.lock() {
        for (key, c) in claims.iter().filter(|(_, c)| c.dirty) {
            if let Some(e) = map.get_mut(key) {
                e.0 = c.next;
            }
        }
    }
    for ((topic, partition), c) in claims.iter_mut().filter(|(_, c)| c.dirty) {
        let params = vec![
            group.to_string(),
            topic.clone(),
            partition.to_string(),
            c.next.to_string(),
            c.last.0.to_string(),
            c.last.1.to_string(),
            c.token.to_string(),
        ];
        if open {
            sink.stage(advance_sql.to_string(), params);
        } else {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            claims_client
                .execute(advance_sql, &refs)
                .await
                .map_err(|e| PgError::query("recording the offsets of records already applied", e))?;
        }
        c.dirty = false;
    }
    if open {
        sink.commit().await?;
    }
    Ok(())
}

/// Records the broker's high watermark of every claimed partition (what `ferry status` shows
/// as each member's lag). Best effort.
async fn record_watermarks(c: &tokio_postgres::Client, q: &str, group: &str, claims: &HashMap<(String, i32), Claim>, opts: &ApplyOptions) {
    let highs: Vec<((String, i32), i64)> = {
        let parts = opts.progress.partitions.lock().expect("progress lock");
        claims.keys().filter_map(|k| parts.get(k).map(|v| (k.clone(), v.1))).collect()
    };
    for ((topic, partition), high) in highs {
        let tok = claims[&(topic.clone(), partition)].token;
        let _ = c
            .execute(
                &format!(
                    "UPDATE {q}.kafka_offsets SET high_watermark = $4 WHERE group_id = $1 AND topic = $2 AND partition = $3 AND claim = $5"
                ),
                &[&group, &topic, &partition, &high, &tok],
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_pattern_takes_table_topics_of_the_prefix_only() {
        assert_eq!(topic_pattern("it_k.1"), "^it_k\\.1\\.[^.]+\\.[^.]+$");
        assert_eq!(member_id("kafka_x", "Host-1.a"), "kafka_x__host_1_a");
    }
}
