//! MySQL/MariaDB sources: `ferry check` against real MariaDB servers started by
//! scripts/test.sh (binlog ROW, binlog off, binlog STATEMENT), and the type map it reports.

use crate::harness::*;

/// (host, port, password) of a MariaDB server from its `mysql://root:pw@host:port/db` URL.
pub fn server(var: &str) -> (String, String, String) {
    let url = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests through scripts/test.sh"));
    let rest = url.strip_prefix("mysql://").unwrap();
    let (auth, hostpath) = rest.rsplit_once('@').unwrap();
    let password = auth.split_once(':').unwrap().1.to_string();
    let hostport = hostpath.split('/').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    (host.to_string(), port.to_string(), password)
}

/// The mariadb client as root on a test server, with the password in the environment.
pub fn mariadb(var: &str) -> std::process::Command {
    let (host, port, password) = server(var);
    let mut c = std::process::Command::new("mariadb");
    c.args([
        "--no-defaults",
        "--default-character-set=utf8mb4",
        "-h",
        &host,
        "-P",
        &port,
        "-uroot",
    ])
    .env("MYSQL_PWD", &password);
    c
}

/// Runs SQL on a MariaDB server as root with the mariadb client.
pub fn my_sql(var: &str, sql: &str) {
    let out = mariadb(var)
        .args(["-e", sql])
        .output()
        .expect("the mariadb client is installed by scripts/test.sh");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sets the server of `var` (`FERRY_TEST_MYSQL`...) writable again when dropped: a test that
/// makes it read-only (a cutover, a switch) must not leave it so for the tests after it, even
/// when it fails.
pub struct Writable(pub &'static str);

impl Drop for Writable {
    fn drop(&mut self) {
        my_sql(self.0, "SET GLOBAL read_only = OFF");
    }
}

/// A fresh database on a MariaDB server and a fresh target database; returns (source URL as
/// root, target URL).
pub async fn fresh(var: &str, prefix: &str) -> (String, String, Dbs) {
    let dbs = Dbs::create(prefix).await;
    let (host, port, password) = server(var);
    my_sql(var, &format!("DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}", dbs.name));
    (
        format!("mysql://root:{password}@{host}:{port}/{}", dbs.name),
        dbs.target.clone(),
        dbs,
    )
}

/// Drops the MariaDB database and both PostgreSQL databases of a test.
pub async fn dispose(var: &str, dbs: Dbs) {
    my_sql(var, &format!("DROP DATABASE {}", dbs.name));
    dbs.drop().await;
}

fn finding<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

#[tokio::test]
async fn mysql_check_reports_every_type_and_the_prerequisites() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mycheck").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "CREATE TABLE {db}.every_type (
               id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
               flag tinyint(1), tu tinyint unsigned, su smallint unsigned, mi mediumint, iu int unsigned, big bigint unsigned,
               d decimal(65,30), f float, dbl double, b bit(64), y year,
               dt date NOT NULL DEFAULT '2000-01-01', dtm datetime(6), ts timestamp(6) NULL, tm time(3),
               c char(3), vc varchar(191) CHARACTER SET utf8mb4, v3 varchar(20) CHARACTER SET utf8mb3, lt longtext,
               l1 varchar(10) CHARACTER SET latin1, vb varbinary(16), bl blob,
               e enum('new','paid','it''s'), s set('r','w','x'), j json,
               g int GENERATED ALWAYS AS (mi + 1) STORED,
               email varchar(100), UNIQUE KEY uq_email (email)
             ) ENGINE=InnoDB AUTO_INCREMENT=1000;
             CREATE TABLE {db}.nopk (a int, b text) ENGINE=MyISAM;"
        ),
    );
    let run = ferry(&["check", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(run.code, 0, "only warnings expected: {}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["source"]["flavor"], "MariaDB");
    for check in [
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "binlog_row_metadata",
        "server_id",
        "privileges",
        "version",
    ] {
        let f: Vec<_> = finding(&report, check).into_iter().filter(|f| f["side"] == "source").collect();
        assert_eq!(f.len(), 1, "{check}: {report}");
        assert_eq!(f[0]["severity"], "ok", "{check}: {report}");
    }
    let tables = report["plan"]["tables"].as_array().unwrap();
    let every = tables.iter().find(|t| t["name"] == "every_type").unwrap();
    assert_eq!(every["primary_key"], serde_json::json!(["id"]));
    assert_eq!(every["auto_increment"], 1000);
    let col = |name: &str| {
        every["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[0] == name)
            .unwrap_or_else(|| panic!("no column {name}"))[1]
            .clone()
    };
    for (name, pg) in [
        ("id", "bigint"),
        ("flag", "smallint"),
        ("tu", "smallint"),
        ("su", "integer"),
        ("mi", "integer"),
        ("iu", "bigint"),
        ("big", "numeric(20,0)"),
        ("d", "numeric(65,30)"),
        ("f", "real"),
        ("dbl", "double precision"),
        ("b", "bit(64)"),
        ("y", "smallint"),
        ("dt", "date"),
        ("dtm", "timestamp(6) without time zone"),
        ("ts", "timestamp(6) with time zone"),
        ("tm", "interval second(3)"),
        ("c", "char(3)"),
        ("vc", "varchar(191)"),
        ("v3", "varchar(20)"),
        ("lt", "text"),
        ("l1", "varchar(10)"),
        ("vb", "bytea"),
        ("bl", "bytea"),
        ("e", "every_type_e_enum"),
        ("s", "text[]"),
        ("j", "jsonb"),
        ("g", "integer"),
        ("email", "varchar(100)"),
    ] {
        assert_eq!(col(name)["target"], pg, "{name}: {}", col(name));
    }
    assert_eq!(col("id")["identity"], true);
    assert_eq!(col("dt")["not_null"], true);
    assert_eq!(col("e")["labels"], serde_json::json!(["new", "paid", "it's"]));
    assert_eq!(col("s")["labels"], serde_json::json!(["r", "w", "x"]));
    assert!(col("l1")["note"].as_str().unwrap().contains("latin1"));
    // Decisions and risks are warnings, each with its subject named.
    let warned = |check: &str, needle: &str| {
        assert!(
            finding(&report, check)
                .iter()
                .any(|f| f["severity"] == "warning" && f["message"].as_str().unwrap().contains(needle)),
            "no {check} warning about {needle}: {report}"
        )
    };
    warned("types", "every_type.g");
    warned("case_insensitive_key", "uq_email");
    warned("engine", "nopk uses MyISAM");
    warned("primary_key", "nopk has no primary key");
    // The text form shows the map too.
    let text = ferry(&["check", "--source", &source, "--target", &target]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("big ") && l.ends_with("-> numeric(20,0)")),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("Result: ready"), "{}", text.stdout);

    // --zero-dates null makes date columns nullable, a decision reported as a warning.
    let run = ferry(&["check", "--source", &source, "--target", &target, "--json", "--zero-dates", "null"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["plan"]["zero_dates"], "null");
    assert!(
        finding(&report, "types")
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("every_type.dt")),
        "{report}"
    );
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

#[tokio::test]
async fn mysql_check_names_the_fix_for_binlog_off_statement_format_and_missing_privileges() {
    let mut cases = Vec::new();
    for (var, check, needle, fix) in [
        ("FERRY_TEST_MYSQL_NOBIN", "log_bin", "log_bin is OFF", "log-bin=mysql-bin"),
        (
            "FERRY_TEST_MYSQL_STMT",
            "binlog_format",
            "binlog_format is STATEMENT",
            "SET GLOBAL binlog_format = 'ROW'",
        ),
        (
            "FERRY_TEST_MYSQL_STMT",
            "binlog_row_image",
            "binlog_row_image is MINIMAL",
            "binlog_row_image = 'FULL'",
        ),
    ] {
        let (source, target, dbs) = fresh(var, "mybad").await;
        my_sql(var, &format!("CREATE TABLE {}.t (id int PRIMARY KEY)", dbs.name));
        cases.push((var, source, target, dbs, check, needle, fix));
    }
    for (var, source, target, dbs, check, needle, fix) in cases {
        let run = ferry(&["check", "--source", &source, "--target", &target, "--json"]);
        assert_eq!(run.code, 1, "{}", run.all());
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let f = finding(&report, check);
        assert!(
            f.iter().any(|f| f["severity"] == "blocker"
                && f["message"].as_str().unwrap().contains(needle)
                && f["fix"].as_str().unwrap_or_default().contains(fix)),
            "{var}: expected a {check} blocker with the fix: {report}"
        );
        dispose(var, dbs).await;
    }

    // A user that may only read: the missing grants are named, with the statement to run.
    let (_, _, root_pw) = server("FERRY_TEST_MYSQL");
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mypriv").await;
    let db = &dbs.name;
    let user = format!("r{}", &db[db.len() - 6..]);
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "CREATE TABLE {db}.t (id int PRIMARY KEY);
             CREATE USER '{user}'@'%' IDENTIFIED BY 'Reader-Secret-1'; GRANT SELECT ON {db}.* TO '{user}'@'%';"
        ),
    );
    let reader = source.replace(&format!("root:{root_pw}@"), &format!("{user}:Reader-Secret-1@"));
    let run = ferry(&["check", "--source", &reader, "--target", &target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("lacks REPLICATION SLAVE, BINLOG MONITOR, RELOAD"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("GRANT REPLICATION SLAVE, BINLOG MONITOR, RELOAD ON *.* TO '{user}'@'%'")),
        "{}",
        run.stdout
    );
    assert!(!run.all().contains("Reader-Secret-1"), "the password leaked: {}", run.all());
    // A wrong password: the connection is refused with the fix, the password never printed.
    let wrong = source.replace(&format!("root:{root_pw}@"), "root:Wrong-Secret-2@");
    let run = ferry(&["check", "--source", &wrong, "--target", &target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("Access denied"), "{}", run.stdout);
    assert!(run.stdout.contains("check the user and password"), "{}", run.stdout);
    assert!(!run.all().contains("Wrong-Secret-2"), "the password leaked: {}", run.all());
    my_sql("FERRY_TEST_MYSQL", &format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
    dbs.drop().await;
}

/// The full load moves every type exactly (checked value by value on the target, independently
/// of Ferry), keys and identities follow, and a zero date stops the load naming the row unless
/// --zero-dates null.
#[tokio::test]
async fn mysql_full_load_moves_every_type_exactly() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myload").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            r#"CREATE TABLE {db}.parent (id int PRIMARY KEY, name varchar(20) NOT NULL, UNIQUE KEY uq_name (name));
            CREATE TABLE {db}.every_type (
               id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, parent int, flag tinyint(1), tu tinyint unsigned,
               su smallint unsigned, mi mediumint, iu int unsigned, big bigint unsigned, bi bigint,
               d decimal(65,30), f float, dbl double, b bit(64), y year, dt date, dtm datetime(6), ts timestamp(6) NULL,
               tm time(6), c char(3), vc varchar(191), v3 varchar(20) CHARACTER SET utf8mb3, lt longtext,
               l1 varchar(10) CHARACTER SET latin1, vb varbinary(16), bl longblob, e enum('new','paid','it''s'),
               s set('r','w','x'), j json, g int GENERATED ALWAYS AS (mi + 1) STORED,
               KEY k_dt (dt), CONSTRAINT fk_parent FOREIGN KEY (parent) REFERENCES parent (id)
             ) ENGINE=InnoDB AUTO_INCREMENT=5000;
             INSERT INTO {db}.parent VALUES (1, 'one');
             INSERT INTO {db}.every_type (parent, flag, tu, su, mi, iu, big, bi, d, f, dbl, b, y, dt, dtm, ts, tm, c, vc, v3, lt, l1, vb, bl, e, s, j) VALUES
              (1, 1, 255, 65535, -8388608, 4294967295, 18446744073709551615, -9223372036854775808,
               '-12345678901234567890123456789012345.123456789012345678901234567890', 0.1, 1e-300,
               b'1000000000000000000000000000000000000000000000000000000000000001', 2155,
               '1000-01-01', '2024-02-29 23:59:58.123456', '2038-01-19 03:14:07.999999', '-838:59:59.000001', 'a',
               '😀 emoji ünïcode', 'utf8mb3 é', 'tab	here\\back\nnew line', 'latin1 é', x'00ff', REPEAT(x'ab', 100000),
               'it''s', 'r,x', '{{"b": 1, "a": [1, 2.5, null]}}'),
              (NULL, 0, 0, 0, 0, 0, 0, 0, '0.000000000000000000000000000001', -3.4e38, 2.2250738585072014e-308, b'0', 1901,
               '9999-12-31', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.000000', '838:59:59.999999', '', '', '', '',
               '', x'', x'', 'new', '', '[]'),
              (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#
        ),
    );
    let run = ferry(&["migrate", "--source", &source, "--target", &target, "--stop-after", "full-load"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("binlog position"), "{}", run.stdout);
    let t = connect(&target).await;
    // Every value, as PostgreSQL text, compared with what was inserted.
    let rows = t
        .query(
            "SELECT id::text, parent::text, flag::text, tu::text, su::text, mi::text, iu::text, big::text, bi::text, d::text,
                    f::text, dbl::text, b::text, y::text, dt::text, dtm::text, ts AT TIME ZONE 'UTC', tm::text, c, vc, v3, lt, l1,
                    encode(vb, 'hex'), length(bl)::text || ':' || md5(bl), e::text, s::text, j::text, g::text
             FROM public.every_type ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let get = |r: &tokio_postgres::Row, i: usize| -> Option<String> {
        if i == 16 {
            r.get::<_, Option<std::time::SystemTime>>(i).map(|_| "set".into())
        } else {
            r.get::<_, Option<String>>(i)
        }
    };
    assert_eq!(rows.len(), 3);
    let expect: [&[Option<&str>]; 3] = [
        &[
            Some("5000"),
            Some("1"),
            Some("1"),
            Some("255"),
            Some("65535"),
            Some("-8388608"),
            Some("4294967295"),
            Some("18446744073709551615"),
            Some("-9223372036854775808"),
            Some("-12345678901234567890123456789012345.123456789012345678901234567890"),
            Some("0.1"),
            Some("1e-300"),
            Some("1000000000000000000000000000000000000000000000000000000000000001"),
            Some("2155"),
            Some("1000-01-01"),
            Some("2024-02-29 23:59:58.123456"),
            Some("set"),
            Some("-838:59:59.000001"),
            Some("a  "),
            Some("😀 emoji ünïcode"),
            Some("utf8mb3 é"),
            Some("tab\there\\back\nnew line"),
            Some("latin1 é"),
            Some("00ff"),
            None,
            Some("it's"),
            Some("{r,x}"),
            Some(r#"{"a": [1, 2.5, null], "b": 1}"#),
            Some("-8388607"),
        ],
        &[
            Some("5001"),
            None,
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0.000000000000000000000000000001"),
            Some("-3.4e+38"),
            Some("2.2250738585072014e-308"),
            Some("0000000000000000000000000000000000000000000000000000000000000000"),
            Some("1901"),
            Some("9999-12-31"),
            Some("9999-12-31 23:59:59.999999"),
            Some("set"),
            Some("838:59:59.999999"),
            Some("   "),
            Some(""),
            Some(""),
            Some(""),
            Some(""),
            Some(""),
            Some("0:d41d8cd98f00b204e9800998ecf8427e"),
            Some("new"),
            Some("{}"),
            Some("[]"),
            Some("1"),
        ],
        &[
            Some("5002"),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ],
    ];
    for (r, want) in rows.iter().zip(expect.iter()) {
        for (i, w) in want.iter().enumerate() {
            if i == 24 && w.is_none() && r.get::<_, Option<String>>(0).as_deref() == Some("5000") {
                // 100,000 bytes of 0xab: length and digest.
                let got = get(r, i).unwrap();
                assert!(got.starts_with("100000:"), "bl: {got}");
                continue;
            }
            assert_eq!(get(r, i).as_deref(), *w, "row {:?}, column {i}", get(r, 0));
        }
    }
    // TIMESTAMP is an instant: the same one.
    let ts: String = t
        .query_one("SELECT (ts AT TIME ZONE 'UTC')::text FROM public.every_type WHERE id = 5000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ts, "2038-01-19 03:14:07.999999");
    // Keys, the foreign key and the identity came along: the next id continues after 5000+.
    let pk: i64 = t
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.every_type'::regclass AND contype IN ('p', 'f') AND convalidated",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, 2);
    let next: i64 = t
        .query_one("INSERT INTO public.every_type (mi) VALUES (1) RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next >= 5003, "identity restarted at {next}");
    assert!(
        t.execute("INSERT INTO public.parent VALUES (2, 'one')", &[]).await.is_err(),
        "unique key missing"
    );

    // A zero date (written outside strict mode) stops the load and names the row; --zero-dates
    // null writes NULL.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("SET SESSION sql_mode = ''; INSERT INTO {db}.every_type (dt) VALUES ('0000-00-00');"),
    );
    let again = ferry(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--stop-after",
        "full-load",
        "--overwrite",
    ]);
    assert_eq!(again.code, 3, "{}", again.all());
    assert!(again.all().contains("zero date 0000-00-00"), "{}", again.all());
    assert!(
        again.all().contains("id=5003") || again.all().contains("id=500"),
        "the row is named: {}",
        again.all()
    );
    assert!(again.all().contains("--zero-dates null"), "{}", again.all());
    let null = ferry(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--stop-after",
        "full-load",
        "--overwrite",
        "--zero-dates",
        "null",
    ]);
    assert_eq!(null.code, 0, "{}", null.all());
    let zero: i64 = connect(&target)
        .await
        .query_one(
            "SELECT count(*) FROM public.every_type WHERE dt IS NULL AND mi IS NULL AND e IS NULL AND id > 5002",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(zero, 1);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// The parallel copy reads one consistent snapshot: while a writer moves amounts between two
/// tables in transactions (their sum is constant), the tables, split into key ranges, are copied
/// on two connections, and the sum on the target is still exactly the constant.
#[tokio::test]
async fn heavy_mysql_full_load_is_one_consistent_snapshot_under_writes() {
    let (host, port, root_pw) = server("FERRY_TEST_MYSQL");
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mysnap").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             CREATE TABLE {db}.a (id int PRIMARY KEY, v bigint NOT NULL, pad varchar(200) NOT NULL);
             CREATE TABLE {db}.b (id int PRIMARY KEY, v bigint NOT NULL, pad varchar(200) NOT NULL);
             INSERT INTO {db}.a SELECT seq, 1000, REPEAT('x', 200) FROM seq_1_to_200000;
             INSERT INTO {db}.b SELECT seq, 1000, REPEAT('y', 200) FROM seq_1_to_200000;
             ANALYZE TABLE {db}.a, {db}.b;"
        ),
    );
    // Transfers from a to b, each in its own transaction, as fast as one client goes; more than
    // the load can outlast, so the writer is stopped once the load is done (a transfer cut off
    // mid-transaction is rolled back by the server).
    let mut sql = String::new();
    for i in 0..300_000u32 {
        let k = 1 + (i * 7919) % 200_000;
        sql.push_str(&format!(
            "START TRANSACTION; UPDATE {db}.a SET v = v - 7 WHERE id = {k}; UPDATE {db}.b SET v = v + 7 WHERE id = {k}; COMMIT;\n"
        ));
    }
    let mut writer = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-h", &host, "-P", &port, "-uroot"])
        .env("MYSQL_PWD", &root_pw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, sql.as_bytes()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = ferry(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--stop-after",
        "full-load",
        "-j",
        "2",
        // Small pieces: both tables are also split into key ranges, read by both connections.
        "--split-size",
        "8MB",
    ]);
    let still_writing = writer.try_wait().unwrap().is_none();
    let _ = writer.kill();
    let _ = writer.wait();
    let _ = feeder.join();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(still_writing, "the writer finished before the load did: the test proves nothing");
    let pieces: usize = run
        .stdout
        .lines()
        .find_map(|l| l.split("copied in ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no piece count: {}", run.stdout));
    assert!(pieces > 2, "the tables were not split into key ranges: {}", run.stdout);
    let t = connect(&target).await;
    let (rows, sum): (i64, String) = {
        let r = t
            .query_one(
                "SELECT (SELECT count(*) FROM public.a) + (SELECT count(*) FROM public.b),
                        ((SELECT sum(v) FROM public.a) + (SELECT sum(v) FROM public.b))::text",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(rows, 400_000);
    assert_eq!(sum, "400000000", "the two tables were not read at one point");
    // And some transfers did land before the snapshot or after it, not half of one.
    let moved: String = t
        .query_one("SELECT (400000 * 1000 / 2 - sum(v))::text FROM public.a", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("snapshot taken after {} transfers", moved.parse::<i64>().unwrap() / 7);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// kill -9 in the middle of the copy, then the same command again: the interrupted load's
/// tables are copied again from a new snapshot, nothing lost and nothing twice; a third run is
/// refused (the load finished) unless --overwrite.
#[tokio::test]
async fn heavy_mysql_kill_9_during_the_full_load_then_rerun() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mykill").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             CREATE TABLE a (id int PRIMARY KEY, v bigint NOT NULL, pad varchar(200) NOT NULL);
             CREATE TABLE b (id int PRIMARY KEY, v bigint NOT NULL, pad varchar(200) NOT NULL);
             INSERT INTO a SELECT seq, seq, REPEAT('x', 200) FROM seq_1_to_300000;
             INSERT INTO b SELECT seq, 2 * seq, REPEAT('y', 200) FROM seq_1_to_300000;
             ANALYZE TABLE a, b;"
        ),
    );
    let args = [
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--stop-after",
        "full-load",
        "-j",
        "2",
    ];
    let m = Migrator::spawn(&args);
    let t = connect(&target).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let copied: i64 = t
            .query_one(
                "SELECT COALESCE(sum(tuples_processed), 0)::int8 FROM pg_stat_progress_copy WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if copied > 20_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the copy never got going");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    m.kill9();
    let again = ferry(&args);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stderr.contains("did not finish"), "{}", again.all());
    let (n, sum): (i64, String) = {
        let r = t
            .query_one(
                "SELECT (SELECT count(*) FROM public.a) + (SELECT count(*) FROM public.b),
                        ((SELECT sum(v) FROM public.a) + (SELECT sum(v) FROM public.b))::text",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(n, 600_000);
    // 3 * (1 + ... + 300000)
    assert_eq!(sum, (3u64 * 300_000 * 300_001 / 2).to_string());
    let third = ferry(&args);
    assert_eq!(third.code, 2, "{}", third.all());
    assert!(third.all().contains("already finished; pass --overwrite"), "{}", third.all());
    dispose("FERRY_TEST_MYSQL", dbs).await;
}
