//! MySQL/MariaDB change capture: `ferry migrate --source mysql://...` loads, then streams the
//! binlog into PostgreSQL; real MariaDB servers from scripts/test.sh, real sysbench.

use std::time::Duration;

use crate::harness::*;
use crate::mysql::{dispose, fresh, mariadb, my_sql, server, Writable};

/// Runs a query with the mariadb client; tab-separated rows, no headers.
pub fn my_query(var: &str, sql: &str) -> String {
    let out = mariadb(var).args(["-N", "-B", "-e", sql]).output().expect("mariadb client");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The source's binlog end.
pub fn binlog_end(var: &str) -> ferry_core::SourcePosition {
    let out = my_query(var, "SHOW MASTER STATUS");
    let mut f = out.split('\t');
    let (file, pos) = (f.next().unwrap(), f.next().unwrap().trim().parse().unwrap());
    ferry_core::SourcePosition::Mysql(ferry_core::BinlogPosition::new(file, pos, "").unwrap())
}

/// The MySQL migration's applied position on the target (None: nothing applied yet).
pub async fn applied_position(t: &tokio_postgres::Client) -> Option<ferry_core::SourcePosition> {
    let row = t
        .query_opt(
            "SELECT applied_position FROM ferry.migrations WHERE source_engine = 'mysql' AND applied_position IS NOT NULL",
            &[],
        )
        .await
        .ok()
        .flatten()?;
    Some(row.get::<_, String>(0).parse().expect("a position Ferry can read"))
}

/// Waits until the stream has applied everything the source had logged when called (positions
/// compared by binlog file number, then offset).
pub async fn wait_caught_up(var: &str, target: &str, timeout: Duration) {
    let end = binlog_end(var);
    let t = connect(target).await;
    wait_for("the binlog stream to catch up", timeout, || {
        let (t, end) = (&t, end.clone());
        async move { applied_position(t).await.is_some_and(|p| p >= end) }
    })
    .await;
}

/// Every row of a PostgreSQL table as its row text, sorted.
pub async fn pg_rows(url: &str, table: &str) -> Vec<String> {
    lines(
        &connect(url).await,
        &format!("SELECT x::text FROM public.{table} x ORDER BY x::text"),
    )
    .await
}

/// Waits for the stream to be running (its tables recorded).
pub async fn wait_streaming(target: &str) {
    let t = connect(target).await;
    wait_for("the binlog stream to start", Duration::from_secs(120), || {
        let t = &t;
        async move {
            t.query_opt("SELECT 1 FROM ferry.mysql_state WHERE cdc_tables IS NOT NULL", &[])
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;
}

pub const EDGE_ROW: &str = r#"(1, 1, 255, 65535, -8388608, 4294967295, 18446744073709551615, -9223372036854775808,
   '-12345678901234567890123456789012345.123456789012345678901234567890', 0.1, 1e-300,
   b'1000000000000000000000000000000000000000000000000000000000000001', 2155,
   '1000-01-01', '2024-02-29 23:59:58.123456', '2038-01-19 03:14:07.999999', '-838:59:59.000001', 'a',
   '😀 emoji ünïcode', 'utf8mb3 é', 'tab	here\\back\nnew line', 'latin1 é', x'00ff', REPEAT(x'ab', 100000),
   'it''s', 'r,w,x', '{"b": 1, "a": [1, 2.5, null]}')"#;
pub const OTHER_ROW: &str = r#"(NULL, 0, 0, 0, 0, 0, 0, 0, '0.000000000000000000000000000001', -3.4e38, 2.2250738585072014e-308, b'0', 1901,
   '9999-12-31', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.000000', '838:59:59.999999', '', '', '', '',
   '', x'', x'', 'new', '', '[]')"#;
pub const COLS: &str = "parent, flag, tu, su, mi, iu, big, bi, d, f, dbl, b, y, dt, dtm, ts, tm, c, vc, v3, lt, l1, vb, bl, e, s, j";

#[tokio::test]
async fn mysql_cdc_streams_every_type_exactly_and_stops_at_schema_changes() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mycdc").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            r#"USE {db};
            CREATE TABLE parent (id int PRIMARY KEY, name varchar(20) NOT NULL);
            CREATE TABLE every_type (
               id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, parent int, flag tinyint(1), tu tinyint unsigned,
               su smallint unsigned, mi mediumint, iu int unsigned, big bigint unsigned, bi bigint,
               d decimal(65,30), f float, dbl double, b bit(64), y year, dt date, dtm datetime(6), ts timestamp(6) NULL,
               tm time(6), c char(3), vc varchar(191), v3 varchar(20) CHARACTER SET utf8mb3, lt longtext,
               l1 varchar(10) CHARACTER SET latin1, vb varbinary(16), bl longblob, e enum('new','paid','it''s'),
               s set('r','w','x'), j json, CONSTRAINT fk_parent FOREIGN KEY (parent) REFERENCES parent (id)
            ) ENGINE=InnoDB;
            CREATE TABLE nokey (a int, b varchar(10));
            CREATE TABLE wiped (id int PRIMARY KEY, v text);
            CREATE TABLE bulk (id int PRIMARY KEY, v varchar(40) NOT NULL);
            INSERT INTO parent VALUES (1, 'one');
            INSERT INTO every_type ({COLS}) VALUES {EDGE_ROW};
            INSERT INTO nokey VALUES (1, 'same'), (1, 'same'), (2, NULL);
            INSERT INTO wiped VALUES (1, 'a'), (2, 'b');"#
        ),
    );
    let args = ["migrate", "--source", &source, "--target", &target];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    // Changes of every kind, with edge values, in multi-statement transactions.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            r#"USE {db}; SET NAMES utf8mb4;
            BEGIN;
            INSERT INTO every_type ({COLS}) VALUES {EDGE_ROW}, {OTHER_ROW};
            INSERT INTO every_type (id) VALUES (100);
            UPDATE every_type SET flag = 0, big = 1, d = 0.5, f = -3.4e38, b = b'0', dtm = '2000-01-01 00:00:00.000001',
                   tm = '838:59:59.999999', vc = '', lt = NULL, bl = x'', e = 'paid', s = '', j = '{{"k": "é"}}' WHERE id = 1;
            UPDATE every_type SET id = 200 WHERE id = 100;
            COMMIT;
            BEGIN;
            DELETE FROM every_type WHERE id = 2;
            UPDATE every_type SET vc = 'tab	and\\backslash', s = 'w', bl = REPEAT(x'cd', 70000) WHERE id = 3;
            DELETE FROM nokey WHERE a = 1 LIMIT 1;
            UPDATE nokey SET b = 'was null' WHERE a = 2;
            COMMIT;
            TRUNCATE TABLE wiped;
            INSERT INTO wiped VALUES (3, 'after truncate');
            INSERT INTO bulk SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5000;
            BEGIN;
            UPDATE bulk SET v = CONCAT(v, ' updated') WHERE id % 2 = 0;
            DELETE FROM bulk WHERE id % 3 = 0;
            COMMIT;"#
        ),
    );
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(120)).await;

    // Independent check: a second full load of the same source, now, into another database
    // (the full load's values are pinned literally by mysql_full_load_moves_every_type_exactly)
    // must equal what the stream built, row by row.
    let reference = dbs.source.clone();
    let load = ferry(&["migrate", "--source", &source, "--target", &reference, "--stop-after", "full-load"]);
    assert_eq!(load.code, 0, "{}", load.all());
    for table in ["parent", "every_type", "nokey", "wiped", "bulk"] {
        let (streamed, loaded) = (pg_rows(&target, table).await, pg_rows(&reference, table).await);
        assert_eq!(streamed.len(), loaded.len(), "{table}: row counts differ");
        for (s, l) in streamed.iter().zip(&loaded) {
            assert_eq!(s, l, "{table}: the streamed row differs from the loaded one");
        }
    }
    let t = connect(&target).await;
    let n: i64 = t.query_one("SELECT count(*) FROM public.bulk", &[]).await.unwrap().get(0);
    assert_eq!(n, 5000 - 5000 / 3);
    let (vc, s, bl): (String, String, i32) = {
        let r = t
            .query_one("SELECT vc, s::text, length(bl) FROM public.every_type WHERE id = 3", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((vc.as_str(), s.as_str(), bl), ("tab\tand\\backslash", "{w}", 70000));
    assert_eq!(
        lines(&t, "SELECT a::text || ':' || coalesce(b, 'NULL') FROM public.nokey ORDER BY 1").await,
        ["1:same", "2:was null"]
    );

    // Cross-engine verification agrees (every edge value compares equal in its canonical
    // form), then finds each difference made on the target behind the stream's back, down to
    // one microsecond, while the stream runs.
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    assert!(verify.stdout.contains("every_type"), "{}", verify.stdout);
    t.batch_execute(
        "UPDATE public.parent SET name = 'uno' WHERE id = 1;
         INSERT INTO public.parent VALUES (99, 'stray');
         UPDATE public.every_type SET dtm = dtm + interval '1 microsecond' WHERE id = 1;
         DELETE FROM public.bulk WHERE id = 4000;",
    )
    .await
    .unwrap();
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    for needle in [
        ", 4 difference(s)",
        "value differs:     id=1",
        "name: source \"one\" | target \"uno\"",
        "extra on target:   id=99",
        "dtm: source \"2000-01-01 00:00:00.000001\" | target \"2000-01-01 00:00:00.000002\"",
        "missing on target: id=4000",
    ] {
        assert!(verify.stdout.contains(needle), "{needle} not in:\n{}", verify.stdout);
    }

    // A schema change stops the stream before it, naming the statement and the fix; made on
    // the target, --ddl-applied continues after it with the new column.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db}; INSERT INTO wiped VALUES (4, 'before alter');
             ALTER TABLE wiped ADD COLUMN extra int NOT NULL DEFAULT 7;
             INSERT INTO wiped VALUES (5, 'after alter', 8);"
        ),
    );
    let stopped = m.wait();
    assert_ne!(stopped.code, 0, "{}", stopped.all());
    assert!(
        stopped.stderr.contains("schema changed: ALTER TABLE wiped ADD COLUMN extra"),
        "{}",
        stopped.all()
    );
    assert!(stopped.stderr.contains("--ddl-applied"), "{}", stopped.all());
    let status = ferry(&["status", "--source", &source, "--target", &target]);
    assert_eq!(status.code, 0, "{}", status.all());
    for needle in [
        "phase          cdc",
        "STOPPED before a schema change",
        "ALTER TABLE wiped",
        ": 4 difference(s)",
    ] {
        assert!(status.stdout.contains(needle), "{needle}: {}", status.stdout);
    }
    assert_eq!(
        lines(&t, "SELECT id::text FROM public.wiped ORDER BY id").await,
        ["3", "4"],
        "everything before the ALTER is applied, nothing after"
    );
    t.batch_execute("ALTER TABLE public.wiped ADD COLUMN extra int NOT NULL DEFAULT 7")
        .await
        .unwrap();
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target, "--ddl-applied"]);
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    assert_eq!(
        lines(&t, "SELECT id || ':' || extra FROM public.wiped ORDER BY id").await,
        ["3:7", "4:7", "5:8"]
    );
    // A zero date written outside strict mode stops the stream naming the row and the policy
    // (never a different date); with --zero-dates null the same command writes NULL.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("SET SESSION sql_mode = ''; INSERT INTO {db}.every_type (id, dt) VALUES (300, '0000-00-00')"),
    );
    let stopped = m.wait();
    assert_ne!(stopped.code, 0, "{}", stopped.all());
    for needle in ["id=300", "column dt", "zero date", "--zero-dates null"] {
        assert!(stopped.stderr.contains(needle), "{needle}: {}", stopped.all());
    }
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target, "--zero-dates", "null"]);
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    let dt: Option<String> = t
        .query_one("SELECT dt::text FROM public.every_type WHERE id = 300", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dt, None);
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    assert!(end.stdout.contains("Stopped at binlog position"), "{}", end.all());
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// sysbench against a MariaDB database of the test.
pub fn sysbench(db: &str, extra: &[&str]) -> std::process::Command {
    let (host, port, password) = server("FERRY_TEST_MYSQL");
    let mut c = std::process::Command::new("sysbench");
    c.args([
        "oltp_read_write",
        "--db-driver=mysql",
        &format!("--mysql-host={host}"),
        &format!("--mysql-port={port}"),
        "--mysql-user=root",
        &format!("--mysql-password={password}"),
        &format!("--mysql-db={db}"),
        "--tables=4",
        "--table-size=30000",
        // Deadlocks and lock waits are retried by sysbench.
        "--mysql-ignore-errors=1213,1205",
    ]);
    c.args(extra);
    c
}

/// Every sysbench row of a table, tab-separated, from both sides.
async fn sbtest_rows(db: &str, target: &str, table: &str) -> (Vec<String>, Vec<String>) {
    let mine = my_query("FERRY_TEST_MYSQL", &format!("SELECT id, k, c, pad FROM {db}.{table} ORDER BY id"));
    let theirs = lines(
        &connect(target).await,
        &format!("SELECT id || E'\\t' || k || E'\\t' || c::text || E'\\t' || pad::text FROM public.{table} ORDER BY id"),
    )
    .await;
    (mine.lines().map(str::to_string).collect(), theirs)
}

#[tokio::test]
async fn heavy_mysql_sysbench_through_load_and_cdc_with_kill_9() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mysb").await;
    let db = dbs.name.clone();
    let prepared = sysbench(&db, &["prepare"])
        .output()
        .expect("sysbench is installed by scripts/test.sh");
    assert!(prepared.status.success(), "{}", String::from_utf8_lossy(&prepared.stderr));
    // sysbench runs throughout: the full load copies under its writes, then the stream.
    let bench = sysbench(&db, &["--threads=4", "--time=60", "run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let args = ["migrate", "--source", &source, "--target", &target, "-j", "2"];
    let mut m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    let t = connect(&target).await;
    let applied = || async {
        t.query_one("SELECT applied_txns FROM ferry.migrations WHERE source_engine = 'mysql'", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    // A row of our own reaches the target: proof the stream runs, whether sysbench still does.
    let mut marker = 900_000;
    let mut marker_arrives = |what: &'static str| {
        marker += 1;
        my_sql(
            "FERRY_TEST_MYSQL",
            &format!("INSERT INTO {db}.sbtest1 (id, k, c, pad) VALUES ({marker}, 0, 'marker', 'marker')"),
        );
        let (target, sql) = (target.clone(), format!("SELECT 1 FROM public.sbtest1 WHERE id = {marker}"));
        async move { wait_for_row(&target, what, Duration::from_secs(90), &sql).await }
    };
    // Two kill -9 while transactions stream in; the same command resumes.
    for round in 0..2 {
        let before = applied().await;
        wait_for("transactions to be applied", Duration::from_secs(90), || async {
            applied().await > before + 200
        })
        .await;
        assert!(!m.has_exited(), "ferry stopped by itself in round {round}");
        m.kill9();
        m = Migrator::spawn(&args);
    }
    marker_arrives("the restarted stream to apply").await;
    // Network cuts on both sides: the source's binlog connections (every stream on this
    // server: the others reconnect too) and the target's apply session are killed; the stream
    // reconnects and resumes from its last commit.
    for id in my_query(
        "FERRY_TEST_MYSQL",
        "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
    )
    .lines()
    {
        // The thread may be gone already: the outcome does not matter.
        let _ = mariadb("FERRY_TEST_MYSQL").args(["-e", &format!("KILL {id}")]).output();
    }
    t.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%mysql-cdc'",
        &[],
    )
    .await
    .unwrap();
    marker_arrives("a change after the cuts").await;
    assert!(!m.has_exited(), "ferry stopped after a network cut");
    // Verification while sysbench writes and the stream applies: rows in flight are looked at
    // again after the stream catches up; none may remain.
    let online = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(online.code, 0, "{}", online.all());
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
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(120)).await;
    // Independent check: every row of every table, as each engine prints it.
    for i in 1..=4 {
        let table = format!("sbtest{i}");
        let (mine, theirs) = sbtest_rows(&db, &target, &table).await;
        assert!(mine.len() > 29_000, "{table}: {} rows", mine.len());
        assert_eq!(mine.len(), theirs.len(), "{table}: row counts differ");
        let first_diff = mine.iter().zip(&theirs).position(|(a, b)| a != b);
        assert!(first_diff.is_none(), "{table}: rows differ at {first_diff:?}");
    }
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    eprintln!("sysbench: {transactions} transactions during the load and the stream, two kill -9, no difference");
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    assert!(end.stderr.contains("resuming from the last commit"), "{}", end.all());
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// Accepts one HTTP request on a free port; returns the address and the request's body.
pub(crate) async fn one_webhook() -> (String, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len || n == 0 {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
                    let _ = tx.send(body.to_string());
                    return;
                }
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn mysql_cutover_gate_stops_writes_reaches_the_final_position_and_signals() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mycut").await;
    let db = dbs.name.clone();
    // read_only is server-wide: whatever happens here, the server is writable afterwards (the
    // other tests write as root, which read_only does not stop, but a later run of this one would).
    let _writable = Writable("FERRY_TEST_MYSQL");
    my_sql("FERRY_TEST_MYSQL", "SET GLOBAL read_only = OFF");
    // The application's user: no SUPER, so read_only stops it (root, Ferry's user here, is not).
    let app = format!("app_{}", std::process::id());
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             CREATE TABLE orders (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, v int NOT NULL) AUTO_INCREMENT = 1000;
             INSERT INTO orders (v) SELECT seq FROM seq_1_to_100;
             DROP USER IF EXISTS '{app}'@'%'; CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw';
             GRANT SELECT, INSERT ON {db}.* TO '{app}'@'%';"
        ),
    );
    let mut m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    wait_streaming(&target).await;
    // The application inserts until the source refuses.
    let (host, port, _) = server("FERRY_TEST_MYSQL");
    let writer = {
        let (db, app) = (db.clone(), app.clone());
        std::thread::spawn(move || {
            let mut ok = 0u64;
            loop {
                let out = std::process::Command::new("mariadb")
                    .args(["--no-defaults", "-h", &host, "-P", &port, "-u", &app, "-e"])
                    .arg(format!("INSERT INTO {db}.orders (v) VALUES (1)"))
                    .env("MYSQL_PWD", "app-pw")
                    .output()
                    .unwrap();
                if !out.status.success() {
                    return (ok, String::from_utf8_lossy(&out.stderr).into_owned());
                }
                ok += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = |extra: &[&str]| {
        let mut a = vec!["cutover", "--source", &source, "--target", &target, "--grace", "1s"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // No verification yet: refused, nothing changed on the source.
    let refused = ferry(&refs(&cut(&[])));
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(refused.stderr.contains("no verification since the full load"), "{}", refused.all());
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "0");
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let (hook, body) = one_webhook().await;
    let url = format!("http://{hook}/switch");
    // In a blocking thread: the webhook listener runs on this test's runtime.
    let args = cut(&["--webhook", &url]);
    let done = tokio::task::spawn_blocking(move || ferry(&refs(&args))).await.unwrap();
    let reset = || my_sql("FERRY_TEST_MYSQL", "SET GLOBAL read_only = OFF");
    if done.code != 0 {
        reset();
        panic!("{}", done.all());
    }
    assert!(done.stdout.contains("Cut over from"), "{}", done.all());
    eprintln!("{}", done.stdout);
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "1");
    let (inserted, why) = writer.join().unwrap();
    reset();
    assert!(why.contains("read-only") || why.contains("read_only"), "{why}");
    assert!(inserted > 5, "the application wrote only {inserted} rows");
    // Every insert the source accepted is on the target; the migrate process turned its stream
    // around (the target's writes go back to the source from now on).
    let t = connect(&target).await;
    let n: i64 = t.query_one("SELECT count(*) FROM public.orders", &[]).await.unwrap().get(0);
    assert_eq!(n as u64, 100 + inserted);
    assert!(!m.has_exited(), "ferry migrate stopped after the cutover instead of streaming back");
    // The identity continues past every id the source handed out.
    let max: i64 = t.query_one("SELECT max(id) FROM public.orders", &[]).await.unwrap().get(0);
    let next: i64 = t
        .query_one("INSERT INTO public.orders (v) VALUES (0) RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next > max, "next id {next} <= max {max}");
    let body = tokio::time::timeout(Duration::from_secs(10), body).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["event"], "cutover");
    assert!(json["report"]["final_position"].as_str().unwrap().starts_with("binlog."), "{body}");
    let status = ferry(&["status", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["phase"], "cut_over");
    assert!(st["cutover"]["final_position"].is_string(), "{st}");
    // A second cutover is refused; a rollback makes the source writable again (its own test,
    // mysql_rollback.rs, follows every write through it).
    let again = ferry(&refs(&cut(&[])));
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(again.stderr.contains("cut over already"), "{}", again.all());
    let back = ferry(&["rollback", "--source", &source, "--target", &target, "--grace", "1s"]);
    assert_eq!(back.code, 0, "{}", back.all());
    assert!(back.stdout.contains("Rolled back from"), "{}", back.all());
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "0");
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    assert!(end.stdout.contains("was cut over"), "{}", end.all());
    my_sql("FERRY_TEST_MYSQL", &format!("DROP USER '{app}'@'%'"));
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// A binlog the source no longer has (purged while Ferry was stopped) is definite: `ferry
/// migrate` stops by itself with the server's error and the recovery steps, instead of retrying
/// forever. Simulated by pointing the recorded position at a binlog file the source does not
/// have: PURGE BINARY LOGS on the shared test server would take other tests' binlogs too, and
/// the server answers both with the same error (1236).
#[tokio::test]
async fn a_purged_binlog_stops_the_stream_with_the_recovery_steps() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mypurged").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("USE {db}; CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1);"),
    );
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    wait_streaming(&target).await;
    my_sql("FERRY_TEST_MYSQL", &format!("USE {db}; INSERT INTO t VALUES (2, 2);"));
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    let stopped = m.terminate();
    assert_eq!(stopped.code, 0, "{}", stopped.all());

    let t = connect(&target).await;
    let Some(ferry_core::SourcePosition::Mysql(at)) = applied_position(&t).await else {
        panic!("no MySQL position recorded");
    };
    let (base, number) = at.file().rsplit_once('.').expect("a numbered binlog file");
    let gone = format!("{base}.{:0w$}", number.parse::<u64>().unwrap() + 500_000, w = number.len());
    let n = t
        .execute(
            "UPDATE ferry.migrations SET applied_position = $1 WHERE source_engine = 'mysql'",
            &[&format!("mysql:{gone}:4")],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);

    let started = std::time::Instant::now();
    let run = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]).wait();
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}: {}",
        started.elapsed(),
        run.all()
    );
    let all = run.all();
    assert!(all.contains(&gone), "the missing file is not named: {all}");
    assert!(
        all.contains("binlog_expire_logs_seconds") && all.contains("--overwrite"),
        "no recovery steps: {all}"
    );
    // Nothing was retried: one attempt, one error.
    assert!(!all.contains("retry_in_ms"), "the error was retried: {all}");
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// A change the target rejects (a rule only the target has) stops the MySQL stream like the
/// PostgreSQL one: nothing of its transaction applied, the change recorded in dead_letters with
/// its binlog position, key and reason, and the fix named. With --skip-dead-letters the next run
/// records it as skipped, steps over exactly that change, and applies everything else.
#[tokio::test]
async fn mysql_poison_row_goes_to_dead_letters_and_skip_dead_letters_steps_over_it() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mydead").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db}; CREATE TABLE products (id int PRIMARY KEY, price decimal(10,2) NOT NULL);
             INSERT INTO products VALUES (1, 5), (2, 5), (3, 5);"
        ),
    );
    let args = ["migrate", "--source", &source, "--target", &target];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    let t = connect(&target).await;
    t.batch_execute("ALTER TABLE products ADD CONSTRAINT cheap CHECK (price < 10000)")
        .await
        .unwrap();
    let before_poison = binlog_end("FERRY_TEST_MYSQL");
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db}; BEGIN; UPDATE products SET price = 1 WHERE id = 2; UPDATE products SET price = 20000 WHERE id = 1;
             UPDATE products SET price = 2 WHERE id = 3; COMMIT;
             INSERT INTO products VALUES (4, 4);"
        ),
    );
    let run = m.wait();
    assert_eq!(run.code, 3, "{}", run.all());
    let all = run.all();
    assert!(all.contains("public.products"), "{all}");
    assert!(all.contains("violates check constraint \"cheap\""), "{all}");
    assert!(all.contains("--skip-dead-letters") && all.contains("dead_letters"), "{all}");
    let r = t
        .query_one(
            "SELECT operation, key, change_index, commit_position, skipped FROM ferry.dead_letters",
            &[],
        )
        .await
        .unwrap();
    let (op, key, index, at, skipped): (String, String, i32, String, bool) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    assert_eq!((op.as_str(), key.as_str(), index, skipped), ("update", "id=1", 2, false));
    // The transaction's binlog position, where it starts: after everything before the poison.
    let at: ferry_core::SourcePosition = at.parse().expect("a position");
    assert!(at >= before_poison, "{at} is before {before_poison}");
    // `ferry status` names it, with its binlog position.
    let status = ferry(&["status", "--source", &source, "--target", &target]);
    assert_eq!(status.code, 0, "{}", status.all());
    assert!(
        status.stdout.contains("dead letters   1")
            && status.stdout.contains("update public.products id=1 at mysql:")
            && status.stdout.contains("cheap"),
        "{}",
        status.stdout
    );
    // Nothing of that transaction, nor anything after it, was applied.
    assert_eq!(
        pg_rows(&target, "products").await,
        ["(1,5.00)", "(2,5.00)", "(3,5.00)"],
        "the rejected transaction was partly applied"
    );
    // Told to, Ferry records it as skipped and goes on with the rest, exactly.
    let skip = ["migrate", "--source", &source, "--target", &target, "--skip-dead-letters"];
    let m = Migrator::spawn(&skip);
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(pg_rows(&target, "products").await, ["(1,5.00)", "(2,1.00)", "(3,2.00)", "(4,4.00)"]);
    let rows: Vec<(i32, bool)> = t
        .query("SELECT change_index, skipped FROM ferry.dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(2, true)]);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// A write and a schema change that the stream reads together (here: both logged while Ferry
/// was stopped): the stream stops before the schema change with the write applied, as when
/// they arrive apart. (The schema change is a transaction of its own in the binlog; the write
/// before it must not wait in an open batch that the stop then drops.)
#[tokio::test]
async fn mysql_a_write_just_before_a_schema_change_is_applied_before_the_stream_stops() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myddlrace").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("USE {db}; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'loaded');"),
    );
    let args = ["migrate", "--source", &source, "--target", &target];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    my_sql("FERRY_TEST_MYSQL", &format!("USE {db}; INSERT INTO t VALUES (2, 'streamed');"));
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    let stopped = m.terminate();
    assert_eq!(stopped.code, 0, "{}", stopped.all());
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db}; INSERT INTO t VALUES (3, 'just before');
             UPDATE t SET v = 'changed just before' WHERE id = 1;
             ALTER TABLE t ADD COLUMN extra int;
             INSERT INTO t VALUES (4, 'after', 1);"
        ),
    );
    let run = Migrator::spawn(&args).wait();
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("schema changed: ALTER TABLE t ADD COLUMN extra"),
        "{}",
        run.all()
    );
    assert_eq!(
        pg_rows(&target, "t").await,
        ["(1,\"changed just before\")", "(2,streamed)", "(3,\"just before\")"],
        "everything before the ALTER is applied, nothing after"
    );
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// Invisible columns (MariaDB 10.3+, MySQL 8.0.23+): `SELECT *` leaves them out, yet they are
/// real columns: information_schema lists them (EXTRA `INVISIBLE`), row events carry them. The
/// plan has them, the full load and verification name every column, so the column arrives with
/// its values through the load and the stream, and verification compares it.
#[tokio::test]
async fn mysql_cdc_carries_invisible_columns_through_load_stream_and_verify() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myinvisible").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db}; CREATE TABLE t (id int PRIMARY KEY, a int, b varchar(20) INVISIBLE);
             INSERT INTO t (id, a, b) VALUES (1, 10, 'hidden one'), (2, 20, NULL);"
        ),
    );
    // What `SELECT *` would have copied: not the invisible column.
    assert_eq!(
        my_query("FERRY_TEST_MYSQL", &format!("SELECT * FROM {db}.t WHERE id = 1")).trim(),
        "1\t10"
    );
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    wait_streaming(&target).await;
    // The full load copied the invisible column.
    wait_for("the full load of t", Duration::from_secs(60), || {
        let target = target.clone();
        async move { pg_rows(&target, "t").await == ["(1,10,\"hidden one\")", "(2,20,)"] }
    })
    .await;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db}; INSERT INTO t (id, a, b) VALUES (3, 30, 'streamed');
             UPDATE t SET b = 'changed' WHERE id = 1;
             UPDATE t SET a = 21 WHERE id = 2;"
        ),
    );
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    assert_eq!(
        pg_rows(&target, "t").await,
        ["(1,10,changed)", "(2,21,)", "(3,30,streamed)"],
        "the stream carries the invisible column"
    );
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    // Verification reads the invisible column too: a difference only there is found.
    let t = connect(&target).await;
    t.execute("UPDATE public.t SET b = 'other' WHERE id = 3", &[]).await.unwrap();
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify.stdout.contains("b: source \"streamed\" | target \"other\""),
        "{}",
        verify.stdout
    );
    let stopped = m.terminate();
    assert_eq!(stopped.code, 0, "{}", stopped.all());
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// Prepared XA transactions (`docs/mysql-cdc.md`, "XA transactions"): the binlog has their rows
/// at XA PREPARE, yet the source decides later. Their rows reach the target with their
/// XA COMMIT, never after XA ROLLBACK, also when the stream is killed while both are prepared
/// and its applied position is past both (the prepared ones are recorded in the state); and
/// XA COMMIT ... ONE PHASE is an ordinary transaction.
#[tokio::test]
async fn mysql_xa_rows_arrive_with_xa_commit_and_never_after_xa_rollback() {
    const VAR: &str = "FERRY_TEST_MYSQL";
    let (source, target, dbs) = fresh(VAR, "myxa").await;
    let db = dbs.name.clone();
    // XA transactions are the server's, not a database's: names of this test's own.
    let (gone, kept, one, late) = (
        format!("{db}_gone"),
        format!("{db}_kept"),
        format!("{db}_one"),
        format!("{db}_late"),
    );
    let side = format!("{db}_side");
    // A failing test must not leave a prepared transaction holding its locks.
    struct Unprepare(Vec<String>);
    impl Drop for Unprepare {
        fn drop(&mut self) {
            for xid in &self.0 {
                let _ = mariadb(VAR).args(["-e", &format!("XA ROLLBACK {xid}")]).output();
            }
        }
    }
    let _unprepare = Unprepare(vec![
        format!("'{gone}'"),
        format!("'{kept}','branch',7"),
        format!("'{late}'"),
        format!("'{side}'"),
    ]);
    my_sql(
        VAR,
        &format!(
            "USE {db}; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'loaded'), (2, 'loaded');
             CREATE TABLE side (id int PRIMARY KEY); CREATE TABLE big (id int PRIMARY KEY);"
        ),
    );
    // `side` is not migrated: an XA transaction on it alone has nothing to apply.
    let args = ["migrate", "--source", &source, "--target", &target, "--exclude", "side"];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    // Each client run is a session of its own: the prepared transactions outlive it.
    my_sql(
        VAR,
        &format!(
            "USE {db}; XA START '{gone}'; INSERT INTO t VALUES (10, 'rolled back'); UPDATE t SET v = 'rolled back' WHERE id = 1;
             XA END '{gone}'; XA PREPARE '{gone}';"
        ),
    );
    my_sql(
        VAR,
        &format!(
            "USE {db}; XA START '{kept}','branch',7; INSERT INTO t VALUES (20, 'xa committed'); DELETE FROM t WHERE id = 2;
             INSERT INTO big SELECT seq FROM seq_1_to_30000;
             XA END '{kept}','branch',7; XA PREPARE '{kept}','branch',7;"
        ),
    );
    my_sql(
        VAR,
        &format!("XA START '{side}'; INSERT INTO {db}.side VALUES (1); XA END '{side}'; XA PREPARE '{side}';"),
    );
    my_sql(VAR, &format!("INSERT INTO {db}.t VALUES (30, 'ordinary')"));
    wait_caught_up(VAR, &target, Duration::from_secs(60)).await;
    assert_eq!(
        pg_rows(&target, "t").await,
        ["(1,loaded)", "(2,loaded)", "(30,ordinary)"],
        "nothing of a prepared transaction is applied"
    );
    let t = connect(&target).await;
    let big = || async { t.query_one("SELECT count(*) FROM public.big", &[]).await.unwrap().get::<_, i64>(0) };
    assert_eq!(big().await, 0);
    let recorded = || async {
        t.query_one("SELECT count(*) FROM ferry.mysql_xa_prepared", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(recorded().await, 3, "the prepared transactions are recorded");
    // A crash with the applied position past both prepares: the restarted stream finds their
    // rows from the state. Then one prepared and committed while it runs, and one in one phase.
    m.kill9();
    let m = Migrator::spawn(&args);
    my_sql(
        VAR,
        &format!(
            "XA ROLLBACK '{gone}'; XA COMMIT '{side}'; XA COMMIT '{kept}','branch',7; INSERT INTO {db}.t VALUES (31, 'after');
             XA START '{one}'; INSERT INTO {db}.t VALUES (40, 'one phase'); XA END '{one}'; XA COMMIT '{one}' ONE PHASE;
             XA START '{late}'; INSERT INTO {db}.t VALUES (50, 'late'); UPDATE {db}.t SET v = 'late' WHERE id = 30;
             XA END '{late}'; XA PREPARE '{late}';"
        ),
    );
    wait_caught_up(VAR, &target, Duration::from_secs(60)).await;
    let expected = [
        "(1,loaded)",
        "(20,\"xa committed\")",
        "(30,ordinary)",
        "(31,after)",
        "(40,\"one phase\")",
    ];
    assert_eq!(pg_rows(&target, "t").await, expected, "exactly the committed rows");
    // Read again from the binlog as it streams: more rows than the sink holds at once.
    assert_eq!(big().await, 30_000);
    // No cutover while a prepared transaction that changes migrated tables is undecided: its
    // rows would come after the switch. (The guard in case it went ahead.)
    let _writable = Writable(VAR);
    let cut = ferry(&[
        "cutover",
        "--source",
        &source,
        "--target",
        &target,
        "--grace",
        "1s",
        "--skip-verify-check",
    ]);
    assert_ne!(cut.code, 0, "{}", cut.all());
    assert!(
        cut.stderr.contains("1 prepared XA transaction(s) that change migrated tables") && cut.stderr.contains("XA RECOVER"),
        "{}",
        cut.all()
    );
    assert_eq!(my_query(VAR, "SELECT @@GLOBAL.read_only").trim(), "0");
    my_sql(VAR, &format!("XA COMMIT '{late}'; INSERT INTO {db}.t VALUES (60, 'last');"));
    wait_caught_up(VAR, &target, Duration::from_secs(60)).await;
    let expected = [
        "(1,loaded)",
        "(20,\"xa committed\")",
        "(30,late)",
        "(31,after)",
        "(40,\"one phase\")",
        "(50,late)",
        "(60,last)",
    ];
    assert_eq!(pg_rows(&target, "t").await, expected, "exactly the committed rows");
    let on_source = my_query(VAR, &format!("SELECT id, v FROM {db}.t ORDER BY id"));
    assert_eq!(
        on_source.lines().collect::<Vec<_>>(),
        [
            "1\tloaded",
            "20\txa committed",
            "30\tlate",
            "31\tafter",
            "40\tone phase",
            "50\tlate",
            "60\tlast"
        ]
    );
    wait_for("the resolved transactions to be forgotten", Duration::from_secs(30), || async {
        recorded().await == 0
    })
    .await;
    let stopped = m.terminate();
    assert_eq!(stopped.code, 0, "{}", stopped.all());
    dispose(VAR, dbs).await;
}

/// XA transactions prepared before the stream's start (during the full load): their rows are in
/// no snapshot, and the stream never passed their XA PREPARE. At XA COMMIT the stream finds it in
/// the binlog before its start and applies its rows; XA ROLLBACK leaves nothing.
#[tokio::test]
async fn mysql_xa_prepared_before_the_stream_started_is_found_at_its_commit() {
    const VAR: &str = "FERRY_TEST_MYSQL";
    let (source, target, dbs) = fresh(VAR, "myxaearly").await;
    let db = dbs.name.clone();
    let (early, undone) = (format!("{db}_early"), format!("{db}_undone"));
    struct Unprepare(Vec<String>);
    impl Drop for Unprepare {
        fn drop(&mut self) {
            for xid in &self.0 {
                let _ = mariadb(VAR).args(["-e", &format!("XA ROLLBACK '{xid}'")]).output();
            }
        }
    }
    let _unprepare = Unprepare(vec![early.clone(), undone.clone()]);
    my_sql(
        VAR,
        &format!(
            "USE {db}; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'loaded');
             XA START '{early}'; INSERT INTO t VALUES (2, 'prepared before'); UPDATE t SET v = 'updated before' WHERE id = 1;
             XA END '{early}'; XA PREPARE '{early}';"
        ),
    );
    // (One prepared transaction per session.)
    my_sql(
        VAR,
        &format!("USE {db}; XA START '{undone}'; INSERT INTO t VALUES (3, 'undone'); XA END '{undone}'; XA PREPARE '{undone}';"),
    );
    let args = ["migrate", "--source", &source, "--target", &target];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    my_sql(VAR, &format!("INSERT INTO {db}.t VALUES (4, 'streamed')"));
    wait_caught_up(VAR, &target, Duration::from_secs(60)).await;
    assert_eq!(pg_rows(&target, "t").await, ["(1,loaded)", "(4,streamed)"]);
    my_sql(
        VAR,
        &format!("XA ROLLBACK '{undone}'; XA COMMIT '{early}'; INSERT INTO {db}.t VALUES (5, 'after');"),
    );
    wait_caught_up(VAR, &target, Duration::from_secs(60)).await;
    assert_eq!(
        pg_rows(&target, "t").await,
        ["(1,\"updated before\")", "(2,\"prepared before\")", "(4,streamed)", "(5,after)"]
    );
    // Its own binlog connection sat unread during the search: opened again after it, and the
    // insert after the XA COMMIT came through it.
    assert!(m.log().contains("opening the binlog connection again"), "{}", m.log());
    let stopped = m.terminate();
    assert_eq!(stopped.code, 0, "{}", stopped.all());
    dispose(VAR, dbs).await;
}
