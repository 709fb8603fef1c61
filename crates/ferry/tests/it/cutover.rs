//! Cutover and rollback through the proxy, under a real pgbench load.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A TPC-B transaction plus a row in `tickets`, whose id comes from a sequence: a duplicate
/// value handed out on either side after a switch would fail the insert (and pgbench).
const SCRIPT: &str = r"\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO tickets (client) VALUES (:client_id);
END;
";

pub(crate) struct Bench {
    child: Child,
    log_dir: std::path::PathBuf,
}

/// pgbench through the proxy: `-M prepared`, per-second aggregates logged for the latency.
pub(crate) fn pgbench_via_proxy(proxy: &str, db: &str, clients: u32, seconds: u32, rate: u32) -> Bench {
    let dir = std::env::temp_dir().join(format!("ferry-cut-{}-{}", std::process::id(), db));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("tpcb_tickets.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let mut args: Vec<String> = vec![
        "-n".into(),
        "-h".into(),
        host.into(),
        "-p".into(),
        port.into(),
        "-U".into(),
        "postgres".into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        seconds.to_string(),
        "-M".into(),
        "prepared".into(),
        "-f".into(),
        script.display().to_string(),
        "-l".into(),
        "--aggregate-interval=1".into(),
        format!("--log-prefix={}", dir.join("agg").display()),
    ];
    if rate > 0 {
        args.extend(["-R".into(), rate.to_string()]);
    }
    args.push(db.into());
    let child = Command::new(env().pg_bin.join("pgbench"))
        .args(&args)
        .env("PGPASSWORD", "ferry-test-pw")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench");
    Bench { child, log_dir: dir }
}

/// Waits for pgbench; asserts no failed or aborted transaction; returns (output, transactions
/// processed, per-second (unix second, max latency ms)).
pub(crate) fn finish(b: Bench) -> (String, i64, Vec<(u64, f64)>) {
    let out = b.child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench failed (a client saw an error): {text}");
    assert!(!text.contains("aborted"), "{text}");
    assert!(text.contains("number of failed transactions: 0 "), "{text}");
    let n: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in: {text}"));
    let mut seconds = Vec::new();
    for entry in std::fs::read_dir(&b.log_dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("agg") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                // interval_start num_transactions sum_latency sum_latency_2 min_latency max_latency ...
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 6 {
                    seconds.push((f[0].parse().unwrap_or(0), f[5].parse::<f64>().unwrap_or(0.0) / 1000.0));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&b.log_dir);
    (text, n, seconds)
}

/// Longest transaction latency (ms) in the seconds around `at` (unix seconds).
fn max_latency_around(seconds: &[(u64, f64)], at: u64) -> f64 {
    seconds
        .iter()
        .filter(|(t, _)| *t + 1 >= at && *t <= at + 1)
        .map(|(_, l)| *l)
        .fold(0.0, f64::max)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn setup(prefix: &str) -> Dbs {
    prepare(Dbs::create(prefix).await).await
}

pub(crate) async fn prepare(dbs: Dbs) -> Dbs {
    pgbench_init(&dbs.source, 1).await;
    create_marker(&dbs.source).await;
    connect(&dbs.source)
        .await
        .batch_execute("CREATE TABLE tickets (id bigserial PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        .await
        .unwrap();
    dbs
}

pub(crate) fn start(dbs: &Dbs, api: &str, proxy: &str, extra: &[&str]) -> Migrator {
    let mut args = migrate_args(dbs, &["--listen", api, "--proxy-listen", proxy]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Migrator::spawn(&refs(&args))
}

/// Runs a verification through the API and waits until it ends clean.
pub(crate) async fn verify_clean(api: &str) {
    // The token `ferry migrate` wrote for its loopback listener.
    let token = crate::api_security::auto_token(api);
    let (code, body) = http("POST", api, "/api/verify", Some(&token)).await;
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["run"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = http("GET", api, &format!("/api/verify/{id}"), Some(&token)).await;
        let r: serde_json::Value = serde_json::from_str(&body).unwrap();
        if r["status"] != "running" {
            assert_eq!(r["status"], "identical", "{r}");
            return;
        }
        assert!(Instant::now() < deadline, "verification did not finish: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A switch that must happen: an abort (a step ran past --max-pause on this shared 2-core
/// machine) or a refusal leaves traffic where it was, so it is retried, up to 3 times, as an
/// operator would. Each attempt's outcome is printed.
pub(crate) fn switch_done(api: &str, what: &str, extra: &[&str]) -> (Run, serde_json::Value) {
    for attempt in 1..=3 {
        let (run, report) = switch(api, what, extra);
        eprintln!("{what} attempt {attempt}: {} {}", report["outcome"], report["reason"]);
        if report["outcome"] == "done" || attempt == 3 {
            return (run, report);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    unreachable!()
}

fn switch(api: &str, what: &str, extra: &[&str]) -> (Run, serde_json::Value) {
    let url = format!("http://{api}");
    let mut args = vec![what, "--api", &url, "--json"];
    args.extend_from_slice(extra);
    let run = ferry(&args);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    (run, v)
}

/// Every transaction pgbench completed left exactly one ticket on `url`, and no other ticket
/// is there.
pub(crate) async fn assert_every_ticket_once(url: &str, processed: i64) {
    let r = connect(url)
        .await
        .query_one("SELECT count(*), count(DISTINCT id) FROM tickets", &[])
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, i64>(0),
        processed,
        "tickets on the source vs transactions pgbench completed"
    );
    assert_eq!(r.get::<_, i64>(1), processed, "a ticket id twice");
}

pub(crate) async fn scalar_i64(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

pub(crate) async fn phase(target: &str) -> String {
    connect(target)
        .await
        .query_one("SELECT phase FROM ferry.migrations", &[])
        .await
        .unwrap()
        .get(0)
}

/// The whole story: pgbench (8 clients, 60 s, prepared statements) through the proxy across a
/// cutover and a rollback; not one transaction fails, the invariant holds on each side when
/// it takes the writes, every ticket (one per transaction, ids from a sequence) is on the
/// source at the end exactly once, and a session's SET and prepared statement survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_cutover_and_rollback_under_pgbench_lose_nothing() {
    let dbs = setup("cut").await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy, &[]);
    wait_for_cdc(&dbs.target).await;
    verify_clean(&api).await;

    // A long-lived application session through the proxy, with a SET and a prepared statement.
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let app_url = format!("postgres://postgres:ferry-test-pw@{host}:{port}/{}", dbs.name);
    let app = connect(&app_url).await;
    app.batch_execute("SET application_name = 'ferry-test-app-x'").await.unwrap();
    app.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let stmt = app
        .prepare("SELECT inet_server_port(), current_setting('application_name'), current_setting('work_mem'), $1::int + 1")
        .await
        .unwrap();
    let before = app.query_one(&stmt, &[&1i32]).await.unwrap();
    let source_port: i32 = before.get(0);

    let bench = pgbench_via_proxy(&proxy, &dbs.name, 8, 60, 0);
    tokio::time::sleep(Duration::from_secs(15)).await;

    // Cutover under load.
    let cut_at = unix_now();
    let (run, report) = switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    let cut_pause = report["pause_ms"].as_f64().unwrap();
    assert_eq!(phase(&dbs.target).await, "cut_over");
    // The same session, same statement: now on the target, its settings kept.
    let after = app.query_one(&stmt, &[&2i32]).await.unwrap();
    assert_ne!(after.get::<_, i32>(0), source_port, "the session did not move");
    assert_eq!(after.get::<_, String>(1), "ferry-test-app-x");
    assert_eq!(after.get::<_, String>(2), "7MB");
    assert_eq!(after.get::<_, i32>(3), 3);
    // The source is read-only for everyone but Ferry.
    let direct = connect(&dbs.source).await;
    let err = direct.batch_execute("INSERT INTO tickets (client) VALUES (-1)").await.unwrap_err();
    assert!(format!("{err:?}").contains("read-only"), "{err:?}");
    drop(direct);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(pgbench_invariant(&dbs.target).await, "invariant broken on the target after cutover");
    // Writes made on the target reach the source through reverse replication.
    let on_target = scalar_i64(&dbs.target, "SELECT max(id) FROM tickets").await;
    wait_for_row(
        &dbs.source,
        "a ticket written on the target after cutover to reach the source",
        Duration::from_secs(30),
        &format!("SELECT 1 FROM tickets WHERE id = {on_target}"),
    )
    .await;
    let st = api_status(&api).await;
    assert_eq!(st["live"]["proxy"]["upstream"], "target", "{st}");
    assert!(st["live"]["reverse"]["transactions"].as_u64().unwrap() > 0, "{st}");

    tokio::time::sleep(Duration::from_secs(12)).await;
    // Rollback under load.
    let last_on_target = scalar_i64(&dbs.target, "SELECT max(id) FROM tickets").await;
    let back_at = unix_now();
    let (run, report) = switch_done(&api, "rollback", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    let back_pause = report["pause_ms"].as_f64().unwrap();
    let again = app.query_one(&stmt, &[&3i32]).await.unwrap();
    assert_eq!(again.get::<_, i32>(0), source_port, "the session did not come back");
    assert_eq!(again.get::<_, String>(1), "ferry-test-app-x");
    // Everything written on the target before the rollback is on the source.
    assert!(
        scalar_i64(&dbs.source, &format!("SELECT count(*) FROM tickets WHERE id = {last_on_target}")).await == 1,
        "a ticket written on the target is missing on the source after rollback"
    );
    assert!(
        pgbench_invariant(&dbs.source).await,
        "invariant broken on the source after rollback"
    );

    let (text, processed, seconds) = finish(bench);
    let cut_latency = max_latency_around(&seconds, cut_at);
    let back_latency = max_latency_around(&seconds, back_at);
    eprintln!(
        "cutover pause {cut_pause:.1} ms (max txn latency around it {cut_latency:.1} ms); rollback pause {back_pause:.1} ms (max latency {back_latency:.1} ms); {processed} transactions\n{text}"
    );
    // Every transaction's ticket is on the source once, and only those.
    assert_every_ticket_once(&dbs.source, processed).await;
    assert_eq!(scalar_i64(&dbs.source, "SELECT count(*) FROM pgbench_history").await, processed);
    assert!(pgbench_invariant(&dbs.source).await);

    // Forward replication resumed: the target catches up and is identical again.
    wait_for_row(
        &dbs.target,
        "forward replication after rollback",
        Duration::from_secs(30),
        "SELECT 1 FROM ferry.migrations WHERE phase = 'cdc'",
    )
    .await;
    sync_point(&dbs.source, &dbs.target, 1).await;
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    // The reverse slot is gone from the target; the source takes writes again.
    assert!(slots(&env().target)
        .await
        .iter()
        .all(|s| !s.ends_with("_rev") || !s.contains(&dbs.name)));
    connect(&dbs.source)
        .await
        .batch_execute("INSERT INTO tickets (client) VALUES (-2)")
        .await
        .unwrap();
    drop(app);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}

/// A cutover that cannot finish in time (the target's applier is stuck behind a lock) aborts:
/// traffic stays on the source and no client sees an error; a direct session blocks a cutover
/// until allowed; a later cutover succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_cutover_aborts_when_the_target_lags_and_refuses_direct_sessions() {
    let dbs = setup("cutabort").await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy, &[]);
    wait_for_cdc(&dbs.target).await;
    // The API's status sample (once a second) has seen the migration.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api_status(&api).await["phase"] != "cdc" {
        assert!(Instant::now() < deadline, "the API never reported phase cdc");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Not verified yet: refused, with the reason.
    let (run, report) = switch(&api, "cutover", &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(report["outcome"], "no_go");
    assert!(report["reason"].as_str().unwrap().contains("no verification"), "{report}");
    verify_clean(&api).await;

    // A session connected to the source directly: refused, named.
    let direct = connect(&dbs.source).await;
    direct.batch_execute("SET application_name = 'payroll-batch'").await.unwrap();
    let (run, report) = switch(&api, "cutover", &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(report["reason"].as_str().unwrap().contains("payroll-batch"), "{report}");
    drop(direct);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let bench = pgbench_via_proxy(&proxy, &dbs.name, 4, 20, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Make the target miss the final position during the pause, deterministically: a session
    // of the application is in a transaction when the cutover starts (the hold waits for it),
    // and the row it commits takes the target's applier 20 s (a trigger that fires even for
    // replicated writes). The catch-up before the pause is over by the time it commits.
    let slow = connect(&dbs.target).await;
    slow.batch_execute(
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.client = -99 THEN PERFORM pg_sleep(20); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow_down BEFORE INSERT ON tickets FOR EACH ROW EXECUTE FUNCTION slow_down();
         ALTER TABLE tickets ENABLE ALWAYS TRIGGER slow_down;",
    )
    .await
    .unwrap();
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let app_url = format!("postgres://postgres:ferry-test-pw@{host}:{port}/{}", dbs.name);
    let app = connect(&app_url).await;
    let late = tokio::spawn(async move {
        app.batch_execute("BEGIN; INSERT INTO tickets (client) VALUES (-99); SELECT pg_sleep(6); COMMIT")
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (run, report) = switch(&api, "cutover", &["--max-pause", "10s"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(report["outcome"], "aborted", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("traffic stays on the source"), "{report}");
    assert!(
        reason.contains("did not apply the final position"),
        "the abort should name the step that ran late: {report}"
    );
    // The held transaction finished on the source, without an error.
    late.await.unwrap().expect("the application's transaction failed");
    assert_eq!(scalar_i64(&dbs.source, "SELECT count(*) FROM tickets WHERE client = -99").await, 1);
    assert_eq!(phase(&dbs.target).await, "cdc");
    // The source was made writable again, the reverse slot dropped.
    let c = connect(&dbs.source).await;
    let ro: String = c.query_one("SHOW default_transaction_read_only", &[]).await.unwrap().get(0);
    assert_eq!(ro, "off");
    drop(c);
    let (_, _, _) = finish(bench);

    // Once the backlog is applied (and the status has seen it), with the application still on
    // the proxy, the next cutover works.
    sync_point(&dbs.source, &dbs.target, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    verify_clean(&api).await;
    let (run, report) = switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    let st = api_status(&api).await;
    assert_eq!(st["live"]["proxy"]["upstream"], "target", "{st}");
    let (_, text) = http("GET", &api, "/metrics", None).await;
    assert!(metric(&text, "ferry_cutover_pause_seconds").unwrap() > 0.0, "{text}");
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    // Restarted after the cutover, ferry streams in reverse and the proxy points at the target.
    let m = start(&dbs, &api, &proxy, &[]);
    wait_for_proxy(&proxy).await;
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let app = connect(&format!("postgres://postgres:ferry-test-pw@{host}:{port}/{}", dbs.name)).await;
    app.batch_execute("INSERT INTO tickets (client) VALUES (77)").await.unwrap();
    wait_for_row(
        &dbs.source,
        "a write after the restart to reach the source",
        Duration::from_secs(30),
        "SELECT 1 FROM tickets WHERE client = 77",
    )
    .await;
    drop(app);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    // Giving up now removes what the cutover added: the reverse slot and publication on the
    // target and the replication origins on both sides; it says the source is read-only.
    let gone = ferry(&["abandon", "--yes", "--source", &dbs.source, "--target", &dbs.target]);
    assert_eq!(gone.code, 0, "{}", gone.all());
    assert!(gone.stdout.contains("read-only"), "{}", gone.all());
    for url in [&dbs.source, &dbs.target] {
        let c = connect(url).await;
        let left: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
                      + (SELECT count(*) FROM pg_publication)
                      + (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE '%' || $1 || '%')",
                &[&dbs.name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "slots, publications or origins left on {url} after abandon");
    }
    dbs.drop().await;
}

async fn wait_for_proxy(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the proxy did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Durability on: a cutover with no application traffic, then 30 s of nothing: the reverse
/// stream reports no lag (an idle stream is caught up, its lag does not grow with the clock),
/// the rollback is accepted at the first request, and what was written on the target before
/// the quiet spell is on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_durable_rollback_after_an_idle_cutover_is_accepted() {
    let dbs = prepare(Dbs::create_durable("didle").await).await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy, &[]);
    wait_for_cdc(&dbs.target).await;
    verify_clean(&api).await;
    let (run, report) = switch(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(report["outcome"], "done", "{report} {}", run.all());
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let app = connect(&format!("postgres://postgres:ferry-test-pw@{host}:{port}/{}", dbs.name)).await;
    app.batch_execute("INSERT INTO tickets (client) VALUES (4242)").await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let st = api_status(&api).await;
    let lag = st["live"]["reverse"]["lag_seconds"].as_f64().unwrap_or(f64::MAX);
    eprintln!("reverse stream after 30 s idle: {}", st["live"]["reverse"]);
    assert!(lag < 1.0, "an idle reverse stream reports {lag} s of lag: {st}");
    let (run, report) = switch(&api, "rollback", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    assert_eq!(scalar_i64(&dbs.source, "SELECT count(*) FROM tickets WHERE client = 4242").await, 1);
    drop(app);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}

/// Durability on, pgbench -c 8 through the proxy for 60 s: a verification, then a cutover
/// requested 5 s after it, then a rollback: both succeed at the first request (the cutover
/// waits for the catch-up after the verification's hold instead of refusing), not one
/// transaction fails, and every transaction's ticket is on the source once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_durable_cutover_and_rollback_right_after_a_verification_under_pgbench() {
    let dbs = prepare(Dbs::create_durable("dcut").await).await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy, &[]);
    wait_for_cdc(&dbs.target).await;
    let bench = pgbench_via_proxy(&proxy, &dbs.name, 8, 60, 0);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let verified = Instant::now();
    verify_clean(&api).await;
    eprintln!("verification under load took {:.1} s", verified.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lag = api_status(&api).await["lag_seconds"].clone();
    let (run, report) = switch(&api, "cutover", &["--max-pause", "2s"]);
    eprintln!("lag 5 s after the verification: {lag}; cutover: {report}");
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (run, report) = switch(&api, "rollback", &["--max-pause", "2s"]);
    eprintln!("rollback: {report}");
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    let (text, processed, _) = finish(bench);
    eprintln!("{text}");
    assert_every_ticket_once(&dbs.source, processed).await;
    assert!(pgbench_invariant(&dbs.source).await);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}

/// Ferry knows its own sessions by backend pid, not by name: a session connected to the source
/// directly that calls itself `ferry-fake` is named by the pre-check (the cutover through the
/// proxy is refused), and a cutover without a proxy ends it after the grace period while every
/// session of Ferry's own survives (exactly one terminated, change capture goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_names_and_ends_a_direct_session_calling_itself_ferry() {
    let dbs = Dbs::create("cutfake").await;
    create_marker(&dbs.source).await;
    connect(&dbs.source)
        .await
        .batch_execute("CREATE TABLE tickets (id bigserial PRIMARY KEY, client int NOT NULL); INSERT INTO tickets (client) SELECT g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy, &[]);
    wait_for_cdc(&dbs.target).await;
    api_wait(&api, "phase cdc in the API", Duration::from_secs(30), |s| s["phase"] == "cdc").await;
    verify_clean(&api).await;

    // A name is no identity: the session is listed, and the cutover through the proxy refused.
    let fake = connect(&format!("{}?application_name=ferry-fake", dbs.source)).await;
    let (run, report) = switch(&api, "cutover", &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(report["outcome"], "no_go", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 session(s) are connected to the source directly") && reason.contains("application 'ferry-fake'"),
        "{report}"
    );

    // Without the proxy: writers are ended after --grace, and only the fake one is a writer.
    let (run, report) = switch(&api, "cutover", &["--no-proxy", "--grace", "1s", "--max-pause", "10s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    let steps = report["steps"].to_string();
    assert!(
        steps.contains("(1 terminated)"),
        "only the fake session should have been ended: {report}"
    );
    assert!(
        fake.simple_query("SELECT 1").await.is_err(),
        "the fake session survived the cutover"
    );
    // Ferry's own sessions were spared: the reverse stream carries a write on the target back.
    connect(&dbs.target)
        .await
        .batch_execute("INSERT INTO tickets (client) VALUES (-7)")
        .await
        .unwrap();
    wait_for_row(
        &dbs.source,
        "a write on the target to reach the source after the cutover",
        Duration::from_secs(30),
        "SELECT 1 FROM tickets WHERE client = -7",
    )
    .await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}
