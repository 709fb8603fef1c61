//! The HTTP API, metrics, dashboard and state machine of a running `ferry migrate`.
//!
//! To see the full load and the post-load phase while they run, whatever the machine's speed,
//! the fixture's `slow` table has a CHECK constraint and an expression index calling a function
//! that sleeps a millisecond per row, but only where `ferry_test.slow = on`: on the target
//! database. Its copy and its index build then take seconds on the target, and nowhere else.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Rows of 4 kB: the 16 MB of the table's COPY stream outgrow the socket buffers, so the rows
/// counted as sent follow the target's pace.
const SLOW_ROWS: i64 = 4000;

async fn slow_fixture(dbs: &Dbs) {
    connect(&dbs.source)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION public.slow_on_target(n int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN
                 IF current_setting('ferry_test.slow', true) = 'on' THEN PERFORM pg_sleep(0.001); END IF;
                 RETURN n IS NOT NULL;
             END $$;
             CREATE TABLE slow (id int PRIMARY KEY, v text, CHECK (public.slow_on_target(id)));
             INSERT INTO slow SELECT g, repeat(md5(g::text), 128) FROM generate_series(1, {SLOW_ROWS}) g;
             CREATE INDEX slow_expr ON slow ((public.slow_on_target(id)));
             CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, qty int);
             INSERT INTO items (name, qty) SELECT 'item ' || g, g FROM generate_series(1, 20000) g;
             ANALYZE;"
        ))
        .await
        .unwrap();
    connect(&env().target)
        .await
        .batch_execute(&format!("ALTER DATABASE {} SET ferry_test.slow = 'on'", dbs.name))
        .await
        .unwrap();
}

fn table<'a>(st: &'a Value, name: &str) -> &'a Value {
    find_table(st, name).unwrap_or_else(|| panic!("{name} missing from status {st}"))
}

fn find_table<'a>(st: &'a Value, name: &str) -> Option<&'a Value> {
    st["tables"].as_array().and_then(|ts| ts.iter().find(|t| t["table"] == name))
}

/// The dashboard, rendered by headless Chromium after its scripts ran: the DOM as text.
pub(crate) fn dashboard_dom(addr: &str) -> String {
    let chromium = std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let out = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=4000",
            "--dump-dom",
            &format!("http://{addr}/"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {chromium} (scripts/install.sh installs Debian's chromium): {e}"));
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The text of the element with this id in a dumped DOM.
pub(crate) fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the dashboard"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

#[tokio::test]
async fn heavy_api_metrics_and_dashboard_follow_a_migration() {
    let dbs = Dbs::create("api").await;
    slow_fixture(&dbs).await;
    let token = "api-test-token-0123456789abcdef";
    let token_file = std::env::temp_dir().join(format!("ferry-token-{}", dbs.name));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let addr = free_addr();
    let args = migrate_args(&dbs, &["--listen", &addr, "--api-token-file", token_file.to_str().unwrap()]);
    let m = Migrator::spawn(&refs(&args));

    // During the full load: phase, per-table state and rows in flight, in the API and metrics.
    let st = api_wait(&addr, "the slow table's copy to be under way", Duration::from_secs(60), |st| {
        st["phase"] == "full_load" && find_table(st, "public.slow").is_some_and(|t| t["rows_copied"].as_i64().unwrap_or(0) > 0)
    })
    .await;
    let slow = table(&st, "public.slow");
    assert_eq!(slow["state"], "copying", "{st}");
    assert!(slow["rows_copied"].as_i64().unwrap() < SLOW_ROWS, "{st}");
    assert_eq!(slow["rows_estimate"].as_i64(), Some(SLOW_ROWS), "{st}");
    assert_eq!(st["transitions"].as_array().unwrap().last().unwrap()["to"], "full_load", "{st}");
    let (code, text) = http("GET", &addr, "/metrics", None).await;
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "ferry_phase{phase=\"full_load\"}"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "ferry_phase{phase=\"cdc\"}"), Some(0.0), "{text}");
    let copied_then = metric(&text, "ferry_rows_copied_total{table=\"public.slow\"}").unwrap();
    assert!(copied_then > 0.0 && copied_then < SLOW_ROWS as f64, "{text}");
    assert_eq!(
        metric(&text, "ferry_table_rows_estimate{table=\"public.slow\"}"),
        Some(SLOW_ROWS as f64)
    );

    // The dashboard in a real browser shows the phase and the table's progress.
    let dom = dashboard_dom(&addr);
    assert_eq!(by_id(&dom, "phase"), "full_load", "{dom}");
    assert!(dom.contains("data-table=\"public.slow\""), "{dom}");
    assert!(dom.contains("<li class=\"current\" data-phase=\"full_load\">"), "{dom}");
    let row = &dom[dom.find("data-table=\"public.slow\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("copying") && row.contains("class=\"pct\""), "{row}");

    // Control endpoints before change capture: refused by the state machine, and by the token.
    let (code, body) = http("POST", &addr, "/api/pause", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = http("POST", &addr, "/api/pause", Some("wrong-token-wrong-token")).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = http("POST", &addr, "/api/cutover", Some(token)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("cannot move to cutover") && body.contains("full_load"), "{body}");

    // The counter moves while rows are copied.
    wait_for("the rows-copied counter to move", Duration::from_secs(60), || {
        let addr = addr.clone();
        async move {
            let (_, text) = http("GET", &addr, "/metrics", None).await;
            metric(&text, "ferry_rows_copied_total{table=\"public.slow\"}").unwrap_or(0.0) > copied_then
        }
    })
    .await;

    // The index build (post_load) is seen too, then change capture.
    api_wait(&addr, "the post-load phase", Duration::from_secs(60), |st| {
        st["phase"] == "post_load" || st["phase"] == "cdc"
    })
    .await;
    let st = api_wait(&addr, "change capture", Duration::from_secs(120), |st| st["phase"] == "cdc").await;
    assert_eq!(table(&st, "public.slow")["rows_copied"].as_i64(), Some(SLOW_ROWS));
    assert_eq!(table(&st, "public.slow")["state"], "copied");
    let phases: Vec<&str> = st["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["assess", "schema", "full_load", "post_load", "cdc"], "{st}");
    assert!(st["transitions"].as_array().unwrap().iter().all(|t| t["actor"] == "ferry migrate"));

    // Changes: counters and rates move.
    let src = connect(&dbs.source).await;
    src.batch_execute(
        "INSERT INTO items (name, qty) SELECT 'new ' || g, g FROM generate_series(1, 500) g;
         UPDATE items SET qty = qty + 1 WHERE id <= 300;
         DELETE FROM items WHERE id > 19900 AND id <= 20000;",
    )
    .await
    .unwrap();
    let st = api_wait(&addr, "the changes to be applied", Duration::from_secs(60), |st| {
        st["events_applied"]["insert"] == 500 && st["events_applied"]["update"] == 300 && st["events_applied"]["delete"] == 100
    })
    .await;
    assert!(st["transactions_applied"].as_i64().unwrap() >= 1, "{st}");
    assert!(st["live"]["history"].as_array().unwrap().len() >= 2, "{st}");
    let (_, text) = http("GET", &addr, "/metrics", None).await;
    assert_eq!(
        metric(&text, "ferry_cdc_events_applied_total{op=\"insert\"}"),
        Some(500.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferry_cdc_events_applied_total{op=\"delete\"}"),
        Some(100.0),
        "{text}"
    );
    assert!(metric(&text, "ferry_cdc_transactions_applied_total").unwrap() >= 1.0);
    assert_eq!(metric(&text, "ferry_phase{phase=\"cdc\"}"), Some(1.0));
    assert_eq!(metric(&text, "ferry_slot_active"), Some(1.0));
    assert_eq!(metric(&text, "ferry_dead_letters_total"), Some(0.0));
    assert!(metric(&text, "ferry_replication_lag_bytes").is_some());
    assert!(metric(&text, "ferry_slot_retained_wal_bytes").is_some());

    // Every metric the Grafana dashboard and the alert rules use is exported.
    for name in crate::deploy::referenced_metrics() {
        assert!(
            text.lines().any(|l| l
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))),
            "deploy/ references {name}, which /metrics does not export:\n{text}"
        );
    }

    // Pause: changes wait in the slot and lag shows it; resume: they arrive.
    let (code, body) = http("POST", &addr, "/api/pause", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    api_wait(&addr, "the stream to stop", Duration::from_secs(30), |st| {
        st["slot_active"] == false
    })
    .await;
    src.execute("INSERT INTO items (name, qty) VALUES ('while paused', 1)", &[])
        .await
        .unwrap();
    let st = api_wait(&addr, "lag to show the paused change", Duration::from_secs(30), |st| {
        st["lag_bytes"].as_i64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(st["live"]["paused"], true);
    let tgt = connect(&dbs.target).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tgt.query_opt("SELECT 1 FROM items WHERE name = 'while paused'", &[])
            .await
            .unwrap()
            .is_none(),
        "a change arrived while change capture was paused"
    );
    let (_, text) = http("GET", &addr, "/metrics", None).await;
    assert_eq!(metric(&text, "ferry_cdc_paused"), Some(1.0));
    let (code, body) = http("POST", &addr, "/api/verify", Some(token)).await;
    assert_eq!(code, 409, "no verification while paused: {body}");
    assert!(body.contains("paused"), "{body}");
    let (code, body) = http("POST", &addr, "/api/resume", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    wait_for_row(
        &dbs.target,
        "the paused change",
        Duration::from_secs(30),
        "SELECT 1 FROM items WHERE name = 'while paused'",
    )
    .await;

    // The state machine refuses what the phase does not allow; steps of later issues say so.
    let (code, body) = http("POST", &addr, "/api/rollback", Some(token)).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("cannot move to rollback") && body.contains("verify, cutover, complete"),
        "{body}"
    );
    // Cutover is refused with its reasons: this migration runs without the proxy and has not
    // been verified.
    let (code, body) = http("POST", &addr, "/api/cutover", Some(token)).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("no_go") && body.contains("no proxy is running") && body.contains("no verification"),
        "{body}"
    );

    // The event log has the pause, by whom.
    let (code, body) = http("GET", &addr, "/api/events?after=0&limit=1000", None).await;
    assert_eq!(code, 401, "the event log needs the token: {body}");
    let (code, body) = http("GET", &addr, "/api/events?after=0&limit=1000", Some(token)).await;
    assert_eq!(code, 200);
    let events: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"paused") && kinds.contains(&"resumed"), "{body}");
    assert!(body.contains("change capture paused by api 127.0.0.1"), "{body}");
    assert!(!body.contains("ferry-test-pw"), "a password in the event log: {body}");

    // The dashboard during change capture; a screenshot for the docs when asked.
    let dom = dashboard_dom(&addr);
    assert_eq!(by_id(&dom, "phase"), "cdc", "{dom}");
    assert_ne!(by_id(&dom, "lag-seconds"), "-", "lag is not shown: {dom}");
    assert_ne!(by_id(&dom, "lag-bytes"), "-", "lag is not shown: {dom}");
    let shown: i64 = by_id(&dom, "txns-total")
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("transactions not shown: {dom}"));
    assert!(
        shown >= st["transactions_applied"].as_i64().unwrap(),
        "{shown} transactions shown: {dom}"
    );
    assert!(dom.contains("<li class=\"current\" data-phase=\"cdc\">"), "{dom}");
    assert!(dom.contains("<li class=\"done\" data-phase=\"full_load\">"), "{dom}");
    if let Ok(path) = std::env::var("FERRY_DASHBOARD_SCREENSHOT") {
        let status = std::process::Command::new(std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "chromium".into()))
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1280,1100",
                "--virtual-time-budget=4000",
                &format!("--screenshot={path}"),
                &format!("http://{addr}/"),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    // `ferry status` is a client of the API.
    let run = ferry(&["status", "--api", &format!("http://{addr}")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("phase cdc") && run.stdout.contains("now:"), "{}", run.stdout);
    let run = ferry(&["status", "--api", &format!("http://{addr}"), "--json"]);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["phase"], "cdc");

    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("ferry-test-pw"), "password in the log");
    let run = ferry(&["status", "--api", &format!("http://{addr}")]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("cannot reach the Ferry API") && run.stderr.contains("--target"),
        "{}",
        run.stderr
    );
    // Sequences are set at the full load and at cutover, not streamed (docs/decisions.md).
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    let _ = std::fs::remove_file(&token_file);
    dbs.drop().await;
}

#[tokio::test]
async fn control_api_beyond_loopback_needs_a_token() {
    let dbs = Dbs::create("apitoken").await;
    let args = migrate_args(&dbs, &["--listen", "0.0.0.0:0"]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("without a token") && run.stderr.contains("--api-token-file"),
        "{}",
        run.stderr
    );
    let short = std::env::temp_dir().join(format!("ferry-short-token-{}", dbs.name));
    std::fs::write(&short, "abc").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let args = migrate_args(&dbs, &["--listen", "0.0.0.0:0", "--api-token-file", short.to_str().unwrap()]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("shorter than 16"), "{}", run.stderr);
    let args = migrate_args(&dbs, &["--listen", "nowhere"]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is not an address"), "{}", run.stderr);
    // A port already taken: said plainly, with what to do.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = migrate_args(&dbs, &["--listen", &addr]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot listen on") && run.stderr.contains("--listen off"),
        "{}",
        run.stderr
    );
    let _ = std::fs::remove_file(&short);
    dbs.drop().await;
}

/// Stopped (kill -9 or SIGTERM) in each phase it can be caught in, a migration resumes and ends
/// identical; every restart is in the transitions log.
#[tokio::test]
async fn heavy_restart_in_every_phase() {
    let dbs = Dbs::create("phases").await;
    slow_fixture(&dbs).await;
    let args = migrate_args(&dbs, &[]);
    let phase_is = |p: &'static str| format!("SELECT 1 FROM ferry.migrations WHERE phase = '{p}'");

    let m = Migrator::spawn(&refs(&args));
    wait_for_row(&dbs.target, "the full load", Duration::from_secs(60), &phase_is("full_load")).await;
    m.kill9();
    let m = Migrator::spawn(&refs(&args));
    wait_for_row(&dbs.target, "the post-load phase", Duration::from_secs(120), &phase_is("post_load")).await;
    m.kill9();
    // This run logs JSON: one object per line, phase changes with their fields.
    let json_args = migrate_args(&dbs, &["--log-format", "json"]);
    let m = Migrator::spawn(&refs(&json_args));
    wait_for_cdc(&dbs.target).await;
    connect(&dbs.source)
        .await
        .batch_execute("UPDATE items SET qty = -qty WHERE id % 7 = 0")
        .await
        .unwrap();
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let logs: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let change = logs
        .iter()
        .find(|l| l["fields"]["message"] == "phase changed")
        .unwrap_or_else(|| panic!("no phase change logged: {}", run.stderr));
    assert_eq!(
        (change["fields"]["from"].as_str(), change["fields"]["to"].as_str()),
        (Some("post_load"), Some("cdc")),
        "{change}"
    );
    assert_eq!(change["fields"]["actor"], "ferry migrate");
    assert!(logs.iter().any(|l| l["level"] == "INFO" && l["timestamp"].is_string()));
    assert!(!run.stderr.contains("ferry-test-pw"), "password in the log");
    let m = Migrator::spawn(&refs(&args));
    connect(&dbs.source)
        .await
        .batch_execute("INSERT INTO items (name) VALUES ('after restarts')")
        .await
        .unwrap();
    wait_for_row(
        &dbs.target,
        "the last change",
        Duration::from_secs(60),
        "SELECT 1 FROM items WHERE name = 'after restarts'",
    )
    .await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Sequences are set at the full load and at cutover, not streamed (docs/decisions.md).
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;

    let t = connect(&dbs.target).await;
    let rows = t
        .query(
            "SELECT coalesce(from_phase, '-') || '>' || to_phase FROM ferry.transitions ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let path: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for step in [
        "->assess",
        "assess>schema",
        "schema>full_load",
        "full_load>full_load",
        "full_load>post_load",
        "post_load>post_load",
        "post_load>cdc",
        "cdc>cdc",
    ] {
        assert!(path.iter().any(|p| p == step), "{step} missing from {path:?}");
    }
    // Never backwards.
    let order = ["assess", "schema", "full_load", "post_load", "cdc"];
    for p in &path {
        let (from, to) = p.split_once('>').unwrap();
        if from != "-" {
            let (a, b) = (
                order.iter().position(|x| *x == from).unwrap(),
                order.iter().position(|x| *x == to).unwrap(),
            );
            assert!(b == a || b == a + 1, "illegal transition {p} recorded: {path:?}");
        }
    }
    dbs.drop().await;
}
