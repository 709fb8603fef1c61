//! Shadow traffic: a sample of the read-only statements sessions run on the source is run again
//! on the target, after the client has its answer, and the two answers are compared.
//!
//! A session samples a request when it starts one outside a transaction: it keeps a copy of the
//! request's messages and summarises the source's answer as it passes ([`Summary`]: column
//! types, row count, two digests of the rows, the command tag or the error). When the answer
//! ends outside a transaction and the statement is one that only reads (`sql::looks_read_only`),
//! a [`Job`] goes to a bounded queue; a full queue drops it (counted): the client never waits.
//!
//! Workers run each job on the target over connections of their own, opened as the session's
//! login with the session's startup parameters and replayed SETs and prepared statements, in
//! read-only transactions with a statement timeout. Answers are compared by column types, row
//! count and a digest of the rows, in order when the statement orders its result (a top-level
//! ORDER BY), in any order otherwise. Because the target lags the source a little, a difference
//! is checked again before it counts: the source is asked again (an answer of its own that
//! changed means the data changed or the query is not deterministic: "unstable"), then the
//! target, then both after a second; only a difference that stays is a mismatch.
//!
//! Bounds: the queue (256 jobs; a sample is not even copied while it is full), the workers (2),
//! the target's time they may take (a quarter of one connection's; workers pause after each
//! query to stay under it), and an
//! error storm (20 failures or target-only errors within 5 s, at least half of the jobs)
//! suspends shadowing for a minute.

use crate::codec;
use crate::replay::{Entry, ReplayLog};
use crate::timeouts::Timeouts;
use crate::upstream::{self, Backend};
use crate::Upstream;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Requests larger than this are not sampled.
pub(crate) const MAX_CAPTURE: usize = 64 * 1024;
const QUEUE: usize = 256;
const WORKERS: usize = 2;
/// Share of one target connection's time the workers may take together (a quarter: on a target
/// that shares its cores with the source, as on the benchmark's machine, the source's latency
/// rose 7% at 8 clients with half).
const TARGET_SHARE: f64 = 0.25;
const MAX_FINGERPRINTS: usize = 2000;
/// The server cancels a shadow query after this (and the worker gives up a little later).
const STATEMENT_TIMEOUT_MS: u64 = 10_000;
const POOL_PER_KEY: usize = 4;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's answer, summarised as it passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Type OIDs of the columns; user-defined types (OID 16384 and up, which differ between
    /// servers) as 0.
    pub columns: Vec<u32>,
    pub rows: u64,
    /// Sum of the rows' hashes (order-insensitive) and a chain of them (order-sensitive).
    pub unordered: u64,
    pub ordered: u64,
    pub tag: String,
    /// SQLSTATE and message of an error.
    pub error: Option<(String, String)>,
    /// The ReadyForQuery status that ended the answer.
    pub ready: Option<u8>,
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Summary {
    /// Takes in one whole backend message.
    pub fn on_frame(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'T' => {
                self.columns = row_description_types(body);
            }
            b'D' => {
                let h = hash_bytes(body);
                self.rows += 1;
                self.unordered = self.unordered.wrapping_add(h);
                self.ordered = self.ordered.rotate_left(5) ^ h;
            }
            b'C' => self.tag = codec::read_cstr(body).map(|(s, _)| s.to_owned()).unwrap_or_default(),
            b'E' => self.error = Some(error_code_message(body)),
            b'Z' => self.ready = body.first().copied(),
            _ => {}
        }
    }

    fn same(&self, other: &Summary, ordered: bool) -> bool {
        self.columns == other.columns
            && self.rows == other.rows
            && self.tag == other.tag
            && self.error.as_ref().map(|e| &e.0) == other.error.as_ref().map(|e| &e.0)
            && if ordered {
                self.ordered == other.ordered
            } else {
                self.unordered == other.unordered
            }
    }

    fn describe(&self, ordered: bool) -> String {
        if let Some((code, message)) = &self.error {
            return format!("error {code}: {message}");
        }
        let digest = if ordered { self.ordered } else { self.unordered };
        format!(
            "{} row(s), column types {:?}, {} digest {:016x}{}",
            self.rows,
            self.columns,
            if ordered { "ordered" } else { "order-insensitive" },
            digest,
            if self.tag.is_empty() {
                String::new()
            } else {
                format!(", \"{}\"", self.tag)
            }
        )
    }
}

fn row_description_types(body: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    if body.len() < 2 {
        return out;
    }
    let n = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
    let mut rest = &body[2..];
    for _ in 0..n {
        let Ok((_, r)) = codec::read_cstr(rest) else {
            break;
        };
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2).
        if r.len() < 18 {
            break;
        }
        let oid = u32::from_be_bytes([r[6], r[7], r[8], r[9]]);
        out.push(if oid >= 16384 { 0 } else { oid });
        rest = &r[18..];
    }
    out
}

fn error_code_message(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&field, r)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Ok((value, r)) = codec::read_cstr(r) else {
            break;
        };
        match field {
            b'C' => code = value.to_owned(),
            b'M' => message = value.to_owned(),
            _ => {}
        }
        rest = r;
    }
    (code, message)
}

/// The SQL a captured request runs, if it is one the shadow can run again: a simple Query, or
/// an extended-protocol batch of one unnamed Parse (or a Bind of a statement in the replay log),
/// Bind, Describe, Execute and Sync. Anything else (a named Parse, Close, a function call, COPY)
/// changes session state or cannot be repeated: None.
pub(crate) fn request_sql(capture: &[u8], replay: &ReplayLog) -> Option<String> {
    let mut rest = capture;
    let mut sql: Option<String> = None;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || rest.len() < 1 + len {
            return None;
        }
        let body = &rest[5..1 + len];
        match tag {
            b'Q' => sql = Some(codec::query_text(body)?.to_owned()),
            b'P' => {
                let (name, r) = codec::read_cstr(body).ok()?;
                if !name.is_empty() {
                    return None;
                }
                sql = Some(codec::read_cstr(r).ok()?.0.to_owned());
            }
            b'B' => {
                let (_portal, r) = codec::read_cstr(body).ok()?;
                let (statement, _) = codec::read_cstr(r).ok()?;
                if !statement.is_empty() {
                    sql = Some(prepared_text(replay, statement)?);
                } else if sql.is_none() {
                    return None;
                }
            }
            b'D' | b'E' | b'S' | b'H' => {}
            _ => return None,
        }
        rest = &rest[1 + len..];
    }
    sql
}

fn prepared_text(replay: &ReplayLog, name: &str) -> Option<String> {
    replay.entries().iter().rev().find_map(|e| match e {
        Entry::Parse { name: n, raw } if n == name => {
            let body = raw.get(5..)?;
            let (_, r) = codec::read_cstr(body).ok()?;
            Some(codec::read_cstr(r).ok()?.0.to_owned())
        }
        _ => None,
    })
}

/// One sampled request, answered by the source, to run on the target.
#[derive(Debug)]
pub(crate) struct Job {
    pub user: String,
    pub params: Vec<(String, String)>,
    pub replay: ReplayLog,
    pub request: Bytes,
    pub sql: String,
    pub source: Summary,
    pub source_latency: Duration,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// A difference that stayed: the statement and both answers.
#[derive(Debug, Clone, PartialEq)]
pub struct MismatchExample {
    pub sql: String,
    pub source: String,
    pub target: String,
    pub at: SystemTime,
}

/// An error only the target gave.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetError {
    pub sql: String,
    pub code: String,
    pub message: String,
    pub at: SystemTime,
}

/// What shadow traffic found for one query fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct FingerprintReport {
    /// The normalised statement (values replaced by `?`).
    pub fingerprint: String,
    /// Sampled statements the target ran.
    pub executions: u64,
    /// Same answer on both.
    pub matched: u64,
    /// Different answers that stayed different when checked again.
    pub mismatches: u64,
    /// Different at first, the same when checked again (the target had not applied a change yet).
    pub transient: u64,
    /// The source's own answer changed between two runs (data changed, or not deterministic).
    pub unstable: u64,
    /// Errors only the target gave.
    pub target_errors: u64,
    /// The statement wrote after all (the target's read-only transaction refused it): not compared.
    pub writes: u64,
    /// Runs that could not be done (connection, timeout).
    pub failures: u64,
    pub source_latency: Latency,
    pub target_latency: Latency,
    /// Target p50 over source p50.
    pub slowdown: f64,
    pub mismatch: Option<MismatchExample>,
    pub target_error: Option<TargetError>,
}

/// Everything shadow traffic found since it started.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowReport {
    /// Percent of eligible requests sampled now.
    pub sample_percent: f64,
    /// When sampling was last turned on (None: off).
    pub since: Option<SystemTime>,
    /// Why shadowing is suspended, until when.
    pub suspended: Option<(String, SystemTime)>,
    /// Samples dropped because the queue was full, or shadowing suspended.
    pub dropped: u64,
    /// Samples skipped because the target lagged (over the read lag bound).
    pub skipped_lagging: u64,
    /// Samples queued or being compared now.
    pub pending: u64,
    /// The most recent mismatch or target-only error, of any fingerprint.
    pub last_problem: Option<SystemTime>,
    /// Fingerprints: mismatches first, then target-only errors, then the slowest on the target.
    pub fingerprints: Vec<FingerprintReport>,
}

const BUCKETS: usize = 200;

/// Latencies in buckets 10% wide, from 1 µs to about 3 minutes.
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u32>,
    n: u64,
}

impl Histogram {
    fn add(&mut self, d: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let us = d.as_secs_f64() * 1e6;
        let i = if us <= 1.0 { 0 } else { (us.ln() / 1.1f64.ln()) as usize };
        self.counts[i.min(BUCKETS - 1)] += 1;
        self.n += 1;
    }

    /// The upper bound of the bucket holding the p-th percentile, in ms.
    fn percentile(&self, p: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let want = ((self.n as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= want {
                return 1.1f64.powi(i as i32 + 1) / 1000.0;
            }
        }
        0.0
    }

    fn latency(&self) -> Latency {
        Latency {
            p50_ms: self.percentile(0.50),
            p95_ms: self.percentile(0.95),
            p99_ms: self.percentile(0.99),
        }
    }
}

#[derive(Debug, Default)]
struct Book {
    entries: HashMap<String, Tally>,
    last_problem: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Tally {
    executions: u64,
    matched: u64,
    mismatches: u64,
    transient: u64,
    unstable: u64,
    target_errors: u64,
    writes: u64,
    failures: u64,
    source: Histogram,
    target: Histogram,
    mismatch: Option<MismatchExample>,
    target_error: Option<TargetError>,
}

/// How one job ended.
enum Verdict {
    Matched,
    Transient,
    Unstable,
    Mismatch(MismatchExample),
    TargetError(TargetError),
    Write,
    Failure(String),
}

#[derive(Debug, Default)]
struct Storm {
    window: Option<Instant>,
    jobs: u32,
    bad: u32,
}

/// Shadow traffic's state, shared by sessions (sampling) and workers.
#[derive(Debug, Default)]
pub(crate) struct Shadow {
    /// Requests sampled, in parts per million.
    sample_ppm: AtomicU32,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    book: Mutex<Book>,
    since: Mutex<Option<SystemTime>>,
    suspended: Mutex<Option<(String, Instant, SystemTime)>>,
    storm: Mutex<Storm>,
    pub dropped: AtomicU64,
    /// Jobs queued or being judged.
    pending: AtomicU64,
    /// Samples skipped because the target lagged.
    pub lagging: AtomicU64,
    /// Source and target, once known.
    upstreams: Mutex<Option<(Upstream, Upstream)>>,
    /// Server process ids of the workers' connections (they are the proxy's, not direct ones).
    pub pids: Mutex<HashSet<i32>>,
    pool: Mutex<HashMap<(String, u64), Vec<Backend>>>,
}

impl Shadow {
    /// Whether to sample the request a session starts now (one atomic load when off).
    pub fn roll(&self) -> bool {
        let ppm = self.sample_ppm.load(Relaxed);
        if ppm == 0 || (ppm < 1_000_000 && rand::random::<u32>() % 1_000_000 >= ppm) {
            return false;
        }
        // A full queue would drop the sample: do not copy and summarise it at all.
        if self.pending.load(Relaxed) >= QUEUE as u64 {
            self.dropped.fetch_add(1, Relaxed);
            return false;
        }
        true
    }

    /// Whether a session on `upstream` is on the source being shadowed.
    pub fn shadows(&self, upstream: &str) -> bool {
        lock(&self.upstreams)
            .as_ref()
            .is_some_and(|(s, t)| s.name == upstream && t.name != upstream)
    }

    /// Whether the target may take shadow queries now (its lag under the bound); counts the
    /// samples skipped when not.
    pub fn target_fit(&self, read: &crate::read::ReadRouting) -> bool {
        let fit = read.ready();
        if !fit {
            self.lagging.fetch_add(1, Relaxed);
        }
        fit
    }

    pub fn set_upstreams(&self, source: Upstream, target: Upstream) {
        *lock(&self.upstreams) = Some((source, target));
    }

    /// Sets the sample (percent of eligible requests); starts the workers the first time.
    pub fn set_sample(self: &Arc<Self>, percent: f64, timeouts: Timeouts) -> f64 {
        let ppm = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        let old = self.sample_ppm.swap(ppm, AcqRel);
        if ppm > 0 && old == 0 {
            *lock(&self.since) = Some(SystemTime::now());
        }
        if ppm == 0 {
            *lock(&self.since) = None;
        }
        let mut queue = lock(&self.queue);
        if ppm > 0 && queue.is_none() {
            let (tx, rx) = mpsc::channel(QUEUE);
            *queue = Some(tx);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..WORKERS {
                tokio::spawn(worker(self.clone(), rx.clone(), timeouts));
            }
        }
        f64::from(old) / 10_000.0
    }

    /// Queues a job, or drops it (counted) when the queue is full or shadowing is suspended.
    pub fn submit(&self, job: Job) {
        if self.suspended_now().is_some() {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.pending.fetch_add(1, Relaxed);
        let sent = lock(&self.queue).as_ref().map(|q| q.try_send(job).is_ok());
        if sent != Some(true) {
            self.pending.fetch_sub(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    fn suspended_now(&self) -> Option<(String, SystemTime)> {
        let mut s = lock(&self.suspended);
        match &*s {
            Some((_, until, _)) if Instant::now() >= *until => {
                tracing::info!("shadow traffic resumes after its suspension");
                *s = None;
                None
            }
            Some((why, _, until)) => Some((why.clone(), *until)),
            None => None,
        }
    }

    pub fn report(&self) -> ShadowReport {
        let book = lock(&self.book);
        let mut fingerprints: Vec<FingerprintReport> = book
            .entries
            .iter()
            .map(|(fp, t)| {
                let (s, g) = (t.source.latency(), t.target.latency());
                FingerprintReport {
                    fingerprint: fp.clone(),
                    executions: t.executions,
                    matched: t.matched,
                    mismatches: t.mismatches,
                    transient: t.transient,
                    unstable: t.unstable,
                    target_errors: t.target_errors,
                    writes: t.writes,
                    failures: t.failures,
                    source_latency: s,
                    target_latency: g,
                    slowdown: if s.p50_ms > 0.0 { g.p50_ms / s.p50_ms } else { 0.0 },
                    mismatch: t.mismatch.clone(),
                    target_error: t.target_error.clone(),
                }
            })
            .collect();
        fingerprints.sort_by(|a, b| {
            (b.mismatches > 0, b.target_errors > 0)
                .cmp(&(a.mismatches > 0, a.target_errors > 0))
                .then(b.slowdown.total_cmp(&a.slowdown))
        });
        ShadowReport {
            sample_percent: f64::from(self.sample_ppm.load(Relaxed)) / 10_000.0,
            since: *lock(&self.since),
            suspended: self.suspended_now(),
            dropped: self.dropped.load(Relaxed),
            skipped_lagging: self.lagging.load(Relaxed),
            pending: self.pending.load(Relaxed),
            last_problem: book.last_problem,
            fingerprints,
        }
    }

    fn record(&self, sql: &str, job: &Job, target_latency: Option<Duration>, verdict: Verdict) {
        let fp = crate::sql::fingerprint(sql);
        let mut book = lock(&self.book);
        if !book.entries.contains_key(&fp) && book.entries.len() >= MAX_FINGERPRINTS {
            return;
        }
        let problem = matches!(verdict, Verdict::Mismatch(_) | Verdict::TargetError(_));
        if problem {
            book.last_problem = Some(SystemTime::now());
        }
        let t = book.entries.entry(fp).or_default();
        t.executions += 1;
        t.source.add(job.source_latency);
        if let Some(l) = target_latency {
            t.target.add(l);
        }
        match verdict {
            Verdict::Matched => t.matched += 1,
            Verdict::Transient => t.transient += 1,
            Verdict::Unstable => t.unstable += 1,
            Verdict::Write => t.writes += 1,
            Verdict::Failure(_) => t.failures += 1,
            Verdict::Mismatch(m) => {
                t.mismatches += 1;
                t.mismatch = Some(m);
            }
            Verdict::TargetError(e) => {
                t.target_errors += 1;
                t.target_error = Some(e);
            }
        }
    }

    /// Counts a job's outcome toward an error storm; suspends shadowing when one starts.
    fn storm(&self, bad: bool) {
        let mut s = lock(&self.storm);
        let now = Instant::now();
        if s.window.is_none_or(|w| now.duration_since(w) > Duration::from_secs(5)) {
            *s = Storm {
                window: Some(now),
                jobs: 0,
                bad: 0,
            };
        }
        s.jobs += 1;
        s.bad += u32::from(bad);
        if s.bad >= 20 && s.bad * 2 >= s.jobs {
            let why = format!(
                "{} of {} shadow queries failed or erred only on the target within 5 s",
                s.bad, s.jobs
            );
            tracing::warn!("{why}: shadow traffic suspended for 60 s");
            *lock(&self.suspended) = Some((why, now + Duration::from_secs(60), SystemTime::now() + Duration::from_secs(60)));
            *s = Storm::default();
        }
    }

    /// Runs a job's request on `up`: a pooled connection of the same login, parameters and
    /// replayed state, or a new one.
    async fn run_on(&self, up: &Upstream, job: &Job, t: &Timeouts) -> Result<(Summary, Duration), String> {
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            job.user.hash(&mut h);
            job.params.hash(&mut h);
            for e in job.replay.entries() {
                match e {
                    Entry::Set { sql, .. } | Entry::Prepare { sql, .. } => sql.hash(&mut h),
                    Entry::Parse { raw, .. } => raw.hash(&mut h),
                }
            }
            (up.name.clone(), h.finish())
        };
        let pooled = lock(&self.pool).get_mut(&key).and_then(Vec::pop);
        let mut backend = match pooled {
            Some(b) => b,
            None => {
                let mut params = crate::read::read_only_params(job.params.clone());
                if let Some((_, v)) = params.iter_mut().find(|(k, _)| k == "options") {
                    v.push_str(&format!(" -c statement_timeout={STATEMENT_TIMEOUT_MS}"));
                }
                let mut b = upstream::connect(up, &job.user, &params, t).await.map_err(|e| e.to_string())?;
                if let Err(e) = upstream::replay(&mut b, &job.replay, t.replay).await {
                    b.terminate().await;
                    return Err(e.to_string());
                }
                lock(&self.pids).insert(b.key.process_id);
                b
            }
        };
        let started = Instant::now();
        let limit = Duration::from_millis(STATEMENT_TIMEOUT_MS) + t.connect;
        let answer = tokio::time::timeout(limit, exchange(&mut backend, &job.request)).await;
        let elapsed = started.elapsed();
        match answer {
            Ok(Ok(summary)) if summary.ready == Some(b'I') => {
                let mut pool = lock(&self.pool);
                let slot = pool.entry(key).or_default();
                if slot.len() < POOL_PER_KEY {
                    slot.push(backend);
                } else {
                    lock(&self.pids).remove(&backend.key.process_id);
                    tokio::spawn(backend.terminate());
                }
                Ok((summary, elapsed))
            }
            other => {
                lock(&self.pids).remove(&backend.key.process_id);
                tokio::spawn(backend.terminate());
                match other {
                    Ok(Ok(summary)) => Ok((summary, elapsed)),
                    Ok(Err(e)) => Err(format!("on {}: {e}", up.name)),
                    Err(_) => Err(format!("on {}: no answer within {} s", up.name, limit.as_secs())),
                }
            }
        }
    }

    /// Closes every pooled connection (after a switch, or when shadowing stops).
    fn clear_pool(&self) {
        let pool = std::mem::take(&mut *lock(&self.pool));
        let mut pids = lock(&self.pids);
        for b in pool.into_values().flatten() {
            pids.remove(&b.key.process_id);
            tokio::spawn(b.terminate());
        }
    }
}

/// Sends a request and reads its answer up to ReadyForQuery.
async fn exchange(b: &mut Backend, request: &[u8]) -> std::io::Result<Summary> {
    b.stream.write_all(request).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut s = Summary::default();
    loop {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid message length"));
            }
            let total = 1 + len as usize;
            if buf.len() < total {
                break;
            }
            let msg = buf.split_to(total);
            s.on_frame(msg[0], &msg[5..]);
            if msg[0] == b'Z' {
                return Ok(s);
            }
        }
        if b.stream.read_some(&mut buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
    }
}

async fn worker(shadow: Arc<Shadow>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>, t: Timeouts) {
    let mut debt = Duration::ZERO;
    loop {
        let Some(job) = rx.lock().await.recv().await else {
            return;
        };
        let Some((source, target)) = lock(&shadow.upstreams).clone() else {
            shadow.pending.fetch_sub(1, Relaxed);
            continue;
        };
        if shadow.sample_ppm.load(Relaxed) == 0 {
            shadow.pending.fetch_sub(1, Relaxed);
            shadow.clear_pool();
            continue;
        }
        let (verdict, target_latency) = judge(&shadow, &source, &target, &job, &t).await;
        let bad = matches!(verdict, Verdict::Failure(_) | Verdict::TargetError(_));
        if let Verdict::Failure(e) = &verdict {
            tracing::debug!(error = %e, "shadow query failed");
        }
        shadow.record(&job.sql, &job, target_latency, verdict);
        shadow.pending.fetch_sub(1, Relaxed);
        shadow.storm(bad);
        // Stay under the target's share: pause in proportion to the time the query took.
        if let Some(l) = target_latency {
            debt += l.mul_f64(WORKERS as f64 / TARGET_SHARE - 1.0);
            if debt >= Duration::from_millis(2) {
                tokio::time::sleep(debt).await;
                debt = Duration::ZERO;
            }
        }
    }
}

/// Runs a job on the target and decides, checking a difference again before it counts.
async fn judge(shadow: &Shadow, source: &Upstream, target: &Upstream, job: &Job, t: &Timeouts) -> (Verdict, Option<Duration>) {
    let ordered = crate::sql::orders_result(&job.sql);
    let (first, latency) = match shadow.run_on(target, job, t).await {
        Ok(x) => x,
        Err(e) => return (Verdict::Failure(e), None),
    };
    let latency = Some(latency);
    if job.source.error.is_none() {
        if let Some((code, message)) = &first.error {
            if code == "25006" {
                return (Verdict::Write, latency);
            }
            return (
                Verdict::TargetError(TargetError {
                    sql: job.sql.clone(),
                    code: code.clone(),
                    message: message.clone(),
                    at: SystemTime::now(),
                }),
                latency,
            );
        }
    }
    if job.source.same(&first, ordered) {
        return (Verdict::Matched, latency);
    }
    // Different: the target may not have applied a recent change yet. Ask again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = async {
        let (s2, _) = shadow.run_on(source, job, t).await?;
        if !s2.same(&job.source, ordered) {
            return Ok::<_, String>(Verdict::Unstable);
        }
        let (t2, _) = shadow.run_on(target, job, t).await?;
        if t2.same(&s2, ordered) {
            return Ok(Verdict::Transient);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (t3, _) = shadow.run_on(target, job, t).await?;
        let (s3, _) = shadow.run_on(source, job, t).await?;
        if !s3.same(&s2, ordered) {
            return Ok(Verdict::Unstable);
        }
        if t3.same(&s3, ordered) {
            return Ok(Verdict::Transient);
        }
        Ok(Verdict::Mismatch(MismatchExample {
            sql: job.sql.clone(),
            source: s3.describe(ordered),
            target: t3.describe(ordered),
            at: SystemTime::now(),
        }))
    };
    match again.await {
        Ok(v) => (v, latency),
        Err(e) => (Verdict::Failure(e), latency),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn summaries_tell_order_and_content_apart() {
        let rows = [b"\x00\x01\x00\x00\x00\x01a".to_vec(), b"\x00\x01\x00\x00\x00\x01b".to_vec()];
        let sum = |order: [usize; 2]| {
            let mut s = Summary::default();
            for i in order {
                s.on_frame(b'D', &rows[i]);
            }
            s.on_frame(b'C', b"SELECT 2\0");
            s.on_frame(b'Z', b"I");
            s
        };
        let (ab, ba) = (sum([0, 1]), sum([1, 0]));
        assert!(ab.same(&ba, false));
        assert!(!ab.same(&ba, true));
        assert_eq!(ab.ready, Some(b'I'));
        assert_eq!(ab.rows, 2);
        let mut e = Summary::default();
        e.on_frame(b'E', b"SERROR\0C42501\0Mpermission denied for table t\0\0");
        assert_eq!(e.error, Some(("42501".into(), "permission denied for table t".into())));
    }

    #[test]
    fn row_descriptions_give_builtin_types_and_hide_user_types() {
        let mut body = BytesMut::new();
        body.put_i16(2);
        for (name, oid) in [("a", 23u32), ("mood", 16500)] {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_u32(1234);
            body.put_i16(1);
            body.put_u32(oid);
            body.put_i16(4);
            body.put_i32(-1);
            body.put_i16(0);
        }
        assert_eq!(row_description_types(&body), vec![23, 0]);
    }

    #[test]
    fn only_repeatable_requests_give_their_sql() {
        let q = msg(b'Q', b"SELECT 1\0");
        assert_eq!(request_sql(&q, &ReplayLog::default()).as_deref(), Some("SELECT 1"));
        let mut batch = msg(b'P', b"\0SELECT $1\0\0\0");
        batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(msg(b'E', b"\0\0\0\0\0"));
        batch.extend(msg(b'S', b""));
        assert_eq!(request_sql(&batch, &ReplayLog::default()).as_deref(), Some("SELECT $1"));
        // A named Parse changes the session: not repeated.
        let named = msg(b'P', b"s1\0SELECT 1\0\0\0");
        assert_eq!(request_sql(&named, &ReplayLog::default()), None);
        // A Bind of a statement prepared earlier: its text from the replay log.
        let mut log = ReplayLog::default();
        log.add_parse("s1".into(), Bytes::from(msg(b'P', b"s1\0SELECT 2\0\0\0")));
        let mut bind = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
        bind.extend(msg(b'E', b"\0\0\0\0\0"));
        bind.extend(msg(b'S', b""));
        assert_eq!(request_sql(&bind, &log).as_deref(), Some("SELECT 2"));
        assert_eq!(request_sql(&msg(b'F', b"\0"), &log), None);
    }

    #[test]
    fn percentiles_come_within_ten_percent() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.add(Duration::from_millis(ms));
        }
        let l = h.latency();
        assert!((l.p50_ms - 50.0).abs() <= 5.5, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() <= 10.0, "{l:?}");
    }
}
