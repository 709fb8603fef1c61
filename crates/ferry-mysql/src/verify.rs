//! Verification across engines: every row of every table read from MySQL/MariaDB and from
//! PostgreSQL, each value turned into one canonical text form, the two streams merged by key,
//! and every differing row named with its differing columns.
//!
//! The canonical form (`docs/mysql-cdc.md`): numbers as exact decimal text (floats as the
//! shortest text that reads back as the same binary value, so 0.1 equals 0.1 in both engines),
//! date-times with six fractional digits (TIMESTAMP as UTC), TIME/interval as a count of
//! microseconds, bytes as hex, SET as its members joined by commas, JSON parsed and printed with
//! sorted keys, text as UTF-8. Rows are read in key order on both sides with byte-wise
//! collations (`utf8mb4_nopad_bin` / `COLLATE "C"`), so the merge never holds a table in memory;
//! if the two orders still disagree (exotic keys), the table is reported as not comparable,
//! never as identical.
//!
//! Online: while `ferry migrate` streams, both sides are read at one source position (see
//! [`consistent_point`]): nothing in flight shows as a difference, and the stream pauses only
//! while the target's snapshot opens.
//!
//! Timeouts: the snapshot statements and the version query run under the source's query
//! deadline ([`crate::MyEndpoint::within`]); the table reads themselves have none (they stream
//! for as long as the table takes) and rely on TCP keepalives (`docs/timeouts-mysql-proxy.md`).

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use ferry_core::ident::quote_ident;
use ferry_postgres::verify::{ColumnDiff, DiffKind, Difference, Report, TableReport};
use futures_util::{pin_mut, TryStreamExt};
use mysql_async::prelude::Queryable;
use mysql_async::Value;

use crate::endpoint::MyEndpoint;
use crate::error::MyError;
use crate::flavor::{ServerVersion, SnapshotPosition};
use crate::preflight::{MyCheckRequest, MyTable};
use crate::snapshot::kinds_of;
use crate::state::{Hold, MyState};
use crate::value::{text_of, Kind};
use ferry_core::BinlogPosition;

/// How a run goes.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Differences described per table (all are counted).
    pub max_details: usize,
    /// The migration's state on the target (where the stream's position is); None: no
    /// migration of this source is recorded there.
    pub state: Option<MyState>,
}

/// How a column is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Canon {
    Exact,
    Float32,
    Float64,
    Json,
    Decimal,
}

struct Shape {
    table: String,
    names: Vec<String>,
    kinds: Vec<Kind>,
    canon: Vec<Canon>,
    key: Vec<usize>,
    my_select: String,
    pg_select: String,
}

fn my_q(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn shape(t: &MyTable, db: &str, schema: &str, mariadb: bool) -> Shape {
    let kinds = kinds_of(t);
    let names: Vec<String> = t.columns.iter().map(|(n, _)| n.clone()).collect();
    let canon: Vec<Canon> = t
        .columns
        .iter()
        .map(|(_, m)| match m.target.as_str() {
            "real" => Canon::Float32,
            "double precision" => Canon::Float64,
            "jsonb" | "json" => Canon::Json,
            "smallint" | "integer" | "bigint" => Canon::Decimal,
            t if t.starts_with("numeric") || t.starts_with("interval") => Canon::Decimal,
            _ => Canon::Exact,
        })
        .collect();
    let mut key: Vec<usize> = t.primary_key.iter().filter_map(|k| names.iter().position(|n| n == k)).collect();
    if key.is_empty() {
        key = (0..names.len()).collect();
    }
    let bin = if mariadb { "utf8mb4_nopad_bin" } else { "utf8mb4_0900_bin" };
    let my_order: Vec<String> = key
        .iter()
        .map(|&i| match kinds[i] {
            Kind::Text | Kind::Enum | Kind::Set => format!("CONVERT({} USING utf8mb4) COLLATE {bin}", my_q(&names[i])),
            _ => my_q(&names[i]),
        })
        .collect();
    let pg_expr = |i: usize| -> String {
        // Qualified: an output column of the same name would otherwise win in ORDER BY.
        let c = format!("x.{}", quote_ident(&names[i]));
        match kinds[i] {
            Kind::Boolean => format!("CASE {c} WHEN true THEN 't' WHEN false THEN 'f' END"),
            Kind::Timestamp => format!("to_char({c}, 'YYYY-MM-DD HH24:MI:SS.US')"),
            Kind::TimestampTz => format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
            Kind::Interval => format!("(extract(epoch FROM {c}) * 1000000)::int8::text"),
            Kind::Set => format!("array_to_string({c}, ',')"),
            _ => format!("{c}::text"),
        }
    };
    let pg_order: Vec<String> = key
        .iter()
        .map(|&i| match kinds[i] {
            Kind::Text | Kind::Enum | Kind::Set => format!("{} COLLATE \"C\" NULLS FIRST", pg_expr(i)),
            _ => format!("x.{} NULLS FIRST", quote_ident(&names[i])),
        })
        .collect();
    Shape {
        table: t.name.clone(),
        my_select: format!(
            "SELECT {} FROM {}.{} ORDER BY {}",
            names.iter().map(|n| my_q(n)).collect::<Vec<_>>().join(", "),
            my_q(db),
            my_q(&t.name),
            my_order.join(", ")
        ),
        pg_select: format!(
            "SELECT {} FROM {}.{} AS x ORDER BY {}",
            (0..names.len()).map(pg_expr).collect::<Vec<_>>().join(", "),
            quote_ident(schema),
            quote_ident(&t.name),
            pg_order.join(", ")
        ),
        names,
        kinds,
        canon,
        key,
    }
}

/// A source value in canonical form.
fn canon_mysql(v: &Value, kind: &Kind, canon: Canon, zero: crate::types::ZeroDates) -> Option<String> {
    match (v, kind) {
        (Value::NULL, _) => None,
        (Value::Time(neg, d, h, m, s, us), Kind::Interval) => {
            let micros = ((i64::from(*d) * 24 + i64::from(*h)) * 3600 + i64::from(*m) * 60 + i64::from(*s)) * 1_000_000 + i64::from(*us);
            Some((if *neg { -micros } else { micros }).to_string())
        }
        (Value::Bytes(b), Kind::Set) => Some(String::from_utf8_lossy(b).into_owned()),
        (Value::Float(f), _) => Some(format!("{f:?}")),
        (Value::Double(d), _) if canon == Canon::Float32 => Some(format!("{:?}", *d as f32)),
        (Value::Double(d), _) => Some(format!("{d:?}")),
        _ => {
            let text = match text_of(v, kind, zero) {
                Ok(t) => t?,
                // A value the load would refuse (a zero date under --zero-dates error): shown as
                // MySQL has it, so it differs from whatever the target holds.
                Err(_) => v.as_sql(true),
            };
            let text = match kind {
                Kind::TimestampTz => text.trim_end_matches("+00").to_string(),
                _ => text,
            };
            Some(canonical_text(text, canon))
        }
    }
}

/// Floats, decimals and JSON: one text per value.
fn canonical_text(text: String, canon: Canon) -> String {
    match canon {
        Canon::Float32 => text.parse::<f32>().map(|f| format!("{f:?}")).unwrap_or(text),
        Canon::Float64 => text.parse::<f64>().map(|f| format!("{f:?}")).unwrap_or(text),
        Canon::Json => serde_json::from_str::<serde_json::Value>(&text)
            .map(|j| j.to_string())
            .unwrap_or(text),
        Canon::Decimal | Canon::Exact => text,
    }
}

/// Compares two canonical key values of a column.
fn cmp_key(a: &Option<String>, b: &Option<String>, canon: Canon) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        // Both engines sort NULL first ascending in MySQL, last in PostgreSQL; keys are never
        // NULL in a primary key, and tables without one compare NULLs as the smallest.
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => match canon {
            Canon::Decimal => cmp_decimal(x, y),
            Canon::Float32 | Canon::Float64 => x
                .parse::<f64>()
                .unwrap_or(f64::NAN)
                .partial_cmp(&y.parse::<f64>().unwrap_or(f64::NAN))
                .unwrap_or(Ordering::Equal),
            _ => x.as_bytes().cmp(y.as_bytes()),
        },
    }
}

/// Exact comparison of two decimal texts (`-12.5`, `3`, `0.001`).
fn cmp_decimal(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> (bool, String, String) {
        let (neg, s) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        let i = i.trim_start_matches('0').to_string();
        let f = f.trim_end_matches('0').to_string();
        let zero = i.is_empty() && f.is_empty();
        (neg && !zero, i, f)
    };
    let (na, ia, fa) = parts(a);
    let (nb, ib, fb) = parts(b);
    let magnitude = ia.len().cmp(&ib.len()).then_with(|| ia.cmp(&ib)).then_with(|| fa.cmp(&fb));
    match (na, nb) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    }
}

type Row = Vec<Option<String>>;

fn cmp_rows(s: &Shape, a: &Row, b: &Row) -> Ordering {
    for &i in &s.key {
        let o = cmp_key(&a[i], &b[i], s.canon[i]);
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn key_text(s: &Shape, r: &Row) -> String {
    s.key
        .iter()
        .take(4)
        .map(|&i| format!("{}={}", s.names[i], r[i].as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shorten(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| {
        if s.chars().count() > 80 {
            format!("{}… ({} characters)", s.chars().take(60).collect::<String>(), s.chars().count())
        } else {
            s.clone()
        }
    })
}

async fn next_my(
    rows: &mut mysql_async::QueryResult<'_, 'static, mysql_async::BinaryProtocol>,
    s: &Shape,
    zero: crate::types::ZeroDates,
    ctx: &str,
) -> Result<Option<Row>, MyError> {
    Ok(rows.next().await.map_err(|e| MyError::query(ctx, e))?.map(|row| {
        row.unwrap()
            .iter()
            .enumerate()
            .map(|(i, v)| canon_mysql(v, &s.kinds[i], s.canon[i], zero))
            .collect::<Row>()
    }))
}

/// One pass over one table: differences by key (canonical key text), described.
async fn compare_table(
    req: &MyCheckRequest,
    s: &Shape,
    my: &mut mysql_async::Conn,
    pg: &tokio_postgres::Client,
    max_details: usize,
) -> Result<TableReport, MyError> {
    let started = Instant::now();
    let ctx = format!("verifying {}", s.table);
    let mut report = TableReport {
        table: s.table.clone(),
        ranges: 1,
        ..Default::default()
    };
    // Differences are counted; only the first `max_details` are described (bounded memory,
    // even against an empty target).
    let differ = |report: &mut TableReport, key: String, kind: DiffKind, columns: Vec<ColumnDiff>| {
        report.differences += 1;
        if report.details.len() < max_details {
            report.details.push(Difference {
                table: s.table.clone(),
                key,
                kind,
                columns,
            });
        }
    };
    let pg_rows = pg
        .query_raw(s.pg_select.as_str(), std::iter::empty::<&str>())
        .await
        .map_err(|e| MyError::target(&ctx, e, "check the target"))?;
    pin_mut!(pg_rows);
    let mut my_rows = my.exec_iter(s.my_select.as_str(), ()).await.map_err(|e| MyError::query(&ctx, e))?;
    let zero = req.map.zero_dates;
    let next_pg = |r: Option<tokio_postgres::Row>| -> Option<Row> {
        r.map(|r| {
            (0..s.names.len())
                .map(|i| r.get::<_, Option<String>>(i).map(|t| canonical_text(t, s.canon[i])))
                .collect()
        })
    };
    let mut a = next_my(&mut my_rows, s, zero, &ctx).await?;
    let mut b = next_pg(pg_rows.try_next().await.map_err(|e| MyError::target(&ctx, e, "check the target"))?);
    let (mut last_a, mut last_b): (Option<Row>, Option<Row>) = (None, None);
    loop {
        // Both sides must come in the order the merge assumes.
        for (row, last, side) in [(&a, &mut last_a, "source"), (&b, &mut last_b, "target")] {
            if let (Some(r), Some(l)) = (row, last.as_ref()) {
                if cmp_rows(s, l, r) == Ordering::Greater {
                    return Err(MyError::new(
                        &ctx,
                        &format!(
                            "the {side} returned keys out of the order the comparison needs ({} after {})",
                            key_text(s, r),
                            key_text(s, l)
                        ),
                        "the key's type sorts differently in the two engines; report it, with the key's type",
                    ));
                }
            }
            if row.is_some() {
                *last = row.clone();
            }
        }
        let order = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => cmp_rows(s, x, y),
        };
        match order {
            Ordering::Less => {
                let x = a.take().expect("some");
                report.source_rows += 1;
                differ(&mut report, key_text(s, &x), DiffKind::MissingOnTarget, Vec::new());
                a = next_my(&mut my_rows, s, zero, &ctx).await?;
            }
            Ordering::Greater => {
                let y = b.take().expect("some");
                report.target_rows += 1;
                differ(&mut report, key_text(s, &y), DiffKind::ExtraOnTarget, Vec::new());
                b = next_pg(pg_rows.try_next().await.map_err(|e| MyError::target(&ctx, e, "check the target"))?);
            }
            Ordering::Equal => {
                let (x, y) = (a.take().expect("some"), b.take().expect("some"));
                report.source_rows += 1;
                report.target_rows += 1;
                report.rows_compared += 1;
                let columns: Vec<ColumnDiff> = (0..s.names.len())
                    .filter(|&i| x[i] != y[i])
                    .map(|i| ColumnDiff {
                        column: s.names[i].clone(),
                        source: shorten(&x[i]),
                        target: shorten(&y[i]),
                    })
                    .collect();
                if !columns.is_empty() {
                    differ(&mut report, key_text(s, &x), DiffKind::ValueDiffers, columns);
                }
                a = next_my(&mut my_rows, s, zero, &ctx).await?;
                b = next_pg(pg_rows.try_next().await.map_err(|e| MyError::target(&ctx, e, "check the target"))?);
            }
        }
    }
    drop(my_rows);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Asks the running stream to hold and waits until it says where it stands; the position when
/// it is at or past `want` (any, when None). None after `timeout`.
async fn request_hold(
    ctl: &tokio_postgres::Client,
    state: &MyState,
    hold: &Hold,
    want: Option<&BinlogPosition>,
    timeout: Duration,
) -> Result<Option<BinlogPosition>, MyError> {
    state.request_hold(ctl, hold).await?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(at) = state.held_at(ctl).await? {
            // By file number, then offset.
            if want.is_none_or(|w| at >= *w) {
                return Ok(Some(at));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

async fn release_hold(ctl: &tokio_postgres::Client, state: &MyState) {
    let _ = state.request_hold(ctl, &Hold::Run).await;
}

/// Opens the two snapshots at one source position while the stream runs: the stream stops at
/// a boundary, the source snapshot opens and names its binlog position P, the stream applies
/// exactly up to P and stops again, the target snapshot opens, and the stream goes on. Both
/// snapshots then hold the same transactions, so nothing in flight shows as a difference. None
/// when no stream is running (or the source cannot name its snapshot's position): each table
/// is then read as it is now.
///
/// P is MariaDB's (and Percona Server's) `binlog_snapshot_position`, read in the snapshot's
/// transaction. MySQL has no such variable: there the snapshot opens while another connection
/// holds `FLUSH TABLES WITH READ LOCK` for a few milliseconds, and P is the end of the binary
/// log read under that lock ([`locked_snapshot`]), as the full load does.
async fn consistent_point(
    opts: &VerifyOptions,
    ctl: &tokio_postgres::Client,
    source: &MyEndpoint,
    server: &ServerVersion,
    my: &mut mysql_async::Conn,
    pg: &tokio_postgres::Client,
) -> Result<Option<String>, MyError> {
    let Some(state) = &opts.state else { return Ok(None) };
    if !state.has_streamed(ctl).await.unwrap_or(false) {
        return Ok(None);
    }
    if request_hold(ctl, state, &Hold::Freeze, None, Duration::from_secs(10))
        .await?
        .is_none()
    {
        release_hold(ctl, state).await;
        tracing::warn!("no ferry migrate answered within 10 s: each table is compared as it is now");
        return Ok(None);
    }
    let result: Result<Option<String>, MyError> = async {
        const WHAT: &str = "reading the snapshot's binlog position";
        let (file, pos) = match server.snapshot_position() {
            SnapshotPosition::StatusVariables => {
                open_snapshot(source, my).await?;
                let rows: Vec<(String, String)> = source
                    .within(WHAT, async {
                        my.query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                            .await
                            .map_err(|e| MyError::query(WHAT, e))
                    })
                    .await?;
                let get = |name: &str| rows.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
                let (Some(file), Some(pos)) = (get("binlog_snapshot_file"), get("binlog_snapshot_position")) else {
                    source.cleanup(my, "COMMIT").await;
                    return Ok(None);
                };
                (file, pos.parse().unwrap_or(0))
            }
            SnapshotPosition::GlobalReadLock => match locked_snapshot(source, server, my).await? {
                Some(at) => at,
                None => return Ok(None),
            },
        };
        let at = BinlogPosition::new(&file, pos, "").map_err(|e| MyError::new(WHAT, &e.to_string(), "report this as a bug"))?;
        let until = Hold::Until(at.clone());
        if request_hold(ctl, state, &until, Some(&at), Duration::from_secs(60))
            .await?
            .is_none()
        {
            return Err(MyError::new(
                "verifying at one consistent point",
                &format!("the stream did not reach {file}:{pos} within 60 s"),
                "check ferry migrate's log (is it lagging?), then verify again",
            ));
        }
        pg.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
            .await
            .map_err(|e| MyError::target("opening a snapshot on the target", e, "check the target"))?;
        Ok(Some(format!("{file}:{pos}")))
    }
    .await;
    release_hold(ctl, state).await;
    result
}

/// MySQL's way to a snapshot with a known binlog position (it has no
/// `binlog_snapshot_position`): another connection takes `FLUSH TABLES WITH READ LOCK`, the
/// snapshot opens on `my`, the end of the binary log is read on the locking connection, and
/// the lock is released. No transaction commits while the lock is held, so the snapshot holds
/// exactly the transactions before that end. The lock waits at most 5 s
/// (`lock_wait_timeout`); when it cannot be had (no `RELOAD`, a long statement), None: the
/// tables are compared as they are now, with a warning.
async fn locked_snapshot(
    source: &MyEndpoint,
    server: &ServerVersion,
    my: &mut mysql_async::Conn,
) -> Result<Option<(String, u64)>, MyError> {
    const LOCK: &str = "taking the snapshot lock (FLUSH TABLES WITH READ LOCK)";
    let mut locker = source.connect().await?;
    let locked = source
        .within(LOCK, async {
            locker
                .query_drop("SET SESSION lock_wait_timeout = 5")
                .await
                .map_err(|e| MyError::query(LOCK, e))?;
            locker
                .query_drop("FLUSH TABLES WITH READ LOCK")
                .await
                .map_err(|e| MyError::query(LOCK, e))
        })
        .await;
    if let Err(e) = locked {
        drop(locker);
        tracing::warn!(error = %e, "no snapshot lock on the source: each table is compared as it is now");
        return Ok(None);
    }
    let status = match open_snapshot(source, my).await {
        Ok(()) => {
            source
                .within(
                    "reading the snapshot's binlog position",
                    crate::flavor::binlog_status(&mut locker, server),
                )
                .await
        }
        Err(e) => Err(e),
    };
    if status.is_ok() {
        source.cleanup(&mut locker, "UNLOCK TABLES").await;
        source.disconnect(locker).await;
    } else {
        // Closing the connection releases the lock as surely as UNLOCK TABLES.
        drop(locker);
    }
    let status = status?;
    Ok(Some((status.file, status.position)))
}

/// Opens a read-only snapshot on the source connection, under the query deadline.
async fn open_snapshot(source: &MyEndpoint, my: &mut mysql_async::Conn) -> Result<(), MyError> {
    const WHAT: &str = "opening a snapshot";
    source
        .within(WHAT, async {
            my.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await
                .map_err(|e| MyError::query(WHAT, e))?;
            my.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(|e| MyError::query(WHAT, e))
        })
        .await
}

/// Compares every table of `tables`.
pub async fn verify(req: &MyCheckRequest, tables: &[MyTable], opts: &VerifyOptions) -> Result<Report, MyError> {
    let started = Instant::now();
    let pg = req.target.connect("mysql-verify").await.map_err(MyError::from)?;
    pg.batch_execute("SET DateStyle = ISO; SET bytea_output = hex; SET extra_float_digits = 1; SET IntervalStyle = postgres")
        .await
        .map_err(|e| MyError::target("preparing the target connection", e, "check the target"))?;
    let source = &req.source;
    let mut my = source.connect().await?;
    let server = source.within("reading the version", crate::flavor::read(&mut my)).await?;
    let mariadb = server.is_mariadb();
    let db = req.source.database().to_string();
    let mut out = Report {
        source_lsn: None,
        tables: Vec::new(),
        rows_compared: 0,
        differences: 0,
        seconds: 0.0,
    };
    let ctl = req.target.connect("mysql-verify-hold").await.map_err(MyError::from)?;
    let point = consistent_point(opts, &ctl, source, &server, &mut my, &pg).await?;
    out.source_lsn = point.as_ref().map(|p| format!("binlog {p}"));
    for t in tables {
        let s = shape(t, &db, &req.target_schema, mariadb);
        if point.is_none() {
            open_snapshot(source, &mut my).await?;
            pg.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| MyError::target("opening a snapshot on the target", e, "check the target"))?;
        }
        let result = compare_table(req, &s, &mut my, &pg, opts.max_details).await;
        let report = result?;
        if point.is_none() {
            source.cleanup(&mut my, "COMMIT").await;
            let _ = pg.batch_execute("COMMIT").await;
        }
        out.rows_compared += report.rows_compared;
        out.differences += report.differences;
        out.tables.push(report);
    }
    if point.is_some() {
        source.cleanup(&mut my, "COMMIT").await;
        let _ = pg.batch_execute("COMMIT").await;
    }
    source.disconnect(my).await;
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Records a finished run in Ferry's state, for the cutover gate (nothing when no migration of
/// this source is recorded).
pub async fn record(target: &tokio_postgres::Client, opts: &VerifyOptions, report: &Report) -> Result<(), MyError> {
    match &opts.state {
        Some(state) => state.record_verification(target, report.differences).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(cmp_decimal("10", "9.99"), Ordering::Greater);
        assert_eq!(cmp_decimal("-10", "-9.99"), Ordering::Less);
        assert_eq!(cmp_decimal("1.50", "1.5"), Ordering::Equal);
        assert_eq!(cmp_decimal("-0.00", "0"), Ordering::Equal);
        assert_eq!(cmp_decimal("18446744073709551615", "9223372036854775807"), Ordering::Greater);
    }

    #[test]
    fn canonical_values_agree_across_engines() {
        use crate::types::ZeroDates::Error;
        // MySQL float 0.1 (binary protocol) and PostgreSQL real '0.1'.
        assert_eq!(
            canon_mysql(&Value::Float(0.1), &Kind::Number, Canon::Float32, Error),
            Some(canonical_text("0.1".into(), Canon::Float32))
        );
        // PostgreSQL prints 1e+16, Rust 1e16: the same double.
        assert_eq!(
            canon_mysql(&Value::Double(1e16), &Kind::Number, Canon::Float64, Error),
            Some(canonical_text("1e+16".into(), Canon::Float64))
        );
        assert_eq!(
            canon_mysql(&Value::Time(true, 34, 22, 59, 59, 1), &Kind::Interval, Canon::Exact, Error),
            Some("-3020399000001".into())
        );
        assert_eq!(
            canon_mysql(&Value::Date(2038, 1, 19, 3, 14, 7, 5), &Kind::TimestampTz, Canon::Exact, Error),
            Some("2038-01-19 03:14:07.000005".into())
        );
        assert_eq!(
            canon_mysql(
                &Value::Bytes(br#"{"b": 1, "a": [1, 2.5]}"#.to_vec()),
                &Kind::Text,
                Canon::Json,
                Error
            ),
            Some(canonical_text(r#"{"a": [1, 2.5], "b": 1}"#.into(), Canon::Json))
        );
        assert_eq!(
            canon_mysql(&Value::Bytes(vec![0, 255]), &Kind::Bytes, Canon::Exact, Error),
            Some("\\x00ff".into())
        );
        assert_ne!(
            canon_mysql(&Value::Bytes(vec![]), &Kind::Text, Canon::Exact, Error),
            canon_mysql(&Value::NULL, &Kind::Text, Canon::Exact, Error)
        );
    }
}
