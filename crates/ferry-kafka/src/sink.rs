//! The Kafka sink: a change stream published as Debezium events, the source's position moving
//! only once the broker holds them.
//!
//! It follows the contract of [`ferry_core::sink`]; what is particular to Kafka:
//!
//! **Durability.** Events are handed to an idempotent producer (`enable.idempotence`,
//! `acks=all`) as they arrive, so the broker receives a large transaction while it streams and
//! Ferry holds at most [`MAX_IN_FLIGHT`] undelivered messages (bounded memory). A source
//! transaction's `Commit::end` becomes [`Sink::durable`] once the broker has acknowledged every
//! message up to its END record: the driver then lets the source forget it (the slot's
//! `confirmed_flush_lsn`), so WAL is released as soon as Kafka holds the changes, however far
//! behind any consumer is.
//!
//! **At least once into Kafka, exactly once out of it.** After a crash, the source resends from
//! the last acknowledged position: events after it may be in the topics twice (a transaction
//! cut short by a crash has no END record; the resent one has). Every event carries its
//! transaction's id and commit position (`source.lsn`, `transaction.id`), by which `ferry apply`
//! (and any consumer) applies each transaction once. Debezium makes the same promise.
//!
//! **Restart.** A new sink knows no position ([`Sink::durable`] is None): the stream resumes at
//! the source's own record of what it may forget (the slot), which only ever moved to positions
//! the broker had acknowledged.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::change::{ChangeEvent, Row};
use ferry_core::sink::{DeadLetter, Sink};
use ferry_core::{ErrorClass, Lsn, SourcePosition};
use ferry_postgres::apply::{order_key, position_text, ApplyError, TextSettings};
use ferry_postgres::PgError;
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::endpoint::{KafkaEndpoint, REQUEST_TIMEOUT};
use crate::envelope::{transaction_id, transaction_topic, watermark_topic, Encoder, Engine, Message, Op, Origin, TxnBlock, Watermark};

/// Most messages handed to the producer and not yet acknowledged.
pub const MAX_IN_FLIGHT: usize = 50_000;
/// A message not acknowledged within this long has failed (the stream restarts from the last
/// acknowledged position).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The dead letters topic (`<prefix>.ferry.dead_letters`).
pub fn dead_letter_topic(prefix: &str) -> String {
    format!("{prefix}.ferry.dead_letters")
}

/// A Kafka failure as Ferry's error: authorization and missing topics are definite, with the
/// fix; everything else is retried.
pub fn kafka_error(context: &str, ep: &KafkaEndpoint, e: &KafkaError) -> PgError {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    let (class, fix) = match code {
        Some(C::SaslAuthenticationFailed) | Some(C::Authentication) => (
            ErrorClass::Definite,
            Some("check the Kafka user and password (URL or FERRY_KAFKA_PASSWORD) and sasl-mechanism".to_string()),
        ),
        Some(C::TopicAuthorizationFailed) | Some(C::ClusterAuthorizationFailed) | Some(C::GroupAuthorizationFailed) => (
            ErrorClass::Definite,
            Some("grant Ferry's Kafka user WRITE and DESCRIBE on the topics (and CREATE on the cluster to create them)".to_string()),
        ),
        Some(C::UnknownTopicOrPartition) | Some(C::UnknownTopic) if !ep.create_topics => (
            ErrorClass::Definite,
            Some("create the topic (or drop create-topics=false from the URL to let Ferry create it)".to_string()),
        ),
        Some(C::MessageSizeTooLarge) | Some(C::InvalidMessageSize) => (
            ErrorClass::Definite,
            Some(
                "raise the broker's message.max.bytes (or the topic's max.message.bytes): a row is larger than the broker accepts"
                    .to_string(),
            ),
        ),
        _ => (ErrorClass::Transient, None),
    };
    PgError {
        context: format!("{context} ({})", ep.describe()),
        reason: e.to_string(),
        fix,
        class,
        code: None,
    }
}

/// Records the errors librdkafka reports about its connections (a TLS handshake refused, a
/// SASL login failed): the requests themselves only say that no broker answered.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>);

impl Recorder {
    fn note(&self, code: Option<RDKafkaErrorCode>, reason: &str) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < 20 {
                v.push((code, reason.to_string()));
            }
        }
    }
}

impl rdkafka::ClientContext for Recorder {
    fn error(&self, error: KafkaError, reason: &str) {
        self.note(error.rdkafka_error_code(), reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // librdkafka logs why a connection failed (FAIL) before the request reports a transport
        // failure; the error event says the same, when it is served.
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) && fac == "FAIL" {
            let code = if message.contains("SSL") {
                Some(RDKafkaErrorCode::SSL)
            } else if message.contains("SASL") || message.contains("uthentication") {
                Some(RDKafkaErrorCode::Authentication)
            } else {
                None
            };
            self.note(code, message);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Recorder {}

/// Connects to the cluster once before anything else, so that a wrong CA, a broker without
/// TLS, or a login the broker refuses stops at once with what to do, instead of being retried
/// as a broker that does not answer.
pub async fn probe(ep: &KafkaEndpoint) -> Result<(), PgError> {
    let ep = ep.clone();
    tokio::task::spawn_blocking(move || {
        let c: rdkafka::consumer::BaseConsumer<Recorder> = ep
            .client_config()
            .create_with_context(Recorder::default())
            .map_err(|e| kafka_error("connecting to Kafka", &ep, &e))?;
        // Asked in short rounds, so that a refused login or handshake stops the probe at once.
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        let is_tls = |code: &Option<RDKafkaErrorCode>| *code == Some(RDKafkaErrorCode::SSL);
        let is_auth = |code: &Option<RDKafkaErrorCode>| {
            matches!(code, Some(RDKafkaErrorCode::Authentication) | Some(RDKafkaErrorCode::SaslAuthenticationFailed))
        };
        let e = loop {
            let e = match c.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            // Serve the client's events: the error callbacks run from here.
            let _ = c.poll(Duration::from_millis(100));
            let decided = c
                .context()
                .0
                .lock()
                .map(|v| v.iter().any(|(code, _)| is_tls(code) || is_auth(code)))
                .unwrap_or(false);
            if decided || std::time::Instant::now() >= deadline {
                break e;
            }
        };
        let seen = c.context().0.lock().map(|v| v.clone()).unwrap_or_default();
        let tls = seen.iter().find(|(code, _)| is_tls(code));
        let auth = seen.iter().find(|(code, _)| is_auth(code));
        let definite = |reason: &str, fix: &str| PgError {
            context: format!("connecting to Kafka ({})", ep.describe()),
            reason: reason.to_string(),
            fix: Some(fix.to_string()),
            class: ErrorClass::Definite,
            code: None,
        };
        if let Some((_, reason)) = tls {
            return Err(definite(
                reason,
                if ep.tls {
                    "the TLS handshake with the broker failed: if the broker speaks TLS, give the CA that signed its certificate (ssl-ca=FILE in the URL) and connect by a name the certificate holds; if it does not, drop tls=true"
                } else {
                    "the connection failed in TLS: the broker may require it (tls=true in the URL)"
                },
            ));
        }
        if let Some((_, reason)) = auth {
            return Err(definite(
                reason,
                "the broker refused the login: check the Kafka user and password (in the URL or FERRY_KAFKA_PASSWORD) and sasl-mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            ));
        }
        let mut err = kafka_error("connecting to Kafka", &ep, &e);
        match seen.last() {
            Some((_, reason)) => err.reason = format!("{} ({reason})", err.reason),
            // A broker that does not speak TLS leaves the handshake unanswered.
            None if ep.tls && err.fix.is_none() => {
                err.fix = Some(
                    "no broker completed a TLS handshake: check the address, and that the broker speaks TLS on that port (drop tls=true if it does not)"
                        .to_string(),
                )
            }
            None => {}
        }
        Err(err)
    })
    .await
    .map_err(|e| PgError::transient("connecting to Kafka", e))?
}

/// Ferry's producer for a cluster: idempotent, every message acknowledged by all in-sync
/// replicas.
pub fn producer(ep: &KafkaEndpoint) -> Result<FutureProducer, PgError> {
    let mut c = ep.client_config();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "262144")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
    c.create().map_err(|e| kafka_error("starting the Kafka producer", ep, &e))
}

/// The topics a cluster is known to have; creates missing ones (or checks they exist).
#[derive(Clone)]
pub struct Topics {
    ep: KafkaEndpoint,
    admin: Arc<AdminClient<DefaultClientContext>>,
    known: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").field("cluster", &self.ep.describe()).finish()
    }
}

impl Topics {
    /// An admin client of the cluster.
    pub fn new(ep: &KafkaEndpoint) -> Result<Topics, PgError> {
        let admin = ep
            .client_config()
            .create()
            .map_err(|e| kafka_error("starting the Kafka admin client", ep, &e))?;
        Ok(Topics {
            ep: ep.clone(),
            admin: Arc::new(admin),
            known: Arc::default(),
        })
    }

    /// Makes sure `topic` exists: creates it with the URL's partitions, replication factor and
    /// retention, or (with `create-topics=false`) fails naming it.
    pub async fn ensure(&self, topic: &str) -> Result<(), PgError> {
        if self.known.lock().expect("lock").contains(topic) {
            return Ok(());
        }
        if self.ep.create_topics {
            let replication = TopicReplication::Fixed(self.ep.replication);
            let retention = self.ep.retention_ms.map(|r| r.to_string());
            let mut t = NewTopic::new(topic, self.ep.partitions, replication);
            if let Some(r) = &retention {
                t = t.set("retention.ms", r);
            }
            let opts = AdminOptions::new().request_timeout(Some(Timeout::After(REQUEST_TIMEOUT)));
            let results = tokio::time::timeout(REQUEST_TIMEOUT * 2, self.admin.create_topics([&t], &opts))
                .await
                .map_err(|_| {
                    PgError::transient(
                        format!("creating topic {topic} on {}", self.ep.describe()),
                        format!("no answer within {} s", (REQUEST_TIMEOUT * 2).as_secs()),
                    )
                })?
                .map_err(|e| kafka_error(&format!("creating topic {topic}"), &self.ep, &e))?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        return Err(kafka_error(
                            &format!("creating topic {topic}"),
                            &self.ep,
                            &KafkaError::AdminOp(code),
                        ))
                    }
                }
            }
        } else {
            let admin = self.admin.clone();
            let name = topic.to_string();
            let md = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), Timeout::After(REQUEST_TIMEOUT)))
                .await
                .map_err(|e| PgError::transient("reading Kafka metadata", e))?
                .map_err(|e| kafka_error(&format!("looking up topic {topic}"), &self.ep, &e))?;
            let found = md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if !found {
                return Err(PgError::config(
                    format!("publishing to {}", self.ep.describe()),
                    format!("topic {topic} does not exist and create-topics=false"),
                    format!("create topic {topic} (as Debezium would name it), or drop create-topics=false from the URL"),
                ));
            }
        }
        self.known.lock().expect("lock").insert(topic.to_string());
        Ok(())
    }
}

/// What a capture into Kafka has done, whatever the source's engine (`ferry capture --listen`:
/// /metrics); shared by every session of the stream.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Messages handed to the producer (change events, BEGIN/END records, watermarks).
    pub events: AtomicU64,
    /// Messages the broker acknowledged.
    pub acknowledged: AtomicU64,
    /// Source transactions published (with at least one change of a captured table).
    pub transactions: AtomicU64,
    /// Ordering key of the position every event before which the broker holds (PostgreSQL:
    /// the LSN; MySQL: the binlog file and offset as one number).
    pub durable_position: AtomicU64,
    /// Commit time (µs since the epoch) of the last transaction the broker holds whole.
    pub durable_commit_us: AtomicI64,
    /// Sessions of the stream started (1 + restarts).
    pub sessions: AtomicU64,
}

impl SinkStats {
    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            ("ferry_kafka_capture_events", "counter", "Messages handed to the producer (events, transaction records, watermarks).", get(&self.events).to_string()),
            ("ferry_kafka_capture_acknowledged", "counter", "Messages the broker acknowledged.", get(&self.acknowledged).to_string()),
            ("ferry_kafka_capture_transactions", "counter", "Source transactions published.", get(&self.transactions).to_string()),
            ("ferry_kafka_capture_sessions", "counter", "Sessions of the stream started (1 + restarts after failures).", get(&self.sessions).to_string()),
            ("ferry_kafka_capture_acknowledged_position", "gauge", "Source position (ordering key: an LSN, or a binlog file and offset as one number) every event before which the broker holds.", get(&self.durable_position).to_string()),
            ("ferry_kafka_capture_acknowledged_commit_timestamp_seconds", "gauge", "Source commit time of the last transaction the broker holds whole.", format!("{:.6}", self.durable_commit_us.load(Ordering::Relaxed) as f64 / 1e6)),
        ] {
            let sample = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}\n"));
        }
        out.push_str("# EOF\n");
        out
    }
}

/// Told of every table a change stream describes, before any of its events is published: a
/// PostgreSQL capture records there the definition of a table created on the source mid-stream
/// (its state record), so that `ferry apply` can create it before its first change.
pub trait NewTables: Send + Sync {
    /// `table` is described by the stream (again, at every session: answer known tables at once).
    fn described<'a>(&'a self, table: &'a ferry_core::TableName) -> BoxFuture<'a, Result<(), PgError>>;
}

/// A boxed future, as [`NewTables`] returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The Kafka sink for each session of a change stream.
#[derive(Clone)]
pub struct KafkaSinks {
    /// The cluster and prefix.
    pub endpoint: KafkaEndpoint,
    /// The source engine (the `source` block's form).
    pub engine: Engine,
    producer: FutureProducer,
    topics: Topics,
    /// While idle, publish how far the source has sent this often (see [`watermark_topic`]).
    watermark_every: Option<Duration>,
    /// Transactions written by this replication origin are not published (the reverse
    /// stream's writes on the source after a rollback: they came from the target).
    skip_origin: Option<String>,
    stats: Arc<SinkStats>,
    new_tables: Option<Arc<dyn NewTables>>,
}

impl std::fmt::Debug for KafkaSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinks").field("endpoint", &self.endpoint.describe()).finish()
    }
}

impl KafkaSinks {
    /// A producer and an admin client of the cluster; the transaction topic made sure of.
    pub async fn connect(endpoint: KafkaEndpoint, engine: Engine) -> Result<KafkaSinks, PgError> {
        let producer = producer(&endpoint)?;
        let topics = Topics::new(&endpoint)?;
        topics.ensure(&transaction_topic(&endpoint.prefix)).await?;
        topics.ensure(&dead_letter_topic(&endpoint.prefix)).await?;
        Ok(KafkaSinks {
            endpoint,
            engine,
            producer,
            topics,
            watermark_every: None,
            skip_origin: None,
            stats: Arc::default(),
            new_tables: None,
        })
    }

    /// Tells `hook` of every table the stream describes, before its events are published.
    pub fn with_new_tables(mut self, hook: Arc<dyn NewTables>) -> KafkaSinks {
        self.new_tables = Some(hook);
        self
    }

    /// Counts what every session publishes into `stats`.
    pub fn with_stats(mut self, stats: Arc<SinkStats>) -> KafkaSinks {
        self.stats = stats;
        self
    }

    /// Publishes watermarks (on [`watermark_topic`], made sure of here) while the source is
    /// idle, at most this often: an apply can then reach any position the source has sent,
    /// even where no transaction of the captured tables is.
    pub async fn with_watermarks(mut self, every: Duration) -> Result<KafkaSinks, PgError> {
        self.topics.ensure(&watermark_topic(&self.endpoint.prefix)).await?;
        self.watermark_every = Some(every);
        Ok(self)
    }

    /// Leaves out the transactions written by replication origin `name`.
    pub fn skipping_origin(mut self, name: String) -> KafkaSinks {
        self.skip_origin = Some(name);
        self
    }

    /// The cluster's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// A sink (also for a snapshot, outside the stream).
    pub fn sink(&self, skip: HashSet<(Lsn, u32)>) -> KafkaSink {
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        KafkaSink {
            ep: self.endpoint.clone(),
            producer: self.producer.clone(),
            topics: self.topics.clone(),
            enc: Encoder::new(&self.endpoint.prefix, self.endpoint.schemas, self.engine.clone()),
            pending: VecDeque::new(),
            sent: 0,
            delivered: 0,
            marks: VecDeque::new(),
            durable: None,
            txn: None,
            batch_len: 0,
            batch_started: None,
            previous_commit: None,
            transactions: 0,
            skip,
            watermark_every: self.watermark_every,
            skip_origin: self.skip_origin.clone(),
            stats: self.stats.clone(),
            new_tables: self.new_tables.clone(),
        }
    }
}

impl ferry_postgres::cdc::SinkFactory for KafkaSinks {
    type Sink = KafkaSink;

    fn describe(&self) -> String {
        self.endpoint.describe()
    }

    async fn open(
        &self,
        settings: &TextSettings,
        skip: &HashSet<(Lsn, u32)>,
        _ordered_until: Lsn,
        _stale: Option<ferry_core::switch::SessionId>,
    ) -> Result<KafkaSink, PgError> {
        check_settings(settings)?;
        Ok(self.sink(skip.clone()))
    }

    /// Never resolves: every delivery has its own deadline ([`DELIVERY_TIMEOUT`]), after which
    /// the sink fails with a transient error by itself.
    fn watchdog(&self, _sink: &KafkaSink, _limit: Duration) -> impl std::future::Future<Output = PgError> + 'static {
        std::future::pending()
    }
}

/// The value text forms the encoder reads: ISO dates, PostgreSQL-style intervals.
pub fn check_settings(s: &TextSettings) -> Result<(), PgError> {
    if !s.date_style.to_ascii_uppercase().starts_with("ISO") {
        return Err(PgError::config(
            "publishing changes to Kafka",
            format!("the source's DateStyle is {:?}; Ferry reads dates in the ISO style", s.date_style),
            "ALTER ROLE <ferry's user> SET DateStyle = 'ISO, MDY'; then start again",
        ));
    }
    if !s.interval_style.eq_ignore_ascii_case("postgres") {
        return Err(PgError::config(
            "publishing changes to Kafka",
            format!(
                "the source's IntervalStyle is {:?}; Ferry reads intervals in the postgres style",
                s.interval_style
            ),
            "ALTER ROLE <ferry's user> SET IntervalStyle = 'postgres'; then start again",
        ));
    }
    Ok(())
}

struct Txn {
    commit: SourcePosition,
    txid: u64,
    ts_us: i64,
    id: String,
    began: bool,
    total: u64,
    per_table: Vec<(String, u64)>,
    change_index: u32,
    /// Written by the origin left out: nothing of it is published.
    skipped: bool,
}

/// One session's Kafka sink (see the module documentation).
pub struct KafkaSink {
    ep: KafkaEndpoint,
    producer: FutureProducer,
    topics: Topics,
    enc: Encoder,
    pending: VecDeque<DeliveryFuture>,
    /// Messages handed to the producer, and acknowledged, in this session.
    sent: u64,
    delivered: u64,
    /// Commit positions waiting for their messages: (messages sent when it ended, position,
    /// commit time in µs).
    marks: VecDeque<(u64, SourcePosition, i64)>,
    durable: Option<SourcePosition>,
    txn: Option<Txn>,
    batch_len: usize,
    batch_started: Option<Instant>,
    previous_commit: Option<SourcePosition>,
    transactions: u64,
    skip: HashSet<(Lsn, u32)>,
    watermark_every: Option<Duration>,
    skip_origin: Option<String>,
    stats: Arc<SinkStats>,
    new_tables: Option<Arc<dyn NewTables>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("cluster", &self.ep.describe())
            .field("in_flight", &self.pending.len())
            .field("durable", &self.durable)
            .finish()
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl KafkaSink {
    fn error(&self, context: &str, e: &KafkaError) -> ApplyError {
        ApplyError::Db(kafka_error(context, &self.ep, e))
    }

    /// Hands a message to the producer, waiting for the oldest delivery while the producer's
    /// queue, or Ferry's bound, is full.
    pub async fn send(&mut self, m: Message) -> Result<(), ApplyError> {
        while self.pending.len() >= MAX_IN_FLIGHT {
            self.settle_one().await?;
        }
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&m.topic);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &m.value {
                record = record.payload(v.as_slice());
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.pending.push_back(f);
                    self.sent += 1;
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.settle_one().await?;
                    }
                }
                Err((e, _)) => return Err(self.error(&format!("publishing to topic {}", m.topic), &e)),
            }
        }
    }

    /// Waits for the oldest delivery. Cancel-safe: the drivers wait on it inside `select!`,
    /// which drops it when another branch wins; the delivery stays first in line until its
    /// answer is read (popping it before the wait lost it then: never counted, never checked
    /// for an error, and the position stuck behind it).
    async fn settle_one(&mut self) -> Result<(), ApplyError> {
        let Some(f) = self.pending.front_mut() else { return Ok(()) };
        let r = match tokio::time::timeout(DELIVERY_TIMEOUT + Duration::from_secs(5), f).await {
            Ok(r) => r,
            Err(_) => {
                return Err(ApplyError::Db(PgError::transient(
                    format!("publishing to {}", self.ep.describe()),
                    "a message was not acknowledged in time",
                )))
            }
        };
        self.pending.pop_front();
        self.delivered(r)
    }

    fn delivered(&mut self, r: Delivered) -> Result<(), ApplyError> {
        match r {
            Ok(Ok(_)) => {
                self.delivered += 1;
                self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                self.advance();
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.error("publishing an event", &e)),
            Err(_) => Err(ApplyError::Db(PgError::transient(
                format!("publishing to {}", self.ep.describe()),
                "the producer dropped a message",
            ))),
        }
    }

    fn advance(&mut self) {
        while self.marks.front().is_some_and(|(n, _, _)| *n <= self.delivered) {
            let (_, p, at_us) = self.marks.pop_front().expect("front");
            self.stats.durable_position.store(order_key(&p).0, Ordering::Relaxed);
            self.stats.durable_commit_us.store(at_us, Ordering::Relaxed);
            self.durable = Some(p);
        }
    }

    /// Waits until the broker has acknowledged every message handed over.
    pub async fn flush(&mut self) -> Result<(), ApplyError> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        self.advance();
        Ok(())
    }

    async fn ensure_topic(&mut self, relation: u32) -> Result<(), ApplyError> {
        if let Some((table, _)) = self.enc.table(relation) {
            let topic = crate::envelope::table_topic(self.enc.prefix(), table);
            self.topics.ensure(&topic).await.map_err(ApplyError::Db)?;
        }
        Ok(())
    }

    /// A snapshot row (`op` r), outside any transaction.
    pub async fn snapshot_row(&mut self, relation: u32, row: &Row, at: &SourcePosition, ts_us: i64, last: bool) -> Result<(), ApplyError> {
        let origin = Origin {
            commit: at,
            at,
            previous: None,
            ts_us,
            txid: 0,
            snapshot: if last { "last" } else { "true" },
            processed_us: now_us(),
        };
        let msgs = self
            .enc
            .row_event(relation, Op::Read, None, Some(row), &origin, None)
            .map_err(|e| {
                let (table, _) = self.enc.table(relation).expect("described");
                ApplyError::Rejected(Box::new(DeadLetter {
                    commit: at.clone(),
                    change_index: 0,
                    table: table.clone(),
                    operation: "read",
                    key: String::new(),
                    payload: String::new(),
                    error: e.0,
                }))
            })?;
        for m in msgs {
            self.send(m).await?;
        }
        Ok(())
    }

    /// Learns a table (and makes sure of its topic) outside the stream (the snapshot).
    pub async fn describe_table(&mut self, rel: &ferry_core::change::Relation) -> Result<(), ApplyError> {
        self.enc.relation(rel);
        self.ensure_topic(rel.id).await
    }

    async fn change(&mut self, relation: u32, op: Op, before: Option<Row>, after: Option<Row>) -> Result<(), ApplyError> {
        let txn = self.txn.as_mut().expect("a change inside a transaction");
        txn.change_index += 1;
        if txn.skipped {
            return Ok(());
        }
        if self.skip.contains(&(order_key(&txn.commit), txn.change_index)) {
            return Ok(());
        }
        let (table, collection) = match self.enc.table(relation) {
            Some((t, c)) => (t.clone(), c.to_string()),
            None => {
                return Err(ApplyError::Db(PgError::config(
                    "publishing changes to Kafka",
                    format!("relation {relation} was not described before its change"),
                    "report this as a bug",
                )))
            }
        };
        if !txn.began {
            txn.began = true;
            let begin = self.enc.begin(&txn.id, txn.ts_us.div_euclid(1000));
            self.send(begin).await?;
        }
        let txn = self.txn.as_mut().expect("open");
        txn.total += 1;
        let slot = match txn.per_table.iter().position(|(c, _)| *c == collection) {
            Some(i) => i,
            None => {
                txn.per_table.push((collection.clone(), 0));
                txn.per_table.len() - 1
            }
        };
        txn.per_table[slot].1 += 1;
        let block = TxnBlock {
            id: txn.id.clone(),
            total_order: txn.total,
            data_collection_order: txn.per_table[slot].1,
        };
        let origin = Origin {
            commit: &txn.commit,
            at: &txn.commit,
            previous: self.previous_commit.as_ref(),
            ts_us: txn.ts_us,
            txid: txn.txid,
            snapshot: "false",
            processed_us: now_us(),
        };
        let msgs = match op {
            Op::Truncate => self.enc.truncate(relation, &origin, Some(&block)).map(|m| vec![m]),
            _ => self
                .enc
                .row_event(relation, op, before.as_ref(), after.as_ref(), &origin, Some(&block)),
        };
        let msgs = msgs.map_err(|e| {
            ApplyError::Rejected(Box::new(DeadLetter {
                commit: txn.commit.clone(),
                change_index: txn.change_index,
                table: table.clone(),
                operation: match op {
                    Op::Create => "insert",
                    Op::Update => "update",
                    Op::Delete => "delete",
                    Op::Truncate => "truncate",
                    Op::Read => "read",
                },
                key: String::new(),
                payload: String::new(),
                error: e.0,
            }))
        })?;
        for m in msgs {
            self.send(m).await?;
        }
        if self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
        self.batch_len += 1;
        Ok(())
    }
}

/// What a delivery future resolves to.
type Delivered = <DeliveryFuture as std::future::Future>::Output;

impl Sink for KafkaSink {
    type Error = ApplyError;

    async fn apply(&mut self, event: ChangeEvent) -> Result<(), ApplyError> {
        match event {
            ChangeEvent::Begin {
                commit,
                commit_time_us,
                xid,
            } => {
                let id = transaction_id(&commit, xid);
                self.txn = Some(Txn {
                    commit,
                    txid: xid,
                    ts_us: commit_time_us,
                    id,
                    began: false,
                    total: 0,
                    per_table: Vec::new(),
                    change_index: 0,
                    skipped: false,
                });
            }
            ChangeEvent::Origin { name } => {
                if self.skip_origin.as_deref() == Some(name.as_str()) {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.skipped = true;
                    }
                }
            }
            ChangeEvent::Relation(rel) => {
                if let Some(hook) = &self.new_tables {
                    hook.described(&rel.table).await.map_err(ApplyError::Db)?;
                }
                self.enc.relation(&rel);
                self.ensure_topic(rel.id).await?;
            }
            ChangeEvent::Insert { relation, new } => self.change(relation, Op::Create, None, Some(new)).await?,
            ChangeEvent::Update { relation, old, new } => self.change(relation, Op::Update, old, Some(new)).await?,
            ChangeEvent::Delete { relation, old } => self.change(relation, Op::Delete, Some(old), None).await?,
            ChangeEvent::Truncate { relations, .. } => {
                for r in relations {
                    self.change(r, Op::Truncate, None, None).await?;
                }
            }
            ChangeEvent::Commit { end, commit_time_us } => {
                if let Some(txn) = self.txn.take() {
                    if txn.began {
                        let end_msg = self.enc.end(&txn.id, commit_time_us.div_euclid(1000), &txn.per_table);
                        self.send(end_msg).await?;
                        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    }
                    self.previous_commit = Some(txn.commit);
                }
                self.marks.push_back((self.sent, end, commit_time_us));
                self.transactions += 1;
                self.advance();
            }
        }
        Ok(())
    }

    fn at_boundary(&self) -> bool {
        self.txn.is_none()
    }

    fn batch_open(&self) -> bool {
        self.batch_len > 0
    }

    fn batch_len(&self) -> usize {
        self.batch_len
    }

    fn batch_age(&self) -> Duration {
        self.batch_started.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// The batch's messages are already with the producer: committing only closes the batch;
    /// [`Sink::durable`] follows the acknowledgements.
    async fn commit(&mut self) -> Result<(), ApplyError> {
        self.batch_len = 0;
        self.batch_started = None;
        self.advance();
        Ok(())
    }

    async fn settle(&mut self) -> Result<Option<SourcePosition>, ApplyError> {
        self.flush().await?;
        Ok(self.durable.clone())
    }

    fn in_flight(&self) -> bool {
        !self.pending.is_empty()
    }

    async fn try_settle(&mut self) -> Result<(), ApplyError> {
        while let Some(f) = self.pending.front_mut() {
            match f.now_or_never() {
                Some(r) => {
                    self.pending.pop_front();
                    self.delivered(r)?;
                }
                None => break,
            }
        }
        Ok(())
    }

    fn durable(&self) -> Option<SourcePosition> {
        self.durable.clone()
    }

    async fn flush_now(&mut self) -> Result<(), ApplyError> {
        self.flush().await
    }

    /// A partial transaction's messages are already with the broker; without its END record a
    /// consumer knows it is incomplete, and the source sends it whole again.
    async fn rollback(&mut self) {
        self.txn = None;
        self.batch_len = 0;
        self.batch_started = None;
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.batch_started
    }

    fn transactions(&self) -> u64 {
        self.transactions
    }

    fn watermark_every(&self) -> Option<Duration> {
        self.watermark_every
    }

    /// Once the broker holds every event before it, a record saying that every transaction
    /// committed before `at` is in the topics, with how far the transaction topic then went.
    async fn watermark(&mut self, at: SourcePosition) -> Result<(), ApplyError> {
        if self.watermark_every.is_none() {
            return Ok(());
        }
        self.flush().await?;
        let ttopic = transaction_topic(&self.ep.prefix);
        let producer = self.producer.clone();
        let end = tokio::task::spawn_blocking(move || producer.client().fetch_watermarks(&ttopic, 0, REQUEST_TIMEOUT))
            .await
            .map_err(|e| ApplyError::Db(PgError::transient("reading the transaction topic's end", e)))?
            .map_err(|e| self.error("reading the transaction topic's end", &e))?
            .1;
        let mark = Watermark {
            position: position_text(&at),
            transactions_end: end,
            ts_ms: now_us().div_euclid(1000),
        };
        let value = serde_json::to_vec(&mark).expect("json");
        self.send(Message {
            topic: watermark_topic(&self.ep.prefix),
            key: None,
            value: Some(value),
        })
        .await?;
        self.flush().await
    }

    async fn record_dead_letter(&self, letter: &DeadLetter, skipped: bool) -> Result<(), ApplyError> {
        tracing::error!(table = %letter.table, operation = letter.operation, commit = %position_text(&letter.commit), change = letter.change_index, error = %letter.error, skipped, "dead letter");
        let value = serde_json::json!({
            "table": letter.table.to_string(), "operation": letter.operation,
            "commit": letter.commit.to_string(), "change_index": letter.change_index,
            "key": letter.key, "error": letter.error, "skipped": skipped,
        });
        let topic = dead_letter_topic(&self.ep.prefix);
        let payload = serde_json::to_vec(&value).expect("json");
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).payload(payload.as_slice());
        match self.producer.send(record, Timeout::After(REQUEST_TIMEOUT)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(self.error("recording a dead letter", &e)),
        }
    }
}

/// Waits until the producer has nothing queued (at a stop).
pub fn drain(p: &FutureProducer) {
    let _ = p.flush(Timeout::After(REQUEST_TIMEOUT));
}
