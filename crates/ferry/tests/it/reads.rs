//! The proxy's read endpoint: read-only sessions, shifted to the target step by step with
//! `ferry shift --reads`, and back to the source while the target lags.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// pgbench's built-in select-only script (`-S`, prepared statements) on the read endpoint.
fn pgbench_select_only(addr: &str, db: &str, clients: u32, seconds: u32) -> Child {
    let (host, port) = addr.rsplit_once(':').unwrap();
    Command::new(env().pg_bin.join("pgbench"))
        .args(["-n", "-S", "-M", "prepared", "-h", host, "-p", port, "-U", "postgres"])
        .args(["-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), db])
        .env("PGPASSWORD", "ferry-test-pw")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench")
}

/// Transactions committed in the test's database on a server, from pg_stat_database.
async fn commits(url: &str) -> i64 {
    connect(url)
        .await
        .query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The target's share of the transactions committed on both servers over `window`, as
/// PostgreSQL counts them (each backend reports at most once a second, so the window starts
/// after the load has settled and is several seconds long).
async fn target_share(dbs: &Dbs, window: Duration) -> f64 {
    let (s0, t0) = (commits(&dbs.source).await, commits(&dbs.target).await);
    tokio::time::sleep(window).await;
    let (s1, t1) = (commits(&dbs.source).await, commits(&dbs.target).await);
    let (ds, dt) = ((s1 - s0) as f64, (t1 - t0) as f64);
    assert!(ds + dt > 1000.0, "pgbench barely ran: {ds} + {dt} transactions");
    dt / (ds + dt)
}

fn shift(api: &str, reads: &str) -> serde_json::Value {
    let url = format!("http://{api}");
    let run = ferry(&["shift", "--reads", reads, "--api", &url, "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()))
}

fn db_error(e: tokio_postgres::Error) -> (String, String) {
    let d = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (d.code().code().to_owned(), d.message().to_owned())
}

/// pgbench select-only clients on the read endpoint while `ferry shift --reads` steps from 0%
/// to 100%: not one transaction fails, and the target's share of the transactions (counted by
/// each server in pg_stat_database) follows the setting. When the target's applier is stuck
/// behind a lock, reads return to the source within the lag bound, and come back once it
/// catches up. Writes, and statements that would allow them, fail with SQLSTATE 25006.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_shift_to_the_target_step_by_step_and_return_to_the_source_when_it_lags() {
    let dbs = crate::cutover::prepare(Dbs::create("reads").await).await;
    let (api, proxy, read) = (free_addr(), free_addr(), free_addr());
    let m = crate::cutover::start(&dbs, &api, &proxy, &["--proxy-read-listen", &read, "--max-read-lag", "1s"]);
    wait_for_cdc(&dbs.target).await;
    api_wait(&api, "phase cdc in the API", Duration::from_secs(30), |s| s["phase"] == "cdc").await;

    // The read endpoint is read-only, whatever the session tries.
    let (host, port) = read.rsplit_once(':').unwrap();
    let reader = connect(&format!("postgres://postgres:ferry-test-pw@{host}:{port}/{}", dbs.name)).await;
    let n: i64 = reader.query_one("SELECT count(*) FROM pgbench_accounts", &[]).await.unwrap().get(0);
    assert_eq!(n, 100_000);
    let (code, msg) = db_error(reader.batch_execute("INSERT INTO test_marker VALUES (-1)").await.unwrap_err());
    assert_eq!((code.as_str(), msg.contains("read-only transaction")), ("25006", true), "{msg}");
    for sql in [
        "SET default_transaction_read_only = off",
        "BEGIN READ WRITE",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
    ] {
        let (code, msg) = db_error(reader.batch_execute(sql).await.unwrap_err());
        assert_eq!(code, "25006", "{sql}: {msg}");
        assert!(msg.contains("read endpoint"), "{sql}: {msg}");
    }
    // The same through the extended protocol (Parse, Bind, Execute).
    let (code, _) = db_error(reader.execute("SET transaction_read_only = off", &[]).await.unwrap_err());
    assert_eq!(code, "25006");
    let ro: String = reader.query_one("SHOW transaction_read_only", &[]).await.unwrap().get(0);
    assert_eq!(ro, "on");
    let (code, _) = db_error(reader.batch_execute("UPDATE pgbench_branches SET bbalance = 0").await.unwrap_err());
    assert_eq!(code, "25006");
    assert_eq!(
        connect(&dbs.source)
            .await
            .query_one("SELECT count(*) FROM test_marker", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0,
        "a write went through the read endpoint"
    );

    api_wait(&api, "the target to be fit for reads", Duration::from_secs(30), |s| {
        s["live"]["proxy"]["reads"]["target_ready"] == true
    })
    .await;
    let bench = pgbench_select_only(&read, &dbs.name, 10, 85);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settle = Duration::from_millis(2500);
    let window = Duration::from_secs(5);
    let mut seen = Vec::new();
    for (percent, want) in [("0%", 0.0), ("30%", 0.3), ("70%", 0.7), ("100%", 1.0)] {
        let answer = shift(&api, percent);
        assert_eq!(answer["target_ready"], true, "{answer}");
        tokio::time::sleep(settle).await;
        let share = target_share(&dbs, window).await;
        eprintln!("reads {percent}: the target served {:.1}% of transactions", share * 100.0);
        seen.push((percent, share));
        // Ten sessions: each is a tenth of the load; one more or less, and their unequal speed.
        assert!(
            (share - want).abs() <= 0.17,
            "at {percent} the target served {:.1}%: {seen:?}",
            share * 100.0
        );
    }

    // The target falls behind: its applier waits for a lock on a table the source writes.
    let blocker = connect(&dbs.target).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE test_marker IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let stuck_at = Instant::now();
    connect(&dbs.source)
        .await
        .batch_execute("INSERT INTO test_marker VALUES (1)")
        .await
        .unwrap();
    let st = api_wait(&api, "reads to leave the lagging target", Duration::from_secs(10), |s| {
        s["live"]["proxy"]["reads"]["target_ready"] == false
    })
    .await;
    let left_after = stuck_at.elapsed();
    eprintln!(
        "the target stopped serving reads {left_after:?} after its applier got stuck: {}",
        st["live"]["proxy"]["reads"]
    );
    // The bound is 1 s of lag; the lag is measured every 100 ms, and the status is read here
    // every 200 ms.
    assert!(left_after < Duration::from_millis(2500), "{left_after:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let share = target_share(&dbs, window).await;
    eprintln!("target lagging: it served {:.1}% of transactions", share * 100.0);
    assert!(share < 0.03, "the lagging target still served {:.1}% of reads", share * 100.0);

    // It catches up: the reads return.
    blocker.batch_execute("COMMIT").await.unwrap();
    api_wait(&api, "reads to return to the target", Duration::from_secs(20), |s| {
        s["live"]["proxy"]["reads"]["target_ready"] == true
    })
    .await;
    tokio::time::sleep(settle).await;
    let share = target_share(&dbs, window).await;
    eprintln!("target caught up: it served {:.1}% of transactions", share * 100.0);
    assert!(share > 0.85, "after catching up the target served {:.1}%", share * 100.0);

    // And all the way back.
    shift(&api, "0");
    tokio::time::sleep(settle).await;
    let share = target_share(&dbs, window).await;
    assert!(share < 0.03, "at 0% the target served {:.1}%", share * 100.0);

    // A cutover holds the read sessions with the others and moves them to the target, where
    // they stay read-only; pgbench sees no error across it.
    shift(&api, "50%");
    crate::cutover::verify_clean(&api).await;
    let (run, report) = crate::cutover::switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    tokio::time::sleep(settle).await;
    let share = target_share(&dbs, window).await;
    eprintln!("after cutover: the target served {:.1}% of transactions", share * 100.0);
    assert!(
        share > 0.97,
        "after cutover the source still served reads: {:.1}% on the target",
        share * 100.0
    );
    let (code, _) = db_error(reader.batch_execute("INSERT INTO test_marker VALUES (-2)").await.unwrap_err());
    assert_eq!(code, "25006", "a read session became writable on the target after cutover");

    let text = pgbench_finish(bench);
    assert!(text.contains("number of failed transactions: 0 "), "{text}");
    let st = api_status(&api).await;
    let r = &st["live"]["proxy"]["reads"];
    assert!(r["moves"].as_u64().unwrap() >= 10, "{r}");
    assert_eq!(r["move_failures"], 0, "{r}");
    assert!(r["requests_target"].as_u64().unwrap() > 1000, "{r}");
    assert!(r["refused_statements"].as_u64().unwrap() >= 4, "{r}");
    let (_, metrics) = http("GET", &api, "/metrics", None).await;
    assert_eq!(metric(&metrics, "ferry_proxy_read_share_ratio"), Some(0.5), "{metrics}");
    assert!(metric(&metrics, "ferry_proxy_read_requests_total{upstream=\"target\"}").unwrap() > 1000.0);

    // The event log names every shift.
    let c = connect(&dbs.target).await;
    let shifts: i64 = c
        .query_one("SELECT count(*) FROM ferry.events WHERE kind = 'reads_shifted'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(shifts >= 5, "{shifts} shifts recorded");
    drop(reader);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}
