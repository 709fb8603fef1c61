//! The control API is safe by default: a token always (generated when none is given), Host and
//! Origin checks, bounded requests and bodies, row values only with the token, HTTPS, and a
//! webhook over HTTPS sent outside the switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// Where `ferry migrate` writes the token of a loopback listener without one.
pub(crate) fn auto_token_path(addr: &str) -> std::path::PathBuf {
    let port = addr.rsplit_once(':').unwrap().1;
    std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".ferry")
        .join(format!("api-{port}.token"))
}

/// The token `ferry migrate` generated for its listener at `addr` (host:port).
pub(crate) fn auto_token(addr: &str) -> String {
    let path = auto_token_path(addr);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no API token file {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// One raw HTTP/1.1 request (any headers, optional body): status and body, or the I/O error.
async fn raw(addr: &str, head: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(head.as_bytes()).await?;
    s.write_all(b"\r\n").await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// A request with these headers (`Connection: close` added).
async fn req(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    raw(addr, &head, b"").await.unwrap()
}

async fn fixture(dbs: &Dbs) {
    connect(&dbs.source)
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
}

/// Accepts HTTPS requests (the test CA's localhost certificate) and answers each after
/// `delay`; sends each request (head and body) on the channel, and sets `answered` once it answered.
async fn https_receiver(delay: Duration) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>, Arc<AtomicBool>) {
    let certs = crate::certs::get();
    let config = ferry_tls::server_config(&certs.server_cert, &certs.server_key).unwrap();
    let acceptor = ferry_tls::tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let answered = Arc::new(AtomicBool::new(false));
    let flag = answered.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(tcp).await else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
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
                        let _ = tx.send(text.clone());
                        tokio::time::sleep(delay).await;
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                        let _ = s.shutdown().await;
                        flag.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
        }
    });
    (addr, rx, answered)
}

#[tokio::test]
async fn api_needs_its_token_checks_origin_and_host_and_stays_bounded() {
    let dbs = Dbs::create("apisec").await;
    fixture(&dbs).await;
    let addr = free_addr();
    let token_path = auto_token_path(&addr);
    let _ = std::fs::remove_file(&token_path);
    let (hook, mut hooked, answered) = https_receiver(Duration::from_secs(3)).await;
    let hook_url = format!("https://127.0.0.1:{}/switched?secret=hook-s3cr3t", hook.rsplit_once(':').unwrap().1);
    let ca = crate::certs::get().ca.display().to_string();
    let args = migrate_args(&dbs, &["--listen", &addr, "--webhook", &hook_url, "--webhook-ca", &ca]);
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    // The status is sampled once a second: wait until it has seen change capture too.
    api_wait(&addr, "phase cdc in the API", Duration::from_secs(30), |s| s["phase"] == "cdc").await;

    // No token given: one was generated, in a file only this user can read.
    let token = auto_token(&addr);
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", token_path.display());
        let dir = std::fs::metadata(token_path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir & 0o077, 0, "~/.ferry is mode {dir:o}");
    }
    let host = addr.as_str();
    let bearer = format!("Bearer {token}");

    // Without the token, on loopback: refused, and nothing happened.
    let (code, body) = req(&addr, "POST", "/api/cutover", &[("host", host)]).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = req(&addr, "POST", "/api/pause", &[("host", host)]).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("api-PORT.token"), "{body}");
    let (code, _) = req(&addr, "GET", "/api/events", &[("host", host)]).await;
    assert_eq!(code, 401);
    // With the token, but from a web page elsewhere (a cross-site POST, DNS rebinding).
    let evil = [
        ("host", host),
        ("authorization", bearer.as_str()),
        ("origin", "http://evil.example"),
    ];
    let (code, body) = req(&addr, "POST", "/api/cutover", &evil).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("another origin"), "{body}");
    let (code, _) = req(&addr, "POST", "/api/pause", &evil).await;
    assert_eq!(code, 403);
    let (code, _) = req(
        &addr,
        "POST",
        "/api/pause",
        &[("host", host), ("authorization", &bearer), ("origin", "null")],
    )
    .await;
    assert_eq!(code, 403);
    let rebound = format!("evil.example:{}", addr.rsplit_once(':').unwrap().1);
    let (code, body) = req(&addr, "POST", "/api/pause", &[("host", &rebound), ("authorization", &bearer)]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Host"), "{body}");
    let (code, _) = req(&addr, "GET", "/api/status", &[("host", &rebound)]).await;
    assert_eq!(code, 403, "a rebound name reads nothing either");
    let (code, _) = req(&addr, "GET", "/metrics", &[("host", &rebound)]).await;
    assert_eq!(code, 200, "scrapers may use any name");
    let st = api_status(&addr).await;
    assert_eq!(st["phase"], "cdc");
    assert_eq!(st["live"]["paused"], false, "a refused request paused the migration: {st}");

    // With the token and no Origin (ferry, curl), or the same origin (the dashboard): works.
    let (code, body) = req(&addr, "POST", "/api/pause", &[("host", host), ("authorization", &bearer)]).await;
    assert_eq!(code, 200, "{body}");
    let same = format!("http://{addr}");
    let localhost = format!("localhost:{}", addr.rsplit_once(':').unwrap().1);
    let (code, body) = req(
        &addr,
        "POST",
        "/api/resume",
        &[
            ("host", &localhost),
            ("authorization", &bearer),
            ("origin", &format!("http://{localhost}")),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = req(&addr, "GET", "/api/status", &[("host", host), ("origin", &same)]).await;
    assert_eq!(code, 200);

    // The ferry commands find the generated token by themselves.
    let api = format!("http://{addr}");
    let run = ferry(&["pause", "--api", &api]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("change capture paused"), "{}", run.stdout);
    let run = ferry(&["resume", "--api", &api]);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = ferry_cmd(&["pause", "--api", &api])
        .env("FERRY_API_TOKEN", "not-the-token-0123456789")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", String::from_utf8_lossy(&run.stderr));

    // Bodies are bounded.
    let big = vec![b'x'; 100_000];
    let head = format!(
        "POST /api/pause HTTP/1.1\r\nhost: {host}\r\nauthorization: {bearer}\r\ncontent-length: {}\r\nconnection: close\r\n",
        big.len()
    );
    let (code, body) = raw(&addr, &head, &big).await.unwrap();
    assert_eq!(code, 413, "{body}");

    // A client that never finishes its headers is cut off (slowloris), in the background.
    let slow_addr = addr.clone();
    let slow = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(&slow_addr).await.unwrap();
        s.write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
        (started.elapsed(), n.map(|r| r.unwrap_or(0)))
    });

    // Row values: a verification that finds a difference shows the values with the token only.
    connect(&dbs.target)
        .await
        .batch_execute("UPDATE items SET name = 'target-only-value-xyzzy' WHERE id = 7")
        .await
        .unwrap();
    let (code, body) = req(&addr, "POST", "/api/verify", &[("host", host), ("authorization", &bearer)]).await;
    assert_eq!(code, 202, "{body}");
    let run_id = serde_json::from_str::<Value>(&body).unwrap()["run"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let open = loop {
        let (_, body) = req(&addr, "GET", &format!("/api/verify/{run_id}"), &[("host", host)]).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["status"] != "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "verification did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(open["status"], "different", "{open}");
    assert_eq!(open["differences"], 1, "{open}");
    assert_eq!(open["row_values_hidden"], true, "{open}");
    let text = open.to_string();
    assert!(
        !text.contains("xyzzy") && !text.contains("item 7") && !text.contains("id=7"),
        "row values without the token: {text}"
    );
    let (_, body) = req(
        &addr,
        "GET",
        &format!("/api/verify/{run_id}"),
        &[("host", host), ("authorization", &bearer)],
    )
    .await;
    assert!(body.contains("target-only-value-xyzzy") && body.contains("item 7"), "{body}");
    let (code, body) = req(&addr, "GET", "/api/events?after=0", &[("host", host), ("authorization", &bearer)]).await;
    assert_eq!(code, 200, "{body}");

    // Many requests at once: some are turned away at once, none waits forever, and the API is
    // healthy afterwards.
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let (a, h, b) = (addr.clone(), addr.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let head = format!("GET /api/events?after=0&limit=1000 HTTP/1.1\r\nhost: {h}\r\nauthorization: {b}\r\nconnection: close\r\n");
            tokio::time::timeout(Duration::from_secs(60), raw(&a, &head, b"")).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Ok((200, _))) => ok += 1,
            Ok(Ok((503, _))) => busy += 1,
            other => panic!("unexpected answer to a burst: {other:?}"),
        }
    }
    eprintln!("burst of 150: {ok} answered, {busy} turned away with 503");
    assert!(ok > 0 && busy > 0, "{ok} answered, {busy} turned away");
    let (code, _) = req(&addr, "GET", "/healthz", &[("host", host)]).await;
    assert_eq!(code, 200);
    let (code, _) = req(&addr, "GET", "/api/events", &[("host", host), ("authorization", &bearer)]).await;
    assert_eq!(code, 200);

    let (waited, read) = slow.await.unwrap();
    assert!(matches!(read, Ok(0)) || matches!(read, Ok(n) if n > 0), "{read:?}");
    assert!(
        waited < Duration::from_secs(25),
        "a client that never sent its headers was kept {waited:?}"
    );

    // A cutover (no proxy: the application would switch itself) is announced to the HTTPS
    // webhook, in the background: the switch's answer does not wait for the receiver.
    let path =
        "/api/cutover?no_proxy=true&skip_verify_check=true&allow_direct_sessions=true&grace_ms=500&max_pause_ms=20000&max_lag_ms=30000";
    let (code, body) = req(&addr, "POST", path, &[("host", host), ("authorization", &bearer)]).await;
    assert_eq!(code, 200, "{body}");
    assert!(!answered.load(Ordering::SeqCst), "the cutover's answer waited for the webhook");
    let got = tokio::time::timeout(Duration::from_secs(20), hooked.recv()).await.unwrap().unwrap();
    assert!(got.starts_with("POST /switched?secret=hook-s3cr3t HTTP/1.1"), "{got}");
    let body: Value = serde_json::from_str(got.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["event"], "cut_over", "{body}");
    assert_eq!(body["report"]["outcome"], "done", "{body}");
    wait_for("the webhook to be answered", Duration::from_secs(20), || {
        let a = answered.clone();
        async move { a.load(Ordering::SeqCst) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(&token_path.display().to_string()),
        "the token file is not logged: {}",
        run.stderr
    );
    assert!(!run.stderr.contains(&token), "the token is in the log");
    assert!(
        !run.stderr.contains("hook-s3cr3t"),
        "the webhook's secret is in the log: {}",
        run.stderr
    );
    assert!(run.stderr.contains("switch announced to the webhook"), "{}", run.stderr);
    dbs.drop().await;
}

#[tokio::test]
async fn api_over_https() {
    let dbs = Dbs::create("apitls").await;
    fixture(&dbs).await;
    let certs = crate::certs::get();
    let addr = free_addr();
    let port = addr.rsplit_once(':').unwrap().1.to_string();
    let args = migrate_args(
        &dbs,
        &[
            "--listen",
            &addr,
            "--api-tls-cert",
            certs.server_cert.to_str().unwrap(),
            "--api-tls-key",
            certs.server_key.to_str().unwrap(),
        ],
    );
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    let ca = certs.ca.to_str().unwrap();
    let https = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let run = ferry(&["status", "--api", &https, "--api-ca", ca]);
        if run.code == 0 || Instant::now() > deadline {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("phase cdc"), "{}", run.stdout);
    // A control command over HTTPS, by name, with the generated token.
    let run = ferry(&["pause", "--api", &format!("https://localhost:{port}"), "--api-ca", ca]);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = ferry(&["resume", "--api", &https, "--api-ca", ca]);
    assert_eq!(run.code, 0, "{}", run.all());
    // Plain HTTP to the HTTPS port: said plainly.
    let run = ferry(&["status", "--api", &format!("http://{addr}")]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("serves HTTPS") && run.stderr.contains("https://"),
        "{}",
        run.stderr
    );
    // A CA that did not sign the certificate: refused, with why.
    let run = ferry(&["status", "--api", &https, "--api-ca", certs.other_ca.to_str().unwrap()]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not signed by a trusted CA"), "{}", run.stderr);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("https://{addr}/")), "{}", run.stderr);
    dbs.drop().await;
}

#[tokio::test]
async fn api_bad_webhooks_and_loose_token_files_are_refused_at_start() {
    let dbs = Dbs::create("apibad").await;
    for (hook, says) in [
        ("ftp://hooks.example.com/x", "unknown scheme"),
        ("hooks.example.com/x", "is not a URL"),
        ("https:///x", "no host"),
        ("http://h:notaport/x", "bad port"),
    ] {
        let args = migrate_args(&dbs, &["--webhook", hook]);
        let run = ferry(&refs(&args));
        assert_eq!(run.code, 2, "{hook}: {}", run.all());
        assert!(run.stderr.contains(says), "{hook}: {}", run.stderr);
    }
    // A secret in the URL is not repeated in the refusal.
    let args = migrate_args(&dbs, &["--webhook", "gopher://user:hunter2@h/x?token=zzz"]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2);
    assert!(!run.all().contains("hunter2") && !run.all().contains("zzz"), "{}", run.all());
    // An unreadable CA file for an https webhook: at start, not at cutover.
    let args = migrate_args(
        &dbs,
        &["--webhook", "https://hooks.example.com/x", "--webhook-ca", "/nonexistent/ca.crt"],
    );
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("/nonexistent/ca.crt"), "{}", run.stderr);
    // A token file others can read.
    let loose = std::env::temp_dir().join(format!("ferry-loose-token-{}", dbs.name));
    std::fs::write(&loose, "0123456789abcdef0123456789abcdef\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let args = migrate_args(&dbs, &["--listen", "127.0.0.1:0", "--api-token-file", loose.to_str().unwrap()]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains(&format!("chmod 600 {}", loose.display())), "{}", run.stderr);
    let run = ferry(&["pause", "--api", "http://127.0.0.1:9", "--api-token-file", loose.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    // HTTPS needs both files, and a key only its owner can read.
    let certs = crate::certs::get();
    let args = migrate_args(
        &dbs,
        &["--listen", "127.0.0.1:0", "--api-tls-cert", certs.server_cert.to_str().unwrap()],
    );
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.all());
    let _ = std::fs::remove_file(&loose);
    dbs.drop().await;
}
