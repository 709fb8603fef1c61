//! Integration tests of the proxy against the real PostgreSQL clusters that `scripts/test.sh`
//! starts (`FERRY_TEST_SOURCE`, `FERRY_TEST_TARGET`). Each test makes its own database on both.

use ferry_proxy::{ConnectError, HoldError, Login, Proxy, ProxyConfig, ProxyUser, SwitchError, Upstream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

const USER: &str = "app";
const PASSWORD: &str = "app-pw";

fn url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests through scripts/test.sh (or `source /tmp/testenv.sh`)"))
}

fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("FERRY_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    PathBuf::from(dir).join(tool)
}

struct Server {
    config: Config,
    host: String,
    port: u16,
    user: String,
    password: String,
}

fn server(var: &str) -> Server {
    let config: Config = url(var).parse().expect("valid test URL");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().expect("user in test URL").to_owned();
    let password = String::from_utf8(config.get_password().expect("password in test URL").to_vec()).unwrap();
    Server {
        config,
        host,
        port,
        user,
        password,
    }
}

async fn connect(config: &Config) -> Client {
    let (client, conn) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// A database of the same name on source and target, dropped again at the end.
struct TestDb {
    name: String,
    source: Server,
    target: Server,
}

impl TestDb {
    async fn new(tag: &str) -> TestDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("ferry_proxy_{tag}_{}_{nanos}", std::process::id());
        let db = TestDb {
            name,
            source: server("FERRY_TEST_SOURCE"),
            target: server("FERRY_TEST_TARGET"),
        };
        for s in [&db.source, &db.target] {
            connect(&s.config)
                .await
                .batch_execute(&format!("CREATE DATABASE {}", db.name))
                .await
                .unwrap();
        }
        db
    }

    fn upstream(&self, which: &str) -> Upstream {
        let s = if which == "source" { &self.source } else { &self.target };
        let mut logins = HashMap::new();
        logins.insert(
            USER.to_owned(),
            Login {
                user: s.user.clone(),
                password: Some(s.password.clone()),
            },
        );
        Upstream {
            name: which.into(),
            host: s.host.clone(),
            port: s.port,
            dbname: self.name.clone(),
            logins,
        }
    }

    /// A superuser connection straight to one server's test database.
    async fn direct(&self, which: &str) -> Client {
        let s = if which == "source" { &self.source } else { &self.target };
        let mut c = s.config.clone();
        c.dbname(&self.name);
        connect(&c).await
    }

    async fn proxy(&self) -> Proxy {
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            users: vec![ProxyUser {
                name: USER.into(),
                password: PASSWORD.into(),
            }],
            dbname: self.name.clone(),
        };
        Proxy::start(config, self.upstream("source")).await.expect("proxy starts")
    }

    fn proxy_config(&self, proxy: &Proxy, app: &str) -> Config {
        let mut c = Config::new();
        c.host("127.0.0.1")
            .port(proxy.local_addr().port())
            .user(USER)
            .password(PASSWORD)
            .dbname(&self.name)
            .application_name(app);
        c
    }

    fn pg_env(&self, which: &str) -> Vec<(&'static str, String)> {
        let s = if which == "source" { &self.source } else { &self.target };
        vec![
            ("PGHOST", s.host.clone()),
            ("PGPORT", s.port.to_string()),
            ("PGUSER", s.user.clone()),
            ("PGPASSWORD", s.password.clone()),
        ]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let configs = [self.source.config.clone(), self.target.config.clone()];
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for c in configs {
                    if let Ok((client, conn)) = c.connect(NoTls).await {
                        tokio::spawn(conn);
                        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    }
                }
            })
        })
        .join();
    }
}

async fn setting(client: &Client, name: &str) -> String {
    client.query_one("select current_setting($1)", &[&name]).await.unwrap().get(0)
}

async fn server_port(client: &Client) -> i32 {
    client.query_one("select inet_server_port()", &[]).await.unwrap().get(0)
}

/// Waits for a condition, polling, up to `within`.
async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_through_the_proxy() {
    let db = TestDb::new("basics").await;
    let proxy = db.proxy().await;
    let client = connect(&db.proxy_config(&proxy, "basics")).await;

    // Simple and extended query.
    let rows = client.simple_query("select 1 + 1").await.unwrap();
    assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2")));
    let n: i32 = client.query_one("select $1::int + 1", &[&41i32]).await.unwrap().get(0);
    assert_eq!(n, 42);

    // Named prepared statement, used repeatedly.
    let stmt = client.prepare("select $1::text || '!'").await.unwrap();
    for word in ["a", "b", "c"] {
        let s: String = client.query_one(&stmt, &[&word]).await.unwrap().get(0);
        assert_eq!(s, format!("{word}!"));
    }

    // Transactions: one committed, one rolled back.
    client.batch_execute("create table t (x int)").await.unwrap();
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into t values (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into t values (2)", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let count: i64 = client.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(count, 1);

    // An error does not break the session.
    let err = client.simple_query("select * from no_such_table").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(client.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0), 3);

    // The proxy knows the session's server process.
    let pid: i32 = client.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(proxy.backend_pids(), vec![pid]);
    assert_eq!(proxy.stats().sessions, 1);

    // Wrong password, unknown user, wrong database.
    let mut bad = db.proxy_config(&proxy, "basics");
    bad.password("wrong");
    let err = bad.connect(NoTls).await.err().expect("wrong password refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let message = err.as_db_error().expect("server error").message();
    assert_eq!(message, "password authentication failed for user \"app\"");
    let mut unknown = db.proxy_config(&proxy, "basics");
    unknown.user("nobody");
    let err = unknown.connect(NoTls).await.err().expect("unknown user refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let mut other_db = db.proxy_config(&proxy, "basics");
    other_db.dbname("postgres");
    let err = other_db.connect(NoTls).await.err().expect("other database refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");

    drop(client);
    wait_until(Duration::from_secs(5), || proxy.stats().sessions == 0).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_the_proxy() {
    let db = TestDb::new("psql").await;
    let proxy = db.proxy().await;
    let conninfo = format!("host=127.0.0.1 port={} user={USER} dbname={}", proxy.local_addr().port(), db.name);
    let out = tokio::process::Command::new(pg_bin("psql"))
        .args([
            &conninfo,
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "select 40 + 2",
            "-c",
            "show application_name",
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGAPPNAME", "psql-test")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42\npsql-test");

    let out = tokio::process::Command::new(pg_bin("psql"))
        .args([&conninfo, "-X", "-At", "-c", "select 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed for user \"app\""));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_proxy() {
    let db = TestDb::new("cancel").await;
    let proxy = db.proxy().await;
    let client = connect(&db.proxy_config(&proxy, "cancel")).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await.map(|_| ()) });
    wait_until(Duration::from_secs(10), || proxy.stats().busy == 1).await;
    // PostgreSQL cancels only a query that is running: wait until the server runs it (a cancel
    // that arrived while the query was still on its way was ignored, and the test waited 30 s).
    let watcher = db.direct("source").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = 'select pg_sleep(30)'",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the query never started on the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    token.cancel_query(NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_survives_a_switch() {
    let db = TestDb::new("state").await;
    for (which, value) in [("source", 1), ("target", 2)] {
        db.direct(which)
            .await
            .batch_execute(&format!(
                "create schema s1; create table s1.t (x int); insert into s1.t values ({value})"
            ))
            .await
            .unwrap();
    }
    let proxy = db.proxy().await;
    let client = connect(&db.proxy_config(&proxy, "state")).await;
    let idle = connect(&db.proxy_config(&proxy, "idle")).await;
    client.batch_execute("SET application_name = 'ferry-moved'").await.unwrap();
    client.batch_execute("SET search_path = s1, public").await.unwrap();
    // Committed SET inside a transaction is kept, rolled-back one is not.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SET lock_timeout = '4321ms'").await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SET statement_timeout = '1234ms'").await.unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    // SET LOCAL is not kept either.
    let work_mem = setting(&client, "work_mem").await;
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SET LOCAL work_mem = '7MB'").await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    let stmt = client.prepare("select x from t").await.unwrap();
    let closed = client.prepare("select 1").await.unwrap();
    drop(closed); // tokio-postgres sends Close('S') for it
    client.batch_execute("PREPARE sqlprep AS SELECT x + 10 FROM t").await.unwrap();
    assert_eq!(client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(server_port(&client).await, db.source.port as i32);

    let mut hold = proxy.hold(Duration::from_secs(5)).await.unwrap();
    let report = hold.switch(db.upstream("target"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.sessions, 2);
    hold.release();

    assert_eq!(server_port(&client).await, db.target.port as i32);
    assert_eq!(server_port(&idle).await, db.target.port as i32);
    assert_eq!(setting(&client, "application_name").await, "ferry-moved");
    assert_eq!(setting(&client, "search_path").await, "s1, public");
    assert_eq!(setting(&client, "lock_timeout").await, "4321ms");
    assert_eq!(setting(&client, "statement_timeout").await, "0");
    assert_eq!(setting(&client, "work_mem").await, work_mem);
    let rows = client.simple_query("SHOW application_name").await.unwrap();
    assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("ferry-moved")));
    // The prepared statements run on the target now (its row says 2).
    assert_eq!(client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 2);
    let rows = client.simple_query("EXECUTE sqlprep").await.unwrap();
    assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("12")));
    assert_eq!(proxy.stats().switches, 1);
    assert_eq!(proxy.upstream().name, "target");
    // New sessions go to the target too.
    let late = connect(&db.proxy_config(&proxy, "late")).await;
    assert_eq!(server_port(&late).await, db.target.port as i32);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_names_a_session_idle_in_transaction_and_traffic_resumes() {
    let db = TestDb::new("hold").await;
    let proxy = db.proxy().await;
    let in_tx = connect(&db.proxy_config(&proxy, "stuck-app")).await;
    let other = connect(&db.proxy_config(&proxy, "other-app")).await;
    in_tx.batch_execute("BEGIN; select 1").await.unwrap();

    let started = Instant::now();
    let err = proxy.hold(Duration::from_millis(500)).await.expect_err("hold times out");
    assert!(started.elapsed() < Duration::from_secs(3));
    match &err {
        HoldError::Busy { busy, .. } => {
            assert_eq!(busy.len(), 1, "{err}");
            assert_eq!(busy[0].application_name, "stuck-app");
            assert_eq!(busy[0].user, USER);
            assert_eq!(busy[0].state, "in transaction");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("stuck-app"), "{err}");
    // Traffic flows again, no client error.
    assert_eq!(other.query_one("select 5", &[]).await.unwrap().get::<_, i32>(0), 5);
    in_tx.batch_execute("COMMIT").await.unwrap();

    // A successful hold: a request waits until release, then completes.
    let hold = proxy.hold(Duration::from_secs(2)).await.unwrap();
    let waiter = tokio::spawn(async move { other.query_one("select 6", &[]).await.unwrap().get::<_, i32>(0) });
    wait_until(Duration::from_secs(5), || hold.waiting() == 1).await;
    assert_eq!(proxy.stats().held, 1);
    tokio::time::sleep(Duration::from_millis(100)).await; // let the wait be measurable
    assert!(!waiter.is_finished());
    let report = hold.release();
    assert_eq!(report.held, 1);
    assert!(report.max_wait >= Duration::from_millis(100), "{report:?}");
    assert_eq!(waiter.await.unwrap(), 6);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_switch_leaves_every_session_on_the_old_upstream() {
    let db = TestDb::new("atomic").await;
    let proxy = db.proxy().await;
    let a = connect(&db.proxy_config(&proxy, "a")).await;
    let b = connect(&db.proxy_config(&proxy, "b")).await;
    let stmt = a.prepare("select 7").await.unwrap();

    let mut bad = db.upstream("target");
    bad.logins.get_mut(USER).unwrap().password = Some("wrong-password".into());
    let mut hold = proxy.hold(Duration::from_secs(5)).await.unwrap();
    let err = hold.switch(bad, Duration::from_secs(10)).await.expect_err("switch fails");
    match &err {
        SwitchError::Session {
            source: ConnectError::Server { code, .. },
            upstream,
            ..
        } => {
            assert_eq!(code, "28P01", "{err}");
            assert_eq!(upstream, "target");
        }
        other => panic!("unexpected error {other}"),
    }
    hold.release();

    for c in [&a, &b] {
        assert_eq!(server_port(c).await, db.source.port as i32);
    }
    assert_eq!(a.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 7);
    assert_eq!(proxy.upstream().name, "source");
    assert_eq!(proxy.stats().switches, 0);
    // An unreachable upstream fails the same way.
    let mut gone = db.upstream("target");
    gone.port = 1;
    let mut hold = proxy.hold(Duration::from_secs(5)).await.unwrap();
    assert!(hold.switch(gone, Duration::from_secs(10)).await.is_err());
    drop(hold);
    assert_eq!(server_port(&b).await, db.source.port as i32);
    proxy.shutdown().await;
}

/// pgbench through the proxy while it switches between the servers every 3 s.
async fn pgbench_with_switches(tag: &str, mode: &str) {
    let db = TestDb::new(tag).await;
    for which in ["source", "target"] {
        let out = tokio::process::Command::new(pg_bin("pgbench"))
            .args(["-i", "-s", "1", "-q", &db.name])
            .envs(db.pg_env(which))
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let proxy = db.proxy().await;
    let port = proxy.local_addr().port().to_string();
    let bench = tokio::process::Command::new(pg_bin("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            USER,
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "15",
            "-M",
            mode,
            &db.name,
        ])
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bench = tokio::spawn(bench.wait_with_output());

    let mut switches = 0;
    let mut max_wait = Duration::ZERO;
    let mut which = "target";
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(13) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut hold = match proxy.hold(Duration::from_secs(2)).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("hold failed (will retry): {e}");
                continue;
            }
        };
        let switched = hold.switch(db.upstream(which), Duration::from_secs(5)).await.expect("switch");
        let report = hold.release();
        println!(
            "switch to {which}: {} sessions in {:?}; {} requests held, max wait {:?}",
            switched.sessions, switched.elapsed, report.held, report.max_wait
        );
        max_wait = max_wait.max(report.max_wait);
        switches += 1;
        which = if which == "target" { "source" } else { "target" };
    }
    let out = bench.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("pgbench -M {mode} with {switches} switches, max wait {max_wait:?}\n{stdout}");
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "failures:\n{stdout}\n{stderr}"
    );
    assert!(switches >= 3, "only {switches} switches");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_under_pgbench_prepared() {
    pgbench_with_switches("bench_prepared", "prepared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_under_pgbench_extended() {
    pgbench_with_switches("bench_extended", "extended").await;
}
