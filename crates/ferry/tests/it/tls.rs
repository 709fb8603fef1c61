//! TLS to PostgreSQL and libpq's client conventions, against clusters that accept TCP logins
//! only over TLS (`hostssl`), with certificates made by the test (certs.rs).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::certs::{self, CERT_USER};
use crate::harness::*;

const PW: &str = "ferry-test-pw";

/// Two TLS-only clusters of the test's own (source with wal_level=logical, and a target).
struct TlsClusters {
    names: [String; 2],
    ports: [u16; 2],
    dir: PathBuf,
}

fn pg_sh(args: &[&str], tls_dir: Option<&std::path::Path>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh");
    let mut c = Command::new(&script);
    c.args(args);
    if let Some(d) = tls_dir {
        c.env("FERRY_PG_TLS_DIR", d);
    }
    let out = c.output().expect("run scripts/pg.sh");
    assert!(out.status.success(), "pg.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TlsClusters {
    fn start(prefix: &str) -> Self {
        let certs = certs::get();
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let names = [
            format!("{prefix}-src-{}", std::process::id()),
            format!("{prefix}-tgt-{}", std::process::id()),
        ];
        let ports = [free(), free()];
        for (n, p) in names.iter().zip(ports) {
            pg_sh(&["destroy", n], None);
            pg_sh(&["start", n, &p.to_string(), "-c", "wal_level=logical"], Some(&certs.dir));
        }
        let dir = std::env::var("FERRY_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ferry-test/clusters"));
        Self { names, ports, dir }
    }

    /// A superuser connection over the cluster's Unix socket (trusted locally): the harness's
    /// own client has no TLS.
    fn local(&self, i: usize, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.join(&self.names[i]).display(),
            self.ports[i]
        )
    }

    /// Ferry's URL: TLS with full verification.
    fn url(&self, i: usize, db: &str, extra: &str) -> String {
        let ca = certs::get().ca.display().to_string();
        format!(
            "postgres://postgres:{PW}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={ca}{extra}",
            self.ports[i]
        )
    }
}

impl Drop for TlsClusters {
    fn drop(&mut self) {
        for n in &self.names {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh");
            let _ = Command::new(&script).args(["destroy", n]).output();
        }
    }
}

fn assert_no_secret(run: &Run, secrets: &[&str]) {
    for s in secrets {
        assert!(!run.all().contains(s), "a secret ({s}) appears in ferry's output: {}", run.all());
    }
}

/// Check, migrate (load and stream), verify, cutover through the proxy and rollback, every
/// connection to either server over TLS with `sslmode=verify-full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_verify_full_migration_cutover_and_rollback() {
    let pc = TlsClusters::start("tls");
    for i in 0..2 {
        connect(&pc.local(i, "postgres"))
            .await
            .batch_execute("CREATE DATABASE app")
            .await
            .unwrap();
    }
    load_sample(&pc.local(0, "app"), 2000).await;
    create_marker(&pc.local(0, "app")).await;
    let (src, tgt) = (pc.url(0, "app", ""), pc.url(1, "app", ""));
    let run = ferry(&["check", "--source", &src, "--target", &tgt]);
    assert_eq!(run.code, 0, "{}", run.all());

    let token_file = std::env::temp_dir().join(format!("ferry-tls-token-{}", std::process::id()));
    std::fs::write(&token_file, "tls-test-token-0123456789abcdef\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let token = "tls-test-token-0123456789abcdef";
    let tf = token_file.display().to_string();
    let (api, proxy) = (free_addr(), free_addr());
    let m = Migrator::spawn(&[
        "migrate",
        "--source",
        &src,
        "--target",
        &tgt,
        "--jobs",
        "2",
        "--listen",
        &api,
        "--proxy-listen",
        &proxy,
        "--api-token-file",
        &tf,
    ]);
    wait_for_cdc(&pc.local(1, "app")).await;
    // Changes after the snapshot arrive through the TLS replication stream.
    connect(&pc.local(0, "app"))
        .await
        .batch_execute("INSERT INTO test_marker VALUES (1)")
        .await
        .unwrap();
    wait_for_row(
        &pc.local(1, "app"),
        "a streamed row",
        Duration::from_secs(60),
        "SELECT 1 FROM test_marker WHERE n = 1",
    )
    .await;

    // Online verification over TLS.
    let (code, body) = http("POST", &api, "/api/verify", Some(token)).await;
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["run"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = http("GET", &api, &format!("/api/verify/{id}"), Some(token)).await;
        let r: serde_json::Value = serde_json::from_str(&body).unwrap();
        if r["status"] != "running" {
            assert_eq!(r["status"], "identical", "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "verification did not finish: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Cutover through the proxy, whose server connections are TLS too.
    let api_url = format!("http://{api}");
    let run = ferry(&["cutover", "--api", &api_url, "--api-token-file", &tf, "--json", "--max-pause", "5s"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    assert_eq!(report["outcome"], "done", "{report} {}", run.all());
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let app = connect(&format!("postgres://postgres:{PW}@{host}:{port}/app")).await;
    app.batch_execute("INSERT INTO test_marker VALUES (2)").await.unwrap();
    wait_for_row(
        &pc.local(1, "app"),
        "the write through the proxy on the target",
        Duration::from_secs(10),
        "SELECT 1 FROM test_marker WHERE n = 2",
    )
    .await;

    let run = ferry(&[
        "rollback",
        "--api",
        &api_url,
        "--api-token-file",
        &tf,
        "--json",
        "--max-pause",
        "5s",
    ]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    assert_eq!(report["outcome"], "done", "{report} {}", run.all());
    // The write made on the target came back to the source through the reverse TLS stream.
    wait_for_row(
        &pc.local(0, "app"),
        "the target's write on the source",
        Duration::from_secs(30),
        "SELECT 1 FROM test_marker WHERE n = 2",
    )
    .await;
    app.batch_execute("INSERT INTO test_marker VALUES (3)").await.unwrap();
    wait_for_row(
        &pc.local(0, "app"),
        "a write after rollback on the source",
        Duration::from_secs(10),
        "SELECT 1 FROM test_marker WHERE n = 3",
    )
    .await;
    drop(app);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert_no_secret(&run, &[PW, token]);
    let _ = std::fs::remove_file(&token_file);
}

/// A wrong CA, a wrong host name, sslmode=disable against a TLS-only server, and an MD5 login
/// over plain TCP: each fails with a message that names the cause and the fix, and a usage or
/// connection exit code; a client-certificate login and an explicit `require_auth=md5` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_named_and_certificate_logins_work() {
    let pc = TlsClusters::start("tlsbad");
    let certs = certs::get();
    for i in 0..2 {
        let c = connect(&pc.local(i, "postgres")).await;
        c.batch_execute("CREATE DATABASE app").await.unwrap();
        if i == 0 {
            c.batch_execute(&format!(
                "CREATE ROLE {CERT_USER} LOGIN SUPERUSER REPLICATION;
                 SET password_encryption = 'md5';
                 CREATE ROLE ferry_md5_user LOGIN SUPERUSER REPLICATION PASSWORD 'md5-secret-pw'"
            ))
            .await
            .unwrap();
        }
    }
    load_sample(&pc.local(0, "app"), 100).await;
    let tgt = pc.url(1, "app", "");
    let ca = certs.ca.display().to_string();
    let port = pc.ports[0];
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "postgres://postgres:{PW}@127.0.0.1:{port}/app?sslmode=verify-full&sslrootcert={}",
                certs.other_ca.display()
            ),
            "not signed by a trusted CA",
        ),
        (
            format!("postgres://postgres:{PW}@db.example.invalid:{port}/app?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"),
            "not valid for the host name",
        ),
        (
            format!("postgres://postgres:{PW}@127.0.0.1:{port}/app?sslmode=disable"),
            "no encryption",
        ),
        (
            format!("postgres://ferry_md5_user:md5-secret-pw@127.0.0.1:{port}/app?sslmode=disable"),
            "md5 authentication over an unencrypted connection",
        ),
        (
            format!("postgres://postgres:{PW}@127.0.0.1:{port}/app?sslmode=verify-full"),
            "needs the CA that signed",
        ),
        (
            format!("postgres://postgres:{PW}@127.0.0.1:{port}/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
            "/nonexistent/ca.pem",
        ),
    ];
    for (src, expect) in &cases {
        let run = ferry(&["check", "--source", src, "--target", &tgt]);
        assert_ne!(run.code, 0, "{src}: {}", run.all());
        assert!(run.all().contains(expect), "{src}: expected {expect:?} in: {}", run.all());
        assert_no_secret(&run, &[PW, "md5-secret-pw"]);
    }
    // The opt-in: require_auth=md5 accepts the MD5 login over plain TCP.
    let src = format!("postgres://ferry_md5_user:md5-secret-pw@127.0.0.1:{port}/app?sslmode=disable&require_auth=md5");
    let run = ferry(&["check", "--source", &src, "--target", &tgt]);
    assert_eq!(run.code, 0, "{}", run.all());
    // A client certificate instead of a password.
    let src = format!(
        "postgres://{CERT_USER}@127.0.0.1:{port}/app?sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let run = ferry(&["check", "--source", &src, "--target", &tgt]);
    assert_eq!(run.code, 0, "{}", run.all());
}

/// `PGPASSWORD`, `~/.pgpass` (mode 0600; ignored at 0644, with the reason) and `PGSERVICE`
/// each give Ferry the password, with none on the command line; a missing password says where
/// Ferry looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_password_sources() {
    use std::os::unix::fs::PermissionsExt;
    let dbs = Dbs::create("libpq").await;
    load_sample(&dbs.source, 10).await;
    let strip = |url: &str| url.replacen(&format!(":{PW}@"), "@", 1);
    // The source's password must come from libpq's places; the target keeps its own.
    let (src, tgt) = (strip(&dbs.source), dbs.target.clone());
    assert!(!src.contains(PW));
    let home = std::env::temp_dir().join(format!("ferry-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let check = |envs: &[(&str, &str)], src: &str| {
        let mut c = ferry_cmd(&["check", "--source", src, "--target", &tgt]);
        c.env("HOME", &home);
        for (k, v) in envs {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    };
    // Nothing anywhere: the error lists where Ferry looked.
    let run = check(&[], &src);
    assert_ne!(run.code, 0);
    assert!(
        run.all().contains("none was found") && run.all().contains(".pgpass"),
        "{}",
        run.all()
    );
    assert!(!run.all().contains("firewall"), "{}", run.all());
    // PGPASSWORD.
    let run = check(&[("PGPASSWORD", PW)], &src);
    assert_eq!(run.code, 0, "{}", run.all());
    // ~/.pgpass at 0600 works; at 0644 it is ignored and the error says why.
    let pgpass = home.join(".pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:*:*:postgres:{PW}\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = check(&[], &src);
    assert_eq!(run.code, 0, "{}", run.all());
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = check(&[], &src);
    assert_ne!(run.code, 0);
    assert!(run.all().contains("chmod 600"), "{}", run.all());
    std::fs::remove_file(&pgpass).unwrap();
    // A service: host, port, user, database and password from ~/.pg_service.conf.
    let port = src.rsplit_once(':').unwrap().1.split('/').next().unwrap().to_string();
    std::fs::write(
        home.join(".pg_service.conf"),
        format!(
            "[ferrysrc]\nhost=127.0.0.1\nport={port}\nuser=postgres\ndbname={}\npassword={PW}\n",
            dbs.name
        ),
    )
    .unwrap();
    let run = check(&[("PGSERVICE", "ferrysrc")], "postgres://");
    assert_eq!(run.code, 0, "{}", run.all());
    let run = check(&[], "service=ferrysrc");
    assert_eq!(run.code, 0, "{}", run.all());
    // A wrong password says which source it came from.
    let run = check(&[("PGPASSWORD", "not-the-password")], &src);
    assert_ne!(run.code, 0);
    assert!(run.all().contains("PGPASSWORD"), "{}", run.all());
    assert!(!run.all().contains("not-the-password"), "{}", run.all());
    let _ = std::fs::remove_dir_all(&home);
    dbs.drop().await;
}
