//! Rollback to MySQL/MariaDB: after a cutover the target's writes stream back to the source
//! (the reverse stream: the PostgreSQL change stream's driver feeding the MySQL sink), and
//! `ferry rollback --source mysql://...` switches the application back without losing a write.
//! Real MariaDB and PostgreSQL servers from scripts/test.sh, real sysbench, our own writers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql, server, Writable};
use crate::mysql_cdc::{my_query, wait_caught_up, wait_streaming, COLS, EDGE_ROW, OTHER_ROW};

/// sysbench as the application's user (no SUPER: read-only stops it), on two small tables.
fn app_sysbench(db: &str, user: &str, extra: &[&str]) -> std::process::Command {
    let (host, port, _) = server("FERRY_TEST_MYSQL");
    let mut c = std::process::Command::new("sysbench");
    c.args([
        "oltp_read_write",
        "--db-driver=mysql",
        &format!("--mysql-host={host}"),
        &format!("--mysql-port={port}"),
        &format!("--mysql-user={user}"),
        "--mysql-password=app-pw",
        &format!("--mysql-db={db}"),
        "--tables=2",
        "--table-size=5000",
        "--mysql-ignore-errors=1213,1205",
    ]);
    c.args(extra);
    c
}

/// Runs sysbench to its end and returns its transaction count.
fn run_sysbench(mut c: std::process::Command) -> u64 {
    let out = c.output().expect("sysbench is installed by scripts/test.sh");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// count(*) and sum(k) of a sysbench table on each side.
async fn sums(db: &str, t: &tokio_postgres::Client, table: &str) -> (String, String) {
    let mine = my_query("FERRY_TEST_MYSQL", &format!("SELECT COUNT(*), SUM(k) FROM {db}.{table}"));
    let theirs = lines(t, &format!("SELECT count(*) || E'\\t' || sum(k) FROM public.{table}")).await;
    (mine.trim().to_string(), theirs.join(""))
}

#[tokio::test]
async fn mysql_rollback_sysbench_through_cutover_writes_on_postgres_and_back() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myrb").await;
    let db = dbs.name.clone();
    // read_only is server-wide: whatever happens here, the server is writable afterwards.
    let _writable = Writable("FERRY_TEST_MYSQL");
    my_sql("FERRY_TEST_MYSQL", "SET GLOBAL read_only = OFF");
    let app = format!("rbapp_{}", std::process::id());
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            r#"USE {db};
            CREATE TABLE every_type (
               id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, parent int, flag tinyint(1), tu tinyint unsigned,
               su smallint unsigned, mi mediumint, iu int unsigned, big bigint unsigned, bi bigint,
               d decimal(65,30), f float, dbl double, b bit(64), y year, dt date, dtm datetime(6), ts timestamp(6) NULL,
               tm time(6), c char(3), vc varchar(191), v3 varchar(20) CHARACTER SET utf8mb3, lt longtext,
               l1 varchar(10) CHARACTER SET latin1, vb varbinary(16), bl longblob, e enum('new','paid','it''s'),
               s set('r','w','x'), j json
            ) ENGINE=InnoDB;
            CREATE TABLE nokey (a int, b varchar(10));
            INSERT INTO every_type ({COLS}) VALUES {EDGE_ROW}, {OTHER_ROW};
            INSERT INTO nokey VALUES (1, 'same'), (1, 'same'), (2, NULL);
            DROP USER IF EXISTS '{app}'@'%'; CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw';
            GRANT SELECT, INSERT, UPDATE, DELETE ON {db}.* TO '{app}'@'%';"#
        ),
    );
    let (host, port, password) = server("FERRY_TEST_MYSQL");
    let prepared = std::process::Command::new("sysbench")
        .args([
            "oltp_read_write",
            "--db-driver=mysql",
            &format!("--mysql-host={host}"),
            &format!("--mysql-port={port}"),
            "--mysql-user=root",
            &format!("--mysql-password={password}"),
            &format!("--mysql-db={db}"),
            "--tables=2",
            "--table-size=5000",
            "prepare",
        ])
        .output()
        .expect("sysbench is installed by scripts/test.sh");
    assert!(prepared.status.success(), "{}", String::from_utf8_lossy(&prepared.stderr));
    let args = ["migrate", "--source", &source, "--target", &target];
    let mut m = Migrator::spawn(&args);
    wait_streaming(&target).await;

    // 1. sysbench on MariaDB while the binlog stream runs; verified online.
    let before = tokio::task::spawn_blocking({
        let (db, app) = (db.clone(), app.clone());
        move || run_sysbench(app_sysbench(&db, &app, &["--threads=2", "--time=8", "run"]))
    })
    .await
    .unwrap();
    assert!(before > 100, "sysbench did too little: {before} transactions");
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(120)).await;
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());

    // 2. Cutover while the application inserts until the source refuses.
    let writer = {
        let (db, app, host, port) = (db.clone(), app.clone(), host.clone(), port.clone());
        std::thread::spawn(move || {
            let mut ok = 0u64;
            loop {
                let out = std::process::Command::new("mariadb")
                    .args(["--no-defaults", "-h", &host, "-P", &port, "-u", &app, "-e"])
                    .arg(format!("INSERT INTO {db}.sbtest1 (k, c, pad) VALUES (7, 'app', 'app')"))
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut = tokio::task::spawn_blocking({
        let (s, t) = (source.clone(), target.clone());
        move || ferry(&["cutover", "--source", &s, "--target", &t, "--grace", "1s"])
    })
    .await
    .unwrap();
    assert_eq!(cut.code, 0, "{}", cut.all());
    let (inserted, why) = writer.join().unwrap();
    assert!(why.contains("read-only") || why.contains("read_only"), "{why}");
    assert!(inserted > 2, "the application wrote only {inserted} rows before the cutover");
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "1");
    assert!(!m.has_exited(), "ferry migrate stopped after the cutover instead of streaming back");

    // 3. The application writes on PostgreSQL for 20 s (every type included), and ferry
    //    migrate is killed -9 and restarted while the reverse stream applies them.
    let t = connect(&target).await;
    t.batch_execute(
        "INSERT INTO public.every_type (parent, flag, tu, su, mi, iu, big, bi, d, f, dbl, b, y, dt, dtm, ts, tm, c, vc, v3, lt, l1, vb, bl, e, s, j)
           SELECT parent, flag, tu, su, mi, iu, big, bi, d, f, dbl, b, y, dt, dtm, ts, tm, c, vc, v3, lt, l1, vb, bl, e, s, j
           FROM public.every_type ORDER BY id;
         UPDATE public.every_type SET vc = 'written on PostgreSQL ✓', tm = interval '-1 hour 2 minutes', d = -0.5,
                dtm = '2001-02-03 04:05:06.000007', ts = '2001-02-03 04:05:06.000007+02', vb = '\\x00ff00'::bytea,
                s = '{w,x}', e = 'it''s', j = '{\"k\": [1, \"é\"]}'
           WHERE id = 1;
         DELETE FROM public.nokey WHERE ctid = (SELECT min(ctid) FROM public.nokey WHERE a = 1);
         UPDATE public.nokey SET b = 'pg' WHERE a = 2;",
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (target, stop, done) = (target.clone(), stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut c = connect(&target).await;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 2;
                let tx = c.transaction().await.unwrap();
                tx.execute("UPDATE public.sbtest1 SET k = k + 1 WHERE id = $1", &[&((i % 5000 + 1) as i32)])
                    .await
                    .unwrap();
                tx.execute(
                    "INSERT INTO public.sbtest2 (k, c, pad) VALUES ($1, 'on postgres', 'pad')",
                    &[&(i as i32)],
                )
                .await
                .unwrap();
                tx.execute(
                    "DELETE FROM public.sbtest2 WHERE id = (SELECT min(id) FROM public.sbtest2 WHERE k < 100 AND c <> 'on postgres')",
                    &[],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    m.kill9();
    m = Migrator::spawn(&args);
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let on_pg = done.load(Ordering::Relaxed);
    assert!(on_pg > 200, "the writers on PostgreSQL did too little: {on_pg} transactions");

    // 4. Rollback: the source takes writes again, with nothing lost.
    let back = tokio::task::spawn_blocking({
        let (s, t) = (source.clone(), target.clone());
        move || ferry(&["rollback", "--source", &s, "--target", &t, "--grace", "1s"])
    })
    .await
    .unwrap();
    assert_eq!(back.code, 0, "{}", back.all());
    assert!(back.stdout.contains("Rolled back from"), "{}", back.all());
    eprintln!("{}", back.stdout);
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "0");
    // Every value written on PostgreSQL is on MariaDB as MySQL stores it.
    assert_eq!(
        my_query(
            "FERRY_TEST_MYSQL",
            &format!("SET time_zone = '+00:00'; SELECT vc, tm, d, dtm, ts, HEX(vb), s, e, j FROM {db}.every_type WHERE id = 1")
        )
        .trim(),
        "written on PostgreSQL ✓\t-00:58:00.000000\t-0.500000000000000000000000000000\t2001-02-03 04:05:06.000007\t\
         2001-02-03 02:05:06.000007\t00FF00\tw,x\tit's\t{\"k\": [1, \"é\"]}"
    );
    assert_eq!(
        my_query(
            "FERRY_TEST_MYSQL",
            &format!("SELECT a, IFNULL(b, 'NULL') FROM {db}.nokey ORDER BY a")
        )
        .trim(),
        "1\tsame\n2\tpg"
    );

    // The rollback ended the target's sessions that could still write (this test's own, too).
    let t = connect(&target).await;
    // 5. sysbench goes on on MariaDB; the binlog stream carries it to the target again.
    let after = tokio::task::spawn_blocking({
        let (db, app) = (db.clone(), app.clone());
        move || run_sysbench(app_sysbench(&db, &app, &["--threads=2", "--time=5", "run"]))
    })
    .await
    .unwrap();
    assert!(after > 50, "sysbench after the rollback did too little: {after} transactions");
    // AUTO_INCREMENT hands out no id the target used.
    let max_id: u64 = my_query("FERRY_TEST_MYSQL", &format!("SELECT MAX(id) FROM {db}.sbtest2"))
        .trim()
        .parse()
        .unwrap();
    let pg_max: i64 = t.query_one("SELECT max(id)::bigint FROM public.sbtest2", &[]).await.unwrap().get(0);
    let fresh_id: u64 = my_query(
        "FERRY_TEST_MYSQL",
        &format!("INSERT INTO {db}.sbtest2 (k, c, pad) VALUES (1, 'after', 'after'); SELECT LAST_INSERT_ID()"),
    )
    .trim()
    .parse()
    .unwrap();
    assert!(
        fresh_id > max_id.max(pg_max as u64),
        "AUTO_INCREMENT handed out {fresh_id}, max id {max_id} / {pg_max}"
    );
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(120)).await;
    for table in ["sbtest1", "sbtest2"] {
        let (mine, theirs) = sums(&db, &t, table).await;
        assert_eq!(mine, theirs, "{table}: count and sum(k) differ between MariaDB and PostgreSQL");
    }
    // Row by row, every column, across engines.
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);

    // 6. A second cutover works as the first did.
    let again = ferry(&[
        "cutover",
        "--source",
        &source,
        "--target",
        &target,
        "--grace",
        "1s",
        "--skip-verify-check",
    ]);
    assert_eq!(again.code, 0, "{}", again.all());
    eprintln!(
        "sysbench {before} + {after} transactions on MariaDB, {on_pg} on PostgreSQL between cutover and rollback, one kill -9, no difference"
    );
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    my_sql("FERRY_TEST_MYSQL", &format!("DROP USER '{app}'@'%'"));
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// A source nobody writes to after the full load is caught up at the load's snapshot: the
/// cutover does not wait for a transaction that never comes, and the rollback of a target
/// nobody wrote to either has nothing to wait for.
#[tokio::test]
async fn mysql_rollback_an_idle_source_cuts_over_right_after_the_load_and_back() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myidle").await;
    let _writable = Writable("FERRY_TEST_MYSQL");
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {}; CREATE TABLE t (id int AUTO_INCREMENT PRIMARY KEY, v int); INSERT INTO t (v) VALUES (1), (2)",
            dbs.name
        ),
    );
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    wait_streaming(&target).await;
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
    assert_eq!(cut.code, 0, "{}", cut.all());
    let back = ferry(&["rollback", "--source", &source, "--target", &target, "--grace", "1s"]);
    assert_eq!(back.code, 0, "{}", back.all());
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "0");
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    dispose("FERRY_TEST_MYSQL", dbs).await;
}
