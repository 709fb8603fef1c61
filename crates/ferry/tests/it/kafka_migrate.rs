//! `ferry migrate --via kafka://`: the migration's change stream through the test broker, with
//! the migration's API, verification, cutover and rollback.

use std::time::Duration;

use crate::cutover::{
    assert_every_ticket_once, finish, pgbench_via_proxy, phase, prepare, scalar_i64, start, switch_done, unix_now, verify_clean,
};
use crate::harness::*;
use crate::kafka::broker;

/// pgbench on the source with a kill -9 of `ferry migrate --via kafka` in the middle of the
/// stream, then a verification through the API (its hold is reached through Kafka), the
/// per-partition lag in /metrics, then pgbench through the proxy across a cutover and a
/// rollback: no transaction fails, every one is on the source once, the invariant holds on
/// each side when it takes the writes, and the target is identical again at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_durable_migrate_via_kafka_survives_kill_9_verifies_cuts_over_and_rolls_back() {
    let dbs = prepare(Dbs::create_durable("kvia").await).await;
    let (api, proxy) = (free_addr(), free_addr());
    let prefix = format!("it_{}", dbs.name);
    let via = format!("kafka://{}/{prefix}", broker());
    let m = start(&dbs, &api, &proxy, &["--via", &via]);
    wait_for_cdc(&dbs.target).await;

    // Writes straight to the source while the migration is killed and restarted.
    let bench = pgbench_run_rate(&dbs.source, 4, 20, 0);
    let at = 4 + std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 8;
    tokio::time::sleep(Duration::from_secs(at.into())).await;
    m.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = start(&dbs, &api, &proxy, &["--via", &via]);
    let out = pgbench_finish(bench);
    eprintln!("{out}");
    // Verification holds the apply at the position of its source snapshot: reached through
    // Kafka (the last transactions, then a watermark past them, the source being idle).
    verify_clean(&api).await;
    // A table created on the source mid-stream: its topic appears, the apply creates it on the
    // target from its definition (index included) and applies its rows.
    connect(&dbs.source)
        .await
        .batch_execute(
            "CREATE TABLE fresh (id int PRIMARY KEY, note text, at timestamptz DEFAULT now());
             CREATE INDEX fresh_note ON fresh (note);
             INSERT INTO fresh (id, note) SELECT g, 'row ' || g FROM generate_series(1, 500) g;
             UPDATE fresh SET note = NULL WHERE id = 7;
             DELETE FROM fresh WHERE id = 9;",
        )
        .await
        .unwrap();
    sync_point(&dbs.source, &dbs.target, 1).await;
    assert_eq!(scalar_i64(&dbs.target, "SELECT count(*) FROM fresh").await, 499);
    assert_eq!(scalar_i64(&dbs.target, "SELECT count(*) FROM fresh WHERE note IS NULL").await, 1);
    assert_eq!(
        scalar_i64(&dbs.target, "SELECT count(*) FROM pg_indexes WHERE indexname = 'fresh_note'").await,
        1
    );
    assert!(pgbench_invariant(&dbs.target).await, "invariant broken on the target");
    let token = crate::api_security::auto_token(&api);
    let (code, metrics) = http("GET", &api, "/metrics", Some(&token)).await;
    assert_eq!(code, 200, "{metrics}");
    let lag_line = format!("ferry_kafka_partition_lag_records{{topic=\"{prefix}.public.pgbench_accounts\",partition=\"0\"}}");
    assert!(metrics.contains(&lag_line), "no per-partition Kafka lag in /metrics:\n{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    let st = api_status(&api).await;
    assert!(st["transactions_applied"].as_i64().unwrap_or(0) > 0, "{st}");
    assert!(st["live"]["kafka"]["cluster"].as_str().unwrap_or("").ends_with(&prefix), "{st}");
    assert!(st["live"]["kafka"]["partitions"].as_u64().unwrap_or(0) >= 4, "{st}");
    let shown = ferry(&["status", "--api", &format!("http://{api}")]);
    assert!(shown.stdout.contains("through Kafka: kafka://"), "{}", shown.all());
    // The slot moved on with what the broker acknowledged.
    let (slot, consistent): (String, String) = {
        let r = connect(&dbs.target)
            .await
            .query_one("SELECT slot_name, consistent_lsn::text FROM ferry.migrations", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let moved: bool = connect(&dbs.source)
        .await
        .query_one(
            "SELECT confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &consistent],
        )
        .await
        .unwrap()
        .get(0);
    assert!(moved, "slot {slot} did not move past the consistent point {consistent}");

    // Paused through the API, the apply leg stops and the capture leg goes on: the source's
    // WAL is released once the broker holds the changes, while the target stays behind.
    let (code, body) = http("POST", &api, "/api/pause", Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    let src = connect(&dbs.source).await;
    src.batch_execute(
        "INSERT INTO fresh (id, note) SELECT g, 'paused ' || g FROM generate_series(1001, 3000) g; INSERT INTO test_marker VALUES (3);",
    )
    .await
    .unwrap();
    let end: String = src.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    wait_for_row(
        &dbs.source,
        "the slot to move past the writes made while the apply is paused",
        Duration::from_secs(30),
        &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}' AND confirmed_flush_lsn >= '{end}'"),
    )
    .await;
    let st = api_status(&api).await;
    assert_eq!(st["live"]["paused"], true, "{st}");
    assert_eq!(
        scalar_i64(&dbs.target, "SELECT count(*) FROM test_marker WHERE n = 3").await,
        0,
        "a change was applied while the apply was paused"
    );
    let (code, body) = http("POST", &api, "/api/resume", Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    wait_for_row(
        &dbs.target,
        "the change made while paused",
        Duration::from_secs(30),
        "SELECT 1 FROM test_marker WHERE n = 3",
    )
    .await;
    drop(src);

    // Cutover and rollback under pgbench through the proxy.
    let bench = pgbench_via_proxy(&proxy, &dbs.name, 8, 40, 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cut_at = unix_now();
    let (run, report) = switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report["outcome"], "done", "{report}");
    assert_eq!(phase(&dbs.target).await, "cut_over");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(pgbench_invariant(&dbs.target).await, "invariant broken on the target after cutover");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let last_on_target = scalar_i64(&dbs.target, "SELECT max(id) FROM tickets").await;
    let back_at = unix_now();
    let (run, report_back) = switch_done(&api, "rollback", &["--max-pause", "2s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(report_back["outcome"], "done", "{report_back}");
    assert_eq!(
        scalar_i64(&dbs.source, &format!("SELECT count(*) FROM tickets WHERE id = {last_on_target}")).await,
        1,
        "a ticket written on the target is missing on the source after rollback"
    );
    let (text, processed, _) = finish(bench);
    eprintln!(
        "through Kafka: cutover pause {} ms at {cut_at}, rollback pause {} ms at {back_at}; {processed} transactions\n{text}",
        report["pause_ms"], report_back["pause_ms"]
    );
    assert_every_ticket_once(&dbs.source, processed).await;
    assert!(
        pgbench_invariant(&dbs.source).await,
        "invariant broken on the source after rollback"
    );
    // Forward replication resumed through Kafka, without the reverse stream's own writes (they
    // came from the target): the target is identical again.
    wait_for_row(
        &dbs.target,
        "forward replication after rollback",
        Duration::from_secs(30),
        "SELECT 1 FROM ferry.migrations WHERE phase = 'cdc'",
    )
    .await;
    sync_point(&dbs.source, &dbs.target, 2).await;
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}
