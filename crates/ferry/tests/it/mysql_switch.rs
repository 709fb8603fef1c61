//! MySQL/MariaDB's side of a switch (`ferry_mysql::switch::MySqlSide`) against a real MariaDB
//! server: what the cutover test (`mysql_cdc.rs`) cannot show from the outside.
//!
//! On FERRY_TEST_MYSQL_STMT, not FERRY_TEST_MYSQL: `read_only` is server-wide, and the cutover
//! test asserts on it on that server while the tests run in parallel; this server's other tests
//! write as root only, which read_only does not stop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::switch::{Identity, IdentitySync, SwitchSide};
use ferry_core::{SourcePosition, TableName};
use ferry_mysql::endpoint::{own_connections, query};
use ferry_mysql::preflight::MyTable;
use ferry_mysql::switch::{reverse_sink_blockers, MySqlSide};
use ferry_mysql::MyEndpoint;
use ferry_postgres::switch::PgSide;

use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql, server, Writable};
use crate::mysql_cdc::{binlog_end, my_query};

const VAR: &str = "FERRY_TEST_MYSQL_STMT";

/// A session of another program (the mariadb client) as `user`, in database `db`, running
/// `sql`: not Ferry's.
fn session(user: &str, password: &str, db: &str, sql: &str) -> Child {
    let (host, port, _) = server(VAR);
    Command::new("mariadb")
        .args(["--no-defaults", "-h", &host, "-P", &port, "-u", user, "-D", db, "-e", sql])
        .env("MYSQL_PWD", password)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the mariadb client is installed by scripts/test.sh")
}

/// The id of the one session whose statement is `info`, once the server lists it.
async fn session_id(info: &str) -> u64 {
    let sql = format!("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = '{info}'");
    let mut id = 0;
    wait_for("a session to appear in the process list", Duration::from_secs(30), || {
        id = my_query(VAR, &sql).trim().parse().unwrap_or(0);
        async move { id != 0 }
    })
    .await;
    id
}

/// Ferry's own connections are spared by connection id and the application's session is ended
/// after the grace period; read_only stops the application at once, and its undo works on a
/// fresh connection after a `SET GLOBAL read_only = ON` was abandoned waiting for a lock (that
/// statement never takes effect afterwards); identities are the AUTO_INCREMENT counters
/// named as on the target, and moved by nothing when they are there already; no reverse stream
/// out of MySQL yet.
#[tokio::test]
async fn mysql_switch_side_spares_ferry_ends_the_application_and_undoes_read_only() {
    let (source, _target, dbs) = fresh(VAR, "myside").await;
    let db = dbs.name.clone();
    let _writable = Writable(VAR);
    my_sql(VAR, "SET GLOBAL read_only = OFF");
    let app = format!("side_{}", std::process::id());
    my_sql(
        VAR,
        &format!(
            "USE {db};
             CREATE TABLE t (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, v int NOT NULL) ENGINE = InnoDB AUTO_INCREMENT = 500;
             INSERT INTO t (v) VALUES (1), (2);
             DROP USER IF EXISTS '{app}'@'%'; CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw';
             GRANT SELECT, INSERT ON {db}.* TO '{app}'@'%';"
        ),
    );
    let ep = MyEndpoint::parse(&source, None).unwrap();
    let table: ferry_mysql::preflight::MyTable = serde_json::from_value(serde_json::json!({
        "name": "t", "engine": "InnoDB", "estimated_rows": 2, "bytes": 0, "primary_key": ["id"], "auto_increment": 502,
        "columns": [
            ["id", {"source": "bigint(20)", "target": "bigint", "not_null": true, "identity": true, "attention": "none"}],
            ["v", {"source": "int(11)", "target": "integer", "not_null": true, "identity": false, "attention": "none"}]
        ]
    }))
    .unwrap();
    let side = MySqlSide::new(&ep, "source").with_tables(&[table], "public");
    side.prepare_session().await.unwrap();

    // Ferry's own connection (any of this process), inside a transaction in the migrated database.
    let mut own = ep.connect().await.unwrap();
    let own_id = u64::from(own.id());
    query::<(i64,)>(&mut own, "a transaction of Ferry's", "START TRANSACTION")
        .await
        .unwrap();
    query::<(i64,)>(&mut own, "a transaction of Ferry's", "INSERT INTO t (v) VALUES (3)")
        .await
        .unwrap();
    // The application's session, inside a transaction too.
    let mut writer = session(
        &app,
        "app-pw",
        &db,
        &format!("START TRANSACTION; INSERT INTO {db}.t (v) VALUES (4); SELECT SLEEP(60)"),
    );
    let app_id = session_id("SELECT SLEEP(60)").await;
    // A root session: root holds READ_ONLY ADMIN, which read_only does not stop.
    let mut admin = session("root", &server(VAR).2, &db, "SELECT SLEEP(61)");
    let admin_id = session_id("SELECT SLEEP(61)").await;

    // Direct sessions: the others' (marked when they can write despite read_only), never Ferry's.
    let direct = side.direct_sessions(&[]).await.unwrap();
    let ours = own_connections(&ep);
    assert!(ours.contains(&own_id), "{ours:?}");
    assert!(direct.iter().all(|d| !ours.contains(&d.id)), "Ferry's own listed: {direct:?}");
    let listed = |id| direct.iter().find(|d| d.id == id).map(|d| d.description.clone());
    let app_desc = listed(app_id).unwrap_or_else(|| panic!("the application is not listed: {direct:?}"));
    assert!(app_desc.contains(&app) && !app_desc.contains("holds"), "{app_desc}");
    let admin_desc = listed(admin_id).unwrap_or_else(|| panic!("the root session is not listed: {direct:?}"));
    assert!(
        admin_desc.contains("holds") && admin_desc.contains("READ_ONLY ADMIN"),
        "{admin_desc}"
    );
    // The proxy's sessions are not direct ones.
    assert!(side.direct_sessions(&[app_id]).await.unwrap().iter().all(|d| d.id != app_id));

    // read_only covers every session at once: the application's next write is refused.
    side.set_read_only(true).await.unwrap();
    side.set_read_only(true).await.unwrap();
    assert_eq!(my_query(VAR, "SELECT @@GLOBAL.read_only").trim(), "1");
    let refused = session(&app, "app-pw", &db, &format!("INSERT INTO {db}.t (v) VALUES (5)"))
        .wait_with_output()
        .unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && (why.contains("read-only") || why.contains("read_only")),
        "{why}"
    );

    // Writers: the application's session is ended after the grace period, Ferry's is spared.
    let started = Instant::now();
    let ended = side.end_writers(Duration::from_millis(500)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "no grace period: {:?}",
        started.elapsed()
    );
    assert_eq!(ended.iter().map(|d| d.id).collect::<Vec<_>>(), [app_id], "{ended:?}");
    assert!(ended[0].description.contains(&app), "{ended:?}");
    assert!(!writer.wait().unwrap().success(), "the application's session survived");
    query::<(i64,)>(&mut own, "Ferry's session after the writers were ended", "SELECT 1")
        .await
        .expect("Ferry's own session was ended");
    query::<(i64,)>(&mut own, "a transaction of Ferry's", "ROLLBACK").await.unwrap();
    assert!(side.end_writers(Duration::ZERO).await.unwrap().is_empty());

    // The final position is the end of the binlog (other tests write to this server meanwhile);
    // identities are the counters, as on the target.
    let before = binlog_end(VAR);
    let at = side.final_position().await.unwrap();
    assert!(matches!(at, SourcePosition::Mysql(_)), "{at}");
    assert!(before <= at && at <= binlog_end(VAR), "{before} {at}");
    let next: i64 = my_query(
        VAR,
        &format!("SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = 't'"),
    )
    .trim()
    .parse()
    .unwrap();
    let ids = side.identities().await.unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        (&ids[0].name, ids[0].column.as_deref(), ids[0].last_value),
        (&TableName::new("public", "t"), Some("id"), next - 1)
    );
    assert!(next > 503, "the counter did not move past the inserts: {next}");
    // The counters' own values move nothing (the rollback test below moves them); no reverse
    // stream out of MySQL.
    let synced = side.advance_identities(&ids).await.unwrap();
    assert_eq!(
        synced.iter().map(|s| (s.column.as_deref(), s.from, s.to)).collect::<Vec<_>>(),
        [(Some("id"), next - 1, next)]
    );
    let blockers = side.reverse_blockers().await;
    assert!(blockers.len() == 1 && blockers[0].contains("not built yet"), "{blockers:?}");
    side.drop_reverse().await.unwrap();

    // Undone, and again: idempotent.
    side.set_read_only(false).await.unwrap();
    side.set_read_only(false).await.unwrap();
    assert_eq!(my_query(VAR, "SELECT @@GLOBAL.read_only").trim(), "0");

    // A read_only = ON abandoned while it waits for a lock (the switchboard dropped the call at
    // its deadline): the undo works on a fresh connection, and the abandoned statement never
    // takes effect once the lock is released (its connection is gone with the call; the undo
    // also kills it by id, for a server that did not notice).
    let mut locker = session(
        "root",
        &server(VAR).2,
        &db,
        &format!("LOCK TABLES {db}.t WRITE; SELECT SLEEP(3); UNLOCK TABLES"),
    );
    session_id("SELECT SLEEP(3)").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), side.set_read_only(true))
            .await
            .is_err(),
        "read_only was set while a session held a table lock"
    );
    side.set_read_only(false).await.unwrap();
    assert!(locker.wait().unwrap().success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        my_query(VAR, "SELECT @@GLOBAL.read_only").trim(),
        "0",
        "the abandoned SET GLOBAL read_only = ON took effect after its undo"
    );
    // The side still works (a fresh connection).
    assert!(side.final_position().await.unwrap() >= at);

    let _ = admin.kill();
    let _ = admin.wait();
    // Gone already, or still sleeping: either is fine.
    let _ = crate::mysql::mariadb(VAR).args(["-e", &format!("KILL {admin_id}")]).output();
    my_sql(VAR, &format!("DROP USER '{app}'@'%'"));
    dispose(VAR, dbs).await;
}

/// A migrated table of the plan with a generated `bigint` key `id` (or none).
fn planned(name: &str, generated: bool) -> MyTable {
    serde_json::from_value(serde_json::json!({
        "name": name, "engine": "InnoDB", "estimated_rows": 0, "bytes": 0, "primary_key": ["id"], "auto_increment": null,
        "columns": [
            ["id", {"source": "bigint(20)", "target": "bigint", "not_null": true, "identity": generated, "attention": "none"}],
            ["v", {"source": "int(11)", "target": "integer", "not_null": false, "identity": false, "attention": "none"}]
        ]
    }))
    .unwrap()
}

/// The `AUTO_INCREMENT` counter of `db`.`table`.
fn counter(db: &str, table: &str) -> i64 {
    my_query(
        VAR,
        &format!("SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = '{table}'"),
    )
    .trim()
    .parse()
    .unwrap()
}

/// A rollback's identities: PostgreSQL (the old side) names the sequences of its identity and
/// serial columns by table and column when asked (and only then), and MySQL (the new side)
/// moves each matching AUTO_INCREMENT past the last id PostgreSQL handed out, so that the next
/// insert gets an id above every id used on either side; never backwards, twice is once, and
/// generators MySQL does not have are skipped. `ferry check` lists the reverse stream's
/// position table among what Ferry writes on the source.
#[tokio::test]
async fn mysql_switch_side_moves_auto_increment_past_postgresql_at_rollback() {
    let (source, target, dbs) = fresh(VAR, "myident").await;
    let db = dbs.name.clone();

    // PostgreSQL after the cutover: the application inserted up to high ids.
    let pg = connect(&target).await;
    pg.batch_execute(
        "CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int);
         CREATE TABLE s (id serial PRIMARY KEY, v int);
         CREATE TABLE gone (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
         CREATE TABLE plain (id bigint PRIMARY KEY, v int);
         CREATE SEQUENCE loose;
         INSERT INTO t (v) SELECT g FROM generate_series(1, 5) g;
         SELECT setval(pg_get_serial_sequence('t', 'id'), 9000);
         INSERT INTO t (v) VALUES (6);
         INSERT INTO s (v) VALUES (1), (2), (3);
         INSERT INTO gone (v) VALUES (1);
         SELECT setval('loose', 77);",
    )
    .await
    .unwrap();
    let pg_ep = ferry_postgres::Endpoint::parse(&target, None).unwrap();
    let plain_ids = PgSide::new(&pg, &pg_ep, "target").identities().await.unwrap();
    let by_column = PgSide::new(&pg, &pg_ep, "target")
        .with_column_identities()
        .identities()
        .await
        .unwrap();
    let id = |name: &str, column: Option<&str>, last_value| Identity {
        name: TableName::new("public", name),
        column: column.map(str::to_string),
        last_value,
    };
    // Without the option, sequences by their names (a PostgreSQL-to-PostgreSQL switch).
    assert_eq!(
        plain_ids,
        [
            id("gone_id_seq", None, 1),
            id("loose", None, 77),
            id("s_id_seq", None, 3),
            id("t_id_seq", None, 9001)
        ]
    );
    // With it, by table and column; a sequence of no column stays one.
    assert_eq!(
        by_column,
        [
            id("gone", Some("id"), 1),
            id("loose", None, 77),
            id("s", Some("id"), 3),
            id("t", Some("id"), 9001)
        ]
    );

    // MySQL: the reverse stream brought rows 1..6 and 700 (not 9001, deleted meanwhile on
    // PostgreSQL, say); s had ids up to 499 before the migration.
    my_sql(
        VAR,
        &format!(
            "USE {db};
             CREATE TABLE t (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, v int) ENGINE = InnoDB;
             INSERT INTO t (id, v) VALUES (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (700, 7);
             CREATE TABLE s (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, v int) ENGINE = InnoDB AUTO_INCREMENT = 500;
             CREATE TABLE plain (id bigint NOT NULL PRIMARY KEY, v int) ENGINE = InnoDB;"
        ),
    );
    assert_eq!(counter(&db, "t"), 701);
    let ep = MyEndpoint::parse(&source, None).unwrap();
    let side = MySqlSide::new(&ep, "source").with_tables(
        &[
            planned("t", true),
            planned("s", true),
            planned("gone", true),
            planned("plain", false),
        ],
        "public",
    );
    side.prepare_session().await.unwrap();

    let synced = side.advance_identities(&by_column).await.unwrap();
    let sync = |name: &str, from, to| IdentitySync {
        name: TableName::new("public", name),
        column: Some("id".into()),
        from,
        to,
    };
    // t moved past PostgreSQL's 9001; s kept its greater counter; gone is not on MySQL.
    assert_eq!(synced, [sync("t", 9001, 9002), sync("s", 3, 500)]);
    assert_eq!((counter(&db, "t"), counter(&db, "s")), (9002, 500));
    // Twice is once.
    assert_eq!(side.advance_identities(&by_column).await.unwrap(), synced);
    assert_eq!((counter(&db, "t"), counter(&db, "s")), (9002, 500));
    // A smaller value never moves a counter back; a plain sequence (named as PostgreSQL
    // names it) or a sequence name matches no AUTO_INCREMENT.
    let smaller = side
        .advance_identities(&[id("t", Some("id"), 100), id("loose", None, 99_999), id("t_id_seq", None, 99_999)])
        .await
        .unwrap();
    assert_eq!(smaller, [sync("t", 100, 9002)]);
    assert_eq!(counter(&db, "t"), 9002);
    // The next insert on MySQL gets an id above every id used on either side.
    let got: i64 = my_query(VAR, &format!("INSERT INTO {db}.t (v) VALUES (8); SELECT LAST_INSERT_ID()"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, 9002);
    // The PostgreSQL side's plain identities are what PostgreSQL-to-PostgreSQL switches use:
    // MySQL finds none of its generators in them.
    assert!(side.advance_identities(&plain_ids).await.unwrap().is_empty());

    // `ferry check` names the reverse stream's position table among the source's objects.
    let run = ferry(&["check", "--source", &source, "--target", &target, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    let objects = report["plan"]["source_objects"].as_array().unwrap();
    assert!(
        objects
            .iter()
            .any(|o| o.as_str().unwrap().contains("table `ferry`.`reverse_position` (created at cutover")),
        "{objects:?}"
    );
    dispose(VAR, dbs).await;
}

/// Go / NoGo for a reverse stream into MariaDB: a user that lacks what the sink needs is told
/// each missing privilege with the GRANT that fixes it (and those GRANTs do fix it); a user
/// lacking only READ_ONLY ADMIN is told exactly that; root needs nothing. Nothing is written.
#[tokio::test]
async fn mysql_reverse_sink_blockers_name_each_missing_grant() {
    let (source, _target, dbs) = fresh(VAR, "mysink").await;
    let db = dbs.name.clone();
    let state_db = format!("{db}_state");
    my_sql(
        VAR,
        &format!(
            "USE {db};
             CREATE TABLE t (id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, v int) ENGINE = InnoDB;
             CREATE TABLE n (id bigint NOT NULL PRIMARY KEY, v int) ENGINE = InnoDB;"
        ),
    );
    let tables = [planned("t", true), planned("n", false)];
    let (host, port, root_pw) = server(VAR);
    let user = format!("sink_{}", std::process::id());
    let as_user = MyEndpoint::parse(&format!("mysql://{user}:Sink-pw-1@{host}:{port}/{db}"), None).unwrap();
    let account = format!("'{user}'@'%'");

    // Root holds everything (ALL PRIVILEGES includes READ_ONLY ADMIN).
    let root = MyEndpoint::parse(&source, None).unwrap();
    let none = reverse_sink_blockers(&root, &state_db, &tables).await;
    assert!(none.is_empty(), "{none:#?}");

    // What the forward migration needs, nothing more.
    my_sql(
        VAR,
        &format!(
            "DROP USER IF EXISTS {account}; CREATE USER {account} IDENTIFIED BY 'Sink-pw-1';
             GRANT SELECT, RELOAD, BINLOG MONITOR, REPLICATION SLAVE ON *.* TO {account};"
        ),
    );
    let blockers = reverse_sink_blockers(&as_user, &state_db, &tables).await;
    assert_eq!(blockers.len(), 3, "{blockers:#?}");
    let grant = |b: &str| {
        b.rsplit_once(": GRANT ")
            .map(|(_, g)| format!("GRANT {g}"))
            .unwrap_or_else(|| panic!("no GRANT in {b}"))
    };
    assert!(blockers[0].contains(&format!("on database `{state_db}`")), "{}", blockers[0]);
    assert_eq!(
        grant(&blockers[0]),
        format!("GRANT CREATE, INSERT, UPDATE ON `{state_db}`.* TO {account}")
    );
    assert!(blockers[1].contains("`t`, `n`"), "{}", blockers[1]);
    assert_eq!(
        grant(&blockers[1]),
        format!("GRANT INSERT, UPDATE, DELETE, ALTER ON `{db}`.* TO {account}")
    );
    assert!(blockers[2].contains("lacks READ_ONLY ADMIN"), "{}", blockers[2]);
    assert_eq!(grant(&blockers[2]), format!("GRANT READ_ONLY ADMIN ON *.* TO {account}"));
    // Nothing was written: the state database is not there.
    assert_eq!(
        my_query(
            VAR,
            &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{state_db}'")
        )
        .trim(),
        "0"
    );

    // The GRANTs it names fix the first two; READ_ONLY ADMIN is still missing and named alone.
    my_sql(VAR, &format!("{}; {}", grant(&blockers[0]), grant(&blockers[1])));
    let blockers = reverse_sink_blockers(&as_user, &state_db, &tables).await;
    assert_eq!(blockers.len(), 1, "{blockers:#?}");
    assert!(
        blockers[0].contains(&format!("{account} lacks READ_ONLY ADMIN on the source (MariaDB ")) && blockers[0].contains("read-only"),
        "{}",
        blockers[0]
    );
    // Once granted, no blocker.
    my_sql(VAR, &grant(&blockers[0]));
    let none = reverse_sink_blockers(&as_user, &state_db, &tables).await;
    assert!(none.is_empty(), "{none:#?}");

    // The state table exists: what it needs is the table's, CREATE no more.
    my_sql(
        VAR,
        &format!(
            "CREATE DATABASE {state_db}; CREATE TABLE {state_db}.reverse_position (id int PRIMARY KEY);
             REVOKE CREATE, INSERT ON `{state_db}`.* FROM {account};
             GRANT INSERT ON `{state_db}`.`reverse_position` TO {account};"
        ),
    );
    let none = reverse_sink_blockers(&as_user, &state_db, &tables).await;
    assert!(none.is_empty(), "{none:#?}");
    my_sql(VAR, &format!("REVOKE UPDATE ON `{state_db}`.* FROM {account}"));
    let blockers = reverse_sink_blockers(&as_user, &state_db, &tables).await;
    assert!(
        blockers.len() == 1 && blockers[0].contains(&format!("lacks UPDATE on table `{state_db}`.`reverse_position`")),
        "{blockers:#?}"
    );

    // A server it cannot read is a blocker too, never a silent Go.
    let wrong = MyEndpoint::parse(&format!("mysql://{user}:wrong-pw@{host}:{port}/{db}"), None).unwrap();
    let blockers = reverse_sink_blockers(&wrong, &state_db, &tables).await;
    assert!(blockers.len() == 1 && blockers[0].contains("could not find out"), "{blockers:#?}");
    assert!(
        !blockers[0].contains("wrong-pw") && !blockers[0].contains(&root_pw),
        "{}",
        blockers[0]
    );

    my_sql(VAR, &format!("DROP USER {account}; DROP DATABASE {state_db}"));
    dispose(VAR, dbs).await;
}
