//! Hostile and malformed input: each is refused with a message naming the problem (and, on the
//! command line, a non-zero exit code), a running migration carries on unharmed, and no secret
//! (database password, API token) appears in any output, log, state table or API answer.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A throwaway file with `text` and `mode`, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str, mode: u32) -> Self {
        let path = std::env::temp_dir().join(format!("ferry-hostile-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `text` holds none of `secrets`.
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} reveals the secret {s:?}:\n{text}");
    }
}

/// A refusal on the command line: exit code 2 and every one of `says` in the output.
fn assert_usage(case: &str, run: &Run, says: &[&str], secrets: &[&str]) {
    assert_eq!(run.code, 2, "{case}: {}", run.all());
    for s in says {
        assert!(run.all().contains(s), "{case}: the message should say {s:?}: {}", run.all());
    }
    assert_no_secret(case, &run.all(), secrets);
}

/// Command-line input that is refused before any connection: URL options, hosts, files,
/// numbers. Nothing listens at the addresses used.
#[test]
fn hostile_urls_files_and_options_are_refused_by_name_without_secrets() {
    let target = "postgres://postgres@127.0.0.1:1/nowhere";
    let check = |source: &str, extra: &[&str]| {
        let mut args = vec!["check", "--source", source, "--target", target];
        args.extend_from_slice(extra);
        ferry(&args)
    };
    let pw = "Sec7/ret@Xq";
    let enc = pct(pw);
    let secrets = [pw, enc.as_str(), "Sec7", "ret@Xq"];

    // 7. A misspelt option is named, never dropped.
    let run = check(&format!("postgres://bob:{enc}@127.0.0.1:1/db?sslmod=require"), &[]);
    assert_usage(
        "unknown option",
        &run,
        &["unknown option \"sslmod\"", "check the spelling"],
        &secrets,
    );
    // 8. An option Ferry does not support is named, with why.
    let run = check(&format!("postgres://bob:{enc}@127.0.0.1:1/db?sslpassword=x"), &[]);
    assert_usage("unsupported option", &run, &["sslpassword is not supported"], &secrets);
    // 9. Two hosts: every connection must reach the same server.
    let run = check(&format!("postgres://bob:{enc}@h1,h2/db"), &[]);
    assert_usage("two hosts", &run, &["several servers are listed", "exactly one"], &secrets);
    // 10. A CA file that does not exist is named.
    let run = check(
        &format!("postgres://bob:{enc}@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        &[],
    );
    assert_usage("missing CA", &run, &["cannot read CA file /nonexistent/ca.pem"], &secrets);
    // 11. Unreadable CA files (tests run as root, who reads any file: a directory, and a file
    // that is not PEM).
    let dir = std::env::temp_dir();
    let run = check(
        &format!(
            "postgres://bob:{enc}@127.0.0.1:1/db?sslmode=verify-ca&sslrootcert={}",
            dir.display()
        ),
        &[],
    );
    assert_usage("CA is a directory", &run, &["cannot read CA file", "Is a directory"], &secrets);
    let garbage = TempFile::new("garbage-ca.pem", "this is not a certificate\n", 0o644);
    let run = check(
        &format!(
            "postgres://bob:{enc}@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={}",
            garbage.path()
        ),
        &[],
    );
    assert_usage(
        "CA not PEM",
        &run,
        &[&format!("CA file {} holds no certificate in PEM format", garbage.path())],
        &secrets,
    );
    // 12. A password file others may read.
    let loose = TempFile::new("loose-password", &format!("{pw}\n"), 0o644);
    let run = check("postgres://bob@127.0.0.1:1/db", &["--source-password-file", loose.path()]);
    assert_usage("loose password file", &run, &[&format!("chmod 600 {}", loose.path())], &secrets);
    // 13. An API token file others may read.
    let token = "hostile-token-3c1d0a9b8e7f6a5b4c3d2e1f";
    let loose_token = TempFile::new("loose-token", &format!("{token}\n"), 0o644);
    let run = ferry(&[
        "migrate",
        "--source",
        "postgres://bob@127.0.0.1:1/db",
        "--target",
        target,
        "--listen",
        "127.0.0.1:0",
        "--api-token-file",
        loose_token.path(),
    ]);
    assert_usage("loose token file", &run, &["chmod 600"], &[token]);
    let run = ferry(&["pause", "--api", "http://127.0.0.1:9", "--api-token-file", loose_token.path()]);
    assert_usage("loose token file (pause)", &run, &["chmod 600"], &[token]);
    // 14. A webhook that is not a URL: at start.
    let run = ferry(&[
        "migrate",
        "--source",
        "postgres://bob@127.0.0.1:1/db",
        "--target",
        target,
        "--webhook",
        "not-a-url",
    ]);
    assert_usage("webhook", &run, &["--webhook", "is not a URL"], &[]);
    // 19. Absurd numbers.
    for jobs in ["0", "65", "-1", "99999999999999999999", "lots"] {
        let run = check("postgres://bob@127.0.0.1:1/db", &[&format!("--jobs={jobs}")]);
        assert_usage(&format!("--jobs {jobs}"), &run, &["--jobs"], &[]);
    }
    let run = check("postgres://bob@127.0.0.1:1/db", &["--jobs", "0"]);
    assert!(run.all().contains("--jobs must be between 1 and 64"), "{}", run.all());
    let run = check("postgres://bob@127.0.0.1:1/db", &["--split-size=-5MB"]);
    assert_usage("--split-size", &run, &["--split-size"], &[]);
    // 20. A key=value string with an unclosed quote.
    let run = check("host=127.0.0.1 port=1 user=bob password='Sec7/ret@Xq dbname=db", &[]);
    assert_usage("unclosed quote", &run, &["the quoted value of password is not closed"], &secrets);
    // 21. A user name with unicode and a bad escape.
    let run = check(&format!("postgres://bøb%zz:{enc}@127.0.0.1:1/db"), &[]);
    assert_usage(
        "bad escape in the user",
        &run,
        &["the user name has a % that is not followed by two hexadecimal digits"],
        &secrets,
    );
    // The same bad escape in the password: named, the password not shown.
    let run = check("postgres://bob:Sec7%zzret@127.0.0.1:1/db", &[]);
    assert_usage("bad escape in the password", &run, &["password"], &["Sec7", "zzret"]);
    // Unicode alone is fine in a user name: the refusal is the connection's, not the URL's.
    let run = check(&format!("postgres://bøb:{enc}@127.0.0.1:1/db"), &[]);
    assert_ne!(run.code, 2, "{}", run.all());
    assert!(run.all().contains("cannot connect to 127.0.0.1:1/db"), "{}", run.all());
    assert_no_secret("unicode user", &run.all(), &secrets);
}

/// The role every connection of the running migration uses: a password made of everything
/// that breaks URLs, quoting and redaction.
const ROLE_PASSWORD: &str = "Hostile/Pa@ss?w#rd 'x' %41&y=z";

/// Raw HTTP/1.1: `head` (without the blank line) and `body`; status and answer body.
async fn raw_http(addr: &str, head: &str, body: Vec<u8>) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(head.as_bytes()).await.unwrap();
    w.write_all(b"\r\n").await.unwrap();
    // The body goes in the background: the server may answer (and close) before it is all sent.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&body).await;
        w
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut out)).await;
    drop(writer);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The soft limit on open files of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A client of the proxy, as the application would connect.
async fn proxy_client(proxy: &str, role: &str, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().unwrap())
        .user(role)
        .password(ROLE_PASSWORD)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Every row of every table in Ferry's state schema, as JSON text.
async fn state_dump(target: &str) -> String {
    let c = connect(target).await;
    let tables = lines(
        &c,
        "SELECT quote_ident(table_name::text) FROM information_schema.tables WHERE table_schema = 'ferry' ORDER BY 1",
    )
    .await;
    assert!(tables.len() >= 5, "Ferry's state tables: {tables:?}");
    let mut out = String::new();
    for t in &tables {
        for row in lines(&c, &format!("SELECT row_to_json(t)::text FROM ferry.{t} t")).await {
            out.push_str(&format!("{t}: {row}\n"));
        }
    }
    out
}

/// A migration whose role has a hostile password (in the source URL, percent-encoded, and in a
/// password file for the target) and whose API has a token, under attack: wrong logins with
/// odd passwords, garbage and thousands of silent connections at the proxy, an oversized API
/// body, requests without the token or from another origin. It keeps streaming, legitimate
/// clients get through, and neither the password nor the token is in its log, its state
/// tables, its API answers, or any command's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_leave_a_running_migration_unharmed_and_reveal_no_secret() {
    let e = env();
    let dbs = Dbs::create("hostile").await;
    let role = format!("hostile_{}", std::process::id());
    let quoted_pw = ROLE_PASSWORD.replace('\'', "''");
    for admin in [&e.source, &e.target] {
        connect(admin)
            .await
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER REPLICATION PASSWORD '{quoted_pw}'"
            ))
            .await
            .unwrap();
    }
    create_marker(&dbs.source).await;
    connect(&dbs.source)
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let host_of = |url: &str| url.split_once('@').unwrap().1.split_once('/').unwrap().0.to_string();
    let (src_host, tgt_host) = (host_of(&dbs.source), host_of(&dbs.target));
    let source = format!("postgres://{role}:{}@{src_host}/{}", pct(ROLE_PASSWORD), dbs.name);
    let target = format!("postgres://{role}@{tgt_host}/{}", dbs.name);
    let pw_file = TempFile::new("role-password", &format!("{ROLE_PASSWORD}\n"), 0o600);
    let token = format!("hostile-api-token-{:x}", std::process::id() as u64 * 0x9e37_79b9);
    let token_file = TempFile::new("api-token", &format!("{token}\n"), 0o600);
    let (api, proxy) = (free_addr(), free_addr());
    let m = Migrator::spawn(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--target-password-file",
        pw_file.path(),
        "--jobs",
        "2",
        "--listen",
        &api,
        "--api-token-file",
        token_file.path(),
        "--proxy-listen",
        &proxy,
    ]);
    let enc = pct(ROLE_PASSWORD);
    let secrets: Vec<&str> = vec![ROLE_PASSWORD, &enc, "Pa@ss", "w#rd", "Hostile/", &token];
    wait_for_cdc(&dbs.target).await;
    api_wait(&api, "phase cdc in the API", Duration::from_secs(30), |s| s["phase"] == "cdc").await;
    let mut outputs: Vec<(String, String)> = Vec::new();

    // 1-6. Wrong passwords with every character that breaks a URL, raw and percent-encoded,
    // against the running servers: refused (a URL error or a failed login), never shown.
    for odd in ["/", "@", "?", "#", "'", " ", "%", "%41", ":", "\\"] {
        let wrong = format!("Kq7{odd}Vw3");
        for (form, url) in [
            ("raw", format!("postgres://{role}:{wrong}@{src_host}/{}", dbs.name)),
            ("encoded", format!("postgres://{role}:{}@{src_host}/{}", pct(&wrong), dbs.name)),
        ] {
            let run = ferry(&["check", "--source", &url, "--target", &target]);
            let case = format!("wrong password {wrong:?} ({form})");
            assert!(run.code == 1 || run.code == 2, "{case}: {}", run.all());
            assert!(
                run.all().contains("password authentication failed") || run.all().contains("invalid PostgreSQL URL"),
                "{case}: {}",
                run.all()
            );
            if form == "encoded" {
                assert_eq!(run.code, 1, "{case}: {}", run.all());
                assert!(run.all().contains("password authentication failed"), "{case}: {}", run.all());
            }
            assert_no_secret(&case, &run.all(), &[&wrong, &pct(&wrong), "Kq7", "Vw3"]);
            outputs.push((case, run.all()));
        }
    }
    // The same in libpq's key=value form, quoted, with an escaped quote.
    let kv = format!(
        "host={} port={} user={role} password='Kq7\\' Vw3' dbname={}",
        src_host.split(':').next().unwrap(),
        src_host.split(':').nth(1).unwrap(),
        dbs.name
    );
    let run = ferry(&["check", "--source", &kv, "--target", &target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.all().contains("password authentication failed"), "{}", run.all());
    assert_no_secret("key=value wrong password", &run.all(), &["Kq7", "Vw3"]);
    // The right password through `check`, from the file and the URL: no secret in the report.
    let run = ferry(&[
        "check",
        "--source",
        &source,
        "--target",
        &target,
        "--target-password-file",
        pw_file.path(),
    ]);
    outputs.push(("check with the role's password".into(), run.all()));

    // 15. Garbage at the proxy: an error and a close, and the next client is fine.
    for garbage in [
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        vec![0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef],
        vec![0xff; 16],
    ] {
        let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let _ = s.write_all(&garbage).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the proxy kept a garbage connection open");
    }
    let app = proxy_client(&proxy, &role, &dbs.name).await.expect("a client after garbage");
    app.batch_execute("INSERT INTO items VALUES (10001, 'after garbage')")
        .await
        .unwrap();
    drop(app);

    // 16. Thousands of silent connections (as many as 5,000 the file limit allows): the
    // migration streams meanwhile; once they are gone, clients connect again.
    let limit = open_files_limit();
    let n = 5000usize.min(limit.saturating_sub(1000) as usize);
    eprintln!("open files limit {limit}: holding {n} silent connections to the proxy");
    assert!(n >= 1000, "the open files limit ({limit}) is too low for this test");
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let mut pending = Vec::new();
    for _ in 0..n {
        let p = proxy.clone();
        pending.push(tokio::spawn(async move { tokio::net::TcpStream::connect(p).await }));
        if pending.len() == 500 {
            for t in pending.drain(..) {
                match t.await.unwrap() {
                    Ok(s) => held.push(s),
                    Err(_) => failed += 1,
                }
            }
        }
    }
    for t in pending.drain(..) {
        match t.await.unwrap() {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    eprintln!(
        "{} connections opened ({failed} failed) in {:.1} s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(held.len() >= n * 9 / 10, "only {} of {n} connections opened", held.len());
    // Change capture does not go through the proxy: it keeps streaming.
    sync_point(&dbs.source, &dbs.target, 1).await;
    let st = api_status(&api).await;
    assert_eq!(st["phase"], "cdc", "{st}");
    // A client now may be turned away (the proxy is full of silent connections), and must be
    // told so rather than hang.
    match tokio::time::timeout(Duration::from_secs(15), proxy_client(&proxy, &role, &dbs.name)).await {
        Ok(Ok(_)) => eprintln!("a client got through while the proxy was flooded"),
        Ok(Err(e)) => {
            let why = e
                .as_db_error()
                .map(|d| format!("{} {}", d.code().code(), d.message()))
                .unwrap_or(e.to_string());
            eprintln!("a client was turned away while the proxy was flooded: {why}");
            assert!(why.contains("53300") && why.contains("too many connections"), "{why}");
        }
        Err(_) => panic!("a client waited more than 15 s at a flooded proxy"),
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let app = loop {
        match proxy_client(&proxy, &role, &dbs.name).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no client gets through after the flood: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    app.batch_execute("INSERT INTO items VALUES (10002, 'after the flood')")
        .await
        .unwrap();
    drop(app);

    // 17. An oversized body (1 MiB), with the token: 413, nothing done.
    let head = format!(
        "POST /api/pause HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n",
        1 << 20
    );
    let (code, body) = raw_http(&api, &head, vec![b'x'; 1 << 20]).await;
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("request body over"), "{body}");
    outputs.push(("413 answer".into(), body));
    // 18. No token: 401; a wrong token: 401; the token from another origin: 403.
    for (case, headers, want) in [
        ("no token", String::new(), 401),
        ("wrong token", "authorization: Bearer hostile-guess-0000\r\n".to_string(), 401),
        (
            "foreign origin",
            format!("authorization: Bearer {token}\r\norigin: http://evil.example\r\n"),
            403,
        ),
    ] {
        for path in ["/api/pause", "/api/cutover", "/api/verify"] {
            let head = format!("POST {path} HTTP/1.1\r\nhost: {api}\r\n{headers}content-length: 0\r\nconnection: close\r\n");
            let (code, body) = raw_http(&api, &head, Vec::new()).await;
            assert_eq!(code, want, "{case} {path}: {body}");
            outputs.push((format!("{case} {path}"), body));
        }
    }
    let run = ferry_cmd(&["pause", "--api", &format!("http://{api}")])
        .env("FERRY_API_TOKEN", "hostile-guess-0000000000000")
        .output()
        .unwrap();
    let run = Run::from(run);
    assert_eq!(run.code, 2, "{}", run.all());
    outputs.push(("ferry pause with a wrong token".into(), run.all()));

    // Unharmed: not paused, still streaming, every write through the proxy arrived.
    let st = api_status(&api).await;
    assert_eq!(st["phase"], "cdc", "{st}");
    assert_eq!(st["live"]["paused"], false, "{st}");
    sync_point(&dbs.source, &dbs.target, 2).await;
    let t = connect(&dbs.target).await;
    let got = lines(&t, "SELECT name FROM items WHERE id > 10000 ORDER BY id").await;
    assert_eq!(got, ["after garbage", "after the flood"]);

    // No secret anywhere: API answers, state tables, the log, every command's output.
    for path in ["/api/status", "/api/events?after=0&limit=100000", "/metrics", "/"] {
        let (code, body) = http("GET", &api, path, Some(&token)).await;
        assert_eq!(code, 200, "{path}: {body}");
        outputs.push((format!("GET {path}"), body));
    }
    let (code, body) = http("GET", &api, "/api/events", None).await;
    assert_eq!(code, 401, "{body}");
    outputs.push(("state tables".into(), state_dump(&dbs.target).await));
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.stderr.is_empty());
    outputs.push(("ferry migrate's output".into(), run.all()));
    for (what, text) in &outputs {
        assert_no_secret(what, text, &secrets);
    }

    dbs.drop().await;
    for admin in [&e.source, &e.target] {
        connect(admin)
            .await
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .unwrap();
    }
}
