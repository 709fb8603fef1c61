//! The proxy's listener flags of `ferry migrate`: `--proxy-tls-cert`/`--proxy-tls-key`,
//! `--proxy-require-tls` and `--proxy-max-connections`, with libpq (psql) as the client.
//! (The proxy's TLS, upstream TLS and limits in depth: crates/ferry-proxy/tests/proxy.rs.)

use std::time::{Duration, Instant};

use crate::certs;
use crate::harness::*;

/// psql against the proxy at `addr` with `conninfo` added; (success, stdout, stderr).
fn psql(addr: &str, db: &str, extra: &str, sql: &str) -> (bool, String, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = std::process::Command::new(env().pg_bin.join("psql"))
        .args([
            &format!("host={host} port={port} user=postgres dbname={db} {extra}"),
            "-X",
            "-At",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", "ferry-test-pw")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_tls_flags() {
    let dbs = Dbs::create("proxy_tls").await;
    load_sample(&dbs.source, 100).await;
    let c = certs::get();
    let (cert, key) = (c.server_cert.display().to_string(), c.server_key.display().to_string());

    // Usage errors, before anything starts.
    let run = ferry(&refs(&migrate_args(
        &dbs,
        &["--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--proxy-require-tls"],
    )));
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("--proxy-require-tls needs --proxy-tls-cert"), "{}", run.all());
    let loose = c.dir.join("loose.key");
    std::fs::copy(&c.server_key, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let loose = loose.display().to_string();
    let run = ferry(&refs(&migrate_args(
        &dbs,
        &[
            "--listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--proxy-tls-cert",
            &cert,
            "--proxy-tls-key",
            &loose,
        ],
    )));
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("chmod 600"), "{}", run.all());
    let run = ferry(&refs(&migrate_args(
        &dbs,
        &["--proxy-listen", "127.0.0.1:0", "--proxy-tls-cert", &cert],
    )));
    assert_eq!(run.code, 2, "{}", run.all());

    // A proxy that requires TLS and serves one client at a time.
    let (api, proxy) = (free_addr(), free_addr());
    let args = migrate_args(
        &dbs,
        &[
            "--listen",
            &api,
            "--proxy-listen",
            &proxy,
            "--proxy-tls-cert",
            &cert,
            "--proxy-tls-key",
            &key,
            "--proxy-require-tls",
            "--proxy-max-connections",
            "1",
        ],
    );
    let m = Migrator::spawn(&refs(&args));
    let verify_full = format!("sslmode=verify-full sslrootcert={}", c.ca.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = psql(&proxy, &dbs.name, &verify_full, "select 40 + 2");
        if ok {
            assert_eq!(out, "42");
            break;
        }
        assert!(Instant::now() < deadline, "no TLS session through the proxy: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _, err) = psql(&proxy, &dbs.name, "sslmode=disable", "select 1");
    assert!(!ok && err.contains("this proxy accepts only TLS connections"), "{err}");
    // One session open; a second is refused with 53300.
    let busy = {
        let (proxy, db, vf) = (proxy.clone(), dbs.name.clone(), verify_full.clone());
        std::thread::spawn(move || psql(&proxy, &db, &vf, "select pg_sleep(3)"))
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, _, err) = psql(&proxy, &dbs.name, &verify_full, "select 1");
    assert!(!ok && err.contains("too many connections to the Ferry proxy"), "{err}");
    assert!(busy.join().unwrap().0);
    // Its place is free again once the proxy has seen it go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, err) = psql(&proxy, &dbs.name, &verify_full, "select 1");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.terminate();
    dbs.drop().await;
}
