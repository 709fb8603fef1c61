//! The MySQL/MariaDB sink (issue 18, reverse replication to MySQL): change events as a
//! PostgreSQL source sends them, applied to a real MariaDB through `ferry_mysql::apply::MySink`,
//! the rows read back with the mariadb client. Also the forward binlog reader leaving out what
//! the sink wrote (loop prevention).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::change::{ChangeEvent, Column, Datum, Identity, Relation};
use ferry_core::sink::Sink;
use ferry_core::{Lsn, SourcePosition, TableName};
use ferry_mysql::apply::{applied, MySink, MySinkOptions};
use ferry_mysql::MyEndpoint;
use ferry_postgres::apply::{origin_names, ApplyError, TextSettings};
use ferry_postgres::state::{StateStore, ENGINE_MYSQL};

use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql};
use crate::mysql_cdc::my_query;

const MY: &str = "FERRY_TEST_MYSQL";

/// A MariaDB database, its PostgreSQL target with Ferry's state schema and a migration, and
/// a state database of the test's own.
struct Setup {
    source: String,
    target: String,
    db: String,
    state_db: String,
    id: String,
    dbs: Dbs,
}

impl Setup {
    async fn new(prefix: &str, ddl: &str) -> Setup {
        let (source, target, dbs) = fresh(MY, prefix).await;
        let db = dbs.name.clone();
        my_sql(MY, &format!("USE {db}; {ddl}"));
        let c = connect(&target).await;
        let store = StateStore::new("ferry");
        store.ensure(&c).await.unwrap();
        let id = format!("rev{}", db.replace('_', ""));
        store
            .create_for(&c, &id, ENGINE_MYSQL, "mysql://test", "server_id 1", &db, "test")
            .await
            .unwrap();
        // Not containing the migrated database's name (the forward reader looks for it in DDL).
        let state_db = format!("state{}", db.replace('_', "x"));
        Setup {
            source,
            target,
            state_db,
            id,
            db,
            dbs,
        }
    }

    fn options(&self, tables: &[&str]) -> MySinkOptions {
        MySinkOptions {
            endpoint: MyEndpoint::parse(&self.source, None).unwrap(),
            database: self.db.clone(),
            target_schema: "public".into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            state_db: self.state_db.clone(),
            migration_id: self.id.clone(),
            skip: HashSet::new(),
            stale: None,
            state: ferry_postgres::Endpoint::parse(&self.target, None).unwrap(),
            store: StateStore::new("ferry"),
            text: TextSettings {
                time_zone: "UTC".into(),
                date_style: "ISO, MDY".into(),
                interval_style: "postgres".into(),
            },
        }
    }

    async fn open(&self, tables: &[&str]) -> MySink {
        MySink::open(self.options(tables)).await.unwrap()
    }

    /// Tab-separated rows of a query in the test's database, the session in UTC.
    fn rows(&self, sql: &str) -> Vec<String> {
        my_query(MY, &format!("USE {}; SET time_zone = '+00:00'; {sql}", self.db))
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn dispose(self) {
        my_sql(MY, &format!("DROP DATABASE IF EXISTS {}", self.state_db));
        dispose(MY, self.dbs).await;
    }
}

fn col(name: &str, type_sql: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        type_sql: type_sql.into(),
        key,
        default: None,
        not_null: key,
    }
}

fn relation(id: u32, name: &str, identity: Identity, columns: Vec<Column>) -> ChangeEvent {
    ChangeEvent::Relation(Relation {
        id,
        table: TableName::new("public", name),
        scope: TableName::new("public", name),
        identity,
        columns,
    })
}

fn t(s: &str) -> Datum {
    Datum::Text(Bytes::from(s.to_string()))
}

fn begin(lsn: u64) -> ChangeEvent {
    ChangeEvent::Begin {
        commit: SourcePosition::Postgres(Lsn(lsn)),
        commit_time_us: 0,
        xid: 0,
    }
}

fn commit(lsn: u64) -> ChangeEvent {
    ChangeEvent::Commit {
        end: SourcePosition::Postgres(Lsn(lsn)),
        commit_time_us: 0,
    }
}

async fn apply(sink: &mut MySink, events: Vec<ChangeEvent>) -> Result<(), ApplyError> {
    for e in events {
        sink.apply(e).await?;
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

const EVERY_TYPE: &str = "CREATE TABLE every_type (
    id bigint unsigned NOT NULL PRIMARY KEY, flag tinyint(1), ti tinyint, tu tinyint unsigned,
    su smallint unsigned, mi mediumint, iu int unsigned, big bigint unsigned, bi bigint,
    d decimal(65,30), f float, dbl double, b bit(5), y year, dt date, dtm datetime(6),
    ts timestamp(6) NULL, tm time(6), c char(3), vc varchar(191), lt longtext,
    l1 varchar(10) CHARACTER SET latin1, bn binary(4), vb varbinary(16), bl blob,
    e enum('new','paid','it''s'), s set('r','w','x'), j json,
    g int GENERATED ALWAYS AS (mi + 1) VIRTUAL
) ENGINE=InnoDB";

/// The PostgreSQL side of `every_type`, as the migration created it (docs/mysql-types.md).
fn every_type_relation() -> ChangeEvent {
    relation(
        1,
        "every_type",
        Identity::Key,
        vec![
            col("id", "numeric(20,0)", true),
            col("flag", "boolean", false),
            col("ti", "smallint", false),
            col("tu", "smallint", false),
            col("su", "integer", false),
            col("mi", "integer", false),
            col("iu", "bigint", false),
            col("big", "numeric(20,0)", false),
            col("bi", "bigint", false),
            col("d", "numeric(65,30)", false),
            col("f", "real", false),
            col("dbl", "double precision", false),
            col("b", "bit(5)", false),
            col("y", "smallint", false),
            col("dt", "date", false),
            col("dtm", "timestamp(6) without time zone", false),
            col("ts", "timestamp(6) with time zone", false),
            col("tm", "interval second(6)", false),
            col("c", "character(3)", false),
            col("vc", "character varying(191)", false),
            col("lt", "text", false),
            col("l1", "character varying(10)", false),
            col("bn", "bytea", false),
            col("vb", "bytea", false),
            col("bl", "bytea", false),
            col("e", "every_type_e_enum", false),
            col("s", "text[]", false),
            col("j", "jsonb", false),
            col("g", "integer", false),
        ],
    )
}

const DECIMAL: &str = "-12345678901234567890123456789012345.123456789012345678901234567890";
const LONG_TEXT: &str = "tab\there\\back\nnew line 😀";

fn edge_row() -> Vec<Datum> {
    vec![
        t("18446744073709551615"),
        t("t"),
        t("-128"),
        t("255"),
        t("65535"),
        t("-8388608"),
        t("4294967295"),
        t("18446744073709551615"),
        t("-9223372036854775808"),
        t(DECIMAL),
        t("-3.4e+38"),
        t("1e-300"),
        t("10101"),
        t("2155"),
        t("1000-01-01"),
        t("2024-02-29 23:59:58.123456"),
        t("2024-01-02 03:04:05.123456+05:30"),
        t("-838:59:59"),
        t("ab "),
        t("😀 emoji ünïcode"),
        t(LONG_TEXT),
        t("latin1 é"),
        t("\\x00ff0000"),
        t("\\x00ff"),
        t("\\x000102"),
        t("it's"),
        t("{r,x}"),
        t("{\"a\": [1, 2.5, null], \"b\": 1}"),
        t("-8388607"),
    ]
}

fn other_row(id: &str) -> Vec<Datum> {
    let mut row = vec![Datum::Null; 29];
    row[0] = t(id);
    row[1] = t("f");
    row[10] = t("0.1");
    row[12] = t("0");
    row[15] = t("2000-01-01 00:00:00");
    row[16] = t("2024-01-01 20:00:00-08");
    row[17] = t("1 day 02:00:00");
    row[19] = t("");
    row[24] = t("\\x");
    row[25] = t("new");
    row[26] = t("{}");
    row[27] = t("[]");
    row
}

const SELECT_EVERY: &str = "SELECT id, flag, ti, tu, su, mi, iu, big, bi, d, f = -3.3999999521443642e38, f = 0.10000000149011612,
    dbl, BIN(b), y, dt, dtm, ts, tm, c, HEX(vc), HEX(lt), HEX(l1), HEX(bn), HEX(vb), HEX(bl), e, s, j, g
    FROM every_type ORDER BY id";

#[tokio::test]
async fn mysql_sink_applies_every_type_exactly() {
    let s = Setup::new("mysink_types", EVERY_TYPE).await;
    let mut sink = s.open(&["every_type"]).await;
    assert!(sink.session().is_some());
    apply(
        &mut sink,
        vec![
            every_type_relation(),
            begin(0x1000),
            ChangeEvent::Insert {
                relation: 1,
                new: edge_row(),
            },
            ChangeEvent::Insert {
                relation: 1,
                new: other_row("1"),
            },
            ChangeEvent::Insert {
                relation: 1,
                new: other_row("2"),
            },
            commit(0x1010),
        ],
    )
    .await
    .unwrap();
    assert!(sink.batch_open() && sink.at_boundary());
    assert_eq!(sink.batch_len(), 3);
    sink.commit().await.unwrap();
    assert_eq!(sink.durable(), Some(SourcePosition::Postgres(Lsn(0x1010))));
    assert_eq!(sink.transactions(), 1);

    let latin1_e = [b"latin1 ".as_slice(), &[0xE9]].concat();
    let edge = [
        "18446744073709551615",
        "1",
        "-128",
        "255",
        "65535",
        "-8388608",
        "4294967295",
        "18446744073709551615",
        "-9223372036854775808",
        DECIMAL,
        "1",
        "0",
        "1e-300",
        "10101",
        "2155",
        "1000-01-01",
        "2024-02-29 23:59:58.123456",
        "2024-01-01 21:34:05.123456",
        "-838:59:59.000000",
        "ab",
        &hex("😀 emoji ünïcode".as_bytes()),
        &hex(LONG_TEXT.as_bytes()),
        &hex(&latin1_e),
        "00FF0000",
        "00FF",
        "000102",
        "it's",
        "r,x",
        "{\"a\": [1, 2.5, null], \"b\": 1}",
        "-8388607",
    ]
    .join("\t");
    let other = |id: &str| {
        [
            id,
            "0",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "0",
            "1",
            "NULL",
            "0",
            "NULL",
            "NULL",
            "2000-01-01 00:00:00.000000",
            "2024-01-02 04:00:00.000000",
            "26:00:00.000000",
            "NULL",
            "",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "",
            "new",
            "",
            "[]",
            "NULL",
        ]
        .join("\t")
    };
    assert_eq!(s.rows(SELECT_EVERY), [other("1"), other("2"), edge.clone()]);

    // An update that leaves a TOASTed value unchanged keeps it; one that moves the key; a
    // delete; a TRUNCATE becomes a DELETE inside the batch.
    let mut new = edge_row();
    new[19] = t("changed");
    new[20] = Datum::Unchanged;
    let mut moved = other_row("3");
    moved[25] = t("paid");
    apply(
        &mut sink,
        vec![
            begin(0x2000),
            ChangeEvent::Update {
                relation: 1,
                old: None,
                new,
            },
            ChangeEvent::Update {
                relation: 1,
                old: Some(other_row("2")),
                new: moved,
            },
            ChangeEvent::Delete {
                relation: 1,
                old: {
                    let mut k = vec![Datum::Null; 29];
                    k[0] = t("1");
                    k
                },
            },
            commit(0x2010),
        ],
    )
    .await
    .unwrap();
    sink.commit().await.unwrap();
    let rows = s.rows("SELECT id, HEX(vc), HEX(lt), e FROM every_type ORDER BY id");
    assert_eq!(
        rows,
        [
            "3\t\tNULL\tpaid".to_string(),
            format!("18446744073709551615\t{}\t{}\tit's", hex(b"changed"), hex(LONG_TEXT.as_bytes()))
        ]
    );
    apply(
        &mut sink,
        vec![
            begin(0x3000),
            ChangeEvent::Truncate {
                relations: vec![1],
                cascade: false,
                restart_identity: false,
            },
            commit(0x3010),
        ],
    )
    .await
    .unwrap();
    sink.commit().await.unwrap();
    assert!(s.rows("SELECT id FROM every_type").is_empty());
    assert_eq!(
        applied(&MyEndpoint::parse(&s.source, None).unwrap(), &s.state_db, &s.id)
            .await
            .unwrap(),
        Some(Lsn(0x3010))
    );
    drop(sink);
    s.dispose().await;
}

const SIMPLE: &str = "CREATE TABLE t (id int PRIMARY KEY, v varchar(20)) ENGINE=InnoDB;
    CREATE TABLE other (id int PRIMARY KEY) ENGINE=InnoDB";

fn simple_relation() -> ChangeEvent {
    relation(
        7,
        "t",
        Identity::Key,
        vec![col("id", "integer", true), col("v", "character varying(20)", false)],
    )
}

fn ins(id: &str, v: &str) -> ChangeEvent {
    ChangeEvent::Insert {
        relation: 7,
        new: vec![t(id), t(v)],
    }
}

#[tokio::test]
async fn mysql_sink_applies_each_transaction_exactly_once() {
    let s = Setup::new("mysink_once", SIMPLE).await;
    let one = || vec![begin(0x100), ins("1", "one"), commit(0x110)];
    // Inserts wait in the sink for the next statement: the update sends them, so the lost
    // session below holds an open transaction with row locks.
    let two = || {
        vec![
            begin(0x200),
            ins("2", "two"),
            ins("3", "three"),
            ChangeEvent::Update {
                relation: 7,
                old: None,
                new: vec![t("1"), t("uno")],
            },
            commit(0x210),
        ]
    };
    let mut a = s.open(&["t"]).await;
    assert_eq!(a.durable(), None);
    apply(&mut a, [vec![simple_relation()], one()].concat()).await.unwrap();
    a.commit().await.unwrap();
    // The second batch is applied but not committed when its session is lost.
    apply(&mut a, two()).await.unwrap();
    let lost = a.session().unwrap();
    let mut options = s.options(&["t"]);
    options.stale = Some(lost);
    let mut b = MySink::open(options).await.unwrap();
    assert_ne!(b.session(), Some(lost));
    assert_eq!(b.durable(), Some(SourcePosition::Postgres(Lsn(0x110))));
    assert!(
        s.rows(&format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {lost}")) == ["0"],
        "the lost session is ended"
    );
    drop(a);
    // The source resends from before the durable position: the first transaction is skipped,
    // the second applied once.
    apply(&mut b, [vec![simple_relation()], one(), two()].concat()).await.unwrap();
    b.commit().await.unwrap();
    assert_eq!(b.transactions(), 1);
    assert_eq!(s.rows("SELECT id, v FROM t ORDER BY id"), ["1\tuno", "2\ttwo", "3\tthree"]);
    // A transaction written by Ferry's forward applier (its origin) is skipped; its position
    // counts.
    let (forward, _) = origin_names(&s.id);
    apply(
        &mut b,
        vec![begin(0x300), ChangeEvent::Origin { name: forward }, ins("4", "loop"), commit(0x310)],
    )
    .await
    .unwrap();
    b.commit().await.unwrap();
    assert_eq!(b.durable(), Some(SourcePosition::Postgres(Lsn(0x310))));
    drop(b);
    // Everything again through a new sink: nothing applied twice (an insert would collide).
    let mut c = s.open(&["t"]).await;
    assert_eq!(c.durable(), Some(SourcePosition::Postgres(Lsn(0x310))));
    apply(&mut c, [vec![simple_relation()], one(), two()].concat()).await.unwrap();
    assert!(!c.batch_open());
    assert_eq!(s.rows("SELECT id, v FROM t ORDER BY id"), ["1\tuno", "2\ttwo", "3\tthree"]);
    let row = s.rows(&format!(
        "SELECT lsn, position FROM {}.reverse_position WHERE migration_id = '{}'",
        s.state_db, s.id
    ));
    assert_eq!(row, [format!("{}\tpg:0/310", 0x310)]);
    // An idle stream's position moves without a change (a rollback waits for it), and what
    // committed before it is applied already.
    c.watermark(SourcePosition::Postgres(Lsn(0x400))).await.unwrap();
    assert_eq!(c.durable(), Some(SourcePosition::Postgres(Lsn(0x400))));
    assert_eq!(
        applied(&MyEndpoint::parse(&s.source, None).unwrap(), &s.state_db, &s.id)
            .await
            .unwrap(),
        Some(Lsn(0x400))
    );
    drop(c);
    s.dispose().await;
}

#[tokio::test]
async fn mysql_sink_stops_at_dead_letters_and_steps_over_them() {
    let s = Setup::new("mysink_dead", SIMPLE).await;
    let mut sink = s.open(&["t"]).await;
    let missing = vec![
        simple_relation(),
        begin(0x500),
        ins("1", "one"),
        ChangeEvent::Update {
            relation: 7,
            old: None,
            new: vec![t("42"), t("nobody")],
        },
        commit(0x510),
    ];
    let letter = match apply(&mut sink, missing.clone()).await {
        Err(ApplyError::Rejected(d)) => d,
        other => panic!("expected a dead letter, got {other:?}"),
    };
    assert_eq!((letter.change_index, letter.operation, letter.key.as_str()), (2, "update", "id=42"));
    assert!(letter.error.contains("no row with id=42"), "{}", letter.error);
    assert_eq!(letter.commit, SourcePosition::Postgres(Lsn(0x500)));
    sink.record_dead_letter(&letter, false).await.unwrap();
    sink.rollback().await;
    let pg = connect(&s.target).await;
    let recorded = lines(
        &pg,
        "SELECT commit_lsn::text || ' ' || change_index || ' ' || table_name || ' ' || key FROM ferry.dead_letters",
    )
    .await;
    assert_eq!(recorded, ["0/500 2 public.t id=42"]);
    assert!(s.rows("SELECT id FROM t").is_empty(), "the batch was rolled back");
    drop(sink);

    // A value MySQL cannot hold, and a duplicate in a multi-row insert, name their change.
    let mut sink = s.open(&["t"]).await;
    let mut skip = HashSet::new();
    skip.insert((Lsn(0x500), 2));
    let dup = vec![
        simple_relation(),
        begin(0x600),
        ins("10", "a"),
        ins("11", "b"),
        ins("10", "again"),
        commit(0x610),
    ];
    apply(&mut sink, dup.clone()).await.unwrap();
    let letter = match sink.commit().await {
        Err(ApplyError::Rejected(d)) => d,
        other => panic!("expected a dead letter, got {other:?}"),
    };
    assert_eq!((letter.change_index, letter.key.as_str()), (3, "id=10"));
    assert!(letter.error.contains("1062"), "{}", letter.error);
    sink.rollback().await;
    drop(sink);
    let wide = "CREATE TABLE d (id int PRIMARY KEY, ts timestamp(6) NULL)";
    my_sql(MY, &format!("USE {}; {wide}", s.db));
    let mut sink = s.open(&["d"]).await;
    let infinite = vec![
        relation(
            8,
            "d",
            Identity::Key,
            vec![col("id", "integer", true), col("ts", "timestamp(6) with time zone", false)],
        ),
        begin(0x700),
        ChangeEvent::Insert {
            relation: 8,
            new: vec![t("1"), t("infinity")],
        },
        commit(0x710),
    ];
    match apply(&mut sink, infinite).await {
        Err(ApplyError::Rejected(d)) => assert!(d.error.contains("infinity") && d.error.contains("ts"), "{}", d.error),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    sink.rollback().await;
    drop(sink);

    // With the operator's consent the dead letters are stepped over, and only they.
    let mut options = s.options(&["t"]);
    skip.insert((Lsn(0x600), 3));
    options.skip = skip;
    let mut sink = MySink::open(options).await.unwrap();
    apply(&mut sink, [missing, dup[1..].to_vec()].concat()).await.unwrap();
    sink.commit().await.unwrap();
    assert_eq!(s.rows("SELECT id, v FROM t ORDER BY id"), ["1\tone", "10\ta", "11\tb"]);
    drop(sink);
    s.dispose().await;
}

#[tokio::test]
async fn mysql_sink_finds_one_row_of_a_table_without_a_key() {
    let s = Setup::new(
        "mysink_nokey",
        "CREATE TABLE nokey (a int, b varchar(10), j json) ENGINE=InnoDB;
         INSERT INTO nokey VALUES (1, 'same', '{\"k\": 1}'), (1, 'same', '{\"k\": 1}'), (2, NULL, NULL), (3, 'Case', NULL)",
    )
    .await;
    let mut sink = s.open(&["nokey"]).await;
    let rel = relation(
        9,
        "nokey",
        Identity::Full,
        vec![
            col("a", "integer", false),
            col("b", "character varying(10)", false),
            col("j", "jsonb", false),
        ],
    );
    apply(
        &mut sink,
        vec![
            rel,
            begin(0x900),
            // PostgreSQL prints jsonb its own way: found all the same.
            ChangeEvent::Delete {
                relation: 9,
                old: vec![t("1"), t("same"), t("{\"k\":1}")],
            },
            ChangeEvent::Update {
                relation: 9,
                old: Some(vec![t("2"), Datum::Null, Datum::Null]),
                new: vec![t("2"), t("was null"), Datum::Null],
            },
            commit(0x910),
        ],
    )
    .await
    .unwrap();
    sink.commit().await.unwrap();
    assert_eq!(s.rows("SELECT a, b FROM nokey ORDER BY a"), ["1\tsame", "2\twas null", "3\tCase"]);
    // Compared byte for byte: 'case' does not find 'Case'.
    let wrong_case = vec![
        begin(0xA00),
        ChangeEvent::Delete {
            relation: 9,
            old: vec![t("3"), t("case"), Datum::Null],
        },
        commit(0xA10),
    ];
    assert!(matches!(apply(&mut sink, wrong_case).await, Err(ApplyError::Rejected(_))));
    sink.rollback().await;
    drop(sink);
    s.dispose().await;
}

#[tokio::test]
async fn mysql_sink_writes_are_left_out_by_the_forward_binlog_reader() {
    use ferry_mysql::binlog::{BinlogReader, Change};
    use ferry_mysql::preflight::MyTable;
    use ferry_mysql::types::{map_column, MapOptions, SourceColumn};

    let s = Setup::new("mysink_loop", SIMPLE).await;
    let mut sink = s.open(&["t"]).await;
    let status = my_query(MY, "SHOW MASTER STATUS");
    let mut f = status.split('\t');
    let (file, pos): (String, u64) = (f.next().unwrap().into(), f.next().unwrap().trim().parse().unwrap());
    apply(
        &mut sink,
        vec![simple_relation(), begin(0x100), ins("1", "from postgres"), commit(0x110)],
    )
    .await
    .unwrap();
    sink.commit().await.unwrap();
    my_sql(MY, &format!("INSERT INTO {}.t VALUES (2, 'from the app')", s.db));
    let column = |name: &str, data_type: &str, column_type: &str| {
        let c = SourceColumn {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: true,
            ..Default::default()
        };
        (name.to_string(), map_column("t", &c, &MapOptions::default()))
    };
    let table = MyTable {
        name: "t".into(),
        engine: "InnoDB".into(),
        estimated_rows: 0,
        bytes: 0,
        primary_key: vec!["id".into()],
        auto_increment: None,
        columns: vec![column("id", "int", "int(11)"), column("v", "varchar", "varchar(20)")],
    };
    let endpoint = MyEndpoint::parse(&s.source, None).unwrap();
    let mut reader = BinlogReader::start(&endpoint, 4343, &file, pos, &[table])
        .await
        .unwrap()
        .skip_reverse_writes(&s.state_db);
    // Other tests write to the same server meanwhile: read until the application's row.
    let app_row = |c: &Change| matches!(c, Change::Insert { table, row } if table == "t" && format!("{:?}", row[0]) == "Int(2)");
    let mut changes = Vec::new();
    while !changes.iter().any(app_row) {
        let next = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("the binlog answers")
            .unwrap();
        changes.extend(next.expect("the stream ended"));
    }
    // (The test crate names no mysql_async type: values by their Debug form.)
    let inserts: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Insert { table, row } => Some(format!("{table} {:?}", row[0])),
            _ => None,
        })
        .collect();
    assert_eq!(inserts, ["t Int(2)"], "{changes:?}");
    // The sink's transaction still comes as a Begin and a Commit: the position moves past it.
    assert!(matches!(changes.first(), Some(Change::Begin { .. })), "{changes:?}");
    drop(sink);
    s.dispose().await;
}
