//! The parallel snapshot copy: binary COPY out of the source, binary COPY into the target.
//!
//! Every worker holds one source connection inside the migration's exported snapshot
//! (`SET TRANSACTION SNAPSHOT`) and one target connection. Work items are whole tables or page
//! ranges of large tables (`ctid` ranges, served by TID range scans), largest first. Bytes pass
//! from `COPY ... TO STDOUT` to `COPY ... FROM STDIN` without decoding; a [`RowCounter`] walks
//! them to count rows and prove each stream complete.
//!
//! Each item commits its rows and its progress record in one target transaction, so progress
//! never claims rows that are not there. A whole table is loaded in the transaction that
//! truncates it, with `COPY FREEZE` (no later vacuum freeze, hint bits set at load). Ranges of a
//! split table cannot use FREEZE (only one transaction may truncate); the table is truncated
//! once before its ranges start.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use ferry_core::ident::quote_ident;
use ferry_core::TableName;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::copy_binary::RowCounter;
use crate::endpoint::Endpoint;
use crate::error::PgError;
use crate::state::StateStore;

/// A page range `[start, end)` of a table; `end = None` runs to the end of the table, so rows
/// in pages added after planning are never missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PageRange {
    /// First page.
    pub start: u32,
    /// Page after the last, or open-ended.
    pub end: Option<u32>,
}

/// One unit of copy work.
#[derive(Debug, Clone)]
pub struct CopyItem {
    /// Index into the progress list.
    pub table_index: usize,
    /// Table (a table that holds rows, or a leaf partition).
    pub table: TableName,
    /// Columns, in order.
    pub columns: Vec<String>,
    /// The range, or the whole table.
    pub range: Option<PageRange>,
    /// Estimated bytes, for ordering.
    pub bytes: i64,
}

/// Live progress of one table, shared with progress bars and metrics.
#[derive(Debug, Default)]
pub struct TableProgress {
    /// Rows streamed so far (including rows of an item not yet committed).
    pub rows: AtomicU64,
    /// Bytes streamed so far.
    pub bytes: AtomicU64,
    /// Milliseconds after the load started when the table's first item started (0: not yet).
    pub started_ms: AtomicU64,
    /// Milliseconds after the load started when its latest item finished.
    pub finished_ms: AtomicU64,
}

/// Splits tables into copy items. Tables over `split_bytes` are cut into page ranges of about
/// `split_bytes` each (at least two), when the source supports TID range scans (PostgreSQL 14+).
pub fn plan_items(tables: &[(TableName, Vec<String>, i64)], split_bytes: i64, tid_range_scans: bool) -> Vec<CopyItem> {
    const PAGE: i64 = 8192;
    let mut items = Vec::new();
    for (i, (t, cols, bytes)) in tables.iter().enumerate() {
        let pages = bytes / PAGE;
        let n = if tid_range_scans && split_bytes > 0 && *bytes > split_bytes {
            ((bytes + split_bytes - 1) / split_bytes).clamp(2, 256)
        } else {
            1
        };
        if n == 1 {
            items.push(CopyItem {
                table_index: i,
                table: t.clone(),
                columns: cols.clone(),
                range: None,
                bytes: *bytes,
            });
            continue;
        }
        let per = (pages + n - 1) / n;
        for k in 0..n {
            let start = (k * per) as u32;
            let end = if k == n - 1 { None } else { Some(((k + 1) * per) as u32) };
            items.push(CopyItem {
                table_index: i,
                table: t.clone(),
                columns: cols.clone(),
                range: Some(PageRange { start, end }),
                bytes: per * PAGE,
            });
        }
    }
    // Largest first keeps the tail short; ranges of one table stay in order.
    items.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.table_index.cmp(&b.table_index)));
    items
}

/// The column list `("a", "b")`.
fn column_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

/// What a worker needs to know.
#[derive(Debug, Clone)]
pub struct CopyJob {
    /// Source.
    pub source: Endpoint,
    /// Target.
    pub target: Endpoint,
    /// Exported snapshot name.
    pub snapshot: String,
    /// Parallel workers.
    pub jobs: usize,
    /// State store.
    pub store: StateStore,
    /// Migration id.
    pub migration_id: String,
    /// When the load started (for per-table timings).
    pub started: std::time::Instant,
}

/// Opens on `c` a read-only REPEATABLE READ transaction that imports `snapshot` (the one the
/// migration's slot exported), so that catalog reads see the source as the copy does.
pub async fn import_for_catalog(c: &Client, snapshot: &str) -> Result<(), PgError> {
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        ferry_core::ident::quote_literal(snapshot)
    ))
    .await
    .map_err(|e| PgError::query("importing the snapshot for catalog reads", e))
}

/// Opens on `c` a read-only REPEATABLE READ transaction of its own (when there is no exported
/// snapshot to import); `what` names what it reads, for the error.
pub async fn begin_consistent_read(c: &Client, what: &str) -> Result<(), PgError> {
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| PgError::query(format!("opening a snapshot for {what}"), e))
}

/// Ends the read-only transaction opened on `c` by [`import_for_catalog`] or
/// [`begin_consistent_read`].
pub async fn end_read(c: &Client) -> Result<(), PgError> {
    c.batch_execute("COMMIT")
        .await
        .map_err(|e| PgError::query("ending a read-only snapshot transaction", e))
}

/// Empties `table` on the target before its ranges load: ranges load concurrently, so no
/// single transaction can truncate for `COPY ... FREEZE`; leftovers of an interrupted run are
/// cleared once, up front.
pub async fn truncate_for_ranges(c: &Client, table: &TableName) -> Result<(), PgError> {
    c.batch_execute(&format!("TRUNCATE ONLY {}", table.quoted()))
        .await
        .map_err(|e| PgError::query(format!("truncating {table} before its ranges load"), e))
}

/// Copies every item with `job.jobs` workers. Returns at the first failure (the failed item's
/// transaction is rolled back; committed items stay committed and recorded).
pub async fn copy_items(job: CopyJob, items: Vec<CopyItem>, progress: Arc<Vec<TableProgress>>) -> Result<(), PgError> {
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let mut set = tokio::task::JoinSet::new();
    let workers = job.jobs.max(1);
    let job = Arc::new(job);
    for w in 0..workers {
        let (queue, progress, job) = (queue.clone(), progress.clone(), job.clone());
        set.spawn(async move { worker(w, &job, &queue, &progress).await });
    }
    while let Some(res) = set.join_next().await {
        let outcome = match res {
            Ok(r) => r,
            Err(e) => Err(PgError::config("full load", format!("a copy worker failed: {e}"), "see the log")),
        };
        if let Err(e) = outcome {
            set.abort_all();
            return Err(e);
        }
    }
    Ok(())
}

async fn worker(w: usize, job: &CopyJob, queue: &Mutex<VecDeque<CopyItem>>, progress: &[TableProgress]) -> Result<(), PgError> {
    if queue.lock().await.is_empty() {
        return Ok(());
    }
    let src = job.source.connect(&format!("copy-{w}")).await?;
    src.batch_execute(&format!(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;
         BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        job.snapshot.replace('\'', "")
    ))
    .await
    .map_err(|e| {
        PgError::query("importing the migration's snapshot on the source", e)
            .with_fix("the snapshot is only valid while Ferry's replication connection is open; rerun the same command to resume")
    })?;
    let tgt = job.target.connect(&format!("load-{w}")).await?;
    // The progress record commits with the rows, so an asynchronous commit lost in a target
    // crash loses both together and the item is simply copied again.
    tgt.batch_execute("SET synchronous_commit = off; SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(|e| PgError::query("preparing a target connection", e))?;
    loop {
        let Some(item) = queue.lock().await.pop_front() else {
            break;
        };
        let span = tracing::debug_span!("copy", table = %item.table, range = ?item.range);
        let _enter = span.enter();
        let p = &progress[item.table_index];
        let now = job.started.elapsed().as_millis() as u64 + 1;
        let _ = p.started_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        copy_one(job, &src, &tgt, &item, p).await?;
        p.finished_ms
            .fetch_max(job.started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }
    let _ = src.batch_execute("COMMIT").await;
    Ok(())
}

async fn copy_one(job: &CopyJob, src: &Client, tgt: &Client, item: &CopyItem, progress: &TableProgress) -> Result<(), PgError> {
    let t = &item.table;
    let cols = column_list(&item.columns);
    let qt = t.quoted();
    let (out_sql, in_sql, begin) = match item.range {
        None => (
            format!("COPY {qt} ({cols}) TO STDOUT (FORMAT binary)"),
            format!("COPY {qt} ({cols}) FROM STDIN (FORMAT binary, FREEZE)"),
            format!("BEGIN; TRUNCATE ONLY {qt}"),
        ),
        Some(r) => {
            let upper = r.end.map(|e| format!(" AND ctid < '({e},0)'::tid")).unwrap_or_default();
            (
                format!(
                    "COPY (SELECT {cols} FROM ONLY {qt} WHERE ctid >= '({},0)'::tid{upper}) TO STDOUT (FORMAT binary)",
                    r.start
                ),
                format!("COPY {qt} ({cols}) FROM STDIN (FORMAT binary)"),
                "BEGIN".to_string(),
            )
        }
    };
    let ctx = |what: &str| {
        format!(
            "{what} {t}{}",
            item.range
                .map(|r| format!(" (pages {}..{})", r.start, r.end.map(|e| e.to_string()).unwrap_or_default()))
                .unwrap_or_default()
        )
    };
    tgt.batch_execute(&begin)
        .await
        .map_err(|e| PgError::query(ctx("starting the load of"), e))?;
    let result = async {
        let sink = tgt
            .copy_in::<_, bytes::Bytes>(&in_sql)
            .await
            .map_err(|e| PgError::query(ctx("COPY into the target for"), e))?;
        let stream = src
            .copy_out(&out_sql)
            .await
            .map_err(|e| PgError::query(ctx("COPY from the source for"), e))?;
        futures_util::pin_mut!(sink);
        futures_util::pin_mut!(stream);
        let mut counter = RowCounter::new();
        let mut batch = BytesMut::with_capacity(128 * 1024);
        let mut last_rows = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PgError::query(ctx("reading rows of"), e))?;
            counter.feed(&chunk).map_err(|e| {
                PgError::config(
                    ctx("reading rows of"),
                    e.to_string(),
                    "report this as a bug: the source sent data Ferry could not frame",
                )
            })?;
            batch.extend_from_slice(&chunk);
            // Larger CopyData frames mean fewer syscalls and channel hops on both ends.
            if batch.len() >= 64 * 1024 {
                let rows = counter.rows();
                progress.rows.fetch_add(rows - last_rows, Ordering::Relaxed);
                progress.bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                last_rows = rows;
                sink.feed(batch.split().freeze())
                    .await
                    .map_err(|e| PgError::query(ctx("writing rows of"), e))?;
            }
        }
        let rows = counter.finish().map_err(|e| {
            PgError::config(
                ctx("reading rows of"),
                e.to_string(),
                "the source stream was cut short; rerun to resume",
            )
        })?;
        progress.rows.fetch_add(rows - last_rows, Ordering::Relaxed);
        progress.bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if !batch.is_empty() {
            sink.feed(batch.split().freeze())
                .await
                .map_err(|e| PgError::query(ctx("writing rows of"), e))?;
        }
        let loaded = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| PgError::query(ctx("finishing COPY into the target for"), e))?;
        if loaded != rows {
            return Err(PgError::config(
                ctx("loading"),
                format!("the source sent {rows} rows but the target loaded {loaded}"),
                "report this as a bug",
            ));
        }
        job.store
            .finish_range(tgt, &job.migration_id, t, rows as i64, counter.bytes() as i64)
            .await?;
        tgt.batch_execute("COMMIT")
            .await
            .map_err(|e| PgError::query(ctx("committing"), e))?;
        Ok::<_, PgError>(())
    }
    .await;
    if result.is_err() {
        let _ = tgt.batch_execute("ROLLBACK").await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_large_tables_into_covering_ranges() {
        let t = |n: &str| TableName::new("public", n);
        let tables = vec![
            (t("small"), vec!["a".to_string()], 8192 * 10),
            (t("big"), vec!["a".to_string()], 8192 * 1000),
        ];
        let items = plan_items(&tables, 8192 * 300, true);
        let ranges: Vec<_> = items.iter().filter(|i| i.table.name == "big").map(|i| i.range.unwrap()).collect();
        assert_eq!(ranges.len(), 4);
        let mut sorted = ranges.clone();
        sorted.sort_by_key(|r| r.start);
        assert_eq!(sorted[0].start, 0);
        for w in sorted.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start), "ranges must touch");
        }
        assert_eq!(sorted.last().unwrap().end, None, "last range is open-ended");
        assert_eq!(items.last().unwrap().table.name, "small");
        assert!(items.iter().find(|i| i.table.name == "small").unwrap().range.is_none());
        // Without TID range scans nothing is split.
        assert_eq!(plan_items(&tables, 8192 * 300, false).len(), 2);
    }
}
