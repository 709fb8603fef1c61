//! Reading the row binlog from a position: transactions of row changes, each value in the same
//! `mysql_async::Value` form the full load reads (so `value::write` turns both into the same
//! PostgreSQL text), with ENUM indexes and SET bitmasks turned into their labels. One exception:
//! text in a character set other than UTF-8 comes as its stored bytes (a query result has it
//! converted by the server); the driver decodes it with `crate::charset` (`crate::cdc`), where a
//! value that does not decode becomes a dead letter naming its row and column.
//!
//! MariaDB specifics (toolchain notes): `@mariadb_slave_capability=4` so that transactions start
//! with a GTID event (type 162, parsed here by hand) rather than a `BEGIN` query; XID events
//! commit. Only the tables of one database are decoded; others are skipped.
//!
//! Statements (QUERY events, `crate::statement`): a TRUNCATE of a migrated table becomes
//! [`Change::Truncate`], DDL on the migrated database [`Change::SchemaChange`], and a write
//! logged in STATEMENT format on a migrated table, or a TRUNCATE whose table cannot be read,
//! [`Change::Unapplicable`]: the stream stops before them, never skips them. Table and database
//! names match as the server matches them (`lower_case_table_names`, read when the reader
//! starts).

use std::collections::HashMap;

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::events::{EventData, OptionalMetadataField, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::Value;

use crate::endpoint::MyEndpoint;
use crate::error::MyError;
use crate::preflight::MyTable;
pub use crate::statement::{classify, Statement, TableRef};
use crate::statement::{find_name, same_name};

/// How often an idle source sends a heartbeat event on the binlog connection.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// MariaDB's GTID event, which mysql_common does not decode.
const MARIADB_GTID_EVENT: u8 = 162;

/// One decoded change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A transaction starts (MariaDB: its GTID, `domain-server-sequence`).
    Begin {
        /// The GTID, when the server sends one.
        gtid: Option<String>,
        /// Where its first event starts, in the current binlog file.
        at: u64,
    },
    /// A row was inserted.
    Insert {
        /// Table.
        table: String,
        /// Values in column order.
        row: Vec<Value>,
    },
    /// A row was updated.
    Update {
        /// Table.
        table: String,
        /// The row before.
        before: Vec<Value>,
        /// The row after.
        after: Vec<Value>,
    },
    /// A row was deleted.
    Delete {
        /// Table.
        table: String,
        /// The row before.
        row: Vec<Value>,
    },
    /// A table of the migration was truncated (`TRUNCATE` is logged as a statement).
    Truncate {
        /// Table.
        table: String,
    },
    /// A statement that changes the schema of the migrated database (ALTER, CREATE, DROP,
    /// RENAME): the applier stops before it (`docs/mysql-cdc.md`).
    SchemaChange {
        /// The statement as logged.
        query: String,
        /// Binlog file of the statement.
        file: String,
        /// Position after it.
        pos: u64,
    },
    /// A statement on the migrated tables that the stream can neither apply nor skip (a write
    /// logged in STATEMENT format, a TRUNCATE whose table Ferry cannot read): the applier stops
    /// before it, as before a schema change (`docs/mysql-cdc.md`).
    Unapplicable {
        /// The statement as logged.
        query: String,
        /// Why it cannot be applied.
        why: Unapplicable,
        /// Binlog file of the statement.
        file: String,
        /// Position after it.
        pos: u64,
    },
    /// The transaction committed; the stream continues after `file`:`pos`.
    Commit {
        /// Binlog file.
        file: String,
        /// Position after the commit.
        pos: u64,
        /// When it was written on the source (seconds since the epoch).
        timestamp: u32,
    },
}

/// Why a statement cannot be applied ([`Change::Unapplicable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unapplicable {
    /// A write logged as a statement (a session set binlog_format to STATEMENT or MIXED): its
    /// rows are not in the binlog. The migrated table it writes, when Ferry can tell which.
    StatementFormat(Option<String>),
    /// A TRUNCATE whose table name Ferry cannot read.
    UnreadableTruncate,
}

/// Label lists of a table's ENUM and SET columns, by column index.
#[derive(Debug, Clone, Default)]
struct Labels {
    enums: HashMap<usize, Vec<String>>,
    sets: HashMap<usize, Vec<String>>,
    /// TIMESTAMP columns: the binlog has seconds since the epoch (with a fraction).
    timestamps: Vec<usize>,
    /// MEDIUMINT columns, with whether they are signed: the binlog has their three bytes, which
    /// mysql_common hands over without regard to the column's sign (-8388608 came out as
    /// 8388608).
    int24: HashMap<usize, bool>,
}

/// A binlog reader for the tables of one database.
pub struct BinlogReader {
    stream: mysql_async::BinlogStream,
    /// `host:port/database` of the source, for messages.
    server: String,
    database: String,
    file: String,
    tables: HashMap<String, Labels>,
    /// Column count of each table in the plan: a row event with another count means the table
    /// changed under us.
    widths: HashMap<String, usize>,
    /// Column names of each table in the plan, checked against the binlog's (when the source
    /// logs them: binlog_row_metadata=FULL).
    names: HashMap<String, Vec<String>>,
    /// Inside a transaction (a Begin was returned and no Commit yet).
    in_tx: bool,
    /// MariaDB flagged the current group standalone (one statement, no COMMIT follows).
    standalone: bool,
    /// End of the last event read in `file`.
    pos: u64,
    /// The database of the reverse stream's position table (`crate::apply`): a transaction
    /// whose first row event is on `<it>.reverse_position` was written by Ferry's MySQL sink.
    reverse_state_db: Option<String>,
    /// A row event of the current transaction was read.
    rows_seen: bool,
    /// The current transaction is Ferry's own (see `reverse_state_db`): its changes are left
    /// out, its boundaries kept (the position moves past it).
    own: bool,
    /// The source compares table and database names without regard to case
    /// (`lower_case_table_names` 1 or 2): a statement may name a table in another case.
    fold_case: bool,
}

impl std::fmt::Debug for BinlogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BinlogReader({} at {})", self.database, self.file)
    }
}

/// A binlog stream error, classified by the server's error number ([`crate::error::error_class`]):
/// a binlog the source cannot serve any more (purged, or a position past its end) is definite and
/// says how to recover; a lost connection is transient (`fix` says what happens then).
fn stream_error(context: &str, e: mysql_async::Error, fix: &str) -> MyError {
    let e = MyError::driver(context, e, fix);
    if e.code == Some(crate::error::BINLOG_UNREADABLE) {
        return MyError {
            fix: Some(
                "the source no longer has that binlog file (purged), so the changes since are lost to Ferry: keep binlogs longer \
                 (binlog_expire_logs_seconds) and load again with ferry migrate --overwrite"
                    .into(),
            ),
            ..e
        };
    }
    e
}

impl BinlogReader {
    /// Connects as a replica with `server_id` (unique among the source's replicas) and asks for
    /// the binlog from `file`:`pos`. `tables` gives ENUM/SET labels.
    pub async fn start(source: &MyEndpoint, server_id: u32, file: &str, pos: u64, tables: &[MyTable]) -> Result<Self, MyError> {
        let mut conn = source.connect().await?;
        // Heartbeats every second when the source is idle, so a dead connection is noticed
        // (the applier's read deadline, `apply::BINLOG_SILENCE`).
        source
            .within(
                "preparing the binlog connection",
                conn.query_drop(format!(
                    "SET @mariadb_slave_capability = 4, @master_heartbeat_period = {}",
                    HEARTBEAT_PERIOD.as_nanos()
                ))
                .map(|r| r.map_err(|e| MyError::query("preparing the binlog connection", e))),
            )
            .await?;
        // How the server compares names (a server setting: it cannot change while it runs).
        const CASE: &str = "reading lower_case_table_names";
        let lower_case: Option<u64> = source
            .within(
                CASE,
                conn.query_first("SELECT @@lower_case_table_names")
                    .map(|r| r.map_err(|e| MyError::query(CASE, e))),
            )
            .await?;
        let request = mysql_async::BinlogStreamRequest::new(server_id)
            .with_filename(file.as_bytes())
            .with_pos(pos);
        let asking = format!("asking for the binlog from {file}:{pos} (COM_BINLOG_DUMP)");
        let stream = source
            .within(
                &asking,
                conn.get_binlog_stream(request).map(|r| {
                    r.map_err(|e| {
                        stream_error(
                            &format!("reading the binlog of {} from {file}:{pos}", source.describe()),
                            e,
                            "check REPLICATION SLAVE for Ferry's user, and that the file still exists (SHOW BINARY LOGS)",
                        )
                    })
                }),
            )
            .await?;
        let tables_ref = tables;
        let tables = tables
            .iter()
            .map(|t| {
                let mut l = Labels::default();
                for (i, (_, m)) in t.columns.iter().enumerate() {
                    if m.target == "text[]" {
                        l.sets.insert(i, m.labels.clone());
                    } else if !m.labels.is_empty() {
                        l.enums.insert(i, m.labels.clone());
                    } else if m.source.to_ascii_lowercase().starts_with("timestamp") {
                        l.timestamps.push(i);
                    } else if m.source.to_ascii_lowercase().starts_with("mediumint") {
                        l.int24.insert(i, !m.source.to_ascii_lowercase().contains("unsigned"));
                    }
                }
                (t.name.clone(), l)
            })
            .collect();
        Ok(BinlogReader {
            stream,
            server: source.describe(),
            database: source.database().to_string(),
            file: file.to_string(),
            tables,
            widths: tables_ref.iter().map(|t| (t.name.clone(), t.columns.len())).collect(),
            names: tables_ref
                .iter()
                .map(|t| (t.name.clone(), t.columns.iter().map(|(n, _)| n.clone()).collect()))
                .collect(),
            in_tx: false,
            standalone: false,
            pos,
            reverse_state_db: None,
            rows_seen: false,
            own: false,
            fold_case: lower_case.unwrap_or(0) != 0,
        })
    }

    /// Leaves out every transaction whose first row event is on `<state_db>.reverse_position`:
    /// the reverse stream's sink (`crate::apply::MySink`) writes that row first in each of its
    /// transactions, so what Ferry applied from PostgreSQL never streams back there (loop
    /// prevention). Such transactions still come as a `Begin` and a `Commit`.
    pub fn skip_reverse_writes(mut self, state_db: &str) -> Self {
        self.reverse_state_db = Some(state_db.to_string());
        self
    }

    /// A transaction starts or ends: nothing of it seen yet.
    fn boundary(&mut self) {
        self.rows_seen = false;
        self.own = false;
    }

    /// `host:port/database` of the source.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The binlog file being read.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The end of the last event read (file, position): everything before it has been returned.
    pub fn position(&self) -> (String, u64) {
        (self.file.clone(), self.pos)
    }

    /// The changes of the next event (often none); None when the stream ends.
    pub async fn next(&mut self) -> Result<Option<Vec<Change>>, MyError> {
        let Some(event) = self.stream.next().await else { return Ok(None) };
        let event = event.map_err(|e| {
            stream_error(
                &format!("reading the binlog from {} after {}:{}", self.server, self.file, self.pos),
                e,
                "Ferry reconnects with backoff and resumes from its last commit",
            )
        })?;
        let header = event.header();
        // Artificial events (the first rotate, the format description sent on connect) say 0.
        if header.log_pos() != 0 {
            self.pos = u64::from(header.log_pos());
        }
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            // seq_no (8 bytes), domain_id (4), flags (1): the GTID is domain-server-seq.
            let data = event.data();
            let gtid = (data.len() >= 12).then(|| {
                let seq = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
                let domain = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
                format!("{domain}-{}-{seq}", header.server_id())
            });
            self.in_tx = true;
            self.boundary();
            // Flags byte: bit 0 is FL_STANDALONE (DDL or a non-transactional statement).
            self.standalone = data.get(12).is_some_and(|f| f & 1 != 0);
            let at = u64::from(header.log_pos()).saturating_sub(u64::from(header.event_size()));
            return Ok(Some(vec![Change::Begin { gtid, at }]));
        }
        let timestamp = header.timestamp();
        let at = u64::from(header.log_pos()).saturating_sub(u64::from(header.event_size()));
        let bad = |e: std::io::Error| {
            MyError::new(
                "decoding a binlog event",
                &e.to_string(),
                "report this as a bug, with the server version",
            )
        };
        let Some(data) = event.read_data().map_err(bad)? else {
            return Ok(Some(Vec::new()));
        };
        let mut out = Vec::new();
        match data {
            EventData::RotateEvent(r) => {
                // The first rotate names the file asked for, and its name can carry the 4
                // checksum bytes at the end (toolchain notes): a name that is ours plus bytes
                // is ours. Files are numbered with a fixed width, so the next one never is.
                let name = r.name().to_string();
                if !name.starts_with(&self.file) {
                    self.file = name;
                    self.pos = r.position();
                }
            }
            EventData::GtidEvent(g) => {
                // MySQL 8: a GTID (server uuid:transaction number), then a BEGIN query.
                let sid = g.sid();
                let hex: String = sid.iter().map(|b| format!("{b:02x}")).collect();
                let uuid = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
                out.push(Change::Begin {
                    gtid: Some(format!("{uuid}:{}", g.gno())),
                    at,
                });
                self.in_tx = true;
                self.boundary();
            }
            EventData::XidEvent(_) => {
                self.in_tx = false;
                self.standalone = false;
                self.boundary();
                out.push(Change::Commit {
                    file: self.file.clone(),
                    pos: u64::from(header.log_pos()),
                    timestamp,
                })
            }
            EventData::QueryEvent(q) => {
                let commit = Change::Commit {
                    file: self.file.clone(),
                    pos: u64::from(header.log_pos()),
                    timestamp,
                };
                let query = q.query().to_string();
                let schema = q.schema().to_string();
                let fold = self.fold_case;
                // The migrated database, named or (unqualified) the statement's default one.
                let in_db = |db: Option<&str>| same_name(db.unwrap_or(schema.as_str()), &self.database, fold);
                // The migrated table a name designates, if any.
                let planned = |r: &TableRef| {
                    in_db(r.db.as_deref())
                        .then(|| find_name(self.tables.keys(), &r.table, fold).cloned())
                        .flatten()
                };
                // A statement whose tables Ferry cannot read concerns the migrated database when
                // that is its default one or when it names it.
                let mentions_db = || {
                    in_db(None)
                        || if fold {
                            query.to_lowercase().contains(&self.database.to_lowercase())
                        } else {
                            query.contains(self.database.as_str())
                        }
                };
                let statement = classify(&query);
                let stop = |why: Unapplicable| Change::Unapplicable {
                    query: query.clone(),
                    why,
                    file: self.file.clone(),
                    pos: u64::from(header.log_pos()),
                };
                let unapplicable = match &statement {
                    Statement::Write(Some(tables)) => tables
                        .iter()
                        .find_map(&planned)
                        .map(|t| stop(Unapplicable::StatementFormat(Some(t)))),
                    Statement::Write(None) if mentions_db() => Some(stop(Unapplicable::StatementFormat(None))),
                    Statement::Unreadable if mentions_db() => Some(stop(Unapplicable::UnreadableTruncate)),
                    _ => None,
                };
                let truncated = match &statement {
                    Statement::Truncate(r) => planned(r),
                    _ => None,
                };
                let schema_change = matches!(statement, Statement::SchemaChange) && mentions_db();
                // DDL commits implicitly, and MariaDB marks a group of one statement standalone;
                // a statement inside a transaction (MySQL's XA bookkeeping, say) does not end it.
                let ends_group = matches!(statement, Statement::Commit | Statement::Truncate(..) | Statement::SchemaChange)
                    || !self.in_tx
                    || self.standalone;
                if !matches!(statement, Statement::Begin | Statement::Commit) && !self.in_tx {
                    // A statement on its own (MySQL without GTIDs): its own transaction.
                    out.push(Change::Begin { gtid: None, at });
                    // (Fields, not `boundary()`: the closures above borrow `self.database`.)
                    (self.rows_seen, self.own) = (false, false);
                }
                match statement {
                    Statement::Begin => {
                        if !self.in_tx {
                            out.push(Change::Begin { gtid: None, at });
                            (self.rows_seen, self.own) = (false, false);
                        }
                        self.in_tx = true;
                        return Ok(Some(out));
                    }
                    _ if self.own => {}
                    Statement::Truncate(..) => {
                        if let Some(table) = truncated {
                            out.push(Change::Truncate { table })
                        }
                    }
                    Statement::SchemaChange if schema_change => out.push(Change::SchemaChange {
                        query,
                        file: self.file.clone(),
                        pos: u64::from(header.log_pos()),
                    }),
                    _ => out.extend(unapplicable),
                }
                if ends_group {
                    self.in_tx = false;
                    self.standalone = false;
                    (self.rows_seen, self.own) = (false, false);
                    out.push(commit);
                }
            }
            EventData::RowsEvent(rows) => {
                let tme = self
                    .stream
                    .get_tme(rows.table_id())
                    .ok_or_else(|| MyError::new("decoding a row event", "no table map for it", "report this as a bug"))?;
                let first = !std::mem::replace(&mut self.rows_seen, true);
                if first
                    && self.reverse_state_db.as_deref() == Some(&*tme.database_name())
                    && tme.table_name() == crate::apply::POSITION_TABLE
                {
                    self.own = true;
                }
                if self.own || !same_name(&tme.database_name(), &self.database, self.fold_case) {
                    return Ok(Some(out));
                }
                // The plan's name (under lower_case_table_names 2 the binlog may say it in
                // another case).
                let Some(table) = find_name(self.tables.keys(), &tme.table_name(), self.fold_case).cloned() else {
                    return Ok(Some(out));
                };
                let labels = &self.tables[&table];
                let width = self.widths.get(&table).copied().unwrap_or_default();
                let logged: Option<Vec<String>> = tme.iter_optional_meta().find_map(|f| match f {
                    Ok(OptionalMetadataField::ColumnName(n)) => Some(
                        n.iter_names()
                            .filter_map(Result::ok)
                            .map(|c| String::from_utf8_lossy(c.name_raw()).into_owned())
                            .collect(),
                    ),
                    _ => None,
                });
                if let Some(logged) = logged.filter(|l| Some(l) != self.names.get(&table)) {
                    return Err(MyError::new(
                        &format!("decoding a change to {table} at {}:{}", self.file, header.log_pos()),
                        &format!(
                            "the binlog's columns are ({}), the migration plan's ({}): its schema changed on the source",
                            logged.join(", "),
                            self.names.get(&table).map(|n| n.join(", ")).unwrap_or_default()
                        ),
                        "make the same change on the target, then run ferry migrate again (docs/mysql-cdc.md)",
                    ));
                }
                if tme.columns_count() != width as u64 {
                    return Err(MyError::new(
                        &format!("decoding a change to {table} at {}:{}", self.file, header.log_pos()),
                        &format!(
                            "the binlog has {} columns for it, the migration plan {width}: its schema changed on the source",
                            tme.columns_count()
                        ),
                        "make the same change on the target, then run ferry migrate again (docs/mysql-cdc.md)",
                    ));
                }
                let labels = labels.clone();
                let values = |row: Option<mysql_async::binlog::row::BinlogRow>| -> Result<Vec<Value>, MyError> {
                    let Some(row) = row else { return Ok(Vec::new()) };
                    row.unwrap()
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let v = Value::try_from(v)
                                .map_err(|e| MyError::new("decoding a JSON value", &e.to_string(), "report this as a bug"))?;
                            Ok(labelled(&labels, i, v))
                        })
                        .collect()
                };
                for r in rows.rows(tme) {
                    let (before, after) = r.map_err(bad)?;
                    let change = match &rows {
                        RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Change::Insert {
                            table: table.clone(),
                            row: values(after)?,
                        },
                        RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Change::Delete {
                            table: table.clone(),
                            row: values(before)?,
                        },
                        _ => Change::Update {
                            table: table.clone(),
                            before: values(before)?,
                            after: values(after)?,
                        },
                    };
                    out.push(change);
                }
            }
            _ => {}
        }
        Ok(Some(out))
    }
}

/// A MEDIUMINT's value with its column's sign: three bytes, two's complement when signed.
fn int24(v: Value, signed: bool) -> Value {
    let raw = match v {
        Value::Int(n) => n,
        Value::UInt(n) => n as i64,
        other => return other,
    };
    let bits = raw & 0xFF_FFFF;
    match signed {
        true if bits >= 0x80_0000 => Value::Int(bits - 0x100_0000),
        true => Value::Int(bits),
        false => Value::UInt(bits as u64),
    }
}

/// A TIMESTAMP from the binlog (`secs` or `secs.fraction` since the epoch, UTC) as the date
/// and time a query returns with time_zone '+00:00'; 0 is MySQL's zero timestamp.
fn epoch_to_date(v: Value) -> Value {
    let (secs, micros) = match &v {
        Value::Int(n) => (*n, 0),
        Value::UInt(n) => (*n as i64, 0),
        Value::Bytes(b) => {
            let text = String::from_utf8_lossy(b);
            let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
            let Ok(secs) = whole.parse::<i64>() else { return v };
            let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
            (secs, digits.parse::<u32>().unwrap_or(0))
        }
        _ => return v,
    };
    if secs == 0 && micros == 0 {
        return Value::Date(0, 0, 0, 0, 0, 0, 0);
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Value::Date(
        y as u16,
        m as u8,
        d as u8,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
        micros,
    )
}

/// ENUM indexes and SET bitmasks to their labels (as the full load reads them: text).
fn labelled(labels: &Labels, i: usize, v: Value) -> Value {
    if labels.timestamps.contains(&i) {
        return epoch_to_date(v);
    }
    if let Some(&signed) = labels.int24.get(&i) {
        return int24(v, signed);
    }
    // The binlog holds an ENUM's index and a SET's bitmask (1 to 8 bytes, little-endian);
    // mysql_common hands them over as an integer or as those bytes.
    let index = |v: &Value| match v {
        Value::Int(n) => Some(*n as u64),
        Value::UInt(n) => Some(*n),
        Value::Bytes(b) if !b.is_empty() && b.len() <= 8 => Some(b.iter().rev().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))),
        _ => None,
    };
    if let Some(l) = labels.enums.get(&i) {
        // An ENUM arrives as an integer; bytes would be a label already.
        if let Some(n) = index(&v).filter(|_| !matches!(v, Value::Bytes(_))) {
            // 0 is MySQL's '' error value; value::write refuses it.
            let label = if n == 0 {
                String::new()
            } else {
                l.get(n as usize - 1).cloned().unwrap_or_default()
            };
            return Value::Bytes(label.into_bytes());
        }
    }
    if let Some(l) = labels.sets.get(&i) {
        if let Some(bits) = index(&v) {
            let members: Vec<&str> = l
                .iter()
                .enumerate()
                .filter(|(b, _)| bits & (1 << b) != 0)
                .map(|(_, m)| m.as_str())
                .collect();
            return Value::Bytes(members.join(",").into_bytes());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mediumints_keep_their_sign() {
        assert_eq!(int24(Value::UInt(8_388_608), true), Value::Int(-8_388_608));
        assert_eq!(int24(Value::Int(8_388_607), true), Value::Int(8_388_607));
        assert_eq!(int24(Value::Int(-1), true), Value::Int(-1));
        assert_eq!(int24(Value::UInt(0xFF_FFFF), true), Value::Int(-1));
        assert_eq!(int24(Value::Int(-1), false), Value::UInt(16_777_215));
        assert_eq!(int24(Value::UInt(8_388_608), false), Value::UInt(8_388_608));
        assert_eq!(int24(Value::NULL, true), Value::NULL);
    }

    #[test]
    fn timestamps_from_epoch() {
        assert_eq!(
            epoch_to_date(Value::Bytes(b"2147483647.999999".to_vec())),
            Value::Date(2038, 1, 19, 3, 14, 7, 999_999)
        );
        assert_eq!(
            epoch_to_date(Value::Bytes(b"1.05".to_vec())),
            Value::Date(1970, 1, 1, 0, 0, 1, 50_000)
        );
        assert_eq!(epoch_to_date(Value::Int(951_782_400)), Value::Date(2000, 2, 29, 0, 0, 0, 0));
        assert_eq!(epoch_to_date(Value::Int(0)), Value::Date(0, 0, 0, 0, 0, 0, 0));
    }
}
