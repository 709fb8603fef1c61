//! Row-exact verification: every row and every value of the target against the source, each
//! side read in one snapshot, naming every differing row and column.
//!
//! How:
//! - Both sides stream each table (or each key range of it) with binary `COPY (SELECT ... ORDER
//!   BY key) TO STDOUT`, and Ferry merges the two ordered streams: a key only on the source is
//!   missing on the target, a key only on the target is extra, a key on both whose row bytes
//!   differ has its differing columns named. Reading both sides at COPY speed and comparing
//!   bytes is cheaper than asking each server to hash every row, and finds the row at once.
//! - Values compare in their binary send form, which is canonical for PostgreSQL's types:
//!   equal values have equal bytes on every server version, while any real difference (a
//!   microsecond, a trailing space, NaN, NFC vs NFD, NULL vs empty) changes them.
//! - Order: integer keys order natively (index order, ranges split by key value); any other key
//!   orders by its text form under the C collation, which Ferry compares bytewise; a table
//!   without a key orders by its whole row's text, so duplicate rows compare as a multiset.
//! - Differences are counted in full; the first `max_details` per table are described with both
//!   sides' values (text form, long values shortened), read in the same snapshots.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use ferry_core::ident::{quote_ident, quote_literal};
use ferry_core::{TableFilter, TableName};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::endpoint::Endpoint;
use crate::error::PgError;
use crate::replication::ReplicationConnection;

/// One column compared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type as `format_type` prints it.
    pub type_sql: String,
    /// Generated column (compared, not written by repair).
    pub generated: bool,
}

/// How rows of a table are put in the same order on both sides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Order {
    /// Key columns (indexes into `columns`) of integer types: native order.
    IntKey(Vec<usize>),
    /// Key columns of other types: the key's text form under the C collation.
    TextKey(Vec<usize>),
    /// No key: the whole row's text form under the C collation (a multiset comparison).
    WholeRow,
}

/// A table to verify.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TablePlan {
    /// Name.
    pub name: TableName,
    /// Columns present on both sides, in source order.
    pub columns: Vec<Column>,
    /// Row order.
    pub order: Order,
    /// Estimated rows on the source.
    pub estimated_rows: i64,
    /// Why the table cannot be compared row by row (missing on the target, a column missing or
    /// of another type): reported as a difference of the table itself.
    pub problem: Option<String>,
}

/// Kind of difference.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The row is on the source only.
    MissingOnTarget,
    /// The row is on the target only.
    ExtraOnTarget,
    /// The row is on both sides with different values.
    ValueDiffers,
    /// The table cannot be compared (see the message).
    Table,
}

/// One column's two values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnDiff {
    /// Column.
    pub column: String,
    /// Source value (text form, shortened); None for NULL.
    pub source: Option<String>,
    /// Target value.
    pub target: Option<String>,
}

/// One differing row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Difference {
    /// Table.
    pub table: String,
    /// Key (`col=value, ...`), or the row for tables without a key.
    pub key: String,
    /// Kind.
    pub kind: DiffKind,
    /// Differing columns (value_differs), or the row's columns (missing / extra).
    pub columns: Vec<ColumnDiff>,
}

/// A table's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableReport {
    /// Table.
    pub table: String,
    /// Rows read on the source.
    pub source_rows: u64,
    /// Rows read on the target.
    pub target_rows: u64,
    /// Rows compared (present on both sides).
    pub rows_compared: u64,
    /// Ranges the table was read in.
    pub ranges: u32,
    /// Differences found (all of them).
    pub differences: u64,
    /// The first differences, described.
    pub details: Vec<Difference>,
    /// Seconds spent (summed over ranges).
    pub seconds: f64,
}

/// A whole run's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Source position the comparison is consistent at (when run against a migration).
    pub source_lsn: Option<String>,
    /// Tables, largest first.
    pub tables: Vec<TableReport>,
    /// Rows compared.
    pub rows_compared: u64,
    /// Differences.
    pub differences: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Report {
    /// True when nothing differs.
    pub fn identical(&self) -> bool {
        self.differences == 0
    }
}

/// Live counters for progress bars and the API.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows read (both sides, max of the two per range).
    pub rows: AtomicU64,
    /// Differences so far.
    pub differences: AtomicU64,
}

/// The two snapshots a run reads: exported snapshot names, valid while their exporting
/// transactions stay open.
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// Source snapshot.
    pub source: String,
    /// Target snapshot.
    pub target: String,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Parallel range readers (each holds one connection per side).
    pub jobs: usize,
    /// Differences described per table.
    pub max_details: usize,
    /// Rows per key range (integer keys).
    pub range_rows: i64,
    /// Compare a hash of each range computed by each server first, and stream the rows of a
    /// range only when its hashes differ. Slower when the servers' CPU is the limit (as on the
    /// benchmark machine), faster when the network is (bench/RESULTS.md).
    pub hash_ranges: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jobs: 2,
            max_details: 100,
            range_rows: 250_000,
            hash_ranges: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Planning

/// Plans the tables `filter` selects, read inside the source and target snapshots.
pub async fn plan(src: &Client, tgt: &Client, filter: &TableFilter, skip_schema: &str) -> Result<Vec<TablePlan>, PgError> {
    let tables = crate::introspect::list_tables(src, filter, Some(skip_schema)).await?;
    let mut plans = Vec::new();
    for t in tables.iter().filter(|t| t.holds_rows()) {
        let cols = columns(src, &t.name).await?;
        let tcols = columns(tgt, &t.name).await?;
        let mut problem = None;
        if tcols.is_empty() {
            problem = Some("the table does not exist on the target".to_string());
        }
        let mut common = Vec::new();
        for (c, key) in &cols {
            match tcols.iter().find(|(tc, _)| tc.name == c.name) {
                Some((tc, _)) if tc.type_sql == c.type_sql => common.push((c.clone(), *key)),
                Some((tc, _)) if problem.is_none() => {
                    problem = Some(format!(
                        "column {} is {} on the source and {} on the target",
                        c.name, c.type_sql, tc.type_sql
                    ))
                }
                None if problem.is_none() => problem = Some(format!("column {} is missing on the target", c.name)),
                _ => {}
            }
        }
        if problem.is_none() {
            if let Some((tc, _)) = tcols.iter().find(|(tc, _)| !cols.iter().any(|(c, _)| c.name == tc.name)) {
                problem = Some(format!("column {} exists on the target only", tc.name));
            }
        }
        let keys: Vec<usize> = common.iter().enumerate().filter(|(_, (_, k))| *k).map(|(i, _)| i).collect();
        let order = if keys.is_empty() {
            Order::WholeRow
        } else if keys
            .iter()
            .all(|&i| matches!(common[i].0.type_sql.as_str(), "smallint" | "integer" | "bigint"))
        {
            Order::IntKey(keys)
        } else {
            Order::TextKey(keys)
        };
        plans.push(TablePlan {
            name: t.name.clone(),
            columns: common.into_iter().map(|(c, _)| c).collect(),
            order,
            estimated_rows: t.estimated_rows.max(0),
            problem,
        });
    }
    plans.sort_by_key(|p| std::cmp::Reverse(p.estimated_rows));
    Ok(plans)
}

/// Columns of a table (none when it does not exist) and whether each is in the key (primary
/// key, else the replica identity index).
async fn columns(c: &Client, t: &TableName) -> Result<Vec<(Column, bool)>, PgError> {
    let rows = c
        .query(
            "WITH r AS (SELECT to_regclass($1) AS oid),
                  k AS (SELECT i.indkey::int2[] AS cols FROM pg_index i, r
                        WHERE i.indrelid = r.oid AND (i.indisprimary OR i.indisreplident)
                        ORDER BY i.indisprimary DESC LIMIT 1)
             SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
                    COALESCE(a.attnum = ANY(k.cols), false)
             FROM pg_attribute a CROSS JOIN r LEFT JOIN k ON true
             WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&t.quoted()],
        )
        .await
        .map_err(|e| PgError::query(format!("reading the columns of {t}"), e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Column {
                    name: r.get(0),
                    type_sql: r.get(1),
                    generated: r.get(2),
                },
                r.get(3),
            )
        })
        .collect())
}

/// A key range of an integer-keyed table (inclusive bounds; None: open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    lo: Option<i64>,
    hi: Option<i64>,
}

/// Splits a table with a single integer key into ranges of about `range_rows` rows by key value.
async fn ranges(src: &Client, p: &TablePlan, range_rows: i64) -> Result<Vec<Range>, PgError> {
    let whole = vec![Range { lo: None, hi: None }];
    let Order::IntKey(keys) = &p.order else { return Ok(whole) };
    if keys.len() != 1 || p.estimated_rows <= range_rows || p.problem.is_some() {
        return Ok(whole);
    }
    let k = quote_ident(&p.columns[keys[0]].name);
    let r = src
        .query_one(&format!("SELECT min({k})::int8, max({k})::int8 FROM ONLY {}", p.name.quoted()), &[])
        .await
        .map_err(|e| PgError::query(format!("reading the key bounds of {}", p.name), e))?;
    let (Some(lo), Some(hi)): (Option<i64>, Option<i64>) = (r.get(0), r.get(1)) else {
        return Ok(whole);
    };
    let n = (p.estimated_rows / range_rows.max(1)).clamp(1, 256);
    let width = ((hi as i128 - lo as i128) / n as i128 + 1).max(1);
    let mut out = Vec::new();
    let mut start = lo as i128;
    while start <= hi as i128 {
        let end = (start + width - 1).min(hi as i128);
        out.push(Range {
            lo: if out.is_empty() { None } else { Some(start as i64) },
            hi: if end >= hi as i128 { None } else { Some(end as i64) },
        });
        start = end + 1;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The SELECT a side streams for a range: (sort key for text orders,) every column, ordered.
fn select_sql(p: &TablePlan, r: Range) -> String {
    let cols: Vec<String> = p.columns.iter().map(|c| format!("t.{}", quote_ident(&c.name))).collect();
    let row_text = |idx: &[usize]| -> String {
        if idx.len() == 1 {
            format!("t.{}::text", quote_ident(&p.columns[idx[0]].name))
        } else {
            format!("ROW({})::text", idx.iter().map(|&i| cols[i].clone()).collect::<Vec<_>>().join(", "))
        }
    };
    let (sort_col, order_by) = match &p.order {
        Order::IntKey(keys) => (None, keys.iter().map(|&i| cols[i].clone()).collect::<Vec<_>>().join(", ")),
        Order::TextKey(keys) => (Some(format!("({}) COLLATE \"C\"", row_text(keys))), "1".to_string()),
        Order::WholeRow => (Some(format!("(ROW({})::text) COLLATE \"C\"", cols.join(", "))), "1".to_string()),
    };
    let mut select: Vec<String> = sort_col.into_iter().collect();
    select.extend(cols.iter().cloned());
    let mut filter = Vec::new();
    if let Order::IntKey(keys) = &p.order {
        let k = &cols[keys[0]];
        if let Some(lo) = r.lo {
            filter.push(format!("{k} >= {lo}"));
        }
        if let Some(hi) = r.hi {
            filter.push(format!("{k} <= {hi}"));
        }
    }
    format!(
        "SELECT {} FROM ONLY {} t{} ORDER BY {order_by}",
        select.join(", "),
        p.name.quoted(),
        if filter.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", filter.join(" AND "))
        }
    )
}

/// One row of a binary COPY stream: its bytes (field count, then length-prefixed fields).
#[derive(Debug, Clone)]
struct Row {
    data: Bytes,
}

impl Row {
    /// Field `i` (None for NULL), found by walking the lengths (keys come first, and other
    /// fields are only looked at in rows that differ).
    fn field(&self, i: usize) -> Option<&[u8]> {
        let d = &self.data[..];
        let mut pos = 2usize;
        for _ in 0..i {
            let len = i32::from_be_bytes([d[pos], d[pos + 1], d[pos + 2], d[pos + 3]]);
            pos += 4 + len.max(0) as usize;
        }
        let len = i32::from_be_bytes([d[pos], d[pos + 1], d[pos + 2], d[pos + 3]]);
        (len >= 0).then(|| &d[pos + 4..pos + 4 + len as usize])
    }
}

/// What the front of a binary COPY buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Not enough bytes yet.
    More,
    /// The file header, this long.
    Header(usize),
    /// A row, this long.
    Row(usize),
    /// The trailer.
    Trailer,
}

/// Looks at the front of `buf` (no I/O, no copy; never panics on bad input).
fn step(buf: &[u8], header_done: bool) -> Result<Step, &'static str> {
    if !header_done {
        if buf.len() < 19 {
            return Ok(Step::More);
        }
        if &buf[..11] != b"PGCOPY\n\xff\r\n\0" {
            return Err("bad signature");
        }
        let ext = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
        return Ok(if buf.len() < 19 + ext { Step::More } else { Step::Header(19 + ext) });
    }
    if buf.len() < 2 {
        return Ok(Step::More);
    }
    let n = i16::from_be_bytes([buf[0], buf[1]]);
    if n == -1 {
        return Ok(Step::Trailer);
    }
    if n < 0 {
        return Err("negative field count");
    }
    let mut pos = 2usize;
    for _ in 0..n {
        if buf.len() < pos + 4 {
            return Ok(Step::More);
        }
        let len = i32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
        if len < -1 {
            return Err("negative field length");
        }
        pos += 4 + len.max(0) as usize;
    }
    Ok(if buf.len() < pos { Step::More } else { Step::Row(pos) })
}

/// Parses rows out of a binary COPY stream as it arrives. PostgreSQL sends one row per
/// CopyData message, so a row is usually its message itself (no copy); rows split across
/// messages are put together in `carry`. The COPY runs on a plain protocol connection of
/// Ferry's own ([`ReplicationConnection::connect_plain`]): messages are cut straight out of its
/// read buffer, without a driver's per-message parsing, channel and task wake-ups.
struct RowReader<'a> {
    conn: &'a mut ReplicationConnection,
    cur: Bytes,
    carry: BytesMut,
    header_done: bool,
    finished: bool,
    what: String,
}

impl<'a> RowReader<'a> {
    async fn open(conn: &'a mut ReplicationConnection, sql: &str, what: String) -> Result<Self, PgError> {
        conn.copy_out_start(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
            .await
            .map_err(|mut e| {
                e.context = format!("reading {what}");
                e
            })?;
        Ok(Self {
            conn,
            cur: Bytes::new(),
            carry: BytesMut::new(),
            header_done: false,
            finished: false,
            what,
        })
    }

    fn malformed(&self, why: &str) -> PgError {
        PgError::config(
            format!("reading {}", self.what),
            format!("malformed binary COPY data: {why}"),
            "report this as a bug",
        )
    }

    /// A row from what has arrived, if a whole one has.
    fn take(&mut self) -> Result<Option<Row>, PgError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let from_carry = !self.carry.is_empty();
            let buf: &[u8] = if from_carry { &self.carry } else { &self.cur };
            match step(buf, self.header_done).map_err(|why| self.malformed(why))? {
                Step::More => {
                    if !from_carry && !self.cur.is_empty() {
                        self.carry.extend_from_slice(&self.cur);
                        self.cur = Bytes::new();
                    }
                    return Ok(None);
                }
                Step::Header(n) => {
                    self.header_done = true;
                    if from_carry {
                        self.carry.advance(n);
                    } else {
                        self.cur.advance(n);
                    }
                }
                Step::Trailer => {
                    self.finished = true;
                    if from_carry {
                        self.carry.advance(2);
                    } else {
                        self.cur.advance(2);
                    }
                }
                Step::Row(n) => {
                    let data = if from_carry {
                        self.carry.split_to(n).freeze()
                    } else if n == self.cur.len() {
                        // The usual case: the message is exactly one row; hand it over whole.
                        std::mem::take(&mut self.cur)
                    } else {
                        self.cur.split_to(n)
                    };
                    return Ok(Some(Row { data }));
                }
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Row>, PgError> {
        loop {
            if let Some(r) = self.take()? {
                return Ok(Some(r));
            }
            if self.finished {
                if !self.carry.is_empty() || !self.cur.is_empty() {
                    return Err(self.malformed("data after the trailer"));
                }
                // Read the COPY to its end, so the connection is ready for the next one.
                if self.conn.copy_out_next().await?.is_some() {
                    return Err(self.malformed("data after the trailer"));
                }
                return Ok(None);
            }
            match self.conn.copy_out_next().await? {
                Some(chunk) => {
                    if self.carry.is_empty() && self.cur.is_empty() {
                        self.cur = chunk;
                    } else {
                        self.carry.extend_from_slice(&chunk);
                    }
                }
                None => return Err(self.malformed("the stream ended before its trailer")),
            }
        }
    }
}

/// Orders two rows by the plan's key.
fn compare_keys(order: &Order, a: &Row, b: &Row) -> Ordering {
    match order {
        Order::IntKey(keys) => {
            for &i in keys {
                let o = int(a.field(i)).cmp(&int(b.field(i)));
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        }
        // Field 0 is the sort key's text; C collation order is byte order.
        Order::TextKey(_) | Order::WholeRow => a.field(0).cmp(&b.field(0)),
    }
}

fn int(v: Option<&[u8]>) -> Option<i64> {
    v.map(|b| match b.len() {
        2 => i16::from_be_bytes([b[0], b[1]]) as i64,
        4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
        8 => i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => i64::MIN,
    })
}

/// A difference found by the merge, before it is described.
#[derive(Debug, Clone)]
struct Found {
    kind: DiffKind,
    /// The row (source's for missing and differing, target's for extra).
    row: Row,
    /// Differing columns (indexes into the plan's columns).
    columns: Vec<usize>,
}

/// Compares one range: both sides streamed and merged.
#[allow(clippy::too_many_arguments)]
async fn compare_range(
    src: &Client,
    tgt: &Client,
    src_raw: &mut ReplicationConnection,
    tgt_raw: &mut ReplicationConnection,
    p: &TablePlan,
    r: Range,
    keep: usize,
    hash_ranges: bool,
    progress: &Progress,
) -> Result<(TableReport, Vec<Found>), PgError> {
    if hash_ranges {
        let hash = hash_sql(p, r);
        let (hs, ht) = tokio::try_join!(range_hash(src, &hash, p, "source"), range_hash(tgt, &hash, p, "target"))?;
        if hs == ht {
            let n = hs.0 as u64;
            progress.rows.fetch_add(n, AtomicOrdering::Relaxed);
            return Ok((
                TableReport {
                    table: p.name.to_string(),
                    ranges: 1,
                    source_rows: n,
                    target_rows: n,
                    rows_compared: n,
                    ..Default::default()
                },
                Vec::new(),
            ));
        }
    }
    let sql = select_sql(p, r);
    let (mut a, mut b) = tokio::try_join!(
        RowReader::open(src_raw, &sql, format!("{} on the source", p.name)),
        RowReader::open(tgt_raw, &sql, format!("{} on the target", p.name)),
    )?;
    let offset = usize::from(!matches!(p.order, Order::IntKey(_)));
    let mut rep = TableReport {
        table: p.name.to_string(),
        ranges: 1,
        ..Default::default()
    };
    let mut found = Vec::new();
    let mut note = |f: Found, rep: &mut TableReport| {
        rep.differences += 1;
        progress.differences.fetch_add(1, AtomicOrdering::Relaxed);
        if found.len() < keep {
            found.push(f);
        }
    };
    let (mut x, mut y) = tokio::try_join!(a.next(), b.next())?;
    let mut since_tick = 0u64;
    loop {
        let step = match (&x, &y) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(s), Some(t)) => compare_keys(&p.order, s, t),
        };
        match step {
            Ordering::Less => {
                rep.source_rows += 1;
                let row = x.take().expect("a source row");
                note(
                    Found {
                        kind: DiffKind::MissingOnTarget,
                        row,
                        columns: Vec::new(),
                    },
                    &mut rep,
                );
                x = a.next().await?;
            }
            Ordering::Greater => {
                rep.target_rows += 1;
                let row = y.take().expect("a target row");
                note(
                    Found {
                        kind: DiffKind::ExtraOnTarget,
                        row,
                        columns: Vec::new(),
                    },
                    &mut rep,
                );
                y = b.next().await?;
            }
            Ordering::Equal => {
                rep.source_rows += 1;
                rep.target_rows += 1;
                rep.rows_compared += 1;
                let (s, t) = (x.take().expect("a source row"), y.take().expect("a target row"));
                if s.data != t.data {
                    let columns: Vec<usize> = (0..p.columns.len())
                        .filter(|&i| s.field(i + offset) != t.field(i + offset))
                        .collect();
                    note(
                        Found {
                            kind: DiffKind::ValueDiffers,
                            row: s,
                            columns,
                        },
                        &mut rep,
                    );
                }
                x = a.next().await?;
                y = b.next().await?;
            }
        }
        since_tick += 1;
        if since_tick == 4096 {
            progress.rows.fetch_add(since_tick, AtomicOrdering::Relaxed);
            since_tick = 0;
        }
    }
    progress.rows.fetch_add(since_tick, AtomicOrdering::Relaxed);
    Ok((rep, found))
}

/// The SELECT that hashes a range on one server: its row count and an md5 over the md5 of each
/// row's text form, in key order (per-row hashes keep the aggregate small whatever the rows'
/// width). Text forms are pinned by the session settings of [`TEXT_FORMS`]; a range whose
/// hashes differ is compared row by row in binary, so a difference of representation only
/// costs time, never a false difference.
fn hash_sql(p: &TablePlan, r: Range) -> String {
    let cols: Vec<String> = p.columns.iter().map(|c| format!("t.{}", quote_ident(&c.name))).collect();
    let key_text = |idx: &[usize]| -> String {
        if idx.len() == 1 {
            format!("{}::text", cols[idx[0]])
        } else {
            format!("ROW({})::text", idx.iter().map(|&i| cols[i].clone()).collect::<Vec<_>>().join(", "))
        }
    };
    let order_by = match &p.order {
        Order::IntKey(keys) => keys.iter().map(|&i| cols[i].clone()).collect::<Vec<_>>().join(", "),
        Order::TextKey(keys) => format!("({}) COLLATE \"C\"", key_text(keys)),
        Order::WholeRow => format!("(ROW({})::text) COLLATE \"C\"", cols.join(", ")),
    };
    format!(
        "SELECT count(*), md5(string_agg(md5(ROW({})::text), '' ORDER BY {order_by})) FROM ONLY {} t{}",
        cols.join(", "),
        p.name.quoted(),
        range_filter(p, r)
    )
}

/// The WHERE clause of a key range (empty for a whole table).
fn range_filter(p: &TablePlan, r: Range) -> String {
    let mut filter = Vec::new();
    if let Order::IntKey(keys) = &p.order {
        let k = format!("t.{}", quote_ident(&p.columns[keys[0]].name));
        if let Some(lo) = r.lo {
            filter.push(format!("{k} >= {lo}"));
        }
        if let Some(hi) = r.hi {
            filter.push(format!("{k} <= {hi}"));
        }
    }
    if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filter.join(" AND "))
    }
}

/// Session settings that make text forms the same on both servers.
const TEXT_FORMS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 1; SET bytea_output = 'hex';";

async fn range_hash(c: &Client, sql: &str, p: &TablePlan, side: &str) -> Result<(i64, Option<String>), PgError> {
    let row = c
        .query_one(sql, &[])
        .await
        .map_err(|e| PgError::query(format!("hashing {} on the {side}", p.name), e))?;
    Ok((row.get(0), row.get(1)))
}

// ---------------------------------------------------------------------------------------------
// Describing differences

/// A WHERE clause matching a found row by its key (or whole row text), for describe and repair.
fn row_filter(p: &TablePlan, row: &Row) -> String {
    let cols: Vec<String> = p.columns.iter().map(|c| format!("t.{}", quote_ident(&c.name))).collect();
    match &p.order {
        Order::IntKey(keys) => keys
            .iter()
            .map(|&i| format!("{} = {}", cols[i], int(row.field(i)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" AND "),
        Order::TextKey(keys) => {
            let text = String::from_utf8_lossy(row.field(0).unwrap_or_default()).into_owned();
            let expr = if keys.len() == 1 {
                format!("{}::text", cols[keys[0]])
            } else {
                format!(
                    "ROW({})::text",
                    keys.iter().map(|&i| cols[i].clone()).collect::<Vec<_>>().join(", ")
                )
            };
            format!("{expr} = {}", quote_literal(&text))
        }
        Order::WholeRow => {
            let text = String::from_utf8_lossy(row.field(0).unwrap_or_default()).into_owned();
            format!("ROW({})::text = {}", cols.join(", "), quote_literal(&text))
        }
    }
}

/// The key of a found row for people: `col=value, ...`.
fn describe_key(p: &TablePlan, row: &Row, texts: &[Option<String>]) -> String {
    match &p.order {
        Order::IntKey(keys) => keys
            .iter()
            .map(|&i| format!("{}={}", p.columns[i].name, int(row.field(i)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        Order::TextKey(keys) => keys
            .iter()
            .map(|&i| {
                format!(
                    "{}={}",
                    p.columns[i].name,
                    texts.get(i).cloned().flatten().unwrap_or_else(|| "NULL".into())
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Order::WholeRow => shorten(&String::from_utf8_lossy(row.field(0).unwrap_or_default())),
    }
}

/// Long values are cut for the report.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 120;
    let n = s.chars().count();
    if n <= MAX {
        s.to_string()
    } else {
        format!("{}...({n} chars)", s.chars().take(MAX).collect::<String>())
    }
}

/// Every column of the rows matching `filter`, as text (one row per match; a table without a
/// key may match several identical rows: the first is enough to show).
async fn texts(c: &Client, p: &TablePlan, filter: &str) -> Result<Option<Vec<Option<String>>>, PgError> {
    let cols: Vec<String> = p.columns.iter().map(|c| format!("t.{}::text", quote_ident(&c.name))).collect();
    let row = c
        .query_opt(
            &format!("SELECT {} FROM ONLY {} t WHERE {filter} LIMIT 1", cols.join(", "), p.name.quoted()),
            &[],
        )
        .await
        .map_err(|e| PgError::query(format!("reading a differing row of {}", p.name), e))?;
    Ok(row.map(|r| (0..p.columns.len()).map(|i| r.get::<_, Option<String>>(i)).collect()))
}

async fn describe(src: &Client, tgt: &Client, p: &TablePlan, f: &Found) -> Result<Difference, PgError> {
    let filter = row_filter(p, &f.row);
    let (s, t) = match f.kind {
        DiffKind::MissingOnTarget => (texts(src, p, &filter).await?, None),
        DiffKind::ExtraOnTarget => (None, texts(tgt, p, &filter).await?),
        _ => (texts(src, p, &filter).await?, texts(tgt, p, &filter).await?),
    };
    let known = s.as_ref().or(t.as_ref()).cloned().unwrap_or_default();
    let key = describe_key(p, &f.row, &known);
    let pick = |i: usize| ColumnDiff {
        column: p.columns[i].name.clone(),
        source: s.as_ref().and_then(|v| v[i].as_deref().map(shorten)),
        target: t.as_ref().and_then(|v| v[i].as_deref().map(shorten)),
    };
    let columns = match f.kind {
        DiffKind::ValueDiffers => f.columns.iter().map(|&i| pick(i)).collect(),
        _ => (0..p.columns.len()).map(pick).collect(),
    };
    Ok(Difference {
        table: p.name.to_string(),
        key,
        kind: f.kind,
        columns,
    })
}

// ---------------------------------------------------------------------------------------------
// Running

/// Opens a REPEATABLE READ transaction that imports `snapshot`.
pub async fn in_snapshot(ep: &Endpoint, role: &str, snapshot: &str) -> Result<Client, PgError> {
    let c = ep.connect(role).await?;
    c.batch_execute(&format!(
        "SET statement_timeout = 0; SET search_path = ''; {TEXT_FORMS} BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    ))
    .await
    .map_err(|e| PgError::query(format!("opening the verification snapshot on {}", ep.describe()), e))?;
    Ok(c)
}

/// A plain protocol session (for streaming COPY) in a REPEATABLE READ transaction that imports
/// `snapshot`, with the same settings as [`in_snapshot`].
async fn raw_in_snapshot(ep: &Endpoint, role: &str, snapshot: &str) -> Result<ReplicationConnection, PgError> {
    let mut c = ReplicationConnection::connect_plain(ep, &format!("{role} stream")).await?;
    c.simple_query(&format!(
        "SET statement_timeout = 0; SET search_path = ''; {TEXT_FORMS} BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    ))
    .await
    .map_err(|mut e| {
        e.context = format!("opening the verification snapshot on {}", ep.describe());
        e
    })?;
    Ok(c)
}

/// Exports a snapshot from a new REPEATABLE READ transaction; the client must stay open (and
/// idle in that transaction) while others import it.
pub async fn export_snapshot(ep: &Endpoint, role: &str) -> Result<(Client, String), PgError> {
    let c = ep.connect(role).await?;
    c.batch_execute("SET search_path = ''; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| PgError::query(format!("opening a snapshot on {}", ep.describe()), e))?;
    let name: String = c
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| PgError::query(format!("exporting a snapshot on {}", ep.describe()), e))?
        .get(0);
    Ok((c, name))
}

/// Compares the planned tables at the two snapshots, `opts.jobs` ranges at a time.
pub async fn run(
    source: &Endpoint,
    target: &Endpoint,
    snaps: &Snapshots,
    plans: &[TablePlan],
    opts: &Options,
    progress: Arc<Progress>,
) -> Result<Report, PgError> {
    let started = std::time::Instant::now();
    let jobs = opts.jobs.max(1);
    // Work items: (plan index, range), largest tables first.
    let planner = in_snapshot(source, "verify", &snaps.source).await?;
    let mut items = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        if p.problem.is_none() {
            for r in ranges(&planner, p, opts.range_rows).await? {
                items.push((i, r));
            }
        }
    }
    drop(planner);
    let queue = Arc::new(std::sync::Mutex::new(items.into_iter()));
    let plans_arc: Arc<Vec<TablePlan>> = Arc::new(plans.to_vec());
    let mut workers = Vec::new();
    for w in 0..jobs {
        let (queue, plans, progress) = (queue.clone(), plans_arc.clone(), progress.clone());
        let (source, target, snaps) = (source.clone(), target.clone(), snaps.clone());
        let keep = opts.max_details;
        let hash_ranges = opts.hash_ranges;
        workers.push(tokio::spawn(async move {
            let role = format!("verify {w}");
            let (src, tgt, mut src_raw, mut tgt_raw) = tokio::try_join!(
                in_snapshot(&source, &role, &snaps.source),
                in_snapshot(&target, &role, &snaps.target),
                raw_in_snapshot(&source, &role, &snaps.source),
                raw_in_snapshot(&target, &role, &snaps.target),
            )?;
            let mut out: Vec<(usize, TableReport, Vec<Difference>)> = Vec::new();
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some((i, r)) = next else { break };
                let p = &plans[i];
                let t0 = std::time::Instant::now();
                let (mut rep, found) = compare_range(&src, &tgt, &mut src_raw, &mut tgt_raw, p, r, keep, hash_ranges, &progress).await?;
                let mut details = Vec::new();
                for f in &found {
                    details.push(describe(&src, &tgt, p, f).await?);
                }
                rep.seconds = t0.elapsed().as_secs_f64();
                out.push((i, rep, details));
            }
            Ok::<_, PgError>(out)
        }));
    }
    let mut by_table: Vec<TableReport> = plans
        .iter()
        .map(|p| TableReport {
            table: p.name.to_string(),
            ..Default::default()
        })
        .collect();
    for w in workers {
        let out = w
            .await
            .map_err(|e| PgError::config("verifying", e.to_string(), "report this as a bug"))??;
        for (i, rep, details) in out {
            let t = &mut by_table[i];
            t.source_rows += rep.source_rows;
            t.target_rows += rep.target_rows;
            t.rows_compared += rep.rows_compared;
            t.ranges += rep.ranges;
            t.differences += rep.differences;
            t.seconds += rep.seconds;
            t.details.extend(details);
        }
    }
    for (t, p) in by_table.iter_mut().zip(plans) {
        if let Some(why) = &p.problem {
            t.differences += 1;
            t.details.push(Difference {
                table: p.name.to_string(),
                key: String::new(),
                kind: DiffKind::Table,
                columns: vec![ColumnDiff {
                    column: String::new(),
                    source: None,
                    target: Some(why.clone()),
                }],
            });
        }
        t.details.truncate(opts.max_details.max(1));
        // Details come per range; keep the table's in key order of discovery.
    }
    let rows_compared = by_table.iter().map(|t| t.rows_compared).sum();
    let differences = by_table.iter().map(|t| t.differences).sum();
    Ok(Report {
        source_lsn: None,
        tables: by_table,
        rows_compared,
        differences,
        seconds: started.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// Repair

/// Rewrites, on the target, the rows of `differences` from the source as of `source_snapshot`:
/// for each table, the differing keys' target rows are deleted and the source's rows (if any)
/// copied in, in one target transaction with triggers off. Returns rows deleted and inserted.
pub async fn repair(
    source: &Endpoint,
    target: &Endpoint,
    source_snapshot: &str,
    plans: &[TablePlan],
    differences: &[Difference],
) -> Result<(u64, u64), PgError> {
    let src = in_snapshot(source, "repair", source_snapshot).await?;
    let tgt = target.connect("repair").await?;
    tgt.batch_execute("SET search_path = ''; SET session_replication_role = replica; BEGIN")
        .await
        .map_err(|e| PgError::query("starting the repair transaction on the target", e))?;
    let (mut deleted, mut inserted) = (0u64, 0u64);
    for p in plans.iter().filter(|p| p.problem.is_none()) {
        let table = p.name.to_string();
        let filters: Vec<String> = differences
            .iter()
            .filter(|d| d.table == table && d.kind != DiffKind::Table)
            .filter_map(|d| repair_filter(p, d))
            .collect();
        if filters.is_empty() {
            continue;
        }
        let filter = filters.iter().map(|f| format!("({f})")).collect::<Vec<_>>().join(" OR ");
        deleted += tgt
            .execute(&format!("DELETE FROM ONLY {} t WHERE {filter}", p.name.quoted()), &[])
            .await
            .map_err(|e| PgError::query(format!("deleting differing rows of {}", p.name), e))?;
        let writable: Vec<String> = p.columns.iter().filter(|c| !c.generated).map(|c| quote_ident(&c.name)).collect();
        let select = format!(
            "SELECT {} FROM ONLY {} t WHERE {filter}",
            writable.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", "),
            p.name.quoted()
        );
        let out = src
            .copy_out(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"))
            .await
            .map_err(|e| PgError::query(format!("reading the source rows of {}", p.name), e))?;
        let sink = tgt
            .copy_in(&format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                p.name.quoted(),
                writable.join(", ")
            ))
            .await
            .map_err(|e| PgError::query(format!("writing the source rows of {}", p.name), e))?;
        let mut sink = std::pin::pin!(sink);
        let mut out = std::pin::pin!(out);
        let mut counter = crate::copy_binary::RowCounter::new();
        while let Some(chunk) = out.next().await {
            let chunk = chunk.map_err(|e| PgError::query(format!("reading the source rows of {}", p.name), e))?;
            counter
                .feed(&chunk)
                .map_err(|e| PgError::config("repairing", e.to_string(), "report this as a bug"))?;
            futures_util::SinkExt::send(&mut sink, chunk)
                .await
                .map_err(|e| PgError::query(format!("writing the source rows of {}", p.name), e))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| PgError::query(format!("writing the source rows of {}", p.name), e))?;
        inserted += counter.rows();
    }
    tgt.batch_execute("COMMIT")
        .await
        .map_err(|e| PgError::query("committing the repair on the target", e))?;
    Ok((deleted, inserted))
}

/// The WHERE clause for a described difference (its key as shown), or None for table-level ones.
fn repair_filter(p: &TablePlan, d: &Difference) -> Option<String> {
    let value_of = |name: &str| -> Option<String> {
        d.columns
            .iter()
            .find(|c| c.column == name)
            .and_then(|c| c.source.clone().or_else(|| c.target.clone()))
    };
    match &p.order {
        Order::IntKey(keys) | Order::TextKey(keys) => {
            // The key as described: `a=1, b=x`; values are read back from the description.
            let parts: Vec<(String, String)> = split_key(&d.key, keys.iter().map(|&i| p.columns[i].name.as_str()).collect());
            if parts.len() != keys.len() {
                return None;
            }
            Some(
                parts
                    .iter()
                    .map(|(c, v)| format!("t.{}::text = {}", quote_ident(c), quote_literal(v)))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            )
        }
        Order::WholeRow => {
            // Every column's full value is needed: rows without a key are matched whole.
            let cols: Vec<String> = p.columns.iter().map(|c| format!("t.{}", quote_ident(&c.name))).collect();
            let vals: Vec<Option<String>> = p.columns.iter().map(|c| value_of(&c.name)).collect();
            if vals.iter().flatten().any(|v| v.contains("...(")) {
                return None;
            }
            Some(
                cols.iter()
                    .zip(vals)
                    .map(|(c, v)| match v {
                        Some(v) => format!("{c}::text = {}", quote_literal(&v)),
                        None => format!("{c} IS NULL"),
                    })
                    .collect::<Vec<_>>()
                    .join(" AND "),
            )
        }
    }
}

/// Splits `a=1, b=x, y` back into its parts, knowing the column names in order.
fn split_key(key: &str, names: Vec<&str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = key;
    for (i, name) in names.iter().enumerate() {
        let Some(r) = rest.strip_prefix(&format!("{name}=")) else {
            return Vec::new();
        };
        let end = match names.get(i + 1) {
            Some(next) => match r.find(&format!(", {next}=")) {
                Some(e) => e,
                None => return Vec::new(),
            },
            None => r.len(),
        };
        out.push((name.to_string(), r[..end].to_string()));
        rest = r.get(end + 2..).unwrap_or("");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row in binary COPY form.
    fn row(fields: &[Option<&[u8]>]) -> Row {
        let mut data = (fields.len() as i16).to_be_bytes().to_vec();
        for v in fields {
            match v {
                Some(b) => {
                    data.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    data.extend_from_slice(b);
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        Row { data: Bytes::from(data) }
    }

    #[test]
    fn integer_keys_order_numerically_and_text_keys_bytewise() {
        let ik = Order::IntKey(vec![0]);
        let a = row(&[Some(&(-5i64).to_be_bytes())]);
        let b = row(&[Some(&(3i64).to_be_bytes())]);
        assert_eq!(compare_keys(&ik, &a, &b), Ordering::Less);
        assert_eq!(compare_keys(&ik, &b, &a), Ordering::Greater);
        let tk = Order::TextKey(vec![0]);
        let (x, y, z) = (row(&[Some(b"ab")]), row(&[Some(b"abc")]), row(&[Some(b"b")]));
        assert_eq!(compare_keys(&tk, &x, &y), Ordering::Less);
        assert_eq!(compare_keys(&tk, &y, &z), Ordering::Less);
        assert_eq!(compare_keys(&tk, &x, &x), Ordering::Equal);
    }

    #[test]
    fn keys_split_back_into_columns() {
        assert_eq!(
            split_key("a=1, b=x, y", vec!["a", "b"]),
            vec![("a".into(), "1".into()), ("b".into(), "x, y".into())]
        );
        assert_eq!(split_key("id=42", vec!["id"]), vec![("id".into(), "42".into())]);
        assert!(split_key("id=42", vec!["other"]).is_empty());
    }

    #[test]
    fn binary_rows_parse_across_chunk_boundaries() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend_from_slice(&0u32.to_be_bytes());
        for (k, v) in [(1i32, Some(&b"x"[..])), (2, None)] {
            stream.extend_from_slice(&2i16.to_be_bytes());
            stream.extend_from_slice(&4i32.to_be_bytes());
            stream.extend_from_slice(&k.to_be_bytes());
            match v {
                Some(v) => {
                    stream.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    stream.extend_from_slice(v);
                }
                None => stream.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        for split in 0..stream.len() {
            let (mut buf, mut header, mut rows, mut done) = (BytesMut::new(), false, Vec::new(), false);
            for part in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(part);
                loop {
                    match step(&buf, header).unwrap() {
                        Step::More => break,
                        Step::Header(n) => {
                            header = true;
                            buf.advance(n);
                        }
                        Step::Row(n) => rows.push(Row {
                            data: buf.split_to(n).freeze(),
                        }),
                        Step::Trailer => {
                            buf.advance(2);
                            done = true;
                            break;
                        }
                    }
                }
            }
            assert!(done && buf.is_empty(), "split at {split}");
            assert_eq!(rows.len(), 2);
            assert_eq!(int(rows[0].field(0)), Some(1));
            assert_eq!(rows[0].field(1), Some(&b"x"[..]));
            assert_eq!(rows[1].field(1), None);
        }
        assert_eq!(step(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", false), Err("bad signature"));
        assert_eq!(
            step(b"PGCOPY\n\xff\r\n\0\0\0\0\0\x7f\xff\xff\xff", false),
            Ok(Step::More),
            "a huge header extension waits"
        );
        assert!(step(&[0x00, 0x01, 0xff, 0xff, 0xff, 0xf0], true).is_err(), "negative length");
    }
}
