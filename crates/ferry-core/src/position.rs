//! Source positions: where in the source's change history a piece of data stands.
//!
//! Every engine has its own kind of position, and [`SourcePosition`] keeps them apart: a
//! PostgreSQL LSN and a MySQL binlog position never compare (`partial_cmp` answers `None`).
//! The text form (`pg:16/B374D848`, `mysql:binlog.000012:4567/0-1-57`) is what Ferry's state
//! schema stores; it round-trips through `Display` and `FromStr`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PostgreSQL WAL position (log sequence number), printed as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not a position of the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid position {0:?}: expected an LSN like 16/B374D848 or pg:16/B374D848, or a binlog position like \
     mysql:binlog.000012:4567 (optionally followed by /GTID-set)"
)]
pub struct ParsePositionError(pub String);

impl FromStr for Lsn {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// A MySQL/MariaDB binlog position: the binlog file, the offset of the next event in it, and
/// the GTID set of what was executed up to there (MariaDB `0-1-57,1-2-9`, MySQL
/// `3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,...`; empty when unknown).
///
/// Files compare by their numeric suffix, never as text (`mysql-bin.000010` comes before
/// `mysql-bin.000100`, and `mysql-bin.999999` before `mysql-bin.1000000`), then by offset.
/// Positions in files of different base names (the source's `log_bin` changed) do not compare.
/// The GTID set is carried along, not ordered: equality, hashing and ordering look at the file
/// and offset only.
#[derive(Debug, Clone)]
pub struct BinlogPosition {
    file: String,
    /// Where the numeric suffix starts in `file` (after the last `.`).
    dot: usize,
    /// The numeric suffix.
    seq: u64,
    pos: u64,
    gtid: String,
}

impl BinlogPosition {
    /// A position in `file` (a binlog file name as `SHOW MASTER STATUS` gives it: a base name,
    /// a dot, a number) at offset `pos`, with the GTID set `gtid` (whitespace is dropped: MySQL
    /// prints its sets with line breaks). Refuses a file name without a numeric suffix, or with
    /// a `/` or whitespace, and a GTID set with characters no GTID set has.
    pub fn new(file: &str, pos: u64, gtid: &str) -> Result<BinlogPosition, ParsePositionError> {
        let err = || ParsePositionError(format!("mysql:{file}:{pos}/{gtid}"));
        let dot = file.rfind('.').ok_or_else(err)?;
        let (base, suffix) = (&file[..dot], &file[dot + 1..]);
        if base.is_empty()
            || suffix.is_empty()
            || suffix.len() > 19
            || !suffix.bytes().all(|b| b.is_ascii_digit())
            || file.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(err());
        }
        let seq: u64 = suffix.parse().map_err(|_| err())?;
        let gtid: String = gtid.chars().filter(|c| !c.is_whitespace()).collect();
        if !gtid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | ',' | '_'))
        {
            return Err(err());
        }
        Ok(BinlogPosition {
            file: file.to_string(),
            dot,
            seq,
            pos,
            gtid,
        })
    }

    /// The binlog file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The offset in the file.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The GTID set (empty when unknown).
    pub fn gtid(&self) -> &str {
        &self.gtid
    }

    /// The file's number (its numeric suffix).
    pub fn file_number(&self) -> u64 {
        self.seq
    }

    /// The same place with another GTID set.
    pub fn with_gtid(&self, gtid: &str) -> Result<BinlogPosition, ParsePositionError> {
        BinlogPosition::new(&self.file, self.pos, gtid)
    }

    /// `file:pos`, without the GTID set (what MySQL's own tools print).
    pub fn file_pos(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }

    fn base(&self) -> &str {
        &self.file[..self.dot]
    }
}

impl PartialEq for BinlogPosition {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file && self.pos == other.pos
    }
}

impl Eq for BinlogPosition {}

impl Hash for BinlogPosition {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.file.hash(state);
        self.pos.hash(state);
    }
}

impl PartialOrd for BinlogPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if self.base() != other.base() {
            return None;
        }
        match (self.seq, self.pos).cmp(&(other.seq, other.pos)) {
            // `binlog.0001` and `binlog.001`: the same number written differently; not the
            // same file as far as Ferry can tell.
            Ordering::Equal if self.file != other.file => None,
            o => Some(o),
        }
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if !self.gtid.is_empty() {
            write!(f, "/{}", self.gtid)?;
        }
        Ok(())
    }
}

impl FromStr for BinlogPosition {
    type Err = ParsePositionError;

    /// `file:pos` or `file:pos/gtid-set` (a file name has no `/`, a GTID set none either).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        let (file_pos, gtid) = s.split_once('/').unwrap_or((s, ""));
        if s.contains('/') && gtid.is_empty() {
            return Err(err());
        }
        let (file, pos) = file_pos.rsplit_once(':').ok_or_else(err)?;
        if pos.is_empty() || !pos.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let pos: u64 = pos.parse().map_err(|_| err())?;
        BinlogPosition::new(file, pos, gtid).map_err(|_| err())
    }
}

/// A position in some source's change stream. Typed per engine so positions of different engines
/// can never be compared by accident: `partial_cmp` of two engines' positions is `None`, and so
/// is every `<`, `>=`... between them false. Serialized as its text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SourcePosition {
    /// PostgreSQL: a WAL LSN. Text: `pg:16/B374D848`.
    Postgres(Lsn),
    /// MySQL/MariaDB: a binlog position. Text: `mysql:binlog.000012:4567` or, with the GTID
    /// set, `mysql:binlog.000012:4567/0-1-57`.
    Mysql(BinlogPosition),
}

impl SourcePosition {
    /// The engine's name, as the state schema records it (`postgresql`, `mysql`).
    pub fn engine(&self) -> &'static str {
        match self {
            SourcePosition::Postgres(_) => "postgresql",
            SourcePosition::Mysql(_) => "mysql",
        }
    }

    /// The binlog position, when this is one.
    pub fn as_mysql(&self) -> Option<&BinlogPosition> {
        match self {
            SourcePosition::Mysql(p) => Some(p),
            SourcePosition::Postgres(_) => None,
        }
    }

    /// The LSN, when this is one.
    pub fn as_lsn(&self) -> Option<Lsn> {
        match self {
            SourcePosition::Postgres(l) => Some(*l),
            SourcePosition::Mysql(_) => None,
        }
    }

    /// The ordering key: one number that orders every position of one stream the way the
    /// stream does, so that appliers compare, skip and key dead letters the same way for every
    /// engine. PostgreSQL: the LSN. MySQL: the binlog file's number in the high 24 bits and the
    /// offset in the low 40 (a binlog file never reaches 1 TiB: `max_binlog_size` is at most
    /// 1 GiB).
    pub fn order_key(&self) -> Lsn {
        match self {
            SourcePosition::Postgres(l) => *l,
            SourcePosition::Mysql(b) => Lsn((b.file_number() << 40) | (b.pos() & ((1 << 40) - 1))),
        }
    }
}

impl PartialOrd for SourcePosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (SourcePosition::Postgres(a), SourcePosition::Postgres(b)) => a.partial_cmp(b),
            (SourcePosition::Mysql(a), SourcePosition::Mysql(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcePosition::Postgres(lsn) => write!(f, "pg:{lsn}"),
            SourcePosition::Mysql(p) => write!(f, "mysql:{p}"),
        }
    }
}

impl FromStr for SourcePosition {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        if let Some(rest) = s.strip_prefix("pg:") {
            return Ok(SourcePosition::Postgres(rest.parse().map_err(|_| err())?));
        }
        if let Some(rest) = s.strip_prefix("mysql:") {
            return Ok(SourcePosition::Mysql(rest.parse().map_err(|_| err())?));
        }
        Err(err())
    }
}

impl TryFrom<String> for SourcePosition {
    type Error = ParsePositionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SourcePosition> for String {
    fn from(p: SourcePosition) -> String {
        p.to_string()
    }
}

impl From<BinlogPosition> for SourcePosition {
    fn from(p: BinlogPosition) -> SourcePosition {
        SourcePosition::Mysql(p)
    }
}

impl From<Lsn> for SourcePosition {
    fn from(l: Lsn) -> SourcePosition {
        SourcePosition::Postgres(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_notation() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap().0, 0x16_B374_D848);
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("/1".parse::<Lsn>().is_err());
        assert!("123456789/1".parse::<Lsn>().is_err());
        assert!("G/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn source_position_round_trips() {
        let p = SourcePosition::Postgres(Lsn(0x1_0000_0010));
        assert_eq!(p.to_string(), "pg:1/10");
        assert_eq!("pg:1/10".parse::<SourcePosition>().unwrap(), p);
        assert!("mysql:1/10".parse::<SourcePosition>().is_err());
        for text in [
            "mysql:mysql-bin.000012:4567",
            "mysql:binlog.000001:4",
            "mysql:mysql-bin.000012:4567/0-1-57",
            "mysql:mysql-bin.000012:4567/0-1-57,1-2-9",
            "mysql:binlog.000003:157/3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9,4e11fa47-71ca-11e1-9e33-c80aa9429562:1-2",
            "mysql:host:with:colons-bin.000002:0",
        ] {
            let p: SourcePosition = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.to_string(), text);
            assert_eq!(p.engine(), "mysql");
            // Serde uses the same text.
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            let back: SourcePosition = serde_json::from_str(&json).unwrap();
            assert_eq!(back.as_mysql().unwrap().gtid(), p.as_mysql().unwrap().gtid());
        }
        let p: SourcePosition = "mysql:mysql-bin.000012:4567/0-1-57,1-2-9".parse().unwrap();
        let b = p.as_mysql().unwrap();
        assert_eq!(
            (b.file(), b.pos(), b.gtid(), b.file_number()),
            ("mysql-bin.000012", 4567, "0-1-57,1-2-9", 12)
        );
        assert_eq!(b.file_pos(), "mysql-bin.000012:4567");
        // MySQL prints executed sets with line breaks: they are dropped.
        let b = BinlogPosition::new("binlog.000001", 4, "a-b:1-5,\nc-d:1-2").unwrap();
        assert_eq!(b.gtid(), "a-b:1-5,c-d:1-2");
        assert!(serde_json::from_str::<SourcePosition>("\"mysql:nonsense\"").is_err());
    }

    #[test]
    fn binlog_positions_refuse_garbage() {
        for bad in [
            "mysql:",
            "mysql:binlog.000001",
            "mysql:binlog.000001:",
            "mysql:binlog.000001:-1",
            "mysql:binlog.000001:12x",
            "mysql:binlog.000001:18446744073709551616",
            "mysql:binlog:4",
            "mysql:binlog.:4",
            "mysql:.000001:4",
            "mysql:binlog.00a1:4",
            "mysql:bin log.000001:4",
            "mysql:binlog.000001:4/",
            "mysql:binlog.000001:4/0-1-57; DROP TABLE x",
            "mysql:binlog.000001:4/0-1-57/8",
            "mysql:dir/binlog.000001:4",
            "mysql:binlog.000001:4:5",
            "MYSQL:binlog.000001:4",
            "binlog.000001:4",
            "pg:binlog.000001:4",
        ] {
            assert!(bad.parse::<SourcePosition>().is_err(), "{bad} was accepted");
        }
        assert!(BinlogPosition::new("binlog", 4, "").is_err());
        assert!(BinlogPosition::new("binlog.000001", 4, "0-1-5 'x'").is_err());
    }

    #[test]
    fn binlog_positions_order_by_file_number_then_offset() {
        let p = |s: &str| -> SourcePosition { format!("mysql:{s}").parse().unwrap() };
        // As text, "mysql-bin.000100" < "mysql-bin.000010:9" would be wrong the other way round
        // for files past a width change; numbers decide.
        assert!(p("mysql-bin.000010:999999") < p("mysql-bin.000100:4"));
        assert!(p("mysql-bin.000009:4") < p("mysql-bin.000010:4"));
        assert!(p("mysql-bin.999999:4") < p("mysql-bin.1000000:4"));
        assert!(p("mysql-bin.000012:4567") < p("mysql-bin.000012:4568"));
        assert!(p("mysql-bin.000012:100") > p("mysql-bin.000012:99"));
        assert!(p("mysql-bin.000012:4567") >= p("mysql-bin.000012:4567"));
        // The GTID set is carried, not compared.
        assert_eq!(p("mysql-bin.000012:4567/0-1-5"), p("mysql-bin.000012:4567"));
        assert_eq!(
            p("mysql-bin.000012:4567/0-1-5").partial_cmp(&p("mysql-bin.000012:4567/0-1-9")),
            Some(Ordering::Equal)
        );
        // Different base names, or one number written two ways: no order.
        assert_eq!(p("mysql-bin.000012:4").partial_cmp(&p("binlog.000013:4")), None);
        assert_eq!(p("binlog.0001:4").partial_cmp(&p("binlog.001:4")), None);
        assert_ne!(p("binlog.0001:4"), p("binlog.001:4"));
    }

    #[test]
    fn positions_of_different_engines_never_compare() {
        let pg = SourcePosition::Postgres(Lsn(u64::MAX));
        let my: SourcePosition = "mysql:binlog.000001:4".parse().unwrap();
        assert_eq!(pg.partial_cmp(&my), None);
        assert_eq!(my.partial_cmp(&pg), None);
        // Every comparison operator answers false.
        let answers = [pg < my, pg > my, pg >= my, pg <= my, my < pg, my >= pg];
        assert_eq!(answers, [false; 6]);
        assert_ne!(pg, my);
        assert_eq!(pg.engine(), "postgresql");
        assert_eq!(pg.as_lsn(), Some(Lsn(u64::MAX)));
        assert!(my.as_lsn().is_none() && pg.as_mysql().is_none());
        assert!(SourcePosition::Postgres(Lsn(1)) < SourcePosition::Postgres(Lsn(2)));
    }
}
