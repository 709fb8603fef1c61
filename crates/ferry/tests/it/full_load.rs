//! The full load moves every type, every kind of table, and every deferred object exactly.

use crate::harness::{assert_identical, connect, ferry, load_sample, migrate_args, pgbench_init, refs, Dbs};

#[tokio::test]
async fn heavy_full_load_is_exact_for_every_type_and_table_kind() {
    let dbs = Dbs::create("fl_exact").await;
    load_sample(&dbs.source, 20_000).await;
    pgbench_init(&dbs.source, 1).await;

    // Small split size so large tables are copied as several ranges in parallel.
    let summary = std::env::temp_dir().join(format!("{}.json", dbs.name));
    let run = ferry(&refs(&migrate_args(
        &dbs,
        &[
            "--split-size",
            "1MB",
            "--stop-after",
            "full-load",
            "--summary-json",
            summary.to_str().unwrap(),
        ],
    )));
    assert_eq!(run.code, 0, "{}", run.all());
    let tables = assert_identical(&dbs.source, &dbs.target).await;
    assert!(tables >= 15, "compared only {tables} tables");

    // The summary accounts for every row, and large tables really were split.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let src = connect(&dbs.source).await;
    let expected: i64 = src
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM order_items) + (SELECT count(*) FROM orders)
                  + (SELECT count(*) FROM customers) + (SELECT count(*) FROM products) + (SELECT count(*) FROM events)
                  + (SELECT count(*) FROM \"Audit Log\") + (SELECT count(*) FROM \"MixedCase\") + (SELECT count(*) FROM page_views)
                  + (SELECT count(*) FROM type_zoo) + (SELECT count(*) FROM pgbench_branches) + (SELECT count(*) FROM pgbench_tellers)
                  + (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(json["rows"].as_i64().unwrap(), expected);
    let tgt = connect(&dbs.target).await;
    let split: i32 = tgt
        .query_one(
            "SELECT max(ranges_total) FROM ferry.tables WHERE table_name = 'pgbench_accounts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(split >= 2, "pgbench_accounts was not split (ranges_total = {split})");
    let not_copied: i64 = tgt
        .query_one("SELECT count(*) FROM ferry.tables WHERE state <> 'copied'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(not_copied, 0);

    // The slot stays on the source for change capture, at the recorded consistent point.
    let slot_lsn: String = src
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(json["consistent_lsn"].as_str().unwrap(), slot_lsn);

    // The 1.3 MB value really is TOASTed and arrived whole.
    let big: i32 = tgt
        .query_one("SELECT length(big) FROM type_zoo WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big, 40_000 * 32);

    // Running the same command again is a no-op that succeeds.
    let again = ferry(&[
        "migrate",
        "--source",
        &dbs.source,
        "--target",
        &dbs.target,
        "--stop-after",
        "full-load",
    ]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("earlier"), "{}", again.stdout);
    assert_identical(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

#[tokio::test]
async fn include_and_exclude_select_tables() {
    let dbs = Dbs::create("fl_filter").await;
    load_sample(&dbs.source, 200).await;
    let run = ferry(&[
        "migrate",
        "--source",
        &dbs.source,
        "--target",
        &dbs.target,
        "--include",
        "public.order*",
        "--include",
        "products",
        "--include",
        "customers",
        "--exclude",
        "*.orders",
        "--stop-after",
        "full-load",
    ]);
    // order_items references orders, which is excluded: its foreign key is reported and skipped.
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.all().contains("references public.orders, which is not part of the migration"),
        "{}",
        run.all()
    );
    let tgt = connect(&dbs.target).await;
    let names = crate::harness::lines(
        &tgt,
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
    )
    .await;
    assert_eq!(names, ["customers", "order_items", "products"]);
    let n: i64 = tgt.query_one("SELECT count(*) FROM order_items", &[]).await.unwrap().get(0);
    assert_eq!(n, 200);
    dbs.drop().await;
}

#[tokio::test]
async fn check_prints_a_plan_and_json() {
    let dbs = Dbs::create("chk_plan").await;
    load_sample(&dbs.source, 100).await;
    let run = ferry(&["check", "--source", &dbs.source, "--target", &dbs.target]);
    assert_eq!(run.code, 0, "{}", run.all());
    for want in [
        "Plan:",
        "public.Audit Log",
        "primary keys",
        "foreign keys",
        "publication ferry_",
        "Result: ready",
    ] {
        assert!(run.stdout.contains(want), "missing {want:?} in:\n{}", run.stdout);
    }
    let run = ferry(&["check", "--json", "--source", &dbs.source, "--target", &dbs.target]);
    assert_eq!(run.code, 0, "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("check --json prints JSON");
    let tables = v["plan"]["tables"].as_array().unwrap();
    assert!(tables.iter().any(|t| t["name"]["name"] == "MixedCase"));
    assert!(v["findings"].as_array().unwrap().iter().all(|f| f["severity"] != "blocker"));
    // check writes nothing: no slot, no publication, no state schema.
    let slots: i64 = connect(&dbs.source)
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    let state = crate::harness::has_state_schema(&dbs.target).await;
    assert!(!state);
    dbs.drop().await;
}
