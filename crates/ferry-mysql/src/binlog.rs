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
//! MySQL 8.0/8.4 specifics (`docs/mysql-cdc.md`, "MySQL 8.0 / 8.4"; coded against MySQL's
//! documentation, not yet run against a real MySQL 8 server): a transaction starts with a
//! GTID event (33; 34 when `gtid_mode` is OFF; 42 for 8.4's tagged GTIDs), decoded by
//! `crate::gtid`, and each file starts with the set executed before it (35). The reader keeps
//! the GTID state ([`crate::gtid::GtidState`]) so that every [`Change::Begin`] says the state
//! once its transaction commits. A compressed transaction (40, `payload`) arrives as one event
//! whose events the driver then yields one by one; they decode as uncompressed ones, at the
//! payload event's position. A GTID event always starts a group, so a group the reader saw no
//! end of (a statement MySQL logs without BEGIN or COMMIT) ends there.
//!
//! XA transactions (`docs/mysql-cdc.md`, "XA transactions"): a prepared one is a group of its own
//! whose rows are not committed, marked [`Change::XaPrepared`] (MariaDB: its GTID event's
//! FL_PREPARED_XA flag and xid; MySQL: its `XA START` statement) and ended by its
//! XA_PREPARE_LOG_EVENT; its `XA COMMIT` or `XA ROLLBACK` comes later, a group of its own
//! ([`Change::XaResolved`]). The driver decides what to apply when.
//!
//! Statements (QUERY events, `crate::statement`): a TRUNCATE of a migrated table becomes
//! [`Change::Truncate`], DDL on the migrated database [`Change::SchemaChange`], and a write
//! logged in STATEMENT format on a migrated table, or a TRUNCATE whose table cannot be read,
//! [`Change::Unapplicable`]: the stream stops before them, never skips them. Table and database
//! names match as the server matches them (`lower_case_table_names`, read when the reader
//! starts).

mod payload;
mod values;

#[cfg(test)]
mod fixtures;

use std::collections::HashMap;

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, OptionalMetadataField, RowsEventData, TableMapEvent};
use mysql_async::prelude::Queryable;
use mysql_async::Value;

use crate::endpoint::MyEndpoint;
use crate::error::MyError;
use crate::gtid::{decode_gtid_event, decode_previous_gtids, valid_tag, Gtid, GtidState, Uuid};
use crate::preflight::MyTable;
pub use crate::statement::{classify, Statement, TableRef, XaStatement};
use crate::statement::{find_name, same_name};
use payload::Unpacking;
pub use payload::MAX_UNCOMPRESSED;
use values::{labelled, Labels};

/// How often an idle source sends a heartbeat event on the binlog connection.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// MariaDB's GTID event, which mysql_common does not decode.
const MARIADB_GTID_EVENT: u8 = 162;
/// MySQL's GTID event (`uuid:n`).
const GTID_EVENT: u8 = 33;
/// MySQL's GTID event with `gtid_mode` OFF: a transaction without a GTID.
const ANONYMOUS_GTID_EVENT: u8 = 34;
/// MySQL's set of GTIDs executed before the file.
const PREVIOUS_GTIDS_EVENT: u8 = 35;
/// MySQL 8.0.20+'s compressed transaction.
const TRANSACTION_PAYLOAD_EVENT: u8 = 40;
/// MySQL 8.4's tagged GTID event (`uuid:tag:n`).
const GTID_TAGGED_EVENT: u8 = 42;
/// The end of a prepared XA transaction's group (`XA PREPARE`; MySQL also ends an
/// `XA COMMIT ... ONE PHASE` with it, its one-phase byte set).
const XA_PREPARE_LOG_EVENT: u8 = 38;
/// MariaDB GTID event flags: the group is a prepared XA transaction, or the XA COMMIT or
/// XA ROLLBACK of one; either way the event carries the xid.
const FL_PREPARED_XA: u8 = 0x40;
const FL_COMPLETED_XA: u8 = 0x80;
/// MariaDB GTID event flag: a commit id (8 bytes) follows the flags.
const FL_GROUP_COMMIT_ID: u8 = 0x02;

/// One decoded change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A transaction starts.
    Begin {
        /// Its GTID, when the server sends one: MariaDB `domain-server-sequence`, MySQL
        /// `uuid:n` (8.4 tagged: `uuid:tag:n`).
        gtid: Option<String>,
        /// The server's GTID state once it commits ([`crate::gtid::GtidState`]): MySQL's
        /// executed set (`uuid:1-n,...`), MariaDB's last GTID per domain; None while unknown
        /// (no GTIDs, and none given to [`BinlogReader::with_gtid_state`]).
        executed: Option<String>,
        /// Where its first event starts, in the current binlog file.
        at: u64,
        /// Its first event's time (Unix seconds).
        timestamp: u32,
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
    /// The transaction that just began is a prepared XA transaction (`XA PREPARE`): its rows
    /// follow but are not committed; a later `XA COMMIT` or `XA ROLLBACK` of `xid`
    /// ([`Change::XaResolved`]) decides. Its [`Change::Commit`] only ends its group.
    XaPrepared {
        /// The xid, in the server's text form (`X'6131',X'',1`).
        xid: String,
    },
    /// The transaction is `XA COMMIT` (`committed`) or `XA ROLLBACK` of the XA transaction
    /// `xid`, prepared earlier in the binlog (or, MySQL's `XA COMMIT ... ONE PHASE`, in this very
    /// group): its rows are not here, they are the prepared transaction's.
    XaResolved {
        /// The xid, in the server's text form.
        xid: String,
        /// XA COMMIT (else XA ROLLBACK).
        committed: bool,
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

/// Where the decoder finds a rows event's table map: the stream registers every TABLE_MAP
/// event it reads, those inside a compressed transaction included.
trait TableMaps {
    fn table_map(&self, table_id: u64) -> Option<&TableMapEvent<'static>>;
}

impl TableMaps for mysql_async::BinlogStream {
    fn table_map(&self, table_id: u64) -> Option<&TableMapEvent<'static>> {
        self.get_tme(table_id)
    }
}

/// A binlog reader for the tables of one database.
pub struct BinlogReader {
    stream: mysql_async::BinlogStream,
    decoder: Decoder,
}

impl std::fmt::Debug for BinlogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BinlogReader({} at {})", self.decoder.database, self.decoder.file)
    }
}

/// The reader's state between events: everything but the connection, so that events built
/// from bytes decode exactly as streamed ones (`fixtures`).
struct Decoder {
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
    /// The GTID state after the transactions read so far.
    gtids: GtidState,
    /// The events of a compressed transaction still to come.
    unpacking: Option<Unpacking>,
    /// The current group is a prepared XA transaction with this xid (MariaDB's GTID event says
    /// so, MySQL's `XA START` statement): its XA_PREPARE event ends it.
    xa_prepared: Option<String>,
    /// The current group is the XA COMMIT or XA ROLLBACK of this xid (MariaDB's GTID event).
    xa_completing: Option<String>,
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
        let mut decoder = Decoder::new(source.describe(), source.database(), (file, pos), tables);
        decoder.fold_case = lower_case.unwrap_or(0) != 0;
        Ok(BinlogReader { stream, decoder })
    }

    /// The GTID state at the start position (the position's GTID text: MySQL's executed set or
    /// MariaDB's per-domain list), which each [`Change::Begin`]'s `executed` then extends. Text
    /// Ferry cannot read leaves the state unknown until the stream tells (a warning says so):
    /// positions stay exact, only their GTID text is partial.
    pub fn with_gtid_state(mut self, text: &str) -> Self {
        self.decoder.gtids = GtidState::parse(text).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the start position's GTID set cannot be read; recording GTIDs from the stream only");
            GtidState::Unknown
        });
        self
    }

    /// Leaves out every transaction whose first row event is on `<state_db>.reverse_position`:
    /// the reverse stream's sink (`crate::apply::MySink`) writes that row first in each of its
    /// transactions, so what Ferry applied from PostgreSQL never streams back there (loop
    /// prevention). Such transactions still come as a `Begin` and a `Commit`.
    pub fn skip_reverse_writes(mut self, state_db: &str) -> Self {
        self.decoder.reverse_state_db = Some(state_db.to_string());
        self
    }

    /// `host:port/database` of the source.
    pub fn server(&self) -> &str {
        &self.decoder.server
    }

    /// The binlog file being read.
    pub fn file(&self) -> &str {
        &self.decoder.file
    }

    /// The end of the last event read (file, position): everything before it has been returned.
    pub fn position(&self) -> (String, u64) {
        (self.decoder.file.clone(), self.decoder.pos)
    }

    /// The changes of the next event (often none); None when the stream ends.
    pub async fn next(&mut self) -> Result<Option<Vec<Change>>, MyError> {
        let Some(event) = self.stream.next().await else { return Ok(None) };
        let event = event.map_err(|e| {
            stream_error(
                &format!(
                    "reading the binlog from {} after {}:{}",
                    self.decoder.server, self.decoder.file, self.decoder.pos
                ),
                e,
                "Ferry reconnects with backoff and resumes from its last commit",
            )
        })?;
        self.decoder.decode(&event, &self.stream).map(Some)
    }
}

impl Decoder {
    fn new(server: String, database: &str, (file, pos): (&str, u64), tables: &[MyTable]) -> Decoder {
        Decoder {
            server,
            database: database.to_string(),
            file: file.to_string(),
            tables: tables.iter().map(|t| (t.name.clone(), Labels::of(t))).collect(),
            widths: tables.iter().map(|t| (t.name.clone(), t.columns.len())).collect(),
            names: tables
                .iter()
                .map(|t| (t.name.clone(), t.columns.iter().map(|(n, _)| n.clone()).collect()))
                .collect(),
            in_tx: false,
            standalone: false,
            pos,
            reverse_state_db: None,
            rows_seen: false,
            own: false,
            fold_case: false,
            gtids: GtidState::Unknown,
            unpacking: None,
            xa_prepared: None,
            xa_completing: None,
        }
    }

    /// A transaction starts or ends: nothing of it seen yet.
    fn boundary(&mut self) {
        self.rows_seen = false;
        self.own = false;
        self.xa_prepared = None;
        self.xa_completing = None;
    }

    /// A GTID event at `at` starts a group (the state already counts its GTID). A group still
    /// open ends there: every group starts with a GTID event, so the previous one is over.
    fn start_group(&mut self, gtid: Option<String>, at: u64, timestamp: u32) -> Vec<Change> {
        let mut out = Vec::new();
        if self.in_tx {
            out.push(Change::Commit {
                file: self.file.clone(),
                pos: at,
                timestamp,
            });
        }
        self.in_tx = true;
        self.standalone = false;
        self.boundary();
        out.push(Change::Begin {
            gtid,
            executed: self.gtids.text(),
            at,
            timestamp,
        });
        out
    }

    /// A binlog event Ferry cannot read, at `pos` of the current file.
    fn undecodable(&self, what: &str, pos: u64, why: &str, fix: &str) -> MyError {
        MyError::new(
            &format!("decoding {what} in the binlog of {} at {}:{pos}", self.server, self.file),
            why,
            fix,
        )
    }

    /// The changes of one event (often none).
    fn decode(&mut self, event: &Event, maps: &impl TableMaps) -> Result<Vec<Change>, MyError> {
        let header = event.header();
        let event_type = header.event_type_raw();
        // Inside a compressed transaction: its events say nothing of the file, they are where
        // the payload event is (a restart there replays the whole transaction).
        let inner = match self.unpacking.as_mut() {
            Some(u) => {
                let span = (u.at, u.end);
                let counted = u.inner(event_type, header.event_size());
                match counted {
                    Ok(last) => {
                        if last {
                            self.unpacking = None;
                        }
                        Some(span)
                    }
                    Err(e) => {
                        return Err(self.undecodable(
                            "a compressed transaction",
                            span.0,
                            &e.to_string(),
                            "report this as a bug, with the server version; meanwhile SET GLOBAL binlog_transaction_compression = OFF \
                             on the source (new transactions) and run ferry migrate again",
                        ))
                    }
                }
            }
            None => None,
        };
        let log_pos = u64::from(header.log_pos());
        // Where the event starts and where the stream continues after it.
        let (at, end) = inner.unwrap_or((log_pos.saturating_sub(u64::from(header.event_size())), log_pos));
        // Artificial events (the first rotate, the format description sent on connect) say 0.
        if inner.is_none() && log_pos != 0 {
            self.pos = log_pos;
        }
        let timestamp = header.timestamp();
        match event_type {
            MARIADB_GTID_EVENT => {
                // seq_no (8 bytes), domain_id (4), flags (1): the GTID is domain-server-seq.
                let data = event.data();
                let gtid = (data.len() >= 12).then(|| {
                    let seq = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
                    let domain = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
                    self.gtids.executed_mariadb(domain, header.server_id(), seq);
                    format!("{domain}-{}-{seq}", header.server_id())
                });
                let mut out = self.start_group(gtid, at, timestamp);
                // Flags byte: bit 0 is FL_STANDALONE (DDL or a non-transactional statement).
                let flags = data.get(12).copied().unwrap_or(0);
                self.standalone = flags & 1 != 0;
                if flags & (FL_PREPARED_XA | FL_COMPLETED_XA) != 0 {
                    let xid = mariadb_xid(data, flags).ok_or_else(|| {
                        self.undecodable(
                            "the xid of an XA transaction's GTID event",
                            at,
                            "the event is shorter than its flags say",
                            "report this as a bug, with the server version",
                        )
                    })?;
                    if flags & FL_PREPARED_XA != 0 {
                        out.push(Change::XaPrepared { xid: xid.clone() });
                        self.xa_prepared = Some(xid);
                    } else {
                        self.xa_completing = Some(xid);
                    }
                }
                return Ok(out);
            }
            GTID_EVENT | ANONYMOUS_GTID_EVENT => {
                let gtid = decode_gtid_event(event.data())
                    .map_err(|e| self.undecodable("a GTID event", at, &e.to_string(), "report this as a bug, with the server version"))?;
                if let Some(g) = &gtid {
                    self.gtids.executed_mysql(g);
                }
                return Ok(self.start_group(gtid.map(|g| g.to_string()), at, timestamp));
            }
            PREVIOUS_GTIDS_EVENT => {
                // Informational (the set before this file): joins the state when readable.
                match decode_previous_gtids(event.data()) {
                    Ok(set) => self.gtids.executed_before(&set),
                    Err(e) => tracing::debug!(error = %e, file = %self.file, "PREVIOUS_GTIDS event not read"),
                }
                return Ok(Vec::new());
            }
            XA_PREPARE_LOG_EVENT => {
                // one_phase (1 byte), format id (4), gtrid and bqual lengths (4 each), data: the
                // group ends here. MySQL's XA COMMIT ... ONE PHASE is a prepared group that
                // commits at once: it resolves itself.
                let mut out = Vec::new();
                if !self.in_tx {
                    return Ok(out);
                }
                if event.data().first().is_some_and(|b| *b != 0) {
                    if let Some(xid) = self.xa_prepared.clone() {
                        out.push(Change::XaResolved { xid, committed: true });
                    }
                }
                self.in_tx = false;
                self.standalone = false;
                self.boundary();
                out.push(Change::Commit {
                    file: self.file.clone(),
                    pos: end,
                    timestamp,
                });
                return Ok(out);
            }
            TRANSACTION_PAYLOAD_EVENT => {
                let header = payload::parse_header(event.data()).map_err(|e| {
                    self.undecodable(
                        "a compressed transaction",
                        at,
                        &e.to_string(),
                        "SET GLOBAL binlog_transaction_compression = OFF on the source (it applies to new transactions), \
                         then load again with ferry migrate --overwrite",
                    )
                })?;
                tracing::trace!(
                    compression = ?header.compression,
                    bytes = header.payload_size,
                    uncompressed = header.uncompressed_size,
                    "compressed transaction"
                );
                self.unpacking = Unpacking::new(&header, at, end);
                return Ok(Vec::new());
            }
            _ => {}
        }
        let bad = |e: std::io::Error| {
            MyError::new(
                "decoding a binlog event",
                &e.to_string(),
                "report this as a bug, with the server version",
            )
        };
        let Some(data) = event.read_data().map_err(bad)? else {
            return Ok(Vec::new());
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
            EventData::GtidEvent(g) if event_type == GTID_TAGGED_EVENT => {
                // MySQL 8.4's tagged GTID (`uuid:tag:n`), decoded by mysql_common (its
                // serialization format); the tag is checked against MySQL's rule.
                let tag = g.tag().map(|t| t.as_str().to_string());
                if tag.as_deref().is_some_and(|t| !valid_tag(t)) || g.gno() == 0 || g.gno() > crate::gtid::GNO_MAX {
                    return Err(self.undecodable(
                        "a tagged GTID event",
                        at,
                        &format!("tag {tag:?}, transaction number {}: not a GTID MySQL hands out", g.gno()),
                        "report this as a bug, with the server version",
                    ));
                }
                let gtid = Gtid {
                    uuid: Uuid(g.sid()),
                    tag,
                    seq: g.gno(),
                };
                self.gtids.executed_mysql(&gtid);
                out = self.start_group(Some(gtid.to_string()), at, timestamp);
            }
            EventData::XidEvent(_) => {
                self.in_tx = false;
                self.standalone = false;
                self.boundary();
                out.push(Change::Commit {
                    file: self.file.clone(),
                    pos: end,
                    timestamp,
                })
            }
            EventData::QueryEvent(q) => {
                let commit = Change::Commit {
                    file: self.file.clone(),
                    pos: end,
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
                // XA bookkeeping: MySQL starts a prepared transaction's group with XA START
                // (MariaDB's GTID event says it); XA COMMIT and XA ROLLBACK of a prepared one
                // are groups of their own.
                let mut xa_change = None;
                let mut xa_ends = false;
                if self.in_tx && !self.own {
                    match crate::statement::xa(&query) {
                        Some(XaStatement::Start(xid)) if self.xa_prepared.is_none() => {
                            self.xa_prepared = Some(xid.clone());
                            xa_change = Some(Change::XaPrepared { xid });
                        }
                        Some(XaStatement::Commit { xid, one_phase: false }) => {
                            xa_ends = true;
                            xa_change = Some(Change::XaResolved {
                                xid: self.xa_completing.take().unwrap_or(xid),
                                committed: true,
                            });
                        }
                        Some(XaStatement::Rollback(xid)) => {
                            xa_ends = true;
                            xa_change = Some(Change::XaResolved {
                                xid: self.xa_completing.take().unwrap_or(xid),
                                committed: false,
                            });
                        }
                        _ => {}
                    }
                }
                let stop = |why: Unapplicable| Change::Unapplicable {
                    query: query.clone(),
                    why,
                    file: self.file.clone(),
                    pos: end,
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
                    || self.standalone
                    || xa_ends;
                if !matches!(statement, Statement::Begin | Statement::Commit) && !self.in_tx {
                    // A statement on its own (MySQL without GTIDs): its own transaction.
                    out.push(Change::Begin {
                        gtid: None,
                        executed: self.gtids.text(),
                        at,
                        timestamp,
                    });
                    // (Fields, not `boundary()`: the closures above borrow `self.database`.)
                    (self.rows_seen, self.own) = (false, false);
                }
                match statement {
                    Statement::Begin => {
                        if !self.in_tx {
                            out.push(Change::Begin {
                                gtid: None,
                                executed: self.gtids.text(),
                                at,
                                timestamp,
                            });
                            (self.rows_seen, self.own) = (false, false);
                        }
                        self.in_tx = true;
                        return Ok(out);
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
                        pos: end,
                    }),
                    _ => out.extend(unapplicable.or(xa_change)),
                }
                if ends_group {
                    self.in_tx = false;
                    self.standalone = false;
                    (self.rows_seen, self.own) = (false, false);
                    out.push(commit);
                }
            }
            EventData::RowsEvent(rows) => {
                let tme = maps
                    .table_map(rows.table_id())
                    .ok_or_else(|| MyError::new("decoding a row event", "no table map for it", "report this as a bug"))?;
                let first = !std::mem::replace(&mut self.rows_seen, true);
                if first
                    && self.reverse_state_db.as_deref() == Some(&*tme.database_name())
                    && tme.table_name() == crate::apply::POSITION_TABLE
                {
                    self.own = true;
                }
                if self.own || !same_name(&tme.database_name(), &self.database, self.fold_case) {
                    return Ok(out);
                }
                // The plan's name (under lower_case_table_names 2 the binlog may say it in
                // another case).
                let Some(table) = find_name(self.tables.keys(), &tme.table_name(), self.fold_case).cloned() else {
                    return Ok(out);
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
                        &format!("decoding a change to {table} at {}:{}", self.file, end),
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
                        &format!("decoding a change to {table} at {}:{}", self.file, end),
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
        Ok(out)
    }
}

/// The xid a MariaDB GTID event carries when its flags say XA: after the flags (and the commit
/// id, when there is one), format id (4 bytes), gtrid and bqual lengths (1 byte each), data.
fn mariadb_xid(data: &[u8], flags: u8) -> Option<String> {
    let mut at = 13;
    if flags & FL_GROUP_COMMIT_ID != 0 {
        at += 8;
    }
    let format_id = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
    let gtrid = usize::from(*data.get(at + 4)?);
    let bqual = usize::from(*data.get(at + 5)?);
    let ids = data.get(at + 6..at + 6 + gtrid + bqual)?;
    Some(crate::statement::xid_text(format_id, &ids[..gtrid], &ids[gtrid..]))
}

#[cfg(test)]
mod xa_tests {
    use super::*;

    /// GTID event bodies as MariaDB 10.11 wrote them for `XA PREPARE 'a1'` (flags 0x4c:
    /// prepared XA, transactional, parallel) and `XA PREPARE 'b2','bq',7`.
    #[test]
    fn mariadb_gtid_events_carry_the_xid() {
        let a1 = [7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4c, 1, 0, 0, 0, 2, 0, b'a', b'1', 1, 0xff];
        assert_eq!(mariadb_xid(&a1, a1[12]).as_deref(), Some("X'6131',X'',1"));
        let b2 = [
            8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4c, 7, 0, 0, 0, 2, 2, b'b', b'2', b'b', b'q', 1, 0xff,
        ];
        assert_eq!(mariadb_xid(&b2, b2[12]).as_deref(), Some("X'6232',X'6271',7"));
        // With a commit id (FL_GROUP_COMMIT_ID) the xid comes 8 bytes later.
        let mut with_id = a1[..13].to_vec();
        with_id[12] |= FL_GROUP_COMMIT_ID;
        with_id.extend([9; 8]);
        with_id.extend(&a1[13..]);
        assert_eq!(mariadb_xid(&with_id, with_id[12]).as_deref(), Some("X'6131',X'',1"));
        // Cut short: no xid rather than a wrong one.
        assert_eq!(mariadb_xid(&a1[..19], a1[12]), None);
    }
}
