//! The binlog decoder on events built byte by byte from MySQL's documentation, fed as the driver
//! feeds it (a compressed transaction's events follow its payload event, table maps
//! registered as they pass). No MySQL 8 server can run here: these fixtures are the MySQL 8
//! paths' only test. Layouts: the event header, QUERY, TABLE_MAP, XID and v2 rows events as the
//! MySQL Internals manual ("Binlog Event" pages) and MySQL 8's source documentation
//! (`Rows_event`, `Table_map_event` with its optional metadata) describe them, GTID events per
//! `Gtid_event`, the payload event per `Transaction_payload_event`, and the zstd frame per
//! RFC 8878 (raw blocks). The v2 rows and table map layouts are those MariaDB 10.11 writes too,
//! so the integration tests (`tests/binlog.rs`, `mysql_cdc`) run the same rows decoding on a
//! real server.

use std::collections::HashMap;

use mysql_async::binlog::events::{Event, EventData, FormatDescriptionEvent, TableMapEvent};
use mysql_async::binlog::BinlogVersion;
use mysql_async::Value;

use super::{Change, Decoder, TableMaps};
use crate::error::MyError;
use crate::preflight::MyTable;
use crate::types::{map_column, MapOptions, SourceColumn};

const UUID: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
const FILE: &str = "binlog.000007";
const TIME: u32 = 1_733_540_000;
const TABLE_ID: u64 = 108;

struct Maps(HashMap<u64, TableMapEvent<'static>>);

impl TableMaps for Maps {
    fn table_map(&self, table_id: u64) -> Option<&TableMapEvent<'static>> {
        self.0.get(&table_id)
    }
}

/// An event: the 19-byte v4 header (timestamp, type, server id, event size, position of the
/// next event, flags), then `data`; no checksum (`binlog_checksum=NONE`, as inside payloads).
fn event(event_type: u8, log_pos: u32, data: &[u8]) -> Vec<u8> {
    let mut e = TIME.to_le_bytes().to_vec();
    e.push(event_type);
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(19 + data.len() as u32).to_le_bytes());
    e.extend_from_slice(&log_pos.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(data);
    e
}

/// GTID_LOG_EVENT data: flags, SID, GNO, logical clock (typecode 2, last_committed,
/// sequence_number).
fn gtid(gno: u64) -> Vec<u8> {
    let mut d = vec![1];
    d.extend_from_slice(&UUID.parse::<crate::gtid::Uuid>().unwrap().0);
    d.extend_from_slice(&gno.to_le_bytes());
    d.push(2);
    d.extend_from_slice(&(gno - 1).to_le_bytes());
    d.extend_from_slice(&gno.to_le_bytes());
    d
}

/// QUERY_EVENT data: thread id, execution time, schema length, error code, status variables'
/// length (none), the schema (empty) with its 0, the statement.
fn query(sql: &str) -> Vec<u8> {
    let mut d = 9u32.to_le_bytes().to_vec();
    d.extend_from_slice(&0u32.to_le_bytes());
    d.push(0);
    d.extend_from_slice(&0u16.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    d.push(0);
    d.extend_from_slice(sql.as_bytes());
    d
}

/// TABLE_MAP_EVENT data for `shop.t (id int, v varchar(20) utf8mb4, hidden int INVISIBLE)`:
/// table id (6 bytes), flags, schema and table names (length, name, 0), column count, types
/// (LONG 3, VARCHAR 15, LONG 3), metadata (VARCHAR: its maximum length in bytes, 80), the
/// nullability bitmap, then MySQL 8's optional metadata with `binlog_row_metadata=FULL`:
/// COLUMN_NAME (4) and, from 8.0.23, COLUMN_VISIBILITY (12, one bit per column, most
/// significant first, set when visible: the invisible column is logged all the same).
fn table_map() -> Vec<u8> {
    let mut d = TABLE_ID.to_le_bytes()[..6].to_vec();
    d.extend_from_slice(&0u16.to_le_bytes());
    for name in ["shop", "t"] {
        d.push(name.len() as u8);
        d.extend_from_slice(name.as_bytes());
        d.push(0);
    }
    d.push(3);
    d.extend_from_slice(&[3, 15, 3]);
    d.extend_from_slice(&[2, 80, 0]);
    d.push(0b110);
    let mut names = Vec::new();
    for n in ["id", "v", "hidden"] {
        names.push(n.len() as u8);
        names.extend_from_slice(n.as_bytes());
    }
    d.push(4);
    d.push(names.len() as u8);
    d.extend_from_slice(&names);
    d.extend_from_slice(&[12, 1, 0b1100_0000]);
    d
}

/// WRITE_ROWS_EVENT (v2) data: table id, flags (end of statement), extra data length 2 (none),
/// column count, the columns-present bitmap, then per row its null bitmap and values (LONG
/// four bytes little-endian, VARCHAR a one-byte length and the bytes).
fn write_rows() -> Vec<u8> {
    let mut d = TABLE_ID.to_le_bytes()[..6].to_vec();
    d.extend_from_slice(&1u16.to_le_bytes());
    d.extend_from_slice(&2u16.to_le_bytes());
    d.push(3);
    d.push(0b111);
    d.push(0);
    d.extend_from_slice(&1i32.to_le_bytes());
    d.push("héllo".len() as u8);
    d.extend_from_slice("héllo".as_bytes());
    d.extend_from_slice(&7i32.to_le_bytes());
    d.push(0b010);
    d.extend_from_slice(&2i32.to_le_bytes());
    d.extend_from_slice(&8i32.to_le_bytes());
    d
}

/// A zstd frame (RFC 8878) holding `content` in raw blocks: magic number, frame header
/// descriptor 0xA0 (single segment, 4-byte content size), the size, then blocks of at most
/// 128 KiB, each with its 3-byte header (last-block bit, type 0 raw, size).
fn zstd_raw(content: &[u8]) -> Vec<u8> {
    let mut f = 0xFD2F_B528u32.to_le_bytes().to_vec();
    f.push(0xA0);
    f.extend_from_slice(&(content.len() as u32).to_le_bytes());
    let blocks: Vec<&[u8]> = content.chunks(128 * 1024).collect();
    for (i, block) in blocks.iter().enumerate() {
        let last = u32::from(i + 1 == blocks.len());
        f.extend_from_slice(&(((block.len() as u32) << 3) | last).to_le_bytes()[..3]);
        f.extend_from_slice(block);
    }
    f
}

/// TRANSACTION_PAYLOAD_EVENT data: compression type, uncompressed size and payload size as
/// (type, length, value) fields, the end mark, the payload.
fn payload(compression: u8, uncompressed: u64, body: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    for (field, value) in [(2u8, u64::from(compression)), (3, uncompressed), (1, body.len() as u64)] {
        d.push(field);
        match value {
            0..=250 => d.extend_from_slice(&[1, value as u8]),
            _ => {
                d.extend_from_slice(&[9, 254]);
                d.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    d.push(0);
    d.extend_from_slice(body);
    d
}

/// The events of the compressed transaction: BEGIN, the table map, two inserted rows, XID.
/// Their positions say nothing (MySQL's are relative to the transaction): 77 here.
fn inner_events() -> Vec<u8> {
    [
        event(2, 77, &query("BEGIN")),
        event(19, 77, &table_map()),
        event(30, 77, &write_rows()),
        event(16, 77, &42u64.to_le_bytes()),
    ]
    .concat()
}

fn plan() -> Vec<MyTable> {
    let column = |name: &str, data_type: &str, column_type: &str, extra: &str| {
        let c = SourceColumn {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: true,
            extra: extra.into(),
            ..Default::default()
        };
        (name.to_string(), map_column("t", &c, &MapOptions::default()))
    };
    vec![MyTable {
        name: "t".into(),
        engine: "InnoDB".into(),
        estimated_rows: 0,
        bytes: 0,
        primary_key: vec!["id".into()],
        auto_increment: None,
        columns: vec![
            column("id", "int", "int(11)", ""),
            column("v", "varchar", "varchar(20)", ""),
            column("hidden", "int", "int(11)", "invisible"),
        ],
    }]
}

fn decoder(gtids: &str) -> Decoder {
    let mut d = Decoder::new("fixture:3306/shop".into(), "shop", (FILE, 4), &plan());
    d.gtids = crate::gtid::GtidState::parse(gtids).unwrap();
    d
}

/// Feeds `events` as mysql_async's stream yields them: each event decoded; a table map
/// registered; a payload event followed by its events, decompressed as the driver does
/// (`danger_decompress`, then event after event without checksums).
fn stream(d: &mut Decoder, events: &[Vec<u8>]) -> Result<Vec<Change>, MyError> {
    let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
    let mut maps = Maps(HashMap::new());
    let mut out = Vec::new();
    let mut queue: std::collections::VecDeque<Vec<u8>> = events.iter().cloned().collect();
    while let Some(bytes) = queue.pop_front() {
        let event = Event::read(&fde, &bytes[..]).expect("a fixture event");
        match event.read_data() {
            Ok(Some(EventData::TableMapEvent(t))) => {
                maps.0.insert(t.table_id(), t.into_owned());
            }
            Ok(Some(EventData::TransactionPayloadEvent(p))) => {
                // One event after the other, each as long as its header says.
                let inner = p.danger_decompress();
                let mut rest = &inner[..];
                let mut unpacked = Vec::new();
                while rest.len() >= 19 {
                    let size = u32::from_le_bytes(rest[9..13].try_into().unwrap()) as usize;
                    unpacked.push(rest[..size].to_vec());
                    rest = &rest[size..];
                }
                assert!(rest.is_empty(), "a payload that is not whole events");
                for raw in unpacked.into_iter().rev() {
                    queue.push_front(raw);
                }
            }
            _ => {}
        }
        out.extend(d.decode(&event, &maps)?);
    }
    Ok(out)
}

fn rows() -> [Vec<Value>; 2] {
    [
        vec![Value::Int(1), Value::Bytes("héllo".into()), Value::Int(7)],
        vec![Value::Int(2), Value::NULL, Value::Int(8)],
    ]
}

#[test]
fn a_compressed_transaction_decodes_like_an_uncompressed_one() {
    let inner = inner_events();
    let g = event(33, 0, &gtid(43));
    let gtid_end = 1000 + g.len() as u32;
    let g = event(33, gtid_end, &gtid(43));
    let body = zstd_raw(&inner);
    let p = payload(0, inner.len() as u64, &body);
    let payload_end = gtid_end + 19 + p.len() as u32;
    let tpe = event(40, payload_end, &p);
    let mut d = decoder(&format!("{UUID}:1-42"));
    let changes = stream(&mut d, &[g.clone(), tpe]).unwrap();
    let [a, b] = rows();
    assert_eq!(
        changes,
        [
            Change::Begin {
                gtid: Some(format!("{UUID}:43")),
                executed: Some(format!("{UUID}:1-43")),
                at: 1000,
                timestamp: TIME,
            },
            Change::Insert { table: "t".into(), row: a },
            Change::Insert { table: "t".into(), row: b },
            // At the payload's end, not the inner events' 77.
            Change::Commit {
                file: FILE.into(),
                pos: u64::from(payload_end),
                timestamp: TIME,
            },
        ]
    );
    assert_eq!(d.pos, u64::from(payload_end));
    assert!(d.unpacking.is_none());

    // The same events uncompressed (compression type 255), and the same events not in a
    // payload at all (with their real positions): the same changes.
    let plain = payload(255, inner.len() as u64, &inner);
    let plain_end = gtid_end + 19 + plain.len() as u32;
    let changes_plain = stream(&mut decoder(&format!("{UUID}:1-42")), &[g.clone(), event(40, plain_end, &plain)]).unwrap();
    assert_eq!(changes_plain[..3], changes[..3]);
    let mut pos = gtid_end;
    let mut loose = vec![g];
    for (t, data) in [
        (2u8, query("BEGIN")),
        (19, table_map()),
        (30, write_rows()),
        (16, 42u64.to_le_bytes().to_vec()),
    ] {
        pos += 19 + data.len() as u32;
        loose.push(event(t, pos, &data));
    }
    let changes_loose = stream(&mut decoder(&format!("{UUID}:1-42")), &loose).unwrap();
    assert_eq!(changes_loose[..3], changes[..3]);
    assert!(matches!(changes_loose[3], Change::Commit { pos: p, .. } if p == u64::from(pos)));
}

#[test]
fn a_payload_whose_events_never_come_stops_the_stream() {
    // The driver drops a payload it cannot decompress: the next GTID arrives while the
    // payload's bytes are owed.
    let p = payload(0, 500, &zstd_raw(&[0; 10]));
    let events = [event(33, 1100, &gtid(43)), event(40, 1300, &p), event(33, 1400, &gtid(44))];
    let mut d = decoder("");
    let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
    let maps = Maps(HashMap::new());
    let mut last = Ok(Vec::new());
    for bytes in &events {
        last = d.decode(&Event::read(&fde, &bytes[..]).unwrap(), &maps);
    }
    let err = last.unwrap_err().to_string();
    assert!(err.contains("compressed transaction") && err.contains("500 bytes"), "{err}");
    assert!(err.contains("binlog_transaction_compression"), "{err}");

    // An absurd uncompressed size is refused before anything else.
    let huge = payload(0, super::MAX_UNCOMPRESSED * 4, &zstd_raw(&[0; 10]));
    let err = decoder("")
        .decode(&Event::read(&fde, &event(40, 2000, &huge)[..]).unwrap(), &maps)
        .unwrap_err()
        .to_string();
    assert!(err.contains("over Ferry's limit") && err.contains(FILE), "{err}");
}

#[test]
fn gtid_state_follows_transactions_of_both_engines() {
    // MySQL: a transaction whose end the reader did not see (a statement logged without
    // BEGIN/COMMIT) ends where the next GTID starts.
    let mut d = decoder(&format!("{UUID}:1-5:7"));
    let g6 = event(33, 1100, &gtid(6));
    let changes = stream(&mut d, &[g6.clone(), event(33, 1100 + g6.len() as u32, &gtid(8))]).unwrap();
    let at2 = 1100;
    assert_eq!(
        changes,
        [
            Change::Begin {
                gtid: Some(format!("{UUID}:6")),
                executed: Some(format!("{UUID}:1-7")),
                at: 1100 - g6.len() as u64,
                timestamp: TIME,
            },
            Change::Commit {
                file: FILE.into(),
                pos: at2,
                timestamp: TIME,
            },
            Change::Begin {
                gtid: Some(format!("{UUID}:8")),
                executed: Some(format!("{UUID}:1-8")),
                at: at2,
                timestamp: TIME,
            },
        ]
    );
    // Anonymous GTIDs (gtid_mode OFF): a group without a GTID; the state stays unknown.
    let mut anonymous = vec![0u8; 25];
    anonymous.push(2);
    anonymous.extend_from_slice(&[0; 16]);
    let anonymous = event(34, 300, &anonymous);
    let changes = stream(&mut decoder(""), &[anonymous]).unwrap();
    assert_eq!(
        changes,
        [Change::Begin {
            gtid: None,
            executed: None,
            at: 300 - 19 - 42,
            timestamp: TIME,
        }]
    );
    // A new file's PREVIOUS_GTIDS fills an unknown start in.
    let mut prev = 1u64.to_le_bytes().to_vec();
    prev.extend_from_slice(&UUID.parse::<crate::gtid::Uuid>().unwrap().0);
    prev.extend_from_slice(&1u64.to_le_bytes());
    prev.extend_from_slice(&1u64.to_le_bytes());
    prev.extend_from_slice(&10u64.to_le_bytes());
    let changes = stream(&mut decoder(""), &[event(35, 200, &prev), event(33, 300, &gtid(10))]).unwrap();
    assert!(matches!(&changes[..], [Change::Begin { executed: Some(e), .. }] if *e == format!("{UUID}:1-10")));
    // MariaDB: the last GTID per domain, other domains kept.
    let mut mariadb = 101u64.to_le_bytes().to_vec();
    mariadb.extend_from_slice(&0u32.to_le_bytes());
    mariadb.push(0);
    let changes = stream(&mut decoder("0-1-100,1-2-5"), &[event(162, 500, &mariadb)]).unwrap();
    assert!(
        matches!(&changes[..], [Change::Begin { gtid: Some(g), executed: Some(e), .. }] if g == "0-1-101" && e == "0-1-101,1-2-5"),
        "{changes:?}"
    );
}
