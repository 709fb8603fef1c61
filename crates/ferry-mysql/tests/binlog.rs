//! The binlog reader against a real MariaDB (started by scripts/test.sh): transactions come out
//! with their boundaries, GTID and commit position, and values in the full load's form.

use ferry_mysql::binlog::{BinlogReader, Change};
use ferry_mysql::preflight::MyTable;
use ferry_mysql::types::{map_column, MapOptions, SourceColumn};
use ferry_mysql::MyEndpoint;
use mysql_async::prelude::Queryable;
use mysql_async::Value;

fn column(name: &str, data_type: &str, column_type: &str) -> (String, ferry_mysql::types::Mapping) {
    let c = SourceColumn {
        name: name.into(),
        data_type: data_type.into(),
        column_type: column_type.into(),
        nullable: true,
        ..Default::default()
    };
    (name.to_string(), map_column("t", &c, &MapOptions::default()))
}

#[tokio::test]
async fn binlog_reader_yields_transactions_with_exact_values() {
    let url = std::env::var("FERRY_TEST_MYSQL").expect("FERRY_TEST_MYSQL is not set: run the tests through scripts/test.sh");
    let db = format!("binlog_{}", std::process::id());
    let root = MyEndpoint::parse(&url, None).unwrap();
    let mut admin = root.connect().await.unwrap();
    admin
        .query_drop(format!(
            "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};
             CREATE TABLE {db}.t (id int PRIMARY KEY, e enum('a','b c'), s set('r','w','x'), d decimal(10,2),
                                  dt datetime(6), v varchar(20) CHARACTER SET utf8mb4);
             CREATE TABLE {db}.other (id int PRIMARY KEY)"
        ))
        .await
        .unwrap();
    let (file, pos): (String, u64) = {
        let row: mysql_async::Row = admin.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    };
    admin
        .query_drop(format!(
            "SET NAMES utf8mb4;
             BEGIN;
             INSERT INTO {db}.t VALUES (1, 'b c', 'r,x', 12.34, '2024-02-29 23:59:58.123456', 'héllo 😀');
             UPDATE {db}.t SET v = NULL, s = '' WHERE id = 1;
             INSERT INTO {db}.other VALUES (7);
             DELETE FROM {db}.t WHERE id = 1;
             COMMIT;
             INSERT INTO {db}.t (id, e) VALUES (2, 'a');"
        ))
        .await
        .unwrap();
    let table = MyTable {
        name: "t".into(),
        engine: "InnoDB".into(),
        estimated_rows: 0,
        bytes: 0,
        primary_key: vec!["id".into()],
        auto_increment: None,
        columns: vec![
            column("id", "int", "int(11)"),
            column("e", "enum", "enum('a','b c')"),
            column("s", "set", "set('r','w','x')"),
            column("d", "decimal", "decimal(10,2)"),
            column("dt", "datetime", "datetime(6)"),
            column("v", "varchar", "varchar(20)"),
        ],
    };
    let db_ep = MyEndpoint::parse(&format!("{}/{db}", url.rsplit_once('/').unwrap().0), None).unwrap();
    // Seeded with a domain this server never writes: it stays in the recorded state.
    let mut reader = BinlogReader::start(&db_ep, 4242, &file, pos, &[table])
        .await
        .unwrap()
        .with_gtid_state("77-9-3");
    let mut changes = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while non_empty(&changes).iter().filter(|c| matches!(c, Change::Commit { .. })).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "changes so far: {changes:?}");
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), reader.next())
            .await
            .unwrap()
            .unwrap();
        changes.extend(next.expect("the stream ended"));
    }
    let ours = non_empty(&changes);
    let bytes = |s: &str| Value::Bytes(s.as_bytes().to_vec());
    let row1 = vec![
        Value::Int(1),
        bytes("b c"),
        bytes("r,x"),
        bytes("12.34"),
        Value::Date(2024, 2, 29, 23, 59, 58, 123456),
        bytes("héllo 😀"),
    ];
    let mut row1_after = row1.clone();
    row1_after[2] = bytes("");
    row1_after[5] = Value::NULL;
    match ours.as_slice() {
        [Change::Begin {
            gtid: Some(g1),
            executed: Some(e1),
            ..
        }, Change::Insert { table: t1, row: r1 }, Change::Update { table: t2, before, after }, Change::Delete { table: t3, row: r3 }, Change::Commit {
            file: f1,
            pos: p1,
            timestamp,
        }, Change::Begin { gtid: Some(g2), .. }, Change::Insert { row: r4, .. }, Change::Commit { pos: p2, .. }] => {
            assert!(g1.split('-').count() == 3 && g1 != g2, "{g1} {g2}");
            // The state after the transaction: its domain's last GTID, the other domain kept.
            assert_eq!(e1, &format!("{g1},77-9-3"));
            assert_eq!((t1.as_str(), t2.as_str(), t3.as_str()), ("t", "t", "t"));
            assert_eq!(r1, &row1);
            assert_eq!(before, &row1);
            assert_eq!(after, &row1_after);
            assert_eq!(r3, &row1_after);
            assert_eq!(f1, &file);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(
                u64::from(*timestamp) + 120 > now && u64::from(*timestamp) <= now,
                "commit time {timestamp}"
            );
            assert!(p2 > p1 && *p1 > pos);
            assert_eq!(r4[0], Value::Int(2));
            assert_eq!(r4[1], bytes("a"));
            assert_eq!(r4[3], Value::NULL);
        }
        other => panic!("unexpected sequence: {other:#?}"),
    }
    admin.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
}

/// The transactions with changes in them. Other tests write to other databases of this server
/// at the same time: their transactions come through as a Begin and a Commit with nothing
/// between.
fn non_empty(changes: &[Change]) -> Vec<&Change> {
    let mut ours: Vec<&Change> = Vec::new();
    let mut open: Vec<&Change> = Vec::new();
    for c in changes {
        match c {
            Change::Begin { .. } => open = vec![c],
            Change::Commit { .. } if open.len() > 1 => {
                ours.append(&mut open);
                ours.push(c);
            }
            Change::Commit { .. } => open.clear(),
            _ => open.push(c),
        }
    }
    ours
}
