//! Finishing a migration (`ferry complete`, POST /api/complete) after a cutover under pgbench
//! through the proxy: nothing of Ferry's replication is left on either side, the source is as
//! documented, the state is exported (or kept), and the proxy keeps serving the target.

use std::time::{Duration, Instant};

use crate::harness::*;

/// The database's own settings (pg_db_role_setting, role 0) of the database `url` points at.
async fn db_settings(url: &str) -> Vec<String> {
    lines(
        &connect(url).await,
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
         WHERE d.datname = current_database() AND s.setrole = 0",
    )
    .await
}

/// Everything of Ferry's replication in the database `url` points at (and its cluster's
/// replication origins named after the database): slots, publications, origins.
async fn replication_objects(url: &str, db: &str) -> Vec<String> {
    let c = connect(url).await;
    let mut all = lines(
        &c,
        "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    all.extend(lines(&c, "SELECT 'publication ' || pubname FROM pg_publication").await);
    all.extend(
        c.query(
            "SELECT 'origin ' || roname FROM pg_replication_origin WHERE roname LIKE '%' || $1 || '%'",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0)),
    );
    all
}

fn port_of(url: &str) -> i32 {
    url.rsplit_once(':').unwrap().1.split('/').next().unwrap().parse().unwrap()
}

fn proxy_url(proxy: &str, db: &str) -> String {
    format!("postgres://postgres:ferry-test-pw@{proxy}/{db}")
}

/// A client through the proxy reads (and writes) the target.
async fn assert_proxy_serves_target(proxy: &str, dbs: &Dbs) {
    let c = connect(&proxy_url(proxy, &dbs.name)).await;
    let port: i32 = c.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port, port_of(&dbs.target), "the proxy does not lead to the target");
    let n: i64 = c.query_one("SELECT count(*) FROM pgbench_accounts", &[]).await.unwrap().get(0);
    assert_eq!(n, 100_000);
    c.batch_execute("INSERT INTO test_marker VALUES (424242) ON CONFLICT DO NOTHING")
        .await
        .unwrap();
}

/// Runs a verification through the API and waits until it ends clean.
async fn verify_clean(api: &str) {
    let token = crate::api_security::auto_token(api);
    let (code, body) = http("POST", api, "/api/verify", Some(&token)).await;
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["run"].as_i64().unwrap();
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

/// A cutover that must happen (retried like an operator would if a step ran late on this
/// shared machine).
fn cutover(api: &str) {
    let url = format!("http://{api}");
    for attempt in 1..=3 {
        let run = ferry(&["cutover", "--api", &url, "--json", "--max-pause", "2s"]);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
        eprintln!("cutover attempt {attempt}: {} {}", v["outcome"], v["reason"]);
        if v["outcome"] == "done" {
            return;
        }
        assert!(attempt < 3, "cutover did not happen: {}", run.all());
        std::thread::sleep(Duration::from_secs(2));
    }
}

async fn setup(prefix: &str) -> Dbs {
    let dbs = Dbs::create(prefix).await;
    pgbench_init(&dbs.source, 1).await;
    create_marker(&dbs.source).await;
    dbs
}

fn start(dbs: &Dbs, api: &str, proxy: &str) -> Migrator {
    Migrator::spawn(&refs(&migrate_args(dbs, &["--listen", api, "--proxy-listen", proxy])))
}

fn complete(args: &[&str]) -> (Run, serde_json::Value) {
    let mut all = vec!["complete", "--json"];
    all.extend_from_slice(args);
    // The record a completion writes goes to a scratch file, never into the source tree.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let scratch = std::env::temp_dir()
        .join(format!(
            "ferry-cpl-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ))
        .display()
        .to_string();
    if !args.contains(&"--record-file") {
        all.extend(["--record-file", scratch.as_str()]);
    }
    let run = ferry(&all);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    (run, v)
}

/// Through the API while pgbench writes through the proxy: complete verifies, stops reverse
/// replication, drops every slot, publication and origin on both sides, leaves the source
/// read-only, writes the record and drops the state schema; the proxy keeps serving the target
/// (pgbench never fails) until SIGTERM, when it drains and the process exits 0. A second
/// complete is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_through_the_api_under_pgbench() {
    let dbs = setup("cpl_api").await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy);
    wait_for_cdc(&dbs.target).await;
    verify_clean(&api).await;
    let url = format!("http://{api}");

    // Refused before cutover, with the phase and what to do.
    let (run, v) = complete(&["--api", &url]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(v["outcome"], "refused", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("phase cdc") && reason.contains("cut_over"), "{v}");
    assert!(v["fix"].as_str().unwrap().contains("ferry cutover"), "{v}");

    let bench = pgbench_run_rate(&proxy_url(&proxy, &dbs.name), 4, 25, 100);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cutover(&api);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dir = std::env::temp_dir().join(format!("ferry-complete-{}", dbs.name));
    let record = dir.join("record.json");
    let (run, v) = complete(&["--api", &url, "--record-file", record.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(v["outcome"], "done", "{v}");
    assert_eq!(v["verification"]["differences"], 0, "{v}");
    assert!(v["verification"]["rows_compared"].as_u64().unwrap() > 100_000, "{v}");
    assert_eq!(v["source_read_only"], true, "{v}");
    assert!(v["next_steps"].to_string().contains("ferry proxy"), "{v}");

    // Nothing of Ferry's replication is left on either side.
    assert_eq!(replication_objects(&dbs.source, &dbs.name).await, Vec::<String>::new());
    assert_eq!(replication_objects(&dbs.target, &dbs.name).await, Vec::<String>::new());
    // The source stays read-only (documented default); the state is in the file, not the target.
    assert!(db_settings(&dbs.source)
        .await
        .contains(&"default_transaction_read_only=on".to_string()));
    assert!(!has_state_schema(&dbs.target).await);
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(rec["format"], "ferry-migration-record/1");
    assert_eq!(rec["migration"]["phase"], "complete", "{rec}");
    assert!(rec["migration"]["consistent_lsn"].is_string(), "{rec}");
    let transitions = rec["tables"]["transitions"].to_string();
    assert!(transitions.contains("\"to_phase\":\"cut_over\"") && transitions.contains("\"to_phase\":\"complete\""));
    assert!(rec["tables"]["events"].to_string().contains("migration complete"));
    assert!(rec["tables"]["tables"].as_array().unwrap().len() >= 4, "{rec}");
    // The server keeps a copy too.
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".ferry");
    let server_copy = home.join(format!("ferry-{}-record.json", v["migration_id"].as_str().unwrap()));
    assert!(server_copy.exists(), "{}", server_copy.display());
    let _ = std::fs::remove_file(&server_copy);

    // The proxy still serves the target, with no migration behind it; pgbench never failed.
    assert_proxy_serves_target(&proxy, &dbs).await;
    let out = pgbench_finish(bench);
    eprintln!("{out}");
    let st = api_status(&api).await;
    assert_eq!(st["phase"], "complete", "{st}");

    // Again: harmless.
    let (run, v) = complete(&["--api", &url]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(v["outcome"], "already_complete", "{v}");
    assert_eq!(v["dropped"], serde_json::json!([]), "{v}");
    assert_proxy_serves_target(&proxy, &dbs).await;
    // Cutover and rollback are over.
    let run = ferry(&["rollback", "--api", &url, "--json"]);
    assert_eq!(run.code, 1, "{}", run.all());

    // SIGTERM: the proxy drains, the process exits 0, the address is free.
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("proxy drained"), "{}", run.stderr);
    assert!(std::net::TcpStream::connect(&proxy).is_err(), "the proxy still listens");
    let _ = std::fs::remove_dir_all(&dir);
    dbs.drop().await;
}

/// From the command line after `ferry migrate` stopped: refused before cutover and while
/// migrate runs; then complete with --keep-state (the schema stays, phase complete), rerun
/// (harmless), rerun with --source-writable (the source takes writes again); `ferry proxy`
/// serves the target with the same users and address, and drains on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_from_the_command_line_then_ferry_proxy() {
    let dbs = setup("cpl_cli").await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = start(&dbs, &api, &proxy);
    wait_for_cdc(&dbs.target).await;
    let direct = ["--source", dbs.source.as_str(), "--target", dbs.target.as_str()];

    // Before cutover: refused, naming the phase; nothing changed.
    let (run, v) = complete(&direct);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(v["reason"].as_str().unwrap().contains("phase cdc"), "{v}");
    assert!(!replication_objects(&dbs.source, &dbs.name).await.is_empty());

    verify_clean(&api).await;
    let bench = pgbench_run_rate(&proxy_url(&proxy, &dbs.name), 4, 8, 100);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cutover(&api);
    pgbench_finish(bench);
    // While migrate runs, the command line leaves it to the API.
    let (run, v) = complete(&direct);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(v["reason"].as_str().unwrap().contains("in use"), "{v}");
    assert!(v["fix"].as_str().unwrap().contains("--api"), "{v}");
    // Everything written on the target reached the source before migrate stops: a marker
    // written through the proxy after pgbench arrives there.
    connect(&proxy_url(&proxy, &dbs.name))
        .await
        .batch_execute("INSERT INTO test_marker VALUES (777)")
        .await
        .unwrap();
    wait_for_row(
        &dbs.source,
        "reverse replication to carry the last write on the target",
        Duration::from_secs(30),
        "SELECT 1 FROM test_marker WHERE n = 777",
    )
    .await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());

    // A write on the target that reverse replication never carried: complete stops, names it,
    // and changes nothing.
    connect(&dbs.target)
        .await
        .batch_execute("INSERT INTO test_marker VALUES (888)")
        .await
        .unwrap();
    let (run, v) = complete(&direct);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(v["outcome"], "different", "{v}");
    let named = v["differences"].to_string();
    assert!(
        named.contains("test_marker") && named.contains("n=888") && named.contains("on the target, not on the source"),
        "{v}"
    );
    assert!(v["fix"].as_str().unwrap().contains("start ferry migrate again"), "{v}");
    assert!(!replication_objects(&dbs.source, &dbs.name).await.is_empty());
    connect(&dbs.target)
        .await
        .batch_execute("DELETE FROM test_marker WHERE n = 888")
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("ferry-complete-{}", dbs.name));
    let record = dir.join("record.json");
    let mut args = direct.to_vec();
    args.extend(["--keep-state", "--record-file", record.to_str().unwrap()]);
    let (run, v) = complete(&args);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(v["outcome"], "done", "{v}");
    let dropped = v["dropped"].to_string();
    for what in [
        "replication slot",
        "publication",
        "replication origin",
        "on the source",
        "on the target",
    ] {
        assert!(dropped.contains(what), "{what} not in {dropped}");
    }
    assert_eq!(replication_objects(&dbs.source, &dbs.name).await, Vec::<String>::new());
    assert_eq!(replication_objects(&dbs.target, &dbs.name).await, Vec::<String>::new());
    assert!(has_state_schema(&dbs.target).await);
    let phase: String = connect(&dbs.target)
        .await
        .query_one("SELECT phase FROM ferry.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "complete");
    assert!(db_settings(&dbs.source)
        .await
        .contains(&"default_transaction_read_only=on".to_string()));
    assert!(record.exists());

    // Rerun: harmless; with --source-writable the source takes writes again.
    let (run, v) = complete(&args);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(v["outcome"], "already_complete", "{v}");
    args.push("--source-writable");
    let (run, v) = complete(&args);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(v["source_read_only"], false, "{v}");
    assert!(!db_settings(&dbs.source)
        .await
        .contains(&"default_transaction_read_only=on".to_string()));
    connect(&dbs.source)
        .await
        .batch_execute("INSERT INTO test_marker VALUES (-1)")
        .await
        .unwrap();
    // ferry migrate refuses to start again on a complete migration.
    let run = ferry(&refs(&migrate_args(&dbs, &[])));
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("is complete"), "{}", run.stderr);

    // The proxy alone, same users and address, serves the target until SIGTERM.
    let p = Migrator::spawn(&[
        "proxy",
        "--source",
        &dbs.source,
        "--target",
        &dbs.target,
        "--proxy-listen",
        &proxy,
        "--drain-timeout",
        "2s",
    ]);
    wait_for("ferry proxy to listen", Duration::from_secs(30), || async {
        std::net::TcpStream::connect(&proxy).is_ok()
    })
    .await;
    assert_proxy_serves_target(&proxy, &dbs).await;
    // A session left open is closed after the drain timeout.
    let open = connect(&proxy_url(&proxy, &dbs.name)).await;
    let run = p.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("proxy drained"), "{}", run.stderr);
    assert!(open.batch_execute("SELECT 1").await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
    dbs.drop().await;
}
