//! GTIDs of both engines, as text and as binlog bytes.
//!
//! - **MySQL** (5.6+, 8.0, 8.4): a transaction is `uuid:n` (`n` from 1), and the server's state
//!   is the *set* of executed transactions, `gtid_executed`, printed as
//!   `uuid:1-5:7-9,uuid2:1-3` (intervals inclusive, sorted, merged; one-number intervals as
//!   `7`). MySQL 8.4 adds tagged GTIDs `uuid:tag:n`, printed in a set as
//!   `uuid:1-5:tag1:1-3` (untagged intervals first, then each tag with its intervals).
//! - **MariaDB**: a transaction is `domain-server-seq`, and the state (`gtid_binlog_pos`) is the
//!   last GTID of each domain: `0-1-57,1-2-9`.
//!
//! [`GtidState`] follows one stream: seeded with the position's text, it takes each
//! transaction's GTID and says the state after it, so that a recorded position carries the
//! executed set (MySQL) or the per-domain last GTIDs (MariaDB) rather than one transaction's id.
//!
//! The decoders take an event's data (after the 19-byte header, without the checksum) and never
//! panic; their layouts follow MySQL's source documentation (`mysql::binlog::event::Gtid_event`
//! and `Previous_gtids_event` in `control_events.h`, "Binary Log Events" of the MySQL 8.0/8.4
//! source documentation).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A GTID or GTID set that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtidError {
    /// Bytes of a GTID event that do not follow the documented layout.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which event.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A PREVIOUS_GTIDS event in the tagged format (MySQL 8.3+ when a tagged GTID was ever
    /// executed), which these decoders do not read.
    #[error("a PREVIOUS_GTIDS event in the tagged GTID format (MySQL 8.4 tagged GTIDs)")]
    TaggedPrevious,
    /// GTID set text that is neither MySQL's nor MariaDB's.
    #[error("not a GTID set: {0:?}")]
    Text(String),
}

/// A server UUID (MySQL's "source id", SID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = GtidError;

    /// `3e11fa47-71ca-11e1-9e33-c80aa9429562` (either case), or the 32 digits without hyphens
    /// (MySQL accepts both).
    fn from_str(s: &str) -> Result<Uuid, GtidError> {
        let err = || GtidError::Text(s.to_string());
        let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
        let hyphens = s.len() - hex.len();
        if hex.len() != 32 || !(hyphens == 0 || (hyphens == 4 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-'))) {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| err())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| err())?;
        }
        Ok(Uuid(out))
    }
}

/// Is `s` a GTID tag as MySQL 8.4 defines them: 1 to 32 characters, a letter or `_` first, then
/// letters, digits and `_` (MySQL folds them to lower case).
pub fn valid_tag(s: &str) -> bool {
    let mut chars = s.chars();
    (1..=32).contains(&s.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The largest transaction number MySQL hands out (`GNO_END - 1`, `INT64_MAX - 1`).
pub const GNO_MAX: u64 = i64::MAX as u64 - 1;

/// One MySQL transaction's GTID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gtid {
    /// The server that first committed it.
    pub uuid: Uuid,
    /// MySQL 8.4's tag (lower case), if any.
    pub tag: Option<String>,
    /// The transaction number, from 1.
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(tag) => write!(f, "{}:{tag}:{}", self.uuid, self.seq),
            None => write!(f, "{}:{}", self.uuid, self.seq),
        }
    }
}

/// GTID_LOG_EVENT (type 33) and ANONYMOUS_GTID_LOG_EVENT (type 34): the post-header starts
/// with a flags byte (`FLAG_MAY_HAVE_SBR`), the 16-byte SID and the 8-byte little-endian GNO;
/// the logical clock, commit timestamps, transaction length and server versions that follow
/// are not needed here. An anonymous GTID (SID and GNO zero, written when `gtid_mode` is OFF)
/// gives None.
pub fn decode_gtid_event(data: &[u8]) -> Result<Option<Gtid>, GtidError> {
    const WHAT: &str = "GTID event";
    if data.len() < 25 {
        return Err(GtidError::Malformed {
            what: WHAT,
            why: format!("{} bytes, the post-header alone has 25", data.len()),
        });
    }
    let mut sid = [0u8; 16];
    sid.copy_from_slice(&data[1..17]);
    let mut gno = [0u8; 8];
    gno.copy_from_slice(&data[17..25]);
    let seq = u64::from_le_bytes(gno);
    if sid == [0; 16] && seq == 0 {
        return Ok(None);
    }
    if seq == 0 || seq > GNO_MAX {
        return Err(GtidError::Malformed {
            what: WHAT,
            why: format!("transaction number {seq} is outside 1..={GNO_MAX}"),
        });
    }
    Ok(Some(Gtid {
        uuid: Uuid(sid),
        tag: None,
        seq,
    }))
}

/// PREVIOUS_GTIDS_LOG_EVENT (type 35, at the start of every MySQL binlog file: the set executed
/// before the file): an 8-byte little-endian SID count, then per SID the 16-byte SID, an 8-byte
/// interval count and the intervals as 8-byte start and 8-byte *exclusive* end. In the tagged
/// format of MySQL 8.3+ the count's top byte names the format; that format is refused
/// ([`GtidError::TaggedPrevious`]).
pub fn decode_previous_gtids(data: &[u8]) -> Result<GtidSet, GtidError> {
    const WHAT: &str = "PREVIOUS_GTIDS event";
    let bad = |why: String| GtidError::Malformed { what: WHAT, why };
    let mut rest = data;
    let u64_le = |rest: &mut &[u8]| -> Result<u64, GtidError> {
        let (head, tail) = rest.split_first_chunk::<8>().ok_or_else(|| bad("cut short".to_string()))?;
        *rest = tail;
        Ok(u64::from_le_bytes(*head))
    };
    let n_sids = u64_le(&mut rest)?;
    if n_sids >> 56 != 0 {
        return Err(GtidError::TaggedPrevious);
    }
    let mut set = GtidSet::default();
    for _ in 0..n_sids {
        let (sid, tail) = rest
            .split_first_chunk::<16>()
            .ok_or_else(|| bad(format!("{n_sids} SIDs announced, the data ends before")))?;
        rest = tail;
        let n_intervals = u64_le(&mut rest)?;
        // Checked before reading, so that a corrupt count cannot make us loop for long.
        if n_intervals.saturating_mul(16) > rest.len() as u64 {
            return Err(bad(format!("{n_intervals} intervals announced, {} bytes left", rest.len())));
        }
        for _ in 0..n_intervals {
            let (start, end) = (u64_le(&mut rest)?, u64_le(&mut rest)?);
            if start == 0 || end <= start || end - 1 > GNO_MAX {
                return Err(bad(format!("interval [{start}, {end}) is not a range of transaction numbers")));
            }
            set.add_range(Uuid(*sid), None, start, end - 1);
        }
    }
    Ok(set)
}

/// A MySQL GTID set: per server UUID and tag, sorted, disjoint, non-adjacent inclusive
/// intervals. Text as MySQL prints `gtid_executed` (lower case, no whitespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    /// (uuid, tag or "") -> intervals.
    sets: BTreeMap<(Uuid, String), Vec<(u64, u64)>>,
}

impl GtidSet {
    /// Adds one transaction.
    pub fn add(&mut self, gtid: &Gtid) {
        self.add_range(gtid.uuid, gtid.tag.as_deref(), gtid.seq, gtid.seq);
    }

    /// Adds the transactions `lo..=hi` of `uuid` (with `tag`), merging with what touches them.
    pub fn add_range(&mut self, uuid: Uuid, tag: Option<&str>, lo: u64, hi: u64) {
        let list = self.sets.entry((uuid, tag.unwrap_or_default().to_string())).or_default();
        // The first interval that ends at or after lo - 1 (may merge), then every one that
        // starts at or before hi + 1.
        let from = list.partition_point(|&(_, e)| e.saturating_add(1) < lo);
        let mut to = from;
        let (mut lo, mut hi) = (lo, hi);
        while to < list.len() && list[to].0 <= hi.saturating_add(1) {
            lo = lo.min(list[to].0);
            hi = hi.max(list[to].1);
            to += 1;
        }
        list.splice(from..to, [(lo, hi)]);
    }

    /// Everything of `other` too.
    pub fn union(&mut self, other: &GtidSet) {
        for ((uuid, tag), list) in &other.sets {
            for &(lo, hi) in list {
                self.add_range(*uuid, (!tag.is_empty()).then_some(tag.as_str()), lo, hi);
            }
        }
    }

    /// Whether `gtid` is in the set.
    pub fn contains(&self, gtid: &Gtid) -> bool {
        self.sets
            .get(&(gtid.uuid, gtid.tag.clone().unwrap_or_default()))
            .is_some_and(|l| l.iter().any(|&(lo, hi)| lo <= gtid.seq && gtid.seq <= hi))
    }

    /// No transaction at all.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last: Option<Uuid> = None;
        // BTreeMap order: per UUID the untagged intervals ("" sorts first), then tags.
        for ((uuid, tag), list) in &self.sets {
            if last != Some(*uuid) {
                if last.is_some() {
                    f.write_str(",")?;
                }
                write!(f, "{uuid}")?;
                last = Some(*uuid);
            }
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for &(lo, hi) in list {
                match lo == hi {
                    true => write!(f, ":{lo}")?,
                    false => write!(f, ":{lo}-{hi}")?,
                }
            }
        }
        Ok(())
    }
}

impl FromStr for GtidSet {
    type Err = GtidError;

    /// MySQL's text: `uuid:1-5:7,uuid2:tag:3`; whitespace (MySQL breaks lines after commas)
    /// is ignored, tags and hex digits are folded to lower case, the empty text is the empty
    /// set.
    fn from_str(s: &str) -> Result<GtidSet, GtidError> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let err = || GtidError::Text(s.to_string());
        let mut set = GtidSet::default();
        if text.is_empty() {
            return Ok(set);
        }
        for element in text.split(',') {
            let mut parts = element.split(':');
            let uuid: Uuid = parts.next().unwrap_or_default().parse().map_err(|_| err())?;
            let mut tag: Option<String> = None;
            let mut intervals = 0;
            for part in parts {
                let lower = part.to_ascii_lowercase();
                if lower.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                    if !valid_tag(&lower) {
                        return Err(err());
                    }
                    tag = Some(lower);
                    continue;
                }
                let (lo, hi) = part.split_once('-').unwrap_or((part, part));
                let number = |n: &str| n.parse::<u64>().ok().filter(|n| (1..=GNO_MAX).contains(n));
                let (Some(lo), Some(hi)) = (number(lo), number(hi)) else {
                    return Err(err());
                };
                if hi < lo {
                    return Err(err());
                }
                set.add_range(uuid, tag.as_deref(), lo, hi);
                intervals += 1;
            }
            if intervals == 0 {
                return Err(err());
            }
        }
        Ok(set)
    }
}

/// MariaDB's GTID state: the last GTID of each domain (`domain-server-seq`, by domain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainState {
    last: BTreeMap<u32, (u32, u64)>,
}

impl DomainState {
    /// A transaction `domain-server-seq` was executed.
    pub fn executed(&mut self, domain: u32, server: u32, seq: u64) {
        self.last.insert(domain, (server, seq));
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (domain, (server, seq))) in self.last.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

impl FromStr for DomainState {
    type Err = GtidError;

    fn from_str(s: &str) -> Result<DomainState, GtidError> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let err = || GtidError::Text(s.to_string());
        let mut state = DomainState::default();
        for element in text.split(',').filter(|e| !e.is_empty()) {
            let mut n = element.split('-');
            let (Some(d), Some(srv), Some(seq), None) = (n.next(), n.next(), n.next(), n.next()) else {
                return Err(err());
            };
            let domain = d.parse().map_err(|_| err())?;
            state.executed(domain, srv.parse().map_err(|_| err())?, seq.parse().map_err(|_| err())?);
        }
        Ok(state)
    }
}

/// The GTID state of a stream after each transaction read so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GtidState {
    /// Nothing known yet (no GTIDs on this server, or none recorded with the start position).
    #[default]
    Unknown,
    /// MySQL: the executed set.
    Mysql(GtidSet),
    /// MariaDB: the last GTID per domain.
    Mariadb(DomainState),
}

impl GtidState {
    /// The state a position's text records: empty is unknown, text with a `:` MySQL's set,
    /// otherwise MariaDB's list.
    pub fn parse(text: &str) -> Result<GtidState, GtidError> {
        let text = text.trim();
        if text.is_empty() {
            Ok(GtidState::Unknown)
        } else if text.contains(':') {
            text.parse().map(GtidState::Mysql)
        } else {
            text.parse().map(GtidState::Mariadb)
        }
    }

    /// A MySQL transaction was executed.
    pub fn executed_mysql(&mut self, gtid: &Gtid) {
        match self {
            GtidState::Mysql(set) => set.add(gtid),
            _ => {
                let mut set = GtidSet::default();
                set.add(gtid);
                *self = GtidState::Mysql(set);
            }
        }
    }

    /// A MariaDB transaction was executed.
    pub fn executed_mariadb(&mut self, domain: u32, server: u32, seq: u64) {
        match self {
            GtidState::Mariadb(state) => state.executed(domain, server, seq),
            _ => {
                let mut state = DomainState::default();
                state.executed(domain, server, seq);
                *self = GtidState::Mariadb(state);
            }
        }
    }

    /// A binlog file starts with the set executed before it (MySQL's PREVIOUS_GTIDS): all of
    /// it precedes where the stream is, so it joins the state (filling what an unknown start
    /// left out).
    pub fn executed_before(&mut self, previous: &GtidSet) {
        match self {
            GtidState::Mysql(set) => set.union(previous),
            GtidState::Unknown if !previous.is_empty() => *self = GtidState::Mysql(previous.clone()),
            _ => {}
        }
    }

    /// The state's text (None while unknown).
    pub fn text(&self) -> Option<String> {
        match self {
            GtidState::Unknown => None,
            GtidState::Mysql(set) => Some(set.to_string()),
            GtidState::Mariadb(state) => Some(state.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "ad9b8cf2-4c1e-11ef-8d8a-0242ac120002";

    fn gtid(uuid: &str, seq: u64) -> Gtid {
        Gtid {
            uuid: uuid.parse().unwrap(),
            tag: None,
            seq,
        }
    }

    /// A GTID_LOG_EVENT's data as MySQL 8.0 writes it (source documentation of `Gtid_event`,
    /// "Binary Format"): flags, SID, GNO, then logical clock typecode 2 with last_committed
    /// and sequence_number, the immediate commit timestamp (7 bytes, high bit clear: no
    /// original timestamp follows), transaction length (packed integer), immediate server
    /// version (4 bytes, high bit clear).
    fn gtid_event_data(sid: [u8; 16], gno: u64) -> Vec<u8> {
        let mut d = vec![0x01];
        d.extend_from_slice(&sid);
        d.extend_from_slice(&gno.to_le_bytes());
        d.push(2);
        d.extend_from_slice(&7u64.to_le_bytes());
        d.extend_from_slice(&8u64.to_le_bytes());
        d.extend_from_slice(&1_733_540_000_000_000u64.to_le_bytes()[..7]);
        d.push(200);
        d.extend_from_slice(&80_036u32.to_le_bytes());
        d
    }

    #[test]
    fn gtid_events_decode_to_uuid_and_number() {
        let uuid: Uuid = U1.parse().unwrap();
        let g = decode_gtid_event(&gtid_event_data(uuid.0, 42)).unwrap().unwrap();
        assert_eq!(g.to_string(), format!("{U1}:42"));
        // Anonymous (gtid_mode OFF): zero SID and GNO.
        assert_eq!(decode_gtid_event(&gtid_event_data([0; 16], 0)).unwrap(), None);
        // Cut short, or a number MySQL never hands out: refused, no panic.
        assert!(decode_gtid_event(&gtid_event_data(uuid.0, 42)[..20]).is_err());
        assert!(decode_gtid_event(&gtid_event_data(uuid.0, 0)).is_err());
        assert!(decode_gtid_event(&gtid_event_data(uuid.0, u64::MAX)).is_err());
        assert!(decode_gtid_event(&[]).is_err());
    }

    /// PREVIOUS_GTIDS_LOG_EVENT data per the source documentation of `Previous_gtids_event`
    /// (the encoding of `Gtid_set::encode`): SID count, then SID, interval count, [start, end).
    #[test]
    fn previous_gtids_decode_to_a_set() {
        let (u1, u2): (Uuid, Uuid) = (U1.parse().unwrap(), U2.parse().unwrap());
        let mut d = 2u64.to_le_bytes().to_vec();
        d.extend_from_slice(&u1.0);
        d.extend_from_slice(&2u64.to_le_bytes());
        for (s, e) in [(1u64, 6u64), (7, 10)] {
            d.extend_from_slice(&s.to_le_bytes());
            d.extend_from_slice(&e.to_le_bytes());
        }
        d.extend_from_slice(&u2.0);
        d.extend_from_slice(&1u64.to_le_bytes());
        d.extend_from_slice(&1u64.to_le_bytes());
        d.extend_from_slice(&2u64.to_le_bytes());
        let set = decode_previous_gtids(&d).unwrap();
        assert_eq!(set.to_string(), format!("{U1}:1-5:7-9,{U2}:1"));
        // A corrupt count, a cut, an empty interval: refused.
        let mut huge = d.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_previous_gtids(&huge).is_err());
        assert!(decode_previous_gtids(&d[..d.len() - 3]).is_err());
        let mut empty = d.clone();
        empty[32..40].copy_from_slice(&6u64.to_le_bytes());
        assert!(decode_previous_gtids(&empty).is_err());
        // The tagged format (format byte in the count's top byte) is refused by name.
        let mut tagged = d.clone();
        tagged[7] = 1;
        assert_eq!(decode_previous_gtids(&tagged), Err(GtidError::TaggedPrevious));
        assert_eq!(decode_previous_gtids(&0u64.to_le_bytes()).unwrap(), GtidSet::default());
    }

    #[test]
    fn sets_merge_intervals_as_transactions_arrive() {
        let mut set = GtidSet::default();
        for n in [1, 2, 3, 5, 9, 7] {
            set.add(&gtid(U1, n));
        }
        assert_eq!(set.to_string(), format!("{U1}:1-3:5:7:9"));
        set.add(&gtid(U1, 8));
        assert_eq!(set.to_string(), format!("{U1}:1-3:5:7-9"));
        set.add(&gtid(U1, 4));
        set.add(&gtid(U2, 1));
        set.add(&gtid(U1, 6));
        assert_eq!(set.to_string(), format!("{U1}:1-9,{U2}:1"));
        // Again: nothing changes.
        set.add(&gtid(U1, 6));
        assert_eq!(set.to_string(), format!("{U1}:1-9,{U2}:1"));
        assert!(set.contains(&gtid(U1, 9)) && !set.contains(&gtid(U1, 10)) && !set.contains(&gtid(U2, 2)));
        // An interval bridging two.
        let mut s: GtidSet = format!("{U1}:1-3:10-12:20").parse().unwrap();
        s.add_range(U1.parse().unwrap(), None, 4, 19);
        assert_eq!(s.to_string(), format!("{U1}:1-20"));
        let mut u: GtidSet = format!("{U2}:5").parse().unwrap();
        u.union(&format!("{U1}:2,{U2}:1-4:6").parse().unwrap());
        assert_eq!(u.to_string(), format!("{U1}:2,{U2}:1-6"));
    }

    /// Against a plain set of numbers: a pseudo-random order of single adds and ranges gives
    /// the same membership, and the text is the normalized one (it parses back equal).
    #[test]
    fn sets_agree_with_a_plain_set() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m + 1
        };
        for _ in 0..50 {
            let mut set = GtidSet::default();
            let mut plain = std::collections::BTreeSet::new();
            for _ in 0..40 {
                let lo = next(200);
                let hi = if next(4) == 1 { lo + next(10) } else { lo };
                set.add_range(U1.parse().unwrap(), None, lo, hi);
                plain.extend(lo..=hi);
            }
            for n in 1..=215 {
                assert_eq!(set.contains(&gtid(U1, n)), plain.contains(&n), "{n} in {set}");
            }
            let text = set.to_string();
            assert_eq!(text.parse::<GtidSet>().unwrap(), set);
            // Normalized: intervals sorted, apart by at least one missing number.
            let list = &set.sets[&(U1.parse().unwrap(), String::new())];
            assert!(list.windows(2).all(|w| w[0].1 + 1 < w[1].0), "{text}");
        }
    }

    #[test]
    fn set_text_round_trips_as_mysql_prints_it() {
        // As SELECT @@gtid_executed prints it: upper case accepted, a line break after commas.
        let text = format!("{},\n{U2}:1-5:7:aa_1:3-4:zz:1", U1.to_uppercase() + ":1-100");
        let set: GtidSet = text.parse().unwrap();
        assert_eq!(set.to_string(), format!("{U1}:1-100,{U2}:1-5:7:aa_1:3-4:zz:1"));
        assert_eq!(set.to_string().parse::<GtidSet>().unwrap(), set);
        // Unsorted and overlapping input is normalized.
        let messy: GtidSet = format!("{U2}:7:1-3,{U1}:5-6:1-5").parse().unwrap();
        assert_eq!(messy.to_string(), format!("{U1}:1-6,{U2}:1-3:7"));
        // Without hyphens (MySQL accepts it).
        let bare: GtidSet = format!("{}:1", U1.replace('-', "")).parse().unwrap();
        assert_eq!(bare.to_string(), format!("{U1}:1"));
        assert_eq!("".parse::<GtidSet>().unwrap().to_string(), "");
        for bad in [
            "0-1-5".to_string(),
            U1.to_string(),
            format!("{U1}:0"),
            format!("{U1}:5-3"),
            format!("{U1}:1-x"),
            format!("{U1}:9tag:1"),
            format!("{U1}:{}:1", "t".repeat(33)),
            "3e11fa47-71ca-11e1-9e33:1".to_string(),
            format!("{U1}:1,"),
        ] {
            assert!(bad.parse::<GtidSet>().is_err(), "{bad} parsed");
        }
        assert!(valid_tag("_x9") && !valid_tag("") && !valid_tag("Ab") && !valid_tag("a-b"));
    }

    #[test]
    fn state_follows_each_engine() {
        // MySQL: the executed set grows.
        let mut s = GtidState::parse(&format!("{U1}:1-5")).unwrap();
        s.executed_mysql(&gtid(U1, 6));
        s.executed_mysql(&gtid(U2, 1));
        assert_eq!(s.text().unwrap(), format!("{U1}:1-6,{U2}:1"));
        s.executed_before(&format!("{U1}:1-3,{U2}:1").parse().unwrap());
        assert_eq!(s.text().unwrap(), format!("{U1}:1-6,{U2}:1"));
        // Unknown start: a file's PREVIOUS_GTIDS fills it in.
        let mut u = GtidState::parse("").unwrap();
        assert_eq!(u.text(), None);
        u.executed_before(&format!("{U1}:1-9").parse().unwrap());
        u.executed_mysql(&gtid(U1, 10));
        assert_eq!(u.text().unwrap(), format!("{U1}:1-10"));
        // MariaDB: the last GTID per domain, other domains kept.
        let mut m = GtidState::parse("0-1-100,1-2-5").unwrap();
        m.executed_mariadb(0, 3, 101);
        assert_eq!(m.text().unwrap(), "0-3-101,1-2-5");
        let mut fresh = GtidState::default();
        fresh.executed_mariadb(0, 1, 7);
        assert_eq!(fresh.text().unwrap(), "0-1-7");
        assert!(GtidState::parse("0-1").is_err() && GtidState::parse("x:1").is_err());
    }
}
