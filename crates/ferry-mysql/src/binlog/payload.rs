//! MySQL 8.0.20+'s compressed transactions (`binlog_transaction_compression=ON`): one
//! TRANSACTION_PAYLOAD_EVENT (type 40) carries every event of a transaction but its GTID event
//! (BEGIN query, table maps, rows events, XID), compressed with zstd.
//!
//! Layout (MySQL source documentation of `Transaction_payload_event`, 8.0 and 8.4): the data
//! starts with a header of fields, each a type, a length and a value, all three as the
//! protocol's length-encoded integers (`net_field_length`); type 0 ends the header, 1 is the
//! payload size, 2 the compression type (0 zstd, 255 none), 3 the uncompressed size; unknown
//! types are skipped by their length. The payload follows: a zstd frame (or the events as is),
//! whose events carry no checksum.
//!
//! Who decompresses: mysql_async's binlog stream (0.37) does, as soon as it reads the event,
//! into one buffer of the uncompressed size, and then yields the inner events one by one as if
//! they followed the payload event (its table maps registered like any other). So the reader
//! sees the payload event, then its events, decoded exactly as uncompressed ones. Two things
//! the driver does not do are done here: refuse an absurd uncompressed size, and notice a
//! payload that yielded nothing (the driver drops a payload it fails to decompress without a
//! word): [`Unpacking`] counts the inner events' bytes against the announced size and refuses
//! an event that cannot be inside a payload while bytes are still owed.

use std::fmt;

/// The largest uncompressed transaction Ferry accepts (1 GiB, `max_allowed_packet`'s ceiling):
/// the driver holds a payload whole in memory.
pub const MAX_UNCOMPRESSED: u64 = 1 << 30;

/// A 19-byte v4 event header: the least an inner event can be.
const EVENT_HEADER: u64 = 19;

/// How the payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd (type 0).
    Zstd,
    /// Not compressed (type 255).
    None,
}

/// The fields of a TRANSACTION_PAYLOAD_EVENT's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadHeader {
    /// The compression.
    pub compression: Compression,
    /// Bytes of (compressed) payload after the header.
    pub payload_size: u64,
    /// Bytes of the events once decompressed.
    pub uncompressed_size: u64,
}

/// A payload event Ferry refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The header does not follow the documented layout.
    Malformed(String),
    /// A compression type MySQL did not define when this was written.
    UnknownCompression(u64),
    /// The uncompressed size is over [`MAX_UNCOMPRESSED`].
    TooLarge(u64),
    /// The payload's events did not come as announced (the driver could not decompress it).
    Lost {
        /// Bytes of events still owed.
        owed: u64,
        /// The event type that came instead.
        event_type: u8,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Malformed(why) => write!(f, "a malformed compressed transaction (TRANSACTION_PAYLOAD_EVENT): {why}"),
            PayloadError::UnknownCompression(t) => write!(
                f,
                "a compressed transaction with compression type {t}, which Ferry does not know (MySQL defines 0, zstd, and 255, none)"
            ),
            PayloadError::TooLarge(n) => write!(
                f,
                "a compressed transaction of {n} bytes uncompressed, over Ferry's limit of {MAX_UNCOMPRESSED} bytes"
            ),
            PayloadError::Lost { owed, event_type } => write!(
                f,
                "a compressed transaction's events did not arrive ({owed} bytes of them owed when an event of type {event_type} came): \
                 the payload could not be decompressed"
            ),
        }
    }
}

/// A length-encoded integer at the start of `buf`, and the rest.
fn lenenc(buf: &[u8]) -> Result<(u64, &[u8]), PayloadError> {
    let cut = || PayloadError::Malformed("the header is cut short".into());
    let (&first, rest) = buf.split_first().ok_or_else(cut)?;
    let width = match first {
        0..=250 => return Ok((u64::from(first), rest)),
        252 => 2,
        253 => 3,
        254 => 8,
        _ => return Err(PayloadError::Malformed(format!("{first:#04x} does not start an integer"))),
    };
    if rest.len() < width {
        return Err(cut());
    }
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(&rest[..width]);
    Ok((u64::from_le_bytes(bytes), &rest[width..]))
}

/// Reads the header of a TRANSACTION_PAYLOAD_EVENT's `data` (after the event header, without
/// the checksum), checking it against the data's length and [`MAX_UNCOMPRESSED`].
pub fn parse_header(data: &[u8]) -> Result<PayloadHeader, PayloadError> {
    let (mut size, mut compression, mut uncompressed) = (None, None, None);
    let mut rest = data;
    loop {
        let (field, after) = lenenc(rest)?;
        if field == 0 {
            rest = after;
            break;
        }
        let (length, after) = lenenc(after)?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&l| l <= after.len())
            .ok_or_else(|| PayloadError::Malformed(format!("field {field} is longer than the event")))?;
        let (value, after) = after.split_at(length);
        rest = after;
        let read = || lenenc(value).map(|(v, _)| v);
        match field {
            1 => size = Some(read()?),
            2 => compression = Some(read()?),
            3 => uncompressed = Some(read()?),
            // A field of a later version: skipped by its length, as MySQL does.
            _ => {}
        }
    }
    let payload_size = size.ok_or_else(|| PayloadError::Malformed("no payload size".into()))?;
    let compression = match compression.ok_or_else(|| PayloadError::Malformed("no compression type".into()))? {
        0 => Compression::Zstd,
        255 => Compression::None,
        other => return Err(PayloadError::UnknownCompression(other)),
    };
    if payload_size > rest.len() as u64 {
        return Err(PayloadError::Malformed(format!(
            "a payload of {payload_size} bytes announced, {} in the event",
            rest.len()
        )));
    }
    let uncompressed_size = match (compression, uncompressed) {
        (_, Some(n)) => n,
        (Compression::None, None) => payload_size,
        (Compression::Zstd, None) => return Err(PayloadError::Malformed("no uncompressed size".into())),
    };
    if uncompressed_size > MAX_UNCOMPRESSED {
        return Err(PayloadError::TooLarge(uncompressed_size));
    }
    if compression == Compression::None && uncompressed_size != payload_size {
        return Err(PayloadError::Malformed(format!(
            "uncompressed, yet {uncompressed_size} bytes announced for a payload of {payload_size}"
        )));
    }
    Ok(PayloadHeader {
        compression,
        payload_size,
        uncompressed_size,
    })
}

/// Event types that never travel inside a payload (MySQL writes them outside transactions, or
/// they are the stream's own): one of them while a payload's events are owed means the payload
/// was lost.
fn never_inside(event_type: u8) -> bool {
    // Unknown 0, stop 3, rotate 4, format description 15, heartbeat 27, GTID 33, anonymous
    // GTID 34, previous GTIDs 35, payload 40, heartbeat v2 41, tagged GTID 42, MariaDB's
    // 160 and up.
    matches!(event_type, 0 | 3 | 4 | 15 | 27 | 33 | 34 | 35 | 40 | 41 | 42) || event_type >= 160
}

/// The inner events of one payload, as the stream yields them after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacking {
    /// Where the payload event starts in the binlog file.
    pub at: u64,
    /// Where the payload event ends in the binlog file: the position of every inner event
    /// (theirs say nothing about the file).
    pub end: u64,
    /// Bytes of inner events not yet seen.
    owed: u64,
}

impl Unpacking {
    /// After a payload event from `at` to `end`; None when it holds no events.
    pub fn new(header: &PayloadHeader, at: u64, end: u64) -> Option<Unpacking> {
        (header.uncompressed_size > 0).then_some(Unpacking {
            at,
            end,
            owed: header.uncompressed_size,
        })
    }

    /// The stream yielded an event of `event_type` and `event_size` bytes while this payload's
    /// events are owed: it must be one of them. True when it was the last.
    pub fn inner(&mut self, event_type: u8, event_size: u32) -> Result<bool, PayloadError> {
        let size = u64::from(event_size);
        if never_inside(event_type) || size < EVENT_HEADER || size > self.owed {
            return Err(PayloadError::Lost {
                owed: self.owed,
                event_type,
            });
        }
        self.owed -= size;
        Ok(self.owed == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header per the documented layout: (type, length, value) triples, then the end mark.
    fn header(fields: &[(u64, u64)]) -> Vec<u8> {
        let mut h = Vec::new();
        for &(t, v) in fields {
            h.push(t as u8);
            if v < 251 {
                h.extend_from_slice(&[1, v as u8]);
            } else {
                h.extend_from_slice(&[9, 254]);
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h.push(0);
        h
    }

    #[test]
    fn headers_are_read_and_checked() {
        let mut data = header(&[(2, 0), (3, 5000), (1, 4)]);
        data.extend_from_slice(b"zstd");
        assert_eq!(
            parse_header(&data).unwrap(),
            PayloadHeader {
                compression: Compression::Zstd,
                payload_size: 4,
                uncompressed_size: 5000,
            }
        );
        // Uncompressed: the size is the payload's.
        let mut plain = header(&[(2, 255), (1, 3)]);
        plain.extend_from_slice(b"abc");
        assert_eq!(parse_header(&plain).unwrap().uncompressed_size, 3);
        // A field of a later version is skipped by its length.
        let mut later = vec![7, 2, 0xAA, 0xBB];
        later.extend_from_slice(&data);
        assert_eq!(parse_header(&later).unwrap().payload_size, 4);
        // Refused: absurd sizes, unknown compression, a payload longer than the event, missing
        // fields, cut headers; never a panic.
        let mut huge = header(&[(2, 0), (3, MAX_UNCOMPRESSED + 1), (1, 4)]);
        huge.extend_from_slice(b"zstd");
        assert_eq!(parse_header(&huge), Err(PayloadError::TooLarge(MAX_UNCOMPRESSED + 1)));
        let mut lz4 = header(&[(2, 1), (3, 10), (1, 4)]);
        lz4.extend_from_slice(b"abcd");
        assert_eq!(parse_header(&lz4), Err(PayloadError::UnknownCompression(1)));
        assert!(matches!(
            parse_header(&header(&[(2, 0), (3, 10), (1, 4)])),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(parse_header(&header(&[(2, 0), (1, 0)])), Err(PayloadError::Malformed(_))));
        assert!(matches!(parse_header(&header(&[(3, 1), (1, 0)])), Err(PayloadError::Malformed(_))));
        for cut in 0..data.len() - 5 {
            assert!(parse_header(&data[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_header(&[1, 255]).is_err());
        assert!(parse_header(&[1, 9, 0]).is_err());
    }

    /// Garbage never panics: every input gives a header or an error.
    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len % 40)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Mostly small numbers and the length-encoding prefixes.
                    [0, 1, 2, 3, 251, 252, 253, 254, 255, state as u8][(state % 10) as usize]
                })
                .collect();
            let _ = parse_header(&bytes);
            let _ = crate::gtid::decode_previous_gtids(&bytes);
            let _ = crate::gtid::decode_gtid_event(&bytes);
        }
    }

    #[test]
    fn inner_events_are_counted_against_the_announced_size() {
        let h = PayloadHeader {
            compression: Compression::Zstd,
            payload_size: 10,
            uncompressed_size: 100,
        };
        let mut u = Unpacking::new(&h, 3900, 4000).unwrap();
        assert_eq!(u.inner(2, 40), Ok(false)); // BEGIN
        assert_eq!(u.inner(19, 31), Ok(false)); // table map
        assert_eq!(u.inner(16, 29), Ok(true)); // XID
                                               // Lost: the next transaction's GTID while bytes are owed, too many bytes, an empty
                                               // header.
        let mut lost = Unpacking::new(&h, 3900, 4000).unwrap();
        assert_eq!(lost.inner(33, 60), Err(PayloadError::Lost { owed: 100, event_type: 33 }));
        assert!(Unpacking::new(&h, 3900, 4000).unwrap().inner(30, 101).is_err());
        assert!(Unpacking::new(&h, 3900, 4000).unwrap().inner(0, 0).is_err());
        assert!(Unpacking::new(&h, 3900, 4000).unwrap().inner(30, 10).is_err());
        assert_eq!(Unpacking::new(&PayloadHeader { uncompressed_size: 0, ..h }, 1, 2), None);
    }
}
