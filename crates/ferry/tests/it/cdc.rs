//! Change data capture: every committed change arrives once, in order, with its transaction.

use std::time::{Duration, Instant};

use crate::harness::{
    assert_identical_except_sequences, connect, create_marker, load_sample, migrate_args, pgbench_finish, pgbench_init, pgbench_invariant,
    pgbench_run_rate, refs, sync_point, wait_for_cdc, Dbs, Migrator,
};

#[tokio::test]
async fn heavy_pgbench_during_full_load_and_cdc_keeps_the_invariant_and_ends_identical() {
    let dbs = Dbs::create("cdc_pgbench").await;
    pgbench_init(&dbs.source, 5).await;
    create_marker(&dbs.source).await;
    let bench = pgbench_run_rate(&dbs.source, 4, 15, 600);
    let args = migrate_args(&dbs, &[]);
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    // Every target commit is at a source transaction boundary: the invariant holds in every
    // snapshot of the target, however far behind it is.
    let mut checks = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        assert!(
            pgbench_invariant(&dbs.target).await,
            "pgbench invariant broken on the target during CDC"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks >= 10);
    pgbench_finish(bench);
    sync_point(&dbs.source, &dbs.target, 1).await;
    assert!(pgbench_invariant(&dbs.target).await);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("stopped at a checkpoint"), "{}", run.stderr);
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    let t = connect(&dbs.target).await;
    let (txns, updates): (i64, i64) = {
        let r = t
            .query_one("SELECT applied_txns, events_update FROM ferry.migrations", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(txns > 1000 && updates > 3000, "applied {txns} transactions, {updates} updates");
    dbs.drop().await;
}

#[tokio::test]
async fn cdc_applies_every_type_toast_no_pk_truncate_and_additive_schema_changes() {
    let dbs = Dbs::create("cdc_types").await;
    load_sample(&dbs.source, 2_000).await;
    create_marker(&dbs.source).await;
    let args = migrate_args(&dbs, &[]);
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    let s = connect(&dbs.source).await;
    s.batch_execute(
        r#"
        -- Inserts of every type (copies of the edge-value rows, NULL row included).
        INSERT INTO type_zoo (id, i2, i4, i8, num, num_p, f4, f8, t, c, vc, b, bo, d, tm, tmtz, ts, tstz, iv, u, j, jb, arr_i, arr_t, arr_2d, m, pos, ip, net, mac, big)
        SELECT id + 100, i2, i4, i8, num, num_p, f4, f8, t, c, vc, b, bo, d, tm, tmtz, ts, tstz, iv, u, j, jb, arr_i, arr_t, arr_2d, m, pos, ip, net, mac, big FROM type_zoo;
        -- Update every column of one row from another row.
        UPDATE type_zoo z SET (i2, i4, i8, num, num_p, f4, f8, t, c, vc, b, bo, d, tm, tmtz, ts, tstz, iv, u, j, jb, arr_i, arr_t, arr_2d, m, pos, ip, net, mac)
          = (SELECT i2, i4, i8, num, num_p, f4, f8, t, c, vc, b, bo, d, tm, tmtz, ts, tstz, iv, u, j, jb, arr_i, arr_t, arr_2d, m, pos, ip, net, mac FROM type_zoo WHERE id = 1)
          WHERE z.id = 102;
        UPDATE type_zoo SET t = NULL, b = '', arr_t = '{}' WHERE id = 101;
        -- An update that leaves the 1.3 MB TOASTed value alone: it must survive on the target.
        UPDATE type_zoo SET i2 = 7 WHERE id = 1;
        DELETE FROM type_zoo WHERE id IN (2, 104);
        -- No primary key, REPLICA IDENTITY FULL, duplicate rows: one of two duplicates changes.
        INSERT INTO page_views VALUES ('/dup', '2025-01-01', 'a'), ('/dup', '2025-01-01', 'a'), ('/dup', '2025-01-01', 'a');
        UPDATE page_views SET ua = 'b' WHERE ctid = (SELECT ctid FROM page_views WHERE path = '/dup' LIMIT 1);
        DELETE FROM page_views WHERE ctid = (SELECT ctid FROM page_views WHERE path = '/dup' AND ua = 'a' LIMIT 1);
        -- Truncate.
        TRUNCATE "MixedCase";
        INSERT INTO "MixedCase" VALUES (1, 'after truncate');
        -- Additive schema changes: a new column with a default, and a new table.
        ALTER TABLE customers ADD COLUMN vip boolean NOT NULL DEFAULT false;
        UPDATE customers SET vip = true WHERE id <= 3;
        CREATE TABLE loyalty (customer_id bigint PRIMARY KEY REFERENCES customers (id), points int NOT NULL);
        INSERT INTO loyalty SELECT id, id * 10 FROM customers WHERE id <= 50;
        UPDATE loyalty SET points = points + 1 WHERE customer_id = 1;
        -- Partitions: rows land in leaves.
        INSERT INTO events VALUES (1000000, '2026-03-01', 'new', '{"x": 1}');
        UPDATE events SET kind = 'moved' WHERE id = 5;
        -- Identity GENERATED ALWAYS keeps the source's values.
        INSERT INTO customers (email, name) VALUES ('new@example.com', 'New');
        "#,
    )
    .await
    .unwrap();
    sync_point(&dbs.source, &dbs.target, 1).await;
    // Status while streaming: phase, counts, a live slot and no meaningful lag.
    let st = crate::harness::ferry(&["status", "--json", "--target", &dbs.target, "--source", &dbs.source]);
    assert_eq!(st.code, 0, "{}", st.all());
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["phase"], "cdc");
    assert_eq!(v["slot_active"], true);
    assert!(
        v["events_applied"]["insert"].as_i64().unwrap() >= 4 && v["events_applied"]["truncate"].as_i64().unwrap() == 1,
        "{v}"
    );
    assert!(v["retained_wal_bytes"].as_i64().is_some());
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("column vip boolean added to public.customers"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("public.loyalty"), "{}", run.stderr);
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    let t = connect(&dbs.target).await;
    let big: i32 = t
        .query_one("SELECT length(big) FROM type_zoo WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big, 40_000 * 32, "the unchanged TOASTed value must keep its value");
    let dups: i64 = t
        .query_one("SELECT count(*) FROM page_views WHERE path = '/dup'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dups, 2);
    // Abandoning drops what Ferry made on the source, and only when told.
    let dry = crate::harness::ferry(&["abandon", "--source", &dbs.source, "--target", &dbs.target]);
    assert!(dry.stdout.contains("Rerun with --yes"), "{}", dry.all());
    assert_eq!(crate::harness::slots(&dbs.source).await.len(), 1);
    let gone = crate::harness::ferry(&["abandon", "--yes", "--source", &dbs.source, "--target", &dbs.target]);
    assert_eq!(gone.code, 0, "{}", gone.all());
    assert!(crate::harness::slots(&dbs.source).await.is_empty());
    let pubs: i64 = s.query_one("SELECT count(*) FROM pg_publication", &[]).await.unwrap().get(0);
    assert_eq!(pubs, 0);
    dbs.drop().await;
}

#[tokio::test]
async fn heavy_kill_9_during_cdc_under_load_then_resume() {
    let dbs = Dbs::create("cdc_kill").await;
    pgbench_init(&dbs.source, 2).await;
    create_marker(&dbs.source).await;
    let args = migrate_args(&dbs, &[]);
    let bench = pgbench_run_rate(&dbs.source, 4, 12, 600);
    let mut m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    for delay in [300, 900, 1700, 2600] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        m.kill9();
        assert!(pgbench_invariant(&dbs.target).await, "invariant broken after kill -9");
        m = Migrator::spawn(&refs(&args));
    }
    pgbench_finish(bench);
    sync_point(&dbs.source, &dbs.target, 1).await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

#[tokio::test]
async fn a_change_the_target_rejects_is_a_dead_letter() {
    let dbs = Dbs::create("cdc_dead").await;
    load_sample(&dbs.source, 100).await;
    create_marker(&dbs.source).await;
    let args = migrate_args(&dbs, &[]);
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    // A rule the target has and the source does not.
    connect(&dbs.target)
        .await
        .batch_execute("ALTER TABLE products ADD CONSTRAINT cheap CHECK (price < 10000)")
        .await
        .unwrap();
    let s = connect(&dbs.source).await;
    s.batch_execute("UPDATE products SET price = 20000 WHERE id = 1; UPDATE products SET price = 1 WHERE id = 2")
        .await
        .unwrap();
    let run = m.wait();
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stderr.contains("public.products"), "{}", run.stderr);
    assert!(run.stderr.contains("violates check constraint \"cheap\""), "{}", run.stderr);
    assert!(run.stderr.contains("--skip-dead-letters"), "{}", run.stderr);
    let t = connect(&dbs.target).await;
    let (op, key): (String, String) = {
        let r = t.query_one("SELECT operation, key FROM ferry.dead_letters", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((op.as_str(), key.as_str()), ("update", "id=1"));
    // Nothing of that transaction was applied.
    let p2: String = t
        .query_one("SELECT price::text FROM products WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(p2, "1.00");
    // Told to, Ferry records it and goes on.
    let mut skip = args.clone();
    skip.push("--skip-dead-letters".into());
    let m = Migrator::spawn(&refs(&skip));
    sync_point(&dbs.source, &dbs.target, 1).await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    let p2: String = t
        .query_one("SELECT price::text FROM products WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p2, "1.00");
    let skipped: bool = t.query_one("SELECT skipped FROM ferry.dead_letters", &[]).await.unwrap().get(0);
    assert!(skipped);
    dbs.drop().await;
}

#[tokio::test]
async fn heavy_cdc_survives_server_restarts_and_cut_connections() {
    let pc = crate::harness::PrivateClusters::start("fault");
    let (src, tgt) = (pc.url(0, "postgres"), pc.url(1, "postgres"));
    connect(&src).await.batch_execute("CREATE DATABASE app").await.unwrap();
    connect(&tgt).await.batch_execute("CREATE DATABASE app").await.unwrap();
    let (src, tgt) = (pc.url(0, "app"), pc.url(1, "app"));
    pgbench_init(&src, 1).await;
    create_marker(&src).await;
    let m = Migrator::spawn(&["migrate", "--source", &src, "--target", &tgt, "--jobs", "2"]);
    wait_for_cdc(&tgt).await;
    let burst = |secs| pgbench_finish(pgbench_run_rate(&src, 2, secs, 300));
    burst(3);
    // The source restarts: the replication connection and the catalog connection die.
    pc.restart(0);
    burst(3);
    // The target restarts: the apply connection dies, maybe mid-batch.
    pc.restart(1);
    burst(3);
    // Network cuts: the WAL sender's and the applier's connections are killed under load.
    let bench = pgbench_run_rate(&src, 2, 6, 300);
    tokio::time::sleep(Duration::from_secs(2)).await;
    connect(&pc.url(0, "postgres"))
        .await
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'ferry replication'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    connect(&pc.url(1, "postgres"))
        .await
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ferry apply'")
        .await
        .unwrap();
    pgbench_finish(bench);
    sync_point(&src, &tgt, 1).await;
    assert!(pgbench_invariant(&tgt).await);
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("change capture interrupted; resuming"), "{}", run.stderr);
    assert_identical_except_sequences(&src, &tgt).await;
}

#[tokio::test]
async fn heavy_one_transaction_updating_a_million_rows_keeps_memory_bounded() {
    let dbs = Dbs::create("cdc_huge").await;
    pgbench_init(&dbs.source, 10).await;
    create_marker(&dbs.source).await;
    let args = migrate_args(&dbs, &[]);
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    let before = m.peak_rss_kb();
    connect(&dbs.source)
        .await
        .batch_execute("UPDATE pgbench_accounts SET abalance = abalance + aid % 7")
        .await
        .unwrap();
    sync_point(&dbs.source, &dbs.target, 1).await;
    let peak = m.peak_rss_kb();
    eprintln!("peak RSS before the 1M-row transaction {before} kB, after {peak} kB");
    assert!(
        peak > 0 && peak < 150 * 1024,
        "peak RSS {peak} kB: memory must not grow with the transaction"
    );
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

#[tokio::test]
async fn set_based_apply_merges_chains_exactly_and_names_a_failing_change() {
    let dbs = Dbs::create("cdc_set").await;
    load_sample(&dbs.source, 400).await;
    create_marker(&dbs.source).await;
    let s = connect(&dbs.source).await;
    s.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text, big text); INSERT INTO kv SELECT g, 'v' || g, repeat(md5(g::text), 4000) FROM generate_series(1, 20) g")
        .await
        .unwrap();
    let args = migrate_args(&dbs, &[]);
    let m = Migrator::spawn(&refs(&args));
    wait_for_cdc(&dbs.target).await;
    // Every chain shape inside one transaction (one batch): the target must end exactly as the source.
    s.batch_execute(
        "BEGIN;
         INSERT INTO kv VALUES (100, 'a', 'x'); UPDATE kv SET v = 'b' WHERE k = 100; DELETE FROM kv WHERE k = 100;      -- I U D: nothing
         INSERT INTO kv VALUES (101, 'a', 'x'); UPDATE kv SET v = 'b' WHERE k = 101;                                  -- I U: insert final
         UPDATE kv SET v = 'u1' WHERE k = 1; UPDATE kv SET v = 'u2' WHERE k = 1;                                       -- U U: TOAST kept
         DELETE FROM kv WHERE k = 2; INSERT INTO kv VALUES (2, 'again', 'y');                                          -- D I: row replaced
         UPDATE kv SET v = 'gone' WHERE k = 3; DELETE FROM kv WHERE k = 3;                                              -- U D: deleted
         DELETE FROM kv WHERE k = 4; INSERT INTO kv VALUES (4, 'back', 'z'); UPDATE kv SET v = 'back2' WHERE k = 4;    -- D I U
         UPDATE kv SET big = big || '!' WHERE k = 5; UPDATE kv SET v = 'after big' WHERE k = 5;                        -- value then unchanged
         UPDATE kv SET k = 200 WHERE k = 6; UPDATE kv SET v = 'moved' WHERE k = 200;                                    -- key change in order
         UPDATE order_items SET qty = qty + 1 WHERE order_id <= 20;
         DELETE FROM order_items WHERE order_id BETWEEN 21 AND 25;
         COMMIT;",
    )
    .await
    .unwrap();
    sync_point(&dbs.source, &dbs.target, 1).await;
    assert_identical_except_sequences(&dbs.source, &dbs.target).await;
    // A change the target rejects inside a set-based batch is replayed row by row and named.
    connect(&dbs.target)
        .await
        .batch_execute("ALTER TABLE kv ADD CONSTRAINT short_v CHECK (length(v) < 20)")
        .await
        .unwrap();
    s.batch_execute(
        "UPDATE kv SET v = 'fine' WHERE k = 7; UPDATE kv SET v = repeat('x', 30) WHERE k = 8; UPDATE kv SET v = 'fine too' WHERE k = 9",
    )
    .await
    .unwrap();
    let run = m.wait();
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stderr.contains("violates check constraint \"short_v\""), "{}", run.stderr);
    let key: String = connect(&dbs.target)
        .await
        .query_one("SELECT key FROM ferry.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, "k=8");
    dbs.drop().await;
}
