//! Decoder for the `pgoutput` logical replication protocol (protocol version 1).
//!
//! Takes the bytes of one XLogData payload and returns one message. No I/O; never panics on
//! bad input (every read is bounds-checked), so it can be fuzzed. Message layouts follow the
//! PostgreSQL documentation, "Logical Replication Message Formats".

use bytes::Bytes;
use ferry_core::Lsn;

/// The payload was not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message ({tag:?}): {why}")]
pub struct DecodeError {
    /// Message tag, as a character.
    pub tag: char,
    /// What was wrong.
    pub why: &'static str,
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    /// Name.
    pub name: String,
    /// Type OID (on the source).
    pub type_oid: u32,
    /// Type modifier.
    pub type_mod: i32,
}

/// A relation (table) description, sent before the first change to it and after any change to
/// its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// OID on the source.
    pub id: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    /// Columns, in order (generated columns are not sent).
    pub columns: Vec<Column>,
}

/// One value of a tuple: the neutral change model's [`Datum`](ferry_core::change::Datum), whose
/// variants are pgoutput's own (NULL, unchanged TOAST, text form, binary form).
pub type Value = ferry_core::change::Datum;

/// A tuple: one value per column.
pub type Tuple = Vec<Value>;

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Transaction start.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// Transaction end.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm once applied.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// The transaction's origin (set when the source itself replays changes from elsewhere).
    Origin {
        /// Origin's commit LSN.
        lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// A relation description.
    Relation(Relation),
    /// A type description (for non-built-in types).
    Type {
        /// Type OID.
        id: u32,
        /// Schema.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old key ('K') or, under REPLICA IDENTITY FULL, the old row ('O'); absent when
        /// the key did not change.
        old: Option<Tuple>,
        /// Whether `old` is the whole old row.
        old_is_full_row: bool,
        /// The new row (may hold [`Value::Unchanged`]).
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// Relation OID.
        relation: u32,
        /// The old key, or the whole old row under REPLICA IDENTITY FULL.
        old: Tuple,
        /// Whether `old` is the whole old row.
        old_is_full_row: bool,
    },
    /// Tables were truncated.
    Truncate {
        /// CASCADE.
        cascade: bool,
        /// RESTART IDENTITY.
        restart_identity: bool,
        /// Relation OIDs.
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage {
        /// Transactional or not.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Prefix.
        prefix: String,
        /// Content.
        content: Bytes,
    },
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: char,
}

impl<'a> Reader<'a> {
    fn err(&self, why: &'static str) -> DecodeError {
        DecodeError { tag: self.tag, why }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err("length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.err("message ends early"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.i32()? as u32)
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).ok_or_else(|| self.err("message ends early"))?;
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| self.err("unterminated string"))?;
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.pos += nul + 1;
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
    }
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err("negative column count"));
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.err("negative value length"));
                    }
                    Value::Text(self.bytes(len as usize)?)
                }
                b'b' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.err("negative value length"));
                    }
                    Value::Binary(self.bytes(len as usize)?)
                }
                _ => return Err(self.err("unknown tuple value kind")),
            });
        }
        Ok(out)
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let tag = *buf.first().ok_or(DecodeError {
        tag: '?',
        why: "empty message",
    })? as char;
    let mut r = Reader { buf, pos: 1, tag };
    let msg = match tag {
        'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time: r.i64()?,
            }
        }
        'O' => Message::Origin {
            lsn: r.lsn()?,
            name: r.string()?,
        },
        'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 {
                return Err(r.err("negative column count"));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_mod: r.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                // pgoutput sends an empty namespace for pg_catalog.
                namespace: if namespace.is_empty() { "pg_catalog".into() } else { namespace },
                name,
                replica_identity,
                columns,
            })
        }
        'Y' => Message::Type {
            id: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(r.err("insert without a new tuple"));
            }
            Message::Insert { relation, new: r.tuple()? }
        }
        'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            let mut old_is_full_row = false;
            if kind == b'K' || kind == b'O' {
                old_is_full_row = kind == b'O';
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(r.err("update without a new tuple"));
            }
            Message::Update {
                relation,
                old,
                old_is_full_row,
                new: r.tuple()?,
            }
        }
        'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(r.err("delete without an old key or row"));
            }
            Message::Delete {
                relation,
                old_is_full_row: kind == b'O',
                old: r.tuple()?,
            }
        }
        'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let mut relations = Vec::new();
            for _ in 0..n.min(1 << 20) {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
        'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.i32()?;
            if len < 0 {
                return Err(r.err("negative content length"));
            }
            Message::LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len as usize)?,
            }
        }
        _ => {
            return Err(DecodeError {
                tag,
                why: "unknown message type",
            })
        }
    };
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn decodes_begin_commit_relation_and_rows() {
        let begin = b(&[b"B", &5u64.to_be_bytes(), &7i64.to_be_bytes(), &42u32.to_be_bytes()]);
        assert_eq!(
            decode(&begin).unwrap(),
            Message::Begin {
                final_lsn: Lsn(5),
                commit_time: 7,
                xid: 42
            }
        );
        let commit = b(&[b"C", &[0], &5u64.to_be_bytes(), &9u64.to_be_bytes(), &7i64.to_be_bytes()]);
        assert_eq!(
            decode(&commit).unwrap(),
            Message::Commit {
                commit_lsn: Lsn(5),
                end_lsn: Lsn(9),
                commit_time: 7
            }
        );
        let rel = b(&[
            b"R",
            &16384u32.to_be_bytes(),
            b"public\0",
            b"t\0",
            b"d",
            &2i16.to_be_bytes(),
            &[1],
            b"id\0",
            &23u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"v\0",
            &25u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]);
        let Message::Relation(r) = decode(&rel).unwrap() else { panic!() };
        assert_eq!((r.namespace.as_str(), r.name.as_str(), r.columns.len()), ("public", "t", 2));
        assert!(r.columns[0].key && !r.columns[1].key);
        let tuple: &[u8] = &[&2i16.to_be_bytes()[..], b"t", &1i32.to_be_bytes(), b"7", b"u"].concat();
        let upd = b(&[
            b"U",
            &16384u32.to_be_bytes(),
            b"K",
            &[&1i16.to_be_bytes()[..], b"t", &1i32.to_be_bytes(), b"6"].concat(),
            b"N",
            tuple,
        ]);
        match decode(&upd).unwrap() {
            Message::Update {
                old: Some(old),
                new,
                old_is_full_row: false,
                ..
            } => {
                assert_eq!(old, vec![Value::Text(Bytes::from_static(b"6"))]);
                assert_eq!(new, vec![Value::Text(Bytes::from_static(b"7")), Value::Unchanged]);
            }
            m => panic!("{m:?}"),
        }
        let del = b(&[b"D", &16384u32.to_be_bytes(), b"O", &[&1i16.to_be_bytes()[..], b"n"].concat()]);
        assert_eq!(
            decode(&del).unwrap(),
            Message::Delete {
                relation: 16384,
                old: vec![Value::Null],
                old_is_full_row: true
            }
        );
        let tr = b(&[b"T", &2u32.to_be_bytes(), &[3], &1u32.to_be_bytes(), &2u32.to_be_bytes()]);
        assert_eq!(
            decode(&tr).unwrap(),
            Message::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![1, 2]
            }
        );
    }

    #[test]
    fn never_panics_on_truncated_or_random_input() {
        let ins = b(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &[&1i16.to_be_bytes()[..], b"t", &3i32.to_be_bytes(), b"abc"].concat(),
        ]);
        assert!(decode(&ins).is_ok());
        for cut in 0..ins.len() {
            let _ = decode(&ins.slice(..cut));
        }
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..5000 {
            let mut v = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            if let Some(f) = v.first_mut() {
                *f = b"BCORYIUDTM"[(x % 10) as usize];
            }
            let _ = decode(&Bytes::from(v));
        }
    }
}
