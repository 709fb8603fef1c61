//! A MySQL/MariaDB migration on the control plane of PostgreSQL ones: `ferry migrate --source
//! mysql://... --listen ADDR` serves `/api/status` in the same shape, `/metrics` with the same
//! names, the dashboard, `ferry status --api`, pause and resume, verification (`ferry verify
//! --api`) and cutover (`ferry cutover --api`, then `--webhook`); rollback and complete answer
//! 409 saying why and what to do. Real MariaDB and PostgreSQL servers from scripts/test.sh, a
//! real browser for the dashboard.
//!
//! The cutover makes the MariaDB server read-only (server-wide): this test and the cutover test
//! of `mysql_cdc.rs` run one at a time (test group `mysql-read-only` in .config/nextest.toml).

use std::time::Duration;

use ferry_core::SourcePosition;
use serde_json::Value;

use crate::api::{by_id, dashboard_dom};
use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql, Writable};
use crate::mysql_cdc::{binlog_end, my_query, one_webhook};

/// Source transactions the writer makes, each one insert, one update and one delete.
const WRITES: i64 = 40;

fn position(st: &Value, field: &str) -> Option<SourcePosition> {
    st[field].as_str().map(|p| p.parse().unwrap_or_else(|e| panic!("{field} {p}: {e}")))
}

/// A GET with another `Host` header than the listener's: the raw answer's status line.
async fn status_line_with_host(addr: &str, host: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn mysql_migration_status_metrics_dashboard_verify_and_cutover_through_the_api() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myapi").await;
    let db = &dbs.name;
    // read_only is server-wide: whatever happens here, the server is writable afterwards.
    let _writable = Writable("FERRY_TEST_MYSQL");
    my_sql("FERRY_TEST_MYSQL", "SET GLOBAL read_only = OFF");
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO items SELECT seq, seq FROM seq_1_to_200;"
        ),
    );
    let token = "mysql-api-token-0123456789abcdef";
    let token_file = std::env::temp_dir().join(format!("ferry-token-{db}"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let token_arg = token_file.to_str().unwrap();

    // The PostgreSQL rules: a non-loopback address without a token is refused before anything
    // is changed.
    let run = ferry(&["migrate", "--source", &source, "--target", &target, "--listen", "0.0.0.0:0"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("refusing to serve the control API"), "{}", run.all());
    assert!(!has_state_schema(&target).await, "state was written before the refusal");

    let addr = free_addr();
    // The webhook the cutover through the API announces itself to.
    let (hook, hook_body) = one_webhook().await;
    let hook_url = format!("http://{hook}/switch");
    let m = Migrator::spawn(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--listen",
        &addr,
        "--api-token-file",
        token_arg,
        "--webhook",
        &hook_url,
    ]);
    let st = api_wait(&addr, "the binlog stream", Duration::from_secs(120), |st| {
        st["phase"] == "cdc" && st["live"]["stream_state"] == "streaming"
    })
    .await;
    // The shape of a PostgreSQL migration's status; what has no MySQL meaning is null.
    assert_eq!(st["source_engine"], "mysql", "{st}");
    for field in ["consistent_lsn", "applied_lsn", "retained_wal_bytes"] {
        assert!(st[field].is_null(), "{field} should be null for a MySQL source: {st}");
    }
    assert!(st["slot"].as_str().unwrap().starts_with("server_id "), "{st}");
    assert!(matches!(position(&st, "snapshot_position"), Some(SourcePosition::Mysql(_))), "{st}");
    let items = st["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.items")
        .unwrap_or_else(|| panic!("public.items missing: {st}"));
    assert_eq!(
        (items["state"].as_str(), items["rows_copied"].as_i64()),
        (Some("copied"), Some(200)),
        "{st}"
    );
    let phases: Vec<&str> = st["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(phases.last(), Some(&"cdc"), "{st}");
    assert_eq!(st["live"]["paused"], false);

    // Writes on the source: the applied position advances while they run, with a lag figure.
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for i in 1..=WRITES {
                my_sql(
                    "FERRY_TEST_MYSQL",
                    &format!(
                        "USE {db}; BEGIN;
                         INSERT INTO items VALUES ({}, {i});
                         UPDATE items SET v = v + 1000 WHERE id = {i};
                         DELETE FROM items WHERE id = {};
                         COMMIT;",
                        1000 + i,
                        100 + i
                    ),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut seen: Vec<SourcePosition> = Vec::new();
    let mut lag_seen = false;
    while !writer.is_finished() {
        let st = api_status(&addr).await;
        assert_eq!(st["phase"], "cdc", "{st}");
        lag_seen |= st["lag_seconds"].as_f64().is_some_and(|l| l >= 0.0);
        if let Some(p) = position(&st, "applied_position") {
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writer.join().unwrap();
    assert!(seen.len() >= 3, "the applied position did not follow the writes: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "positions went backwards: {seen:?}");
    assert!(lag_seen, "no lag figure while the writes were applied");

    // Caught up: the API's applied position reaches the source's binlog end, every change is
    // counted by operation, and the stored transaction count (sampled once a second) follows.
    let end = binlog_end("FERRY_TEST_MYSQL");
    let st = api_wait(&addr, "the stream to apply every write", Duration::from_secs(60), |st| {
        position(st, "applied_position").is_some_and(|p| p >= end)
            && st["events_applied"]["insert"] == WRITES
            && st["events_applied"]["update"] == WRITES
            && st["events_applied"]["delete"] == WRITES
            && st["transactions_applied"].as_i64().is_some_and(|n| n >= WRITES)
    })
    .await;
    assert!(matches!(position(&st, "source_position"), Some(SourcePosition::Mysql(_))), "{st}");
    assert_eq!(st["slot_active"], true, "{st}");
    assert!(st["live"]["history"].as_array().unwrap().len() >= 2, "{st}");
    // Other tests write to the same MariaDB server: caught up means within a few seconds.
    let st = api_wait(&addr, "the lag to come down", Duration::from_secs(30), |st| {
        st["lag_seconds"].as_f64().is_some_and(|l| l < 5.0) && st["lag_bytes"].is_i64()
    })
    .await;
    let id = st["migration_id"].as_str().unwrap().to_string();
    let t = connect(&target).await;
    let stored: String = t
        .query_one("SELECT applied_position FROM ferry.migrations WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("mysql:"), "{stored}");

    // /metrics: the same names as for a PostgreSQL source, the migration in the build info.
    let (code, text) = http("GET", &addr, "/metrics", None).await;
    assert_eq!(code, 200);
    let info = format!(
        "ferry_build_info{{version=\"{}\",migration=\"{id}\",source_engine=\"mysql\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&text, &info), Some(1.0), "{text}");
    for (series, want) in [
        ("ferry_up", 1.0),
        ("ferry_phase{phase=\"cdc\"}", 1.0),
        ("ferry_phase{phase=\"full_load\"}", 0.0),
        ("ferry_cdc_events_applied_total{op=\"insert\"}", WRITES as f64),
        ("ferry_cdc_events_applied_total{op=\"update\"}", WRITES as f64),
        ("ferry_cdc_events_applied_total{op=\"delete\"}", WRITES as f64),
        ("ferry_replication_stream_up", 1.0),
        ("ferry_slot_active", 1.0),
        ("ferry_cdc_paused", 0.0),
        ("ferry_rows_copied_total{table=\"public.items\"}", 200.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series}:\n{text}");
    }
    assert!(
        metric(&text, "ferry_cdc_transactions_applied_total").unwrap() >= WRITES as f64,
        "{text}"
    );
    for series in [
        "ferry_replication_lag_seconds",
        "ferry_replication_lag_bytes",
        "ferry_apply_errors_total",
    ] {
        assert!(metric(&text, series).is_some(), "{series} missing:\n{text}");
    }
    for name in crate::deploy::referenced_metrics() {
        assert!(
            text.lines().any(|l| l
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))),
            "deploy/ references {name}, which /metrics does not export for a MySQL source:\n{text}"
        );
    }

    // `ferry status --api` reads it.
    let run = ferry(&["status", "--api", &format!("http://{addr}")]);
    assert_eq!(run.code, 0, "{}", run.all());
    eprintln!("{}", run.stdout);
    for needle in ["MySQL/MariaDB source", "phase cdc", "applied up to mysql:", "lag: ", "now:"] {
        assert!(run.stdout.contains(needle), "{needle} not in:\n{}", run.stdout);
    }
    let run = ferry(&["status", "--api", &format!("http://{addr}"), "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (json["source_engine"].as_str(), json["phase"].as_str()),
        (Some("mysql"), Some("cdc"))
    );

    // The same guards as for PostgreSQL sources: Host must be this listener, POSTs need the
    // token; with it, a rollback before any cutover is refused saying why, complete says why it
    // is not offered and what to do, and neither changes anything.
    assert!(
        status_line_with_host(&addr, "evil.example").await.contains(" 403 "),
        "a foreign Host was served"
    );
    for path in [
        "/api/pause",
        "/api/resume",
        "/api/verify",
        "/api/cutover",
        "/api/rollback",
        "/api/complete",
    ] {
        let (code, body) = http("POST", &addr, path, None).await;
        assert_eq!(code, 401, "{path} without the token: {body}");
    }
    let (code, body) = http("POST", &addr, "/api/rollback", Some(token)).await;
    assert_eq!(code, 409, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["outcome"].as_str(), v["source_engine"].as_str()),
        (Some("no_go"), Some("mysql")),
        "{body}"
    );
    assert!(v["reason"].as_str().unwrap().contains("not cut over"), "{body}");
    let (code, body) = http("POST", &addr, "/api/complete", Some(token)).await;
    assert_eq!(code, 409, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not available for a MySQL/MariaDB source yet"),
        "{body}"
    );
    assert_eq!(v["source_engine"], "mysql", "{body}");
    assert!(v["fix"].as_str().unwrap().contains("ferry cutover --source"), "{body}");
    // Options that cannot apply to a MySQL source are refused, named, before anything runs.
    for (path, option) in [
        ("/api/cutover?catch_up_ms=1000", "catch_up_ms"),
        ("/api/cutover?no_proxy=false", "no_proxy"),
        ("/api/cutover?allow_direct_sessions=false", "allow_direct_sessions"),
        ("/api/verify?repair=true", "repair"),
    ] {
        let (code, body) = http("POST", &addr, path, Some(token)).await;
        assert_eq!(code, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains(option), "{path}: {body}");
    }
    // The command that uses rollback says it too.
    let api_url = format!("http://{addr}");
    let run = ferry(&["rollback", "--api", &api_url, "--api-token-file", token_arg]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("not cut over"), "{}", run.all());
    let st = api_status(&addr).await;
    assert_eq!(st["phase"], "cdc", "{st}");
    assert_eq!(st["live"]["stream_state"], "streaming", "{st}");

    // Pause: the stream ends at a transaction boundary, the change waits in the source's binlog
    // and the lag shows it; resume: it arrives.
    let (code, body) = http("POST", &addr, "/api/pause", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"paused\":true") && body.contains("\"changed\":true"), "{body}");
    api_wait(&addr, "the stream to stop", Duration::from_secs(30), |st| {
        st["live"]["stream_state"] == "paused" && st["slot_active"] == false
    })
    .await;
    my_sql("FERRY_TEST_MYSQL", &format!("USE {db}; INSERT INTO items VALUES (5000, 1)"));
    let st = api_wait(&addr, "the lag to show the paused change", Duration::from_secs(30), |st| {
        st["lag_bytes"].as_i64().unwrap_or(0) > 0 && st["lag_seconds"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    assert_eq!(st["live"]["paused"], true, "{st}");
    assert_eq!(st["events_applied"]["insert"], WRITES, "{st}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        t.query_opt("SELECT 1 FROM public.items WHERE id = 5000", &[])
            .await
            .unwrap()
            .is_none(),
        "a change arrived while change capture was paused"
    );
    let (_, text) = http("GET", &addr, "/metrics", None).await;
    assert_eq!(metric(&text, "ferry_cdc_paused"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "ferry_replication_stream_up"), Some(0.0), "{text}");
    let run = ferry(&["resume", "--api", &api_url, "--api-token-file", token_arg]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("change capture resumed"), "{}", run.all());
    wait_for_row(
        &target,
        "the change made while paused",
        Duration::from_secs(30),
        "SELECT 1 FROM public.items WHERE id = 5000",
    )
    .await;
    let st = api_wait(&addr, "the stream to run again", Duration::from_secs(30), |st| {
        st["live"]["stream_state"] == "streaming" && st["live"]["paused"] == false && st["events_applied"]["insert"] == WRITES + 1
    })
    .await;
    assert_eq!(st["phase"], "cdc", "{st}");
    let (code, body) = http("GET", &addr, "/api/events?after=0&limit=1000", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = http("GET", &addr, "/api/events?after=0&limit=1000", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    for needle in [
        "full load finished",
        "change capture paused by api 127.0.0.1",
        "change capture resumed by api 127.0.0.1",
    ] {
        assert!(body.contains(needle), "{needle} not in the event log: {body}");
    }

    // The dashboard in a real browser.
    let dom = dashboard_dom(&addr);
    assert_eq!(by_id(&dom, "phase"), "cdc", "{dom}");
    assert_eq!(by_id(&dom, "engine"), "MySQL/MariaDB source", "{dom}");
    assert!(by_id(&dom, "applied-position").starts_with("mysql:"), "{dom}");
    assert!(by_id(&dom, "source-position").starts_with("mysql:"), "{dom}");
    assert_ne!(by_id(&dom, "lag-seconds"), "-", "lag is not shown: {dom}");
    let shown: i64 = by_id(&dom, "txns-total")
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("transactions not shown: {dom}"));
    assert!(shown >= WRITES, "{shown} transactions shown: {dom}");
    assert!(dom.contains("<li class=\"current\" data-phase=\"cdc\">"), "{dom}");
    assert!(dom.contains("<li class=\"done\" data-phase=\"full_load\">"), "{dom}");
    assert!(dom.contains("data-table=\"public.items\""), "{dom}");

    // Verification through the API: the cross-engine comparison at one binlog position while
    // the stream runs, stored as a run and recorded for the cutover's pre-check.
    let verify = || ferry(&["verify", "--api", &api_url, "--api-token-file", token_arg]);
    let run = verify();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains(" 0 difference(s)")
            && run.stdout.contains("at source position binlog ")
            && run.stdout.contains("the target equals the source"),
        "{}",
        run.all()
    );
    let (tr, idr) = (&t, &id);
    let last_run = move || async move {
        let r = tr
            .query_one(
                "SELECT id, status, differences, report->>'source_lsn' FROM ferry.verify_runs WHERE migration_id = $1 ORDER BY id DESC LIMIT 1",
                &[idr],
            )
            .await
            .unwrap();
        (
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
            r.get::<_, Option<String>>(3),
        )
    };
    let (run_id, status, differences, at) = last_run().await;
    assert_eq!((status.as_str(), differences), ("identical", 0));
    assert!(at.as_deref().is_some_and(|a| a.starts_with("binlog ")), "{at:?}");
    let (code, body) = http("GET", &addr, &format!("/api/verify/{run_id}"), None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["differences"].as_i64()),
        (Some("identical"), Some(0)),
        "{body}"
    );
    let recorded = move || async move {
        tr.query_one("SELECT verify_differences FROM ferry.mysql_state WHERE migration_id = $1", &[idr])
            .await
            .unwrap()
            .get::<_, Option<i64>>(0)
    };
    assert_eq!(recorded().await, Some(0));

    // A difference planted on the target is found (exit 1, the row named), and the cutover's
    // pre-check sees it: refused, the source still writable.
    t.execute("UPDATE public.items SET v = -1 WHERE id = 150", &[]).await.unwrap();
    let run = verify();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("1 difference(s)") && run.stdout.contains("value differs:     id=150") && run.stdout.contains("DIFFERENT"),
        "{}",
        run.all()
    );
    let (_, status, differences, _) = last_run().await;
    assert_eq!((status.as_str(), differences), ("different", 1));
    assert_eq!(recorded().await, Some(1));
    let run = ferry(&["cutover", "--api", &api_url, "--api-token-file", token_arg, "--grace", "1s"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("the last verification found 1 difference(s)"), "{}", run.all());
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "0");
    let st = api_status(&addr).await;
    assert_eq!(st["phase"], "cdc", "{st}");
    t.execute("UPDATE public.items SET v = 150 WHERE id = 150", &[]).await.unwrap();
    let run = verify();
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(recorded().await, Some(0));

    // Cutover through the API: the source read-only, everything applied, the phase cut_over,
    // the webhook told; the stream ends and the API keeps serving the status.
    my_sql("FERRY_TEST_MYSQL", &format!("USE {db}; INSERT INTO items VALUES (6000, 6)"));
    let args: Vec<String> = ["cutover", "--api", &api_url, "--api-token-file", token_arg, "--grace", "1s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // In a blocking thread: the webhook listener runs on this test's runtime.
    let run = tokio::task::spawn_blocking(move || ferry(&refs(&args))).await.unwrap();
    assert_eq!(run.code, 0, "{}", run.all());
    eprintln!("{}", run.stdout);
    assert!(
        run.stdout.contains("cutover done: writes stopped on the source for")
            && run.stdout.contains("applied everything up to binlog ")
            && run.stdout.contains("point the application at the target now"),
        "{}",
        run.all()
    );
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "1");
    assert!(
        t.query_opt("SELECT 1 FROM public.items WHERE id = 6000", &[])
            .await
            .unwrap()
            .is_some(),
        "the last source write is not on the target"
    );
    let body = tokio::time::timeout(Duration::from_secs(15), hook_body)
        .await
        .expect("the webhook was not called")
        .unwrap();
    let hooked: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(hooked["event"], "cutover", "{body}");
    assert!(
        hooked["report"]["final_position"].as_str().unwrap().starts_with("binlog."),
        "{body}"
    );
    assert!(hooked["source"].is_string() && hooked["target"].is_string(), "{body}");
    let st = api_wait(&addr, "the phase cut_over", Duration::from_secs(30), |st| st["phase"] == "cut_over").await;
    // The reverse stream (target back to source) shows in the status as for a PostgreSQL source.
    t.execute("INSERT INTO public.items VALUES (6001, 61)", &[]).await.unwrap();
    api_wait(&addr, "the reverse stream's figures", Duration::from_secs(30), |st| {
        st["live"]["reverse"].is_object() && st["live"]["reverse"]["transactions"].as_i64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(
        my_query("FERRY_TEST_MYSQL", &format!("SELECT v FROM {db}.items WHERE id = 6001")).trim(),
        "61"
    );
    assert_eq!(st["live"]["last_switch"]["outcome"], "done", "{st}");
    assert_eq!(st["live"]["last_switch"]["source_engine"], "mysql", "{st}");
    let run = ferry(&["status", "--api", &api_url]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("phase cut_over"), "{}", run.all());
    // A second cutover is refused.
    let (code, body) = http("POST", &addr, "/api/cutover", Some(token)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("cut over already"), "{body}");
    // Rollback through the API: the source writable again, the phase back to cdc once the
    // stream turned around again.
    let run = ferry(&["rollback", "--api", &api_url, "--api-token-file", token_arg, "--grace", "1s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(my_query("FERRY_TEST_MYSQL", "SELECT @@GLOBAL.read_only").trim(), "0");
    api_wait(&addr, "the phase cdc after the rollback", Duration::from_secs(60), |st| {
        st["phase"] == "cdc"
    })
    .await;
    let (_, body) = http("GET", &addr, "/api/events?after=0&limit=1000", Some(token)).await;
    for needle in [
        "verification run",
        "verification: 1 difference(s)",
        "cut over at binlog",
        "the forward stream resumes at binlog",
    ] {
        assert!(body.contains(needle), "{needle} not in the event log: {body}");
    }

    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("was cut over"), "{}", run.all());
    assert!(run.stdout.contains("Stopped at binlog position"), "{}", run.all());
    assert!(!run.all().contains(token), "the token in the log");
    let run = ferry(&["status", "--api", &api_url]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("cannot reach the Ferry API"), "{}", run.all());
    let _ = std::fs::remove_file(&token_file);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}
