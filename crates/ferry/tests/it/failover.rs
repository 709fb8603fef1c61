//! What a failover of the source does to a migration: before PostgreSQL 17 a standby has no
//! copy of the logical slot, so after promotion the slot is gone. Ferry must stop and say so,
//! never retry forever or carry on as if nothing happened.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_the_migration_with_the_recovery_steps() {
    let dbs = Dbs::create("slotloss").await;
    load_sample(&dbs.source, 100).await;
    let m = Migrator::spawn(&refs(&migrate_args(&dbs, &[])));
    wait_for_cdc(&dbs.target).await;
    let slot = slots(&dbs.source).await.pop().expect("Ferry's slot");

    // What a promotion without the slot looks like from Ferry's side: the WAL sender goes
    // away and the slot with it.
    let s = connect(&dbs.source).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        s.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .unwrap();
        if s.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await
        .is_ok_and(|n| n == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let run = m.wait();
    assert_ne!(run.code, 0, "ferry migrate went on without its slot:\n{}", run.all());
    for want in ["does not exist", "failed over", "ferry abandon", "docs/runbook.md"] {
        assert!(run.all().contains(want), "missing {want:?} in:\n{}", run.all());
    }
    dbs.drop().await;
}

/// After a cutover, a failover of the target loses the reverse slot: rollback is no longer
/// lossless, but the application, running on the target through Ferry's proxy, must not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reverse_slot_after_cutover_keeps_the_proxy_serving() {
    let dbs = Dbs::create("revloss").await;
    load_sample(&dbs.source, 100).await;
    let (api, proxy) = (free_addr(), free_addr());
    let m = Migrator::spawn(&refs(&migrate_args(&dbs, &["--listen", &api, "--proxy-listen", &proxy])));
    wait_for_cdc(&dbs.target).await;
    crate::cutover::verify_clean(&api).await;
    let (run, report) = crate::cutover::switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(report["outcome"], "done", "{}", run.all());
    let t = connect(&dbs.target).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let slot: String = loop {
        let rows = t
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database() AND active",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            break r.get(0);
        }
        assert!(Instant::now() < deadline, "no active reverse slot on the target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        t.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .unwrap();
        if t.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await
        .is_ok_and(|n| n == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the reverse slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("ferry to report the reverse stream stopped", Duration::from_secs(30), || {
        let m = &m;
        async move { m.log().contains("reverse replication stopped") }
    })
    .await;
    // The application still reads and writes on the target through the proxy.
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let app = connect(&format!("postgres://postgres:ferry-test-pw@{host}:{port}/{}", dbs.name)).await;
    let port_seen: i32 = app.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
    let target_port: i32 = t.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port_seen, target_port);
    app.batch_execute("CREATE TABLE after_loss (id int PRIMARY KEY); INSERT INTO after_loss VALUES (1)")
        .await
        .unwrap();
    // The way back is gone: complete refuses to guess, and completes when told the source is
    // known to be behind.
    let record = std::env::temp_dir().join(format!("ferry-revloss-{}.json", dbs.name));
    let url = format!("http://{api}");
    let base = ["complete", "--api", &url, "--json", "--record-file", record.to_str().unwrap()];
    let run = ferry(&base);
    assert_eq!(run.code, 1, "complete went ahead without a reverse stream:\n{}", run.all());
    let mut args = base.to_vec();
    args.push("--skip-verify");
    let run = ferry(&args);
    assert_eq!(run.code, 0, "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    assert_eq!(v["outcome"], "done", "{v}");
    let _ = std::fs::remove_file(&record);
    assert!(slots(&dbs.source).await.is_empty() && slots(&dbs.target).await.is_empty());
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    drop((app, t));
    dbs.drop().await;
}
