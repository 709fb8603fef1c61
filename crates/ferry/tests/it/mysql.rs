//! MySQL/MariaDB sources: `ferry check` against real MariaDB servers started by
//! scripts/test.sh (binlog ROW, binlog off, binlog STATEMENT), and the type map it reports.

use crate::harness::*;

/// (host, port, password) of a MariaDB server from its `mysql://root:pw@host:port/db` URL.
fn server(var: &str) -> (String, String, String) {
    let url = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests through scripts/test.sh"));
    let rest = url.strip_prefix("mysql://").unwrap();
    let (auth, hostpath) = rest.rsplit_once('@').unwrap();
    let password = auth.split_once(':').unwrap().1.to_string();
    let hostport = hostpath.split('/').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    (host.to_string(), port.to_string(), password)
}

/// Runs SQL on a MariaDB server as root with the mariadb client.
fn my_sql(var: &str, sql: &str) {
    let (host, port, password) = server(var);
    let out = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-h", &host, "-P", &port, "-uroot", "-e", sql])
        .env("MYSQL_PWD", &password)
        .output()
        .expect("the mariadb client is installed by scripts/test.sh");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh database on a MariaDB server and a fresh target database; returns (source URL with
/// the given user and password, target URL).
async fn fresh(var: &str, prefix: &str, user: &str, password: &str) -> (String, String, Dbs) {
    let dbs = Dbs::create(prefix).await;
    let (host, port, _) = server(var);
    my_sql(var, &format!("DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}", dbs.name));
    (
        format!("mysql://{user}:{password}@{host}:{port}/{}", dbs.name),
        dbs.target.clone(),
        dbs,
    )
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
    let root_pw = server("FERRY_TEST_MYSQL").2;
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mycheck", "root", &root_pw).await;
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
    my_sql("FERRY_TEST_MYSQL", &format!("DROP DATABASE {db}"));
    dbs.drop().await;
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
        let pw = server(var).2;
        let (source, target, dbs) = fresh(var, "mybad", "root", &pw).await;
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
        my_sql(var, &format!("DROP DATABASE {}", dbs.name));
        dbs.drop().await;
    }

    // A user that may only read: the missing grants are named, with the statement to run.
    let (_, _, root_pw) = server("FERRY_TEST_MYSQL");
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mypriv", "root", &root_pw).await;
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
    assert!(run.stdout.contains("lacks REPLICATION SLAVE, BINLOG MONITOR"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains(&format!("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'")),
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
