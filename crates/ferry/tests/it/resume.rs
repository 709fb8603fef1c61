//! kill -9 at any moment, rerun the same command: the result is identical to an uninterrupted run.

use std::time::Duration;

use crate::harness::{assert_identical, connect, ferry, load_sample, migrate_args, pgbench_init, refs, wait_for_row, Dbs, Migrator};

#[tokio::test]
async fn heavy_kill_9_during_the_copy_then_resume() {
    let dbs = Dbs::create("kill_copy").await;
    pgbench_init(&dbs.source, 10).await;
    load_sample(&dbs.source, 5_000).await;
    let args = migrate_args(&dbs, &["--split-size", "4MB", "--stop-after", "full-load"]);
    let m = Migrator::spawn(&refs(&args));
    // Kill once some ranges of pgbench_accounts are committed but not all.
    let sql = "SELECT 1 FROM ferry.tables WHERE table_name = 'pgbench_accounts' AND ranges_done >= 2";
    wait_for_row(
        &dbs.target,
        "some ranges of pgbench_accounts to commit",
        Duration::from_secs(120),
        sql,
    )
    .await;
    m.kill9();

    let tgt = connect(&dbs.target).await;
    let (state, done, total): (String, i32, i32) = {
        let r = tgt
            .query_one(
                "SELECT state, ranges_done, ranges_total FROM ferry.tables WHERE table_name = 'pgbench_accounts'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(state, "copying", "the kill came too late to test anything ({done}/{total} ranges)");
    assert!(done < total);
    let partial: i64 = tgt.query_one("SELECT count(*) FROM pgbench_accounts", &[]).await.unwrap().get(0);
    assert!(partial > 0 && partial < 1_000_000, "partial = {partial}");

    // Rerun the same command: it resumes and finishes.
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("(resumed)"), "{}", run.stdout);
    assert_identical(&dbs.source, &dbs.target).await;

    // The resumed table records the new snapshot's position; exactly one slot remains.
    let slots = crate::harness::slots(&dbs.source).await;
    assert_eq!(slots.len(), 1, "{slots:?}");
    let (consistent, resumed): (String, String) = {
        let r = tgt
            .query_one(
                "SELECT m.consistent_lsn::text, t.snapshot_lsn::text FROM ferry.migrations m JOIN ferry.tables t ON t.migration_id = m.id
                 WHERE t.table_name = 'pgbench_accounts'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_ne!(consistent, resumed, "a table copied again must record its new snapshot position");
    dbs.drop().await;
}

#[tokio::test]
async fn heavy_kill_9_during_index_builds_then_resume() {
    let dbs = Dbs::create("kill_post").await;
    pgbench_init(&dbs.source, 10).await;
    let args = migrate_args(&dbs, &["--stop-after", "full-load"]);
    let m = Migrator::spawn(&refs(&args));
    let sql = "SELECT 1 FROM ferry.migrations WHERE phase = 'post_load'";
    wait_for_row(&dbs.target, "the post-load phase", Duration::from_secs(120), sql).await;
    m.kill9();
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 0, "{}", run.all());
    assert_identical(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

#[tokio::test]
async fn heavy_kill_9_at_many_moments_then_resume() {
    let dbs = Dbs::create("kill_many").await;
    pgbench_init(&dbs.source, 5).await;
    load_sample(&dbs.source, 20_000).await;
    let args = migrate_args(&dbs, &["--split-size", "8MB", "--stop-after", "full-load"]);
    // Kill after growing delays until one run gets to finish on its own: every phase, from
    // slot creation to the last sequence, gets hit somewhere along the way.
    let mut kills = 0;
    let mut delay_ms = 60;
    loop {
        let mut m = Migrator::spawn(&refs(&args));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if m.has_exited() {
            let run = m.wait();
            assert_eq!(run.code, 0, "a run failed on its own: {}", run.all());
            break;
        }
        m.kill9();
        kills += 1;
        delay_ms = delay_ms * 5 / 4 + 30;
        assert!(kills < 40, "never finished");
    }
    eprintln!("killed {kills} times, last delay {delay_ms} ms");
    assert!(kills >= 6, "only {kills} kills: the test did not interrupt enough");
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 0, "{}", run.all());
    assert_identical(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

/// A kill -9 after the slot is recorded and before the phase moves on (then after the schema
/// committed) leaves the phase at assess with the slot and the schema done: the rerun records
/// the phase the slot implies and finishes, instead of refusing every later step. The window
/// is a few milliseconds wide, so the test puts the state there itself.
#[tokio::test]
async fn a_rerun_after_a_kill_between_the_slot_and_its_phase_finishes() {
    let dbs = Dbs::create("kill_slot").await;
    load_sample(&dbs.source, 2_000).await;
    let args = migrate_args(&dbs, &["--stop-after", "full-load"]);
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 0, "{}", run.all());
    connect(&dbs.target)
        .await
        .batch_execute("UPDATE ferry.migrations SET phase = 'assess'")
        .await
        .unwrap();
    let run = ferry(&refs(&args));
    assert_eq!(run.code, 0, "{}", run.all());
    let phase: String = connect(&dbs.target)
        .await
        .query_one("SELECT phase FROM ferry.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "post_load", "{}", run.all());
    assert_identical(&dbs.source, &dbs.target).await;
    let _ = ferry(&["abandon", "--source", &dbs.source, "--target", &dbs.target, "--yes"]);
    dbs.drop().await;
}
