//! MySQL/MariaDB's side of a switch (`ferry_mysql::switch::MySqlSide`) against a real MariaDB
//! server: what the cutover test (`mysql_cdc.rs`) cannot show from the outside.
//!
//! On FERRY_TEST_MYSQL_STMT, not FERRY_TEST_MYSQL: `read_only` is server-wide, and the cutover
//! test asserts on it on that server while the tests run in parallel; this server's other tests
//! write as root only, which read_only does not stop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::switch::SwitchSide;
use ferry_core::{SourcePosition, TableName};
use ferry_mysql::endpoint::{own_connections, query};
use ferry_mysql::switch::MySqlSide;
use ferry_mysql::MyEndpoint;

use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql, server};
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
/// named as on the target; no reverse stream out of MySQL yet.
#[tokio::test]
async fn mysql_switch_side_spares_ferry_ends_the_application_and_undoes_read_only() {
    let (source, _target, dbs) = fresh(VAR, "myside").await;
    let db = dbs.name.clone();
    struct Writable;
    impl Drop for Writable {
        fn drop(&mut self) {
            my_sql(VAR, "SET GLOBAL read_only = OFF");
        }
    }
    let _writable = Writable;
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
    let side = MySqlSide::new(&ep, "source").with_tables(&[table]);
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
    // Writes never go to MySQL yet: no generators moved there, no reverse stream out of it.
    let refused = side.advance_identities(&ids).await.unwrap_err().to_string();
    assert!(refused.contains("issue 18"), "{refused}");
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
