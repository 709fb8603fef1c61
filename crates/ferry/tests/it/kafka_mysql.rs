//! MariaDB to Kafka to PostgreSQL: `ferry capture --source mysql://...` publishes the snapshot
//! and the binlog in the envelope of Debezium's MySQL connector to the test broker, `ferry
//! apply` creates the tables the plan maps and applies them; real MariaDB, real sysbench, kill
//! -9 of both, and Ferry's cross-engine verification at the end.

use std::time::Duration;

use crate::harness::*;
use crate::kafka::{broker, read_topic, wait_snapshot};
use crate::mysql::{dispose, fresh, my_sql};
use crate::mysql_cdc::{my_query, sysbench};

/// Every sysbench row of a table, tab-separated, from both sides (the target's tables are in
/// the schema named like the source's database, as the topics name them).
async fn sbtest_rows(db: &str, target: &str, table: &str) -> (Vec<String>, Vec<String>) {
    let mine = my_query("FERRY_TEST_MYSQL", &format!("SELECT id, k, c, pad FROM {db}.{table} ORDER BY id"));
    let theirs = lines(
        &connect(target).await,
        &format!("SELECT id || E'\\t' || k || E'\\t' || c::text || E'\\t' || pad::text FROM {db}.{table} ORDER BY id"),
    )
    .await;
    (mine.lines().map(str::to_string).collect(), theirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_kafka_to_postgres_under_sysbench_with_kill_9_of_capture_and_apply_verifies_clean() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "kmy").await;
    let db = dbs.name.clone();
    let prefix = format!("it_{db}");
    // Values that must survive the trip exactly, beside sysbench's tables.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "CREATE TABLE {db}.kinds (id INT PRIMARY KEY, d DECIMAL(20,6), dt DATETIME(6), ts TIMESTAMP(3) NULL, day DATE,
               t TIME(6), j JSON, e ENUM('small','large'), s VARCHAR(40), b VARBINARY(40), n BIGINT UNSIGNED, f DOUBLE, y YEAR);
             INSERT INTO {db}.kinds VALUES
               (1, 12345678901234.123456, '2024-02-29 23:59:59.999999', '2024-01-01 00:00:00.123', '1999-12-31',
                '-838:59:59.000000', '{{\"a\": [1, 2.5, \"x\"]}}', 'large', 'Grüße, 世界 🚀', X'00ff10', 18446744073709551615, 1.5e-300, 2155),
               (2, -0.000001, '1000-01-01 00:00:00', NULL, NULL, '00:00:00', 'null', NULL, '', X'', 0, -0.0, NULL),
               (3, NULL, NULL, NULL, NULL, NULL, NULL, 'small', NULL, NULL, NULL, NULL, NULL)"
        ),
    );
    let prepared = sysbench(&db, &["prepare"])
        .output()
        .expect("sysbench is installed by scripts/test.sh");
    assert!(prepared.status.success(), "{}", String::from_utf8_lossy(&prepared.stderr));
    // sysbench writes throughout: the snapshot is read under its writes, then the stream.
    let bench = sysbench(&db, &["--threads=2", "--time=45", "--rate=150", "run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let to = format!("kafka://{}/{prefix}?schemas=false", broker());
    let metrics_at = free_addr();
    let capture_args = ["capture", "--source", &source, "--to", &to, "--listen", &metrics_at];
    let mut capture = Migrator::spawn(&capture_args);
    let state = wait_snapshot(&prefix);
    assert_eq!(state["snapshot_complete"], true, "{state}");
    assert!(state["consistent_point"].as_str().unwrap().starts_with("mysql:"), "{state}");
    assert!(
        state["target_ddl"]
            .as_array()
            .is_some_and(|d| d.iter().any(|s| s.as_str().unwrap().contains("PRIMARY KEY"))),
        "the state record holds the target's tables: {state}"
    );
    let apply_args = ["apply", "--from", &to, "--target", &target];
    let mut apply = Migrator::spawn(&apply_args);

    // The envelope of Debezium's MySQL connector: source block with file and pos, transaction
    // ids of its form without GTIDs.
    let kinds = read_topic(&format!("{prefix}.{db}.kinds"), 3, Duration::from_secs(60));
    let first = kinds[0].value.as_ref().expect("a value");
    assert_eq!(first["op"], "r", "{first}");
    assert_eq!(first["source"]["connector"], "mysql", "{first}");
    assert_eq!(first["source"]["db"], db.as_str(), "{first}");
    assert_eq!(first["source"]["table"], "kinds", "{first}");
    assert!(first["source"]["file"].as_str().is_some_and(|f| !f.is_empty()), "{first}");
    assert!(first["source"]["pos"].as_u64().is_some_and(|p| p > 0), "{first}");
    let one = kinds
        .iter()
        .filter_map(|r| r.value.as_ref())
        .find(|v| v["after"]["id"] == 1)
        .expect("row 1");
    // DECIMAL(20,6) as Debezium's precise Decimal: base64 of the unscaled two's complement.
    assert_eq!(one["after"]["s"], "Grüße, 世界 🚀", "{one}");
    assert_eq!(one["after"]["e"], "large", "{one}");
    assert_eq!(one["after"]["b"], "AP8Q", "{one}");

    // Changes to the typed table while sysbench writes; kill -9 of the capture, then of the
    // apply, each started again with the same command.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "INSERT INTO {db}.kinds VALUES (4, 0.5, '2038-01-19 03:14:08.000001', '2038-01-19 03:14:07.999', '2000-02-29', '12:34:56.789012',
               '[]', 'small', 'a\\ttab', X'deadbeef', 42, 3.14, 1901);
             UPDATE {db}.kinds SET s = 'changed', d = d * 2 WHERE id = 1;
             DELETE FROM {db}.kinds WHERE id = 3"
        ),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!capture.has_exited(), "the capture stopped by itself");
    capture.kill9();
    capture = Migrator::spawn(&capture_args);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!apply.has_exited(), "the apply stopped by itself");
    apply.kill9();
    apply = Migrator::spawn(&apply_args);

    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let transactions: u64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(transactions > 1000, "sysbench did too little to prove anything: {report}");
    // A last row after sysbench: once it is on the target, everything before it is.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("INSERT INTO {db}.sbtest1 (id, k, c, pad) VALUES (900001, 0, 'marker', 'marker')"),
    );
    wait_for_row(
        &target,
        "the last change through Kafka",
        Duration::from_secs(180),
        &format!("SELECT 1 FROM {db}.sbtest1 WHERE id = 900001"),
    )
    .await;
    // Independent check: every sysbench row, as each engine prints it.
    for i in 1..=4 {
        let table = format!("sbtest{i}");
        let (mine, theirs) = sbtest_rows(&db, &target, &table).await;
        assert!(mine.len() > 29_000, "{table}: {} rows", mine.len());
        assert_eq!(mine.len(), theirs.len(), "{table}: row counts differ");
        let first_diff = mine.iter().zip(&theirs).position(|(a, b)| a != b);
        assert!(first_diff.is_none(), "{table}: rows differ at {first_diff:?}");
    }
    let t = connect(&target).await;
    let kinds_target = lines(
        &t,
        &format!("SELECT id::text || ' ' || coalesce(s, '<null>') FROM {db}.kinds ORDER BY id"),
    )
    .await;
    assert_eq!(kinds_target, vec!["1 changed", "2 ", "4 a\ttab"], "the typed table's changes");
    // Ferry's cross-engine verification: every row and every value, MariaDB against PostgreSQL.
    let verify = ferry(&["verify", "--source", &source, "--target", &target, "--target-schema", &db]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    eprintln!("sysbench: {transactions} transactions through Kafka, kill -9 of capture and apply, verify clean");
    // --listen: the restarted capture's figures (it published the marker's transaction).
    let (code, text) = http("GET", &metrics_at, "/metrics", None).await;
    assert_eq!(code, 200, "{text}");
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(metric("ferry_kafka_capture_transactions_total") >= 1.0, "{text}");
    assert!(metric("ferry_kafka_capture_acknowledged_position") > 0.0, "{text}");
    assert!(
        metric("ferry_kafka_capture_acknowledged_commit_timestamp_seconds") > 1.7e9,
        "{text}"
    );

    let applied = apply.terminate();
    assert_eq!(applied.code, 0, "{}", applied.all());
    let captured = capture.terminate();
    assert_eq!(captured.code, 0, "{}", captured.all());
    assert!(
        captured
            .all()
            .contains("resuming change capture from the position in the state topic"),
        "the restarted capture resumed from its recorded position: {}",
        captured.all()
    );
    assert!(
        !captured.all().contains("ferry-test-pw") && !applied.all().contains("ferry-test-pw"),
        "no password in the output"
    );
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_and_a_table_added_on_mariadb_mid_stream_reach_postgres_through_kafka() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "kmyddl").await;
    let db = dbs.name.clone();
    let prefix = format!("it_{db}");
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("CREATE TABLE {db}.items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL); INSERT INTO {db}.items VALUES (1, 'one')"),
    );
    // With the schema part: the apply learns a new column's type from it.
    let to = format!("kafka://{}/{prefix}", broker());
    let capture = Migrator::spawn(&["capture", "--source", &source, "--to", &to]);
    wait_snapshot(&prefix);
    let apply = Migrator::spawn(&["apply", "--from", &to, "--target", &target]);
    wait_for_row(
        &target,
        "the snapshot",
        Duration::from_secs(60),
        &format!("SELECT 1 FROM {db}.items WHERE id = 1"),
    )
    .await;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "INSERT INTO {db}.items VALUES (2, 'two');
             ALTER TABLE {db}.items ADD COLUMN price DECIMAL(10,2) NULL;
             INSERT INTO {db}.items VALUES (3, 'three', 9.99);
             CREATE TABLE {db}.orders (id INT PRIMARY KEY, item INT NOT NULL, placed DATETIME(3) NOT NULL);
             INSERT INTO {db}.orders VALUES (10, 3, '2026-12-07 10:00:00.125');
             UPDATE {db}.items SET price = 1.50 WHERE id = 1"
        ),
    );
    wait_for_row(
        &target,
        "the new table's row",
        Duration::from_secs(90),
        &format!("SELECT 1 FROM {db}.orders WHERE id = 10 AND placed = '2026-12-07 10:00:00.125'"),
    )
    .await;
    wait_for_row(
        &target,
        "the new column's values",
        Duration::from_secs(60),
        &format!("SELECT 1 FROM {db}.items WHERE id = 1 AND price = 1.50"),
    )
    .await;
    let t = connect(&target).await;
    let price_type: String = t
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'price'",
            &[&format!("{db}.items")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(price_type, "numeric(10,2)");
    let rows = lines(&t, &format!("SELECT x::text FROM {db}.items x ORDER BY id")).await;
    assert_eq!(rows, ["(1,one,1.50)", "(2,two,)", "(3,three,9.99)"]);
    let verify = ferry(&["verify", "--source", &source, "--target", &target, "--target-schema", &db]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    let applied = apply.terminate();
    assert_eq!(applied.code, 0, "{}", applied.all());
    let captured = capture.terminate();
    assert_eq!(captured.code, 0, "{}", captured.all());
    assert!(captured.all().contains("the source's schema changed"), "{}", captured.all());
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_capture_killed_during_its_snapshot_takes_it_again_and_apply_loads_only_the_finished_one() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "kmysnap").await;
    let db = dbs.name.clone();
    let prefix = format!("it_{db}");
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "CREATE TABLE {db}.wide (id INT PRIMARY KEY, v VARCHAR(100) NOT NULL);
             USE {db}; INSERT INTO wide SELECT seq, CONCAT('row ', seq) FROM seq_1_to_150000"
        ),
    );
    // This test writes nothing more on the source.
    let before = crate::mysql_cdc::binlog_end("FERRY_TEST_MYSQL");
    let to = format!("kafka://{}/{prefix}?schemas=false", broker());
    let args = ["capture", "--source", &source, "--to", &to];
    let first = Migrator::spawn(&args);
    wait_for("the first snapshot to start publishing", Duration::from_secs(60), || {
        let started = first.log().contains("snapshot open");
        async move { started }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.log().contains("snapshot published"),
        "the snapshot was over before the kill: the test proves nothing\n{}",
        first.log()
    );
    first.kill9();
    let second = Migrator::spawn(&args);
    let state = wait_snapshot(&prefix);
    // Alone on its server, both snapshots are at one position (the case that needs
    // `source.ts_ms` to tell them apart); with other tests writing to the same server they are
    // not, and the run still checks that only the finished snapshot is loaded.
    let same = state["consistent_point"].as_str().unwrap().split('/').next().unwrap()
        == format!("mysql:{}", before.as_mysql().unwrap().file_pos());
    eprintln!("second snapshot at the abandoned one's position: {same}");
    let apply = Migrator::spawn(&["apply", "--from", &to, "--target", &target]);
    wait_for_row(
        &target,
        "the snapshot applied",
        Duration::from_secs(120),
        "SELECT 1 FROM ferry.migrations WHERE phase = 'cdc'",
    )
    .await;
    let t = connect(&target).await;
    let (n, sum): (i64, i64) = {
        let r = t
            .query_one(&format!("SELECT count(*), sum(id)::bigint FROM {db}.wide"), &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (n, sum),
        (150_000, 150_000 * 150_001 / 2),
        "every row once, only the finished snapshot's"
    );
    let verify = ferry(&["verify", "--source", &source, "--target", &target, "--target-schema", &db]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert_eq!(apply.terminate().code, 0);
    assert_eq!(second.terminate().code, 0);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_loads_only_the_finished_snapshot_when_an_abandoned_one_has_the_same_position() {
    use crate::kafka_debezium::{create_topics, produce};
    use serde_json::json;
    // What a MySQL capture killed during its snapshot of a quiet source leaves, made by hand so
    // that nothing else on a shared server moves the position: rows 1-3 of an abandoned
    // snapshot, then all five rows of the finished one, both at the same binlog position, told
    // apart by `source.ts_ms` (the state record names the finished one's).
    let dbs = Dbs::create("ksamepos").await;
    let prefix = format!("it_{}", dbs.name);
    let topic = format!("{prefix}.shop.t");
    create_topics(&[topic.clone(), format!("{prefix}.transaction"), format!("{prefix}.ferry.capture")]).await;
    let row = |id: i64, ts_ms: i64, snapshot: &str| {
        let v = json!({"before": null, "after": {"id": id, "v": format!("row {id}")}, "op": "r", "ts_ms": ts_ms,
            "source": {"version": "2.7.0.Final", "connector": "mysql", "name": prefix, "ts_ms": ts_ms, "snapshot": snapshot,
                       "db": "shop", "sequence": null, "table": "t", "server_id": 1, "gtid": null,
                       "file": "binlog.000003", "pos": 4242, "row": 0, "thread": null, "query": null}});
        (Some(json!({"id": id}).to_string()), Some(v.to_string()))
    };
    let mut records: Vec<(Option<String>, Option<String>)> = (1..=3).map(|id| row(id, 1_000, "true")).collect();
    records.extend((1..=5).map(|id| row(id, 2_000, if id == 5 { "last" } else { "true" })));
    produce(&topic, &records);
    let state = json!({"slot": "ferry_capture_x", "snapshot_complete": true, "consistent_point": "mysql:binlog.000003:4242",
        "tables": 1, "rows": 5, "table_rows": {"shop.t": 5}, "position": "mysql:binlog.000003:4242", "snapshot_ts_ms": 2_000,
        "target_ddl": ["CREATE SCHEMA IF NOT EXISTS \"shop\"", "CREATE TABLE \"shop\".\"t\" (\"id\" integer NOT NULL, \"v\" text)",
                       "ALTER TABLE \"shop\".\"t\" ADD PRIMARY KEY (\"id\")"]});
    produce(
        &format!("{prefix}.ferry.capture"),
        &[(Some("ferry_capture_x".into()), Some(state.to_string()))],
    );
    let from = format!("kafka://{}/{prefix}?schemas=false", broker());
    let apply = Migrator::spawn(&["apply", "--from", &from, "--target", &dbs.target]);
    wait_for_row(
        &dbs.target,
        "the snapshot applied",
        Duration::from_secs(60),
        "SELECT 1 FROM ferry.migrations WHERE phase = 'cdc'",
    )
    .await;
    let rows = lines(&connect(&dbs.target).await, "SELECT id || ' ' || v FROM shop.t ORDER BY id").await;
    assert_eq!(rows, ["1 row 1", "2 row 2", "3 row 3", "4 row 4", "5 row 5"]);
    assert_eq!(apply.terminate().code, 0);
    dbs.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_group_of_two_applies_a_mariadb_capture_under_sysbench_exactly() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "kmygrp").await;
    let db = dbs.name.clone();
    let prefix = format!("it_{db}");
    let prepared = sysbench(&db, &["prepare"])
        .output()
        .expect("sysbench is installed by scripts/test.sh");
    assert!(prepared.status.success(), "{}", String::from_utf8_lossy(&prepared.stderr));
    let bench = sysbench(&db, &["--threads=2", "--time=30", "--rate=100", "run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let to = format!("kafka://{}/{prefix}?schemas=false", broker());
    let capture = Migrator::spawn(&["capture", "--source", &source, "--to", &to]);
    wait_snapshot(&prefix);
    // Two members on an empty target: the first to start creates the tables from the plan.
    let group = format!("g_{db}");
    let mut a = crate::kafka::start_member(&dbs, &prefix, &group, "a");
    let mut b = crate::kafka::start_member(&dbs, &prefix, &group, "b");
    // Both hold partitions while sysbench writes (a member that joins later takes some from
    // the other at the rebalance); a member that stops meanwhile fails the test at once (its
    // log is printed).
    let both = format!("SELECT 1 WHERE (SELECT count(DISTINCT member) FROM ferry.kafka_offsets WHERE group_id = '{group}') = 2");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        assert!(!a.has_exited() && !b.has_exited(), "a member of the group stopped");
        let t = connect(&target).await;
        if t.query_opt(&both, &[]).await.ok().flatten().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both members did not hold partitions within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = bench.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Each table on its own (a group keeps no atomicity across tables): equal to the source.
    let t = connect(&target).await;
    for i in 1..=4 {
        let table = format!("sbtest{i}");
        let mine = my_query("FERRY_TEST_MYSQL", &format!("SELECT COUNT(*), SUM(k) FROM {db}.{table}"));
        let mine = mine.trim().replace('\t', " ");
        wait_for(&format!("{table} to equal the source"), Duration::from_secs(120), || {
            let (t, sql, mine) = (&t, format!("SELECT count(*) || ' ' || sum(k) FROM {db}.{table}"), mine.clone());
            async move { t.query_one(&sql, &[]).await.ok().map(|r| r.get::<_, String>(0)) == Some(mine) }
        })
        .await;
    }
    let verify = ferry(&["verify", "--source", &source, "--target", &target, "--target-schema", &db]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    for m in [a, b, capture] {
        let run = m.terminate();
        assert_eq!(run.code, 0, "{}", run.all());
    }
    dispose("FERRY_TEST_MYSQL", dbs).await;
}
