//! `ferry verify`: planted differences found and pinpointed, zero differences while changes
//! flow, repair.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// The differences of one table in a verify --json report.
fn diffs<'a>(report: &'a Value, table: &str) -> Vec<&'a Value> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["table"] == table)
        .flat_map(|t| t["details"].as_array().unwrap().iter())
        .collect()
}

fn verify_json(args: &[&str]) -> (i32, Value, String) {
    let run = ferry(args);
    let json = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {}", run.all()));
    (run.code, json, run.stderr)
}

#[tokio::test]
async fn heavy_verify_pinpoints_every_planted_difference_and_repairs_them() {
    let dbs = Dbs::create("verify_planted").await;
    load_sample(&dbs.source, 2_000).await;
    let run = ferry(&refs(&migrate_args(&dbs, &["--stop-after", "full-load"])));
    assert_eq!(run.code, 0, "{}", run.all());
    let both = ["verify", "--source", &dbs.source, "--target", &dbs.target, "--json"];

    // Straight after the load: identical, every table compared.
    let (code, report, stderr) = verify_json(&both);
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert_eq!(report["differences"], 0);
    assert!(report["tables"].as_array().unwrap().len() >= 10, "{report}");
    let compared = report["rows_compared"].as_u64().unwrap();
    assert!(compared > 2_000, "{report}");

    // Plant differences on the target: a missing row (composite key), an extra row, a
    // duplicate in a table without a key, and a changed value for every type, the subtle ones
    // included (a microsecond, a trailing space, NaN, NFC vs NFD, NULL vs empty).
    connect(&dbs.target)
        .await
        .batch_execute(
            "SET session_replication_role = replica;
             DELETE FROM order_items WHERE order_id = 1 AND line = 1;
             INSERT INTO type_zoo (id, t) VALUES (99, 'only on the target');
             INSERT INTO page_views SELECT * FROM page_views LIMIT 1;
             UPDATE type_zoo SET
                 i2 = 32766, i4 = 2147483646, i8 = 9223372036854775806, num = 0,
                 num_p = 12345678901234567890.12345678901234567891, f4 = 3.4e38, f8 = -1.7e308,
                 t = U&'cafe\\0301 NFC', vc = 'x ', b = '\\x00ff11', bo = false, d = '2000-02-28',
                 tm = '23:59:59.999998', tmtz = '12:00:00.000001+05:31', ts = '2024-01-01 00:00:00.000002',
                 tstz = '2024-06-30 23:59:59.999998+00', iv = '1 year 2 mons 3 days 04:05:06.789011',
                 u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', j = '{\"a\": [1, 2.5, \"x\"], \"a\": 1}',
                 jb = '{\"b\": {\"c\": null}, \"n\": 1.0}', arr_i = '{1,3,NULL}', arr_t = '{\"with space\",\"quote\\\"d\",NULL,NULL}',
                 arr_2d = '{{1,2},{4,3}}', m = 'happy', pos = 8, ip = '192.168.0.1/25', net = '10.0.0.0/9',
                 mac = '08:00:2b:01:02:04', big = big || 'x'
             WHERE id = 1;
             UPDATE type_zoo SET f8 = 0, b = NULL, vc = NULL, c = NULL WHERE id = 2;",
        )
        .await
        .unwrap();

    let (code, report, stderr) = verify_json(&both);
    assert_eq!(code, 1, "{report}\n{stderr}");

    let oi = diffs(&report, "public.order_items");
    assert_eq!(oi.len(), 1, "{report}");
    assert_eq!(oi[0]["kind"], "missing_on_target");
    assert_eq!(oi[0]["key"], "order_id=1, line=1");

    let pv = diffs(&report, "public.page_views");
    assert_eq!(pv.len(), 1, "{report}");
    assert_eq!(
        pv[0]["kind"], "extra_on_target",
        "a duplicate row in a table without a key: {report}"
    );

    let zoo = diffs(&report, "public.type_zoo");
    let extra: Vec<_> = zoo.iter().filter(|d| d["kind"] == "extra_on_target").collect();
    assert_eq!(extra.len(), 1);
    assert_eq!(extra[0]["key"], "id=99");
    let row = |id: &str| -> &Value {
        zoo.iter()
            .find(|d| d["key"] == format!("id={id}") && d["kind"] == "value_differs")
            .unwrap_or_else(|| panic!("no difference for id={id}: {report}"))
    };
    let cols = |d: &Value| -> Vec<String> {
        d["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["column"].as_str().unwrap().to_string())
            .collect()
    };
    let value = |d: &Value, col: &str, side: &str| -> Value {
        d["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["column"] == col)
            .unwrap_or_else(|| panic!("{col} not reported: {d}"))[side]
            .clone()
    };
    let one = row("1");
    let mut changed = cols(one);
    changed.sort();
    let mut expected: Vec<String> =
        "i2 i4 i8 num num_p f4 f8 t vc b bo d tm tmtz ts tstz iv u j jb arr_i arr_t arr_2d m pos ip net mac big gen"
            .split(' ')
            .map(String::from)
            .collect();
    expected.sort();
    assert_eq!(changed, expected, "{one}");
    assert_eq!(value(one, "tm", "source"), "23:59:59.999999");
    assert_eq!(value(one, "tm", "target"), "23:59:59.999998");
    assert_eq!(value(one, "vc", "target"), "x ", "a trailing space");
    assert_eq!(value(one, "num", "source"), "NaN");
    assert_eq!(value(one, "t", "source"), "caf\u{e9} NFC");
    assert_eq!(value(one, "t", "target"), "cafe\u{301} NFC");
    let big = value(one, "big", "source");
    assert!(
        big.as_str().unwrap().ends_with("...(1280000 chars)"),
        "long values are shortened: {big}"
    );
    let two = row("2");
    let mut changed = cols(two);
    changed.sort();
    assert_eq!(changed, ["b", "c", "f8", "vc"], "{two}");
    assert_eq!(value(two, "f8", "source"), "NaN");
    assert_eq!(value(two, "b", "source"), "\\x", "empty bytea on the source");
    assert_eq!(value(two, "b", "target"), Value::Null, "NULL on the target");
    assert_eq!(value(two, "vc", "source"), "");
    assert_eq!(value(two, "vc", "target"), Value::Null);
    assert_eq!(report["differences"], 5, "{report}");

    // Human output names the same rows; exit code 1.
    let run = ferry(&both[..5]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("missing on target: order_id=1, line=1") && run.stdout.contains("DIFFERENT"),
        "{}",
        run.stdout
    );

    // Repair, then verify again: clean, and independently identical.
    let run = ferry(&["verify", "--source", &dbs.source, "--target", &dbs.target, "--repair"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("repaired"), "{}", run.stderr);
    let (code, report, _) = verify_json(&both);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["rows_compared"].as_u64().unwrap(), compared);
    assert_identical(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

#[tokio::test]
async fn heavy_verify_finds_a_difference_in_the_last_of_5m_rows() {
    let dbs = Dbs::create("verify_big").await;
    let setup = "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
                 INSERT INTO big SELECT g, g % 1000, 'row ' || g FROM generate_series(1, 5000000) g;";
    let (s, t) = (connect(&dbs.source).await, connect(&dbs.target).await);
    let (a, b) = tokio::join!(s.batch_execute(setup), t.batch_execute(setup));
    a.unwrap();
    b.unwrap();
    t.batch_execute("UPDATE big SET v = v + 1 WHERE id = 5000000; ANALYZE big")
        .await
        .unwrap();
    s.batch_execute("ANALYZE big").await.unwrap();
    let (code, report, stderr) = verify_json(&["verify", "--source", &dbs.source, "--target", &dbs.target, "--json", "--jobs", "2"]);
    assert_eq!(code, 1, "{report}\n{stderr}");
    assert_eq!(report["rows_compared"], 5_000_000);
    assert_eq!(report["differences"], 1);
    let d = diffs(&report, "public.big");
    assert_eq!(d[0]["key"], "id=5000000");
    assert_eq!(d[0]["columns"][0]["column"], "v");
    assert_eq!(d[0]["columns"][0]["source"], "0");
    assert_eq!(d[0]["columns"][0]["target"], "1");
    assert!(report["tables"][0]["ranges"].as_u64().unwrap() >= 2, "read in key ranges: {report}");
    dbs.drop().await;
}

#[tokio::test]
async fn heavy_verify_through_the_api_while_pgbench_writes() {
    let dbs = Dbs::create("verify_live").await;
    pgbench_init(&dbs.source, 2).await;
    connect(&dbs.source)
        .await
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let addr = free_addr();
    let m = Migrator::spawn(&refs(&migrate_args(&dbs, &["--listen", &addr])));
    wait_for_cdc(&dbs.target).await;
    let api = format!("http://{addr}");
    let bench = pgbench_run_rate(&dbs.source, 4, 25, 400);

    // Repeated verifications while changes flow: zero differences, each at a source position.
    for _ in 0..3 {
        let (code, report, stderr) = verify_json(&["verify", "--api", &api, "--json"]);
        assert_eq!(code, 0, "{report}\n{stderr}");
        assert_eq!(report["differences"], 0, "{report}");
        assert!(report["source_lsn"].is_string(), "{report}");
        assert!(report["rows_compared"].as_u64().unwrap() >= 200_000, "{report}");
    }

    // A planted difference is found at the consistent point, repaired there, and gone.
    connect(&dbs.target)
        .await
        .batch_execute("UPDATE notes SET body = 'tampered' WHERE id = 500")
        .await
        .unwrap();
    let (code, report, _) = verify_json(&["verify", "--api", &api, "--json"]);
    assert_eq!(code, 1, "{report}");
    let d = diffs(&report, "public.notes");
    assert_eq!((d.len(), d[0]["key"].as_str()), (1, Some("id=500")), "{report}");
    assert_eq!(d[0]["columns"][0]["target"], "tampered");
    let (code, report, stderr) = verify_json(&["verify", "--api", &api, "--json", "--repair"]);
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert!(stderr.contains("repaired"), "{stderr}");
    let (code, report, _) = verify_json(&["verify", "--api", &api, "--json"]);
    assert_eq!(code, 0, "{report}");

    // The runs are stored and shown: status, metrics, transitions.
    let st = api_wait(&addr, "the last run in the status", Duration::from_secs(10), |st| {
        st["last_verification"]["status"] == "identical" && st["phase"] == "cdc"
    })
    .await;
    assert!(st["last_verification"]["source_lsn"].is_string(), "{st}");
    // The dashboard, in a real browser, shows the last run.
    let dom = crate::api::dashboard_dom(&addr);
    assert!(crate::api::by_id(&dom, "verify-status").contains("run "), "{dom}");
    assert!(dom.contains("<b>identical</b>"), "{dom}");
    let (_, text) = http("GET", &addr, "/metrics", None).await;
    assert!(metric(&text, "ferry_verify_rows_compared_total").unwrap() > 1_000_000.0, "{text}");
    assert_eq!(
        metric(&text, "ferry_verify_differences_total{table=\"public.notes\"}"),
        Some(1.0),
        "{text}"
    );
    let t = connect(&dbs.target).await;
    let n: i64 = t
        .query_one(
            "SELECT count(*) FROM ferry.transitions WHERE from_phase = 'cdc' AND to_phase = 'verify' AND actor LIKE 'api %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 6, "{n} verification transitions");
    let runs: i64 = t
        .query_one("SELECT count(*) FROM ferry.verify_runs WHERE status = 'identical'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(runs >= 5);

    pgbench_finish(bench);
    create_marker(&dbs.source).await;
    sync_point(&dbs.source, &dbs.target, 1).await;
    assert!(pgbench_invariant(&dbs.target).await);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_identical(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

/// A transaction left open on the source keeps a consistent snapshot from being built: the
/// verification gives up after 30 s naming it, and change capture goes on.
#[tokio::test]
async fn heavy_verify_gives_up_on_a_long_source_transaction_and_names_it() {
    let dbs = Dbs::create("verify_longtx").await;
    connect(&dbs.source)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await
        .unwrap();
    let addr = free_addr();
    let m = Migrator::spawn(&refs(&migrate_args(&dbs, &["--listen", &addr])));
    wait_for_cdc(&dbs.target).await;
    let long = connect(&dbs.source).await;
    long.batch_execute("BEGIN; INSERT INTO t VALUES (2, 'left open')").await.unwrap();
    let pid: i32 = long.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let run = ferry(&["verify", "--api", &format!("http://{addr}")]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr.contains("a transaction open on the source") && run.stderr.contains(&format!("pid {pid}")),
        "{}",
        run.stderr
    );
    // Change capture went on.
    connect(&dbs.source)
        .await
        .execute("INSERT INTO t VALUES (3, 'after')", &[])
        .await
        .unwrap();
    wait_for_row(
        &dbs.target,
        "a change after the failed verification",
        Duration::from_secs(30),
        "SELECT 1 FROM t WHERE id = 3",
    )
    .await;
    long.batch_execute("ROLLBACK").await.unwrap();
    let (code, report, stderr) = verify_json(&["verify", "--api", &format!("http://{addr}"), "--json"]);
    assert_eq!(code, 0, "{report}\n{stderr}");
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    dbs.drop().await;
}
