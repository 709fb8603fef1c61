//! Integration tests of the proxy against the real PostgreSQL clusters that `scripts/test.sh`
//! starts (`FERRY_TEST_SOURCE`, `FERRY_TEST_TARGET`). Each test makes its own database on both.

use ferry_proxy::{ConnectError, HoldError, Login, Proxy, ProxyConfig, ProxyUser, SwitchError, Upstream, UpstreamTls};
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
            tls: UpstreamTls::Disable,
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
        let config = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            vec![ProxyUser {
                name: USER.into(),
                password: PASSWORD.into(),
            }],
            self.name.clone(),
        );
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

/// pgbench through the proxy while it switches between the servers every 3 s; with `tls`, pgbench
/// connects to the proxy with sslmode=require.
async fn pgbench_with_switches(tag: &str, mode: &str, tls: bool) {
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
    let proxy = if tls {
        db.proxy_with(|c| c.tls = Some(proxy_tls()), Default::default()).await
    } else {
        db.proxy().await
    };
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
        .env("PGSSLMODE", if tls { "require" } else { "disable" })
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
    pgbench_with_switches("bench_prepared", "prepared", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_under_pgbench_over_tls() {
    pgbench_with_switches("bench_tls", "prepared", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_under_pgbench_extended() {
    pgbench_with_switches("bench_extended", "extended", false).await;
}

// ---------------------------------------------------------------------------------------------
// TLS on both sides of the proxy, and its connection limits.

mod tls {
    //! A throwaway PKI made with the `openssl` command line (as crates/ferry/tests/it/certs.rs),
    //! a tokio-postgres TLS connector over rustls, and a private PostgreSQL cluster that accepts
    //! TCP logins only over TLS (scripts/pg.sh with FERRY_PG_TLS_DIR: `hostssl` lines only).

    use ferry_tls::rustls::ClientConfig;
    use ferry_tls::tokio_rustls;
    use std::future::Future;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::process::Command;
    use std::sync::{Arc, OnceLock};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

    pub struct Certs {
        pub dir: PathBuf,
        pub ca: PathBuf,
        pub other_ca: PathBuf,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn make_ca(dir: &Path, name: &str, cn: &str) {
        let (subj, key, crt) = (format!("/CN={cn}"), format!("{name}.key"), format!("{name}.crt"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &subj,
                "-keyout",
                &key,
                "-out",
                &crt,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    /// CA, an unrelated CA, and a server certificate for localhost and 127.0.0.1 signed by the
    /// CA; made once per test process. Keys are mode 0600.
    pub fn certs() -> &'static Certs {
        static CERTS: OnceLock<Certs> = OnceLock::new();
        CERTS.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("ferry-proxy-certs-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            make_ca(&dir, "ca", "Ferry Proxy Test CA");
            make_ca(&dir, "other-ca", "Some Other CA");
            openssl(
                &dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                ],
            );
            std::fs::write(
                dir.join("server.ext"),
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
            )
            .unwrap();
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "30",
                    "-out",
                    "server.crt",
                    "-extfile",
                    "server.ext",
                ],
            );
            for k in ["server.key", "ca.key", "other-ca.key"] {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.join(k), std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            Certs {
                ca: dir.join("ca.crt"),
                other_ca: dir.join("other-ca.crt"),
                server_cert: dir.join("server.crt"),
                server_key: dir.join("server.key"),
                dir,
            }
        })
    }

    /// A rustls client configuration: verify-full against `ca` (None: encrypt only).
    pub fn client_config(ca: Option<&Path>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        ferry_tls::client_config(&ferry_tls::ClientOptions {
            verify: if ca.is_some() {
                ferry_tls::Verify::Full
            } else {
                ferry_tls::Verify::Nothing
            },
            roots: ca.map(|p| ferry_tls::Roots::File(p.to_path_buf())),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    /// tokio-postgres has no TLS of its own: this one is rustls through ferry-tls.
    #[derive(Clone)]
    pub struct Rustls(pub Arc<ClientConfig>);

    pub struct Connect(Arc<ClientConfig>, String);

    pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Rustls {
        type Stream = Stream<S>;
        type TlsConnect = Connect;
        type Error = io::Error;
        fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
            Ok(Connect(self.0.clone(), domain.to_owned()))
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Connect {
        type Stream = Stream<S>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;
        fn connect(self, s: S) -> Self::Future {
            Box::pin(async move { Ok(Stream(ferry_tls::connect(&self.0, &self.1, s).await?)) })
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            ChannelBinding::none()
        }
    }

    /// A PostgreSQL cluster of this test process that takes TCP logins only over TLS.
    pub struct Cluster {
        pub name: String,
        pub port: u16,
        pub socket_dir: PathBuf,
    }

    fn pg_sh(args: &[&str], tls_dir: Option<&Path>) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh");
        let mut c = Command::new(&script);
        c.args(args);
        if let Some(d) = tls_dir {
            c.env("FERRY_PG_TLS_DIR", d);
        }
        let out = c.output().expect("run scripts/pg.sh");
        assert!(out.status.success(), "pg.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    impl Cluster {
        pub fn start() -> Cluster {
            let certs = certs();
            let name = format!("proxy-tls-{}", std::process::id());
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            pg_sh(&["destroy", &name], None);
            pg_sh(&["start", &name, &port.to_string()], Some(&certs.dir));
            let clusters = std::env::var("FERRY_CLUSTER_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ferry-test/clusters"));
            Cluster {
                socket_dir: clusters.join(&name),
                name,
                port,
            }
        }

        /// A superuser connection over the Unix socket (trusted), to set things up.
        pub fn local(&self, db: &str) -> tokio_postgres::Config {
            let mut c = tokio_postgres::Config::new();
            c.host_path(&self.socket_dir).port(self.port).user("postgres").dbname(db);
            c
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            pg_sh(&["destroy", &self.name], None);
        }
    }
}

use ferry_proxy::UpstreamTls as Utls;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl TestDb {
    async fn proxy_with(&self, f: impl FnOnce(&mut ProxyConfig), timeouts: ferry_proxy::Timeouts) -> Proxy {
        let mut config = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            vec![ProxyUser {
                name: USER.into(),
                password: PASSWORD.into(),
            }],
            self.name.clone(),
        );
        f(&mut config);
        Proxy::start_with(config, self.upstream("source"), timeouts)
            .await
            .expect("proxy starts")
    }
}

fn proxy_tls() -> Arc<ferry_tls::rustls::ServerConfig> {
    let c = tls::certs();
    ferry_tls::server_config(&c.server_cert, &c.server_key).unwrap()
}

async fn connect_tls(config: &Config, ca: &std::path::Path) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = config.connect(tls::Rustls(tls::client_config(Some(ca), &[]))).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Reads until the peer closes (or `within`); returns what came.
async fn read_to_close(s: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The SQLSTATE of an ErrorResponse at the start of `bytes`.
fn sqlstate(bytes: &[u8]) -> Option<String> {
    if bytes.first() != Some(&b'E') || bytes.len() < 5 {
        return None;
    }
    let body = &bytes[5..];
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_through_the_proxy_across_a_switch() {
    let db = TestDb::new("tls_clients").await;
    let certs = tls::certs();
    let proxy = db.proxy_with(|c| c.tls = Some(proxy_tls()), Default::default()).await;
    let config = db.proxy_config(&proxy, "tls-app");

    // tokio-postgres over rustls, verifying the proxy's certificate (verify-full).
    let client = connect_tls(&config, &certs.ca).await.expect("TLS connect through the proxy");
    client
        .batch_execute("create table t (x int); insert into t values (1)")
        .await
        .unwrap();
    let stmt = client.prepare("select sum(x)::int from t").await.unwrap();
    assert_eq!(client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 1);
    // A large result comes through TLS whole (several TLS records, socket buffer full).
    let big: i64 = client
        .query_one("select sum(length(repeat('x', g))) from generate_series(1, 3000) g", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big, 3000 * 3001 / 2);
    let rows = client
        .query("select repeat('y', 1000) from generate_series(1, 5000)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    assert!(rows.iter().all(|r| r.get::<_, String>(0).len() == 1000));
    // A plain client still gets in (TLS is offered, not required).
    let plain = connect(&config).await;
    assert_eq!(plain.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    // A client that does not trust the proxy's CA fails its handshake.
    let Err(err) = connect_tls(&config, &certs.other_ca).await else {
        panic!("a client with the wrong CA got in");
    };
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // A switch moves the TLS session to the target; its prepared statement comes along.
    db.direct("target")
        .await
        .batch_execute("create table t (x int); insert into t values (2)")
        .await
        .unwrap();
    let mut hold = proxy.hold(Duration::from_secs(5)).await.unwrap();
    hold.switch(db.upstream("target"), Duration::from_secs(10)).await.unwrap();
    hold.release();
    assert_eq!(server_port(&client).await, db.target.port as i32);
    assert_eq!(client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 2);

    // libpq: psql with sslmode=verify-full.
    let conninfo = format!(
        "host=127.0.0.1 port={} user={USER} dbname={} sslmode=verify-full sslrootcert={}",
        proxy.local_addr().port(),
        db.name,
        certs.ca.display()
    );
    let out = tokio::process::Command::new(pg_bin("psql"))
        .args([&conninfo, "-X", "-At", "-c", "select 40 + 2"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // GSSENCRequest is declined, SSLRequest then accepted; bytes sent after an SSLRequest
    // before its answer end the connection (CVE-2021-23214).
    let request = |code: i32| {
        let mut p = 8i32.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p
    };
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut answer = [0u8; 1];
    raw.write_all(&request(80_877_104)).await.unwrap();
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');
    raw.write_all(&request(80_877_103)).await.unwrap();
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut pipelined = request(80_877_103);
    pipelined.extend_from_slice(&startup_packet(USER, &db.name));
    raw.write_all(&pipelined).await.unwrap();
    let got = read_to_close(&mut raw, Duration::from_secs(5)).await.expect("closed");
    assert!(!got.starts_with(b"S"), "answered {got:?}");

    // PostgreSQL 17's direct TLS: the ClientHello first, with ALPN "postgresql"; the proxy
    // then asks for SCRAM like after an SSLRequest.
    let tcp = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut s = ferry_tls::connect(&tls::client_config(Some(&certs.ca), &[b"postgresql"]), "127.0.0.1", tcp)
        .await
        .expect("direct TLS handshake");
    s.write_all(&startup_packet(USER, &db.name)).await.unwrap();
    s.flush().await.unwrap();
    let mut first = [0u8; 9];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'R', "AuthenticationSASL expected");
    assert_eq!(i32::from_be_bytes(first[5..9].try_into().unwrap()), 10, "SASL");
    // Direct TLS without the ALPN is refused.
    let tcp = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    if let Ok(mut s) = ferry_tls::connect(&tls::client_config(Some(&certs.ca), &[]), "127.0.0.1", tcp).await {
        let _ = s.write_all(&startup_packet(USER, &db.name)).await;
        let _ = s.flush().await;
        let got = read_to_close(&mut s, Duration::from_secs(5)).await.expect("closed");
        assert!(got.is_empty(), "direct TLS without ALPN answered {got:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_plain_clients() {
    let db = TestDb::new("tls_required").await;
    let certs = tls::certs();
    // Requiring TLS without a certificate is a configuration error.
    let mut bad = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), vec![], db.name.clone());
    bad.users.push(ProxyUser {
        name: USER.into(),
        password: PASSWORD.into(),
    });
    bad.require_tls = true;
    let err = Proxy::start(bad, db.upstream("source")).await.expect_err("refused");
    assert!(err.to_string().contains("require_tls needs a certificate"), "{err}");

    let proxy = db
        .proxy_with(
            |c| {
                c.tls = Some(proxy_tls());
                c.require_tls = true;
            },
            Default::default(),
        )
        .await;
    let config = db.proxy_config(&proxy, "plain");
    let err = config.connect(NoTls).await.err().expect("plain client refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert_eq!(
        message,
        "this proxy accepts only TLS connections; connect with sslmode=require or stricter"
    );
    // psql with sslmode=disable sees the same words.
    let out = tokio::process::Command::new(pg_bin("psql"))
        .args([
            &format!(
                "host=127.0.0.1 port={} user={USER} dbname={} sslmode=disable",
                proxy.local_addr().port(),
                db.name
            ),
            "-X",
            "-c",
            "select 1",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("accepts only TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TLS clients get in.
    let client = connect_tls(&config, &certs.ca).await.expect("TLS client accepted");
    assert_eq!(client.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0), 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_to_a_tls_only_server() {
    let db = TestDb::new("tls_upstream").await;
    let certs = tls::certs();
    let cluster = tls::Cluster::start();
    let local = connect(&cluster.local("postgres")).await;
    local.batch_execute(&format!("CREATE DATABASE {}", db.name)).await.unwrap();
    let up = |tls: Utls| {
        let mut u = db.upstream("tls-only");
        u.host = "127.0.0.1".into();
        u.port = cluster.port;
        u.tls = tls;
        u
    };
    let ssl_used = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let verify_full = tls::client_config(Some(&certs.ca), &[]);

    // Start on the plain source, with TLS from the client; switch to the TLS-only server with
    // verify-full: TLS on both sides of the proxy.
    let proxy = db.proxy_with(|c| c.tls = Some(proxy_tls()), Default::default()).await;
    let client = connect_tls(&db.proxy_config(&proxy, "both"), &certs.ca).await.unwrap();
    assert!(!client.query_one(ssl_used, &[]).await.unwrap().get::<_, bool>(0));
    let mut hold = proxy.hold(Duration::from_secs(5)).await.unwrap();
    hold.switch(up(Utls::Require(verify_full.clone())), Duration::from_secs(10))
        .await
        .expect("switch to the TLS upstream");
    hold.release();
    assert_eq!(server_port(&client).await, cluster.port as i32);
    assert!(client.query_one(ssl_used, &[]).await.unwrap().get::<_, bool>(0));
    // A new session goes there over TLS too, and a cancel request reaches it.
    let other = connect(&db.proxy_config(&proxy, "new")).await;
    assert!(other.query_one(ssl_used, &[]).await.unwrap().get::<_, bool>(0));
    let token = other.cancel_token();
    let sleeper = tokio::spawn(async move { other.simple_query("select pg_sleep(30)").await.map(|_| ()) });
    let deadline = Instant::now() + Duration::from_secs(10);
    while local
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = 'select pg_sleep(30)'",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    token.cancel_query(NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    proxy.shutdown().await;

    // Prefer: TLS, since the server offers it.
    let proxy = Proxy::start(
        ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            vec![ProxyUser {
                name: USER.into(),
                password: PASSWORD.into(),
            }],
            db.name.clone(),
        ),
        up(Utls::Prefer(tls::client_config(None, &[]))),
    )
    .await
    .unwrap();
    let c = connect(&db.proxy_config(&proxy, "prefer")).await;
    assert!(c.query_one(ssl_used, &[]).await.unwrap().get::<_, bool>(0));
    drop(c);

    // Refusals, each with its reason, through a switch attempt (the error is the ConnectError).
    let attempt = |u: Upstream| {
        let proxy = proxy.clone();
        async move {
            let mut hold = proxy.hold(Duration::from_secs(5)).await.unwrap();
            let r = hold.switch(u, Duration::from_secs(10)).await;
            drop(hold);
            r
        }
    };
    // A switch connects every session: keep one open, so that each attempt connects.
    let keep = connect(&db.proxy_config(&proxy, "keep")).await;
    let cases: Vec<(Upstream, &str)> = vec![
        // Plain TCP to a hostssl-only server: the server's own refusal.
        (up(Utls::Disable), "no encryption"),
        // Wrong CA.
        (
            up(Utls::Require(tls::client_config(Some(&certs.other_ca), &[]))),
            "not signed by a trusted CA",
        ),
        // TLS required from a server without TLS (the plain test source).
        (
            {
                let mut u = db.upstream("source");
                u.tls = Utls::Require(verify_full.clone());
                u
            },
            "does not accept TLS",
        ),
    ];
    for (u, expect) in cases {
        let err = attempt(u).await.expect_err("switch refused");
        assert!(err.to_string().contains(expect), "expected {expect:?} in: {err}");
    }
    // The session is still where it was.
    assert!(keep.query_one(ssl_used, &[]).await.unwrap().get::<_, bool>(0));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_53300() {
    let db = TestDb::new("limit").await;
    let proxy = db.proxy_with(|c| c.max_connections = 2, Default::default()).await;
    let config = db.proxy_config(&proxy, "limit");
    let a = connect(&config).await;
    let b = connect(&config).await;
    let err = config.connect(NoTls).await.err().expect("third connection refused");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert_eq!(err.as_db_error().unwrap().message(), "too many connections to the Ferry proxy");
    assert_eq!(proxy.stats().refused, 1);
    assert_eq!(proxy.stats().clients, 2);
    drop(a);
    wait_until(Duration::from_secs(5), || proxy.stats().clients == 1).await;
    let c = connect(&config).await;
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    proxy.shutdown().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// 5,000 hostile connections at once: silent ones, random bytes, absurd and oversized
/// startup packets. None crashes or stalls the proxy; its connections and memory stay
/// bounded; a session already in place keeps working through it, and a new client gets in
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_hostile_connections() {
    const N: usize = 5000;
    const MAX_CONNECTIONS: usize = 100;
    const MAX_UNAUTH: usize = 16;
    let db = TestDb::new("flood").await;
    let timeouts = ferry_proxy::Timeouts {
        client_startup: Duration::from_secs(3),
        ..Default::default()
    };
    let proxy = db
        .proxy_with(
            |c| {
                c.max_connections = MAX_CONNECTIONS;
                c.max_unauthenticated = MAX_UNAUTH;
            },
            timeouts,
        )
        .await;
    let config = db.proxy_config(&proxy, "flood");
    let early = connect(&config).await;
    let (fds_before, rss_before) = (open_fds(), rss_kb());
    let addr = proxy.local_addr();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let open = open.clone();
        tasks.spawn(async move {
            // Counted before the socket exists: the proxy's share is never overestimated.
            open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                return (i % 4, Some(Vec::new()));
            };
            let payload: Vec<u8> = match i % 4 {
                0 => Vec::new(), // silent
                1 => {
                    // random bytes (xorshift), never a TLS record's first byte
                    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    (0..64)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            (x as u8).max(0x20)
                        })
                        .collect()
                }
                2 => {
                    // absurd length
                    let mut p = 0x7fff_fff0i32.to_be_bytes().to_vec();
                    p.extend_from_slice(&196608i32.to_be_bytes());
                    p
                }
                _ => {
                    // a startup packet of 20 KB
                    let mut p = 20_000i32.to_be_bytes().to_vec();
                    p.extend_from_slice(&196608i32.to_be_bytes());
                    p.resize(20_000, b'a');
                    p
                }
            };
            let _ = s.write_all(&payload).await;
            let got = read_to_close(&mut s, Duration::from_secs(30)).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            (i % 4, got)
        });
    }

    // While the flood is on: bounded, and the session already in place works.
    let mut peak_clients = 0;
    let mut peak_unauth = 0;
    let mut peak_fds_over = 0i64;
    let probe_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < probe_until && !tasks.is_empty() {
        let st = proxy.stats();
        peak_clients = peak_clients.max(st.clients);
        peak_unauth = peak_unauth.max(st.unauthenticated);
        // Descriptors of the proxy: all of this process's, minus the attackers' own sockets.
        let over = open_fds() as i64 - open.load(std::sync::atomic::Ordering::SeqCst) as i64 - fds_before as i64;
        peak_fds_over = peak_fds_over.max(over);
        let t = Instant::now();
        assert_eq!(early.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0), 7);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a query took {:?} during the flood",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every hostile connection is closed by the proxy, none hangs.
    let mut answers: HashMap<(usize, Option<String>), usize> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (kind, got) = r.unwrap();
        let got = got.unwrap_or_else(|| panic!("a connection of kind {kind} was not closed within 30 s"));
        *answers.entry((kind, sqlstate(&got))).or_default() += 1;
    }
    println!("flood of {N} done in {:?}: {answers:?}; peak clients {peak_clients}, unauthenticated {peak_unauth}, extra fds {peak_fds_over}, refused {}", started.elapsed(), proxy.stats().refused);
    assert!(peak_clients <= MAX_CONNECTIONS, "{peak_clients}");
    assert!(peak_unauth <= MAX_UNAUTH, "{peak_unauth}");
    // Proxy-side sockets: sessions plus refusals in progress, plus some slack for timing.
    assert!(
        peak_fds_over <= (MAX_CONNECTIONS + MAX_UNAUTH + 100) as i64,
        "{peak_fds_over} descriptors"
    );
    assert!(proxy.stats().refused > 0);
    let refused_53300: usize = answers
        .iter()
        .filter(|((_, s), _)| s.as_deref() == Some("53300"))
        .map(|(_, n)| n)
        .sum();
    let invalid_08p01: usize = answers
        .iter()
        .filter(|((_, s), _)| s.as_deref() == Some("08P01"))
        .map(|(_, n)| n)
        .sum();
    assert!(invalid_08p01 > 0, "{answers:?}");
    assert!(refused_53300 > 0 || proxy.stats().refused > 0, "{answers:?}");
    let rss_growth_mb = rss_kb().saturating_sub(rss_before) / 1024;
    assert!(rss_growth_mb < 300, "memory grew by {rss_growth_mb} MB");

    // Afterwards: nothing left over, and a new client gets in.
    wait_until(Duration::from_secs(10), || {
        let s = proxy.stats();
        s.clients == 1 && s.unauthenticated == 0
    })
    .await;
    let late = connect(&config).await;
    assert_eq!(late.query_one("select 8", &[]).await.unwrap().get::<_, i32>(0), 8);
    assert_eq!(early.query_one("select 9", &[]).await.unwrap().get::<_, i32>(0), 9);
    proxy.shutdown().await;
}
