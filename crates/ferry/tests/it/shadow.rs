//! Shadow traffic through the proxy: the application's read-only statements run again on the
//! target, and what verification cannot see is found there.

use std::time::{Duration, Instant};

use crate::harness::*;

fn shadow(api: &str, args: &[&str]) -> Run {
    let url = format!("http://{api}");
    let mut all = vec!["shadow"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--api", &url]);
    ferry(&all)
}

async fn report(api: &str) -> serde_json::Value {
    let token = crate::api_security::auto_token(api);
    let (code, body) = http("GET", api, "/api/shadow?top=500", Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn find<'a>(r: &'a serde_json::Value, fingerprint: &str) -> &'a serde_json::Value {
    r["fingerprints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fingerprint"] == fingerprint)
        .unwrap_or_else(|| panic!("no fingerprint {fingerprint:?} in {r:#}"))
}

/// Waits until the workers have taken every queued sample: the executions stop growing.
async fn settled(api: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1i64;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = report(api).await;
        let n = r["executions"].as_i64().unwrap();
        if n == last && r["pending"] == 0 {
            return r;
        }
        assert!(Instant::now() < deadline, "shadow traffic never settled: {r}");
        last = n;
    }
}

/// Planted on the target after the load, where verification (rows equal) cannot see them: a
/// dropped index, a column with another collation, a function that returns another value, a
/// missing GRANT. Shadow traffic at 100% finds each, and reports nothing under pgbench's own
/// select-only queries; the opt-in Go/NoGo refuses a cutover with the mismatch named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_traffic_finds_what_differs_on_the_target_and_nothing_on_a_clean_one() {
    let dbs = crate::cutover::prepare(Dbs::create("shadow").await).await;
    let role = format!("app_{}", dbs.name);
    for url in [&dbs.source, &dbs.target] {
        connect(url)
            .await
            .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'app-pw'"))
            .await
            .unwrap();
    }
    let src = connect(&dbs.source).await;
    src.batch_execute(&format!(
        "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, city text NOT NULL);
         INSERT INTO people SELECT i, (ARRAY['alice','Bob','carol','Dave','éric','Zoe'])[1 + i % 6] || i, 'city' || (i % 100)
           FROM generate_series(1, 200000) i;
         CREATE INDEX people_city ON people (city);
         CREATE TABLE secrets (id int PRIMARY KEY, v text);
         INSERT INTO secrets VALUES (1, 'x');
         CREATE FUNCTION discount(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ))
    .await
    .unwrap();
    // On its own, after the tables committed: inside the same transaction, a database-wide
    // ANALYZE deadlocked once with autovacuum in CI.
    src.batch_execute("ANALYZE people, secrets").await.unwrap();
    drop(src);

    let dir = std::env::temp_dir().join(format!("ferry-shadow-{}", dbs.name));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    std::fs::write(&users, format!("{role}:app-pw\npostgres:ferry-test-pw\n")).unwrap();
    let (api, proxy) = (free_addr(), free_addr());
    let m = crate::cutover::start(&dbs, &api, &proxy, &["--proxy-users-file", users.to_str().unwrap()]);
    wait_for_cdc(&dbs.target).await;
    api_wait(&api, "phase cdc in the API", Duration::from_secs(30), |s| s["phase"] == "cdc").await;

    // Shadowing needs a sample; with the proxy on the source it starts.
    let run = shadow(&api, &["--sample", "100%"]);
    assert_eq!(run.code, 0, "{}", run.all());

    // A clean target under pgbench's own select-only queries: nothing to report.
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let bench = std::process::Command::new(env().pg_bin.join("pgbench"))
        .args([
            "-n", "-S", "-M", "prepared", "-h", host, "-p", port, "-U", "postgres", "-c", "2", "-T", "6",
        ])
        .arg(&dbs.name)
        .env("PGPASSWORD", "ferry-test-pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pgbench_finish(bench);
    let r = settled(&api).await;
    let pgb = find(&r, "select abalance from pgbench_accounts where aid = ?");
    eprintln!("pgbench through shadow traffic: {pgb}");
    assert!(pgb["executions"].as_u64().unwrap() >= 100, "{pgb}");
    assert_eq!(r["mismatches"], 0, "a clean target reported a mismatch: {r:#}");
    assert_eq!(r["target_errors"], 0, "{r:#}");

    // Plant the problems on the target.
    let collation = {
        let t = connect(&dbs.target).await;
        let rows = t
            .query(
                "SELECT collname FROM pg_collation WHERE collname IN ('en-x-icu', 'und-x-icu') ORDER BY collname",
                &[],
            )
            .await
            .unwrap();
        rows.first().map(|r| r.get::<_, String>(0)).expect("an ICU collation on the target")
    };
    connect(&dbs.target)
        .await
        .batch_execute(&format!(
            "DROP INDEX people_city;
             ALTER TABLE people ALTER COLUMN name TYPE text COLLATE \"{collation}\";
             CREATE OR REPLACE FUNCTION discount(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 3';
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             REVOKE SELECT ON secrets FROM {role};
             ANALYZE people;"
        ))
        .await
        .unwrap();
    // Verification compares rows: it finds the target identical.
    crate::cutover::verify_clean(&api).await;
    // Shadowing waits while the target lags (the verification held its applier).
    api_wait(&api, "the target to be fit for shadow traffic", Duration::from_secs(30), |s| {
        s["live"]["proxy"]["target_fit"] == true
    })
    .await;

    // The application, through the proxy, as its own login: extended and simple protocol.
    let app = connect(&format!("postgres://{role}:app-pw@{host}:{port}/{}", dbs.name)).await;
    for i in 0..20 {
        let city = format!("city{}", i % 100);
        let n: i64 = app
            .query_one("SELECT count(*) FROM people WHERE city = $1", &[&city])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2000);
        app.query_one("SELECT abalance FROM pgbench_accounts WHERE aid = $1", &[&(i + 1)])
            .await
            .unwrap();
    }
    // A second session, simple protocol only (tokio-postgres closes a statement it prepared
    // for one query right after it, and a request sent in the same packet as another is not
    // sampled).
    let simple = connect(&format!("postgres://{role}:app-pw@{host}:{port}/{}", dbs.name)).await;
    for i in 0..3 {
        simple
            .simple_query("SELECT name FROM people WHERE id <= 30 ORDER BY name")
            .await
            .unwrap();
        app.query_one("SELECT discount(id) FROM people WHERE id = $1", &[&(i + 7)])
            .await
            .unwrap();
        simple.simple_query("SELECT v FROM secrets WHERE id = 1").await.unwrap();
    }
    let r = settled(&api).await;
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());

    let slow = find(&r, "select count(*) from people where city = ?");
    assert_eq!(slow["mismatches"], 0, "{slow}");
    assert!(slow["slowdown"].as_f64().unwrap() > 3.0, "the dropped index is not flagged: {slow}");
    let order = find(&r, "select name from people where id <= ? order by name");
    assert!(order["mismatches"].as_u64().unwrap() >= 1, "the collation is not found: {order}");
    assert!(order["mismatch"]["target"].as_str().unwrap().contains("ordered digest"), "{order}");
    assert_eq!(order["mismatch"]["sql"], "SELECT name FROM people WHERE id <= 30 ORDER BY name");
    let func = find(&r, "select discount(id) from people where id = ?");
    assert!(
        func["mismatches"].as_u64().unwrap() >= 1,
        "the changed function is not found: {func}"
    );
    let grant = find(&r, "select v from secrets where id = ?");
    assert!(grant["target_errors"].as_u64().unwrap() >= 1, "{grant}");
    assert_eq!(grant["target_error"]["code"], "42501", "{grant}");
    let clean = find(&r, "select abalance from pgbench_accounts where aid = ?");
    assert_eq!(
        (clean["mismatches"].as_u64(), clean["target_errors"].as_u64()),
        (Some(0), Some(0)),
        "{clean}"
    );

    // The report for a human names each.
    let run = shadow(&api, &["report"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for want in [
        "MISMATCHES",
        "FAILED ONLY ON THE TARGET",
        "42501",
        "SLOWEST ON THE TARGET",
        "people where city",
    ] {
        assert!(run.stdout.contains(want), "{want} missing from:\n{}", run.stdout);
    }
    // Without the token, the examples' statements are hidden; fingerprints stay.
    let (_, body) = http("GET", &api, "/api/shadow", None).await;
    assert!(!body.contains("WHERE id <= 30"), "{body}");
    assert!(body.contains("order by name"), "{body}");
    // Metrics per fingerprint.
    let (_, metrics) = http("GET", &api, "/metrics", None).await;
    assert!(
        metric(
            &metrics,
            "ferry_shadow_mismatches_total{fingerprint=\"select name from people where id <= ? order by name\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "ferry_shadow_sample_ratio"), Some(1.0));

    // The opt-in Go/NoGo: a cutover that asks for a clean shadow is refused, naming it.
    let url = format!("http://{api}");
    let run = ferry(&["cutover", "--api", &url, "--json", "--require-shadow-clean", "10m"]);
    assert_eq!(run.code, 1, "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["outcome"], "no_go", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("shadow traffic found a problem"), "{v}");

    drop(app);
    drop(simple);
    let run = shadow(&api, &["--sample", "0"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    let urls = [dbs.source.clone(), dbs.target.clone()];
    dbs.drop().await;
    for url in &urls {
        let _ = connect(&with_db(url, "postgres"))
            .await
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
