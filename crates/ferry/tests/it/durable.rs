//! Change capture, cutover and rollback on clusters with production durability (fsync,
//! synchronous_commit and full_page_writes on), under sustained pgbench load, and through
//! network black holes.

use std::time::{Duration, Instant};

use crate::harness::*;

/// One per-second sample of the source's view of a slot: (replay lag s, confirmed_flush_lsn as
/// a number, current WAL as a number).
async fn slot_sample(source: &str, slot: &str) -> Option<(f64, i64, i64)> {
    let c = tokio::time::timeout(Duration::from_secs(2), async { connect(source).await })
        .await
        .ok()?;
    let row = c
        .query_opt(
            "SELECT COALESCE(extract(epoch FROM r.replay_lag)::float8, 0), (s.confirmed_flush_lsn - '0/0')::int8,
                    (pg_current_wal_lsn() - '0/0')::int8
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .ok()??;
    Some((row.get(0), row.get(1), row.get(2)))
}

/// The longest stretch (in samples, one a second) during which the slot's confirmed position
/// stood still while the source's WAL moved.
fn longest_stall(samples: &[(f64, i64, i64)]) -> usize {
    let (mut run, mut longest) = (0, 0);
    for w in samples.windows(2) {
        let ((_, c0, wal0), (_, c1, _)) = (w[0], w[1]);
        if c1 == c0 && wal0 > c0 {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

async fn slot_of(target: &str) -> String {
    connect(target)
        .await
        .query_one("SELECT slot_name FROM ferry.migrations", &[])
        .await
        .unwrap()
        .get(0)
}

/// pgbench -c 8 at full rate for 60 s while Ferry streams, durability on: replay lag (the
/// source's own measure) and Ferry's lag both stay under 1 s at the 99th percentile, the slot's
/// confirmed position never stands still for more than 2 s while changes flow, and the target
/// equals the source afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_durable_cdc_keeps_up_with_pgbench_c8() {
    let dbs = Dbs::create_durable("dcdc").await;
    pgbench_init(&dbs.source, 4).await;
    create_marker(&dbs.source).await;
    let api = free_addr();
    let m = Migrator::spawn(&refs(&migrate_args(&dbs, &["--listen", &api])));
    wait_for_cdc(&dbs.target).await;
    let slot = slot_of(&dbs.target).await;
    sync_point(&dbs.source, &dbs.target, 1).await;

    let (src, s2, a2) = (dbs.source.clone(), slot.clone(), api.clone());
    let slots = Sampler::start(move || {
        let (src, slot) = (src.clone(), s2.clone());
        async move { slot_sample(&src, &slot).await }
    });
    let ferry_lag = Sampler::start(move || {
        let api = a2.clone();
        async move {
            let (code, body) = http("GET", &api, "/api/status", None).await;
            (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok()?["lag_seconds"].as_f64())?
        }
    });
    let started = Instant::now();
    let bench = pgbench_run_rate(&dbs.source, 8, 60, 0);
    let out = tokio::task::spawn_blocking(move || pgbench_finish(bench)).await.unwrap();
    let ran = started.elapsed();
    let samples = slots.finish().await;
    let ferry = ferry_lag.finish().await;

    let lags: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let (p50, p99, max) = (percentile(&lags, 50.0), percentile(&lags, 99.0), percentile(&lags, 100.0));
    let (f50, f99) = (percentile(&ferry, 50.0), percentile(&ferry, 99.0));
    let stall = longest_stall(&samples);
    let tps = out.lines().find(|l| l.starts_with("tps")).unwrap_or("").to_string();
    eprintln!(
        "pgbench -c 8, {:.0} s, {tps}; replay lag p50 {p50:.3} s, p99 {p99:.3} s, max {max:.3} s ({} samples); \
         ferry's lag p50 {f50:.3} s, p99 {f99:.3} s ({} samples); longest slot stall {stall} s",
        ran.as_secs_f64(),
        lags.len(),
        ferry.len()
    );
    assert!(lags.len() >= 50, "too few samples: {samples:?}");
    assert!(p99 < 1.0, "replay lag p99 {p99:.3} s: {lags:?}");
    assert!(ferry.len() >= 50 && f99 < 1.0, "Ferry's own lag p99 {f99:.3} s: {ferry:?}");
    assert!(
        stall <= 2,
        "the slot's confirmed position stood still for {stall} s while changes flowed: {samples:?}"
    );

    sync_point(&dbs.source, &dbs.target, 2).await;
    assert!(pgbench_invariant(&dbs.target).await);
    assert_identical(&dbs.source, &dbs.target).await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    dbs.drop().await;
}

/// A network black hole (packets dropped, nothing closed) between Ferry and the source for
/// 40 s, then one between Ferry and the target, while pgbench writes: each is detected and
/// logged within its documented bound, the status says so, and the target is exact once the
/// network is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_black_holes_to_source_and_target_are_detected_and_survived() {
    let dbs = Dbs::create_durable("dhole").await;
    pgbench_init(&dbs.source, 1).await;
    create_marker(&dbs.source).await;
    let host_of = |url: &str| url.split_once('@').unwrap().1.split_once('/').unwrap().0.to_string();
    let src_relay = Relay::start(&host_of(&dbs.source)).await;
    let tgt_relay = Relay::start(&host_of(&dbs.target)).await;
    let (via_src, via_tgt) = (src_relay.url(&dbs.source), tgt_relay.url(&dbs.target));
    let api = free_addr();
    // Documented bounds: the stream is dead after max(--stream-timeout, wal_sender_timeout / 2
    // + 5 s) of silence (the durable test source runs wal_sender_timeout = 20 s: 15 s); the
    // watchdog ends a target session within --apply-timeout + a third of it + two 2 s probes
    // (12 s here).
    let m = Migrator::spawn(&[
        "migrate",
        "--source",
        &via_src,
        "--target",
        &via_tgt,
        "--jobs",
        "2",
        "--listen",
        &api,
        "--stream-timeout",
        "10s",
        "--apply-timeout",
        "6s",
    ]);
    wait_for_cdc(&dbs.target).await;
    sync_point(&dbs.source, &dbs.target, 1).await;
    let bench = pgbench_run_rate(&dbs.source, 2, 100, 200);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // --- Source side.
    let (detected, shown, st) = black_hole(&src_relay, &m, &api, "no message from the WAL sender", |st| {
        st["live"]["stream_state"] == "reconnecting" && st["live"]["stream_error"].as_str().unwrap_or("").contains("WAL sender")
    })
    .await;
    eprintln!(
        "source black hole: logged after {detected:?}, status showed it after {shown:?}; status then: {}",
        st["live"]
    );
    let detected = detected.unwrap_or_else(|| panic!("the dead stream was not logged within 40 s:\n{}", m.log()));
    assert!(detected <= Duration::from_secs(17), "detected after {detected:?}, bound 15 s");
    assert!(shown.is_some(), "the status never showed the stream reconnecting: {st}");
    assert!(
        st["live"]["source_sample_age_seconds"].as_f64().unwrap_or(0.0) > 3.0,
        "the status does not say the source's figures are old: {st}"
    );
    heal(&src_relay, &api, "the source").await;
    // The target's black hole starts with the source's 40 s backlog applied: one fault at a time.
    let caught_up = Instant::now();
    sync_point(&dbs.source, &dbs.target, 2).await;
    eprintln!(
        "the backlog of the source's black hole was applied {:?} after the stream resumed",
        caught_up.elapsed()
    );

    // --- Target side. The API answers from memory: it shows the reconnecting stream and that
    // its figures from the target are stale.
    let (detected, shown, st) = black_hole(&tgt_relay, &m, &api, "apply timeout", |st| {
        st["live"]["stream_state"] == "reconnecting"
    })
    .await;
    eprintln!(
        "target black hole: logged after {detected:?}, status showed it after {shown:?}; status then: {}",
        st["live"]
    );
    let detected = detected.unwrap_or_else(|| panic!("the dead target was not logged within 40 s:\n{}", m.log()));
    assert!(detected <= Duration::from_secs(14), "detected after {detected:?}, bound 12 s");
    assert_ne!(st["live"]["stream_state"], "streaming", "{st}");
    assert!(st["live"]["sample_age_seconds"].as_f64().unwrap_or(0.0) > 3.0, "{st}");
    heal(&tgt_relay, &api, "the target").await;

    tokio::task::spawn_blocking(move || pgbench_finish(bench)).await.unwrap();
    sync_point(&dbs.source, &dbs.target, 3).await;
    assert!(pgbench_invariant(&dbs.target).await);
    assert_identical(&dbs.source, &dbs.target).await;
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    drop((src_relay, tgt_relay));
    dbs.drop().await;
}

/// Drops everything through `relay` for 40 s; returns when `logged` first appeared in Ferry's
/// log and when the status first satisfied `shown`, and the status at the end.
async fn black_hole(
    relay: &Relay,
    m: &Migrator,
    api: &str,
    logged: &str,
    shown: impl Fn(&serde_json::Value) -> bool,
) -> (Option<Duration>, Option<Duration>, serde_json::Value) {
    let hole = Instant::now();
    relay.black_hole(true);
    let (mut seen_log, mut seen_status) = (None, None);
    while hole.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if seen_log.is_none() && m.log().contains(logged) {
            seen_log = Some(hole.elapsed());
        }
        if seen_status.is_none() && shown(&api_status(api).await) {
            seen_status = Some(hole.elapsed());
        }
    }
    (seen_log, seen_status, api_status(api).await)
}

/// Lets traffic through `relay` again and waits until the stream is back.
async fn heal(relay: &Relay, api: &str, side: &str) {
    relay.black_hole(false);
    api_wait(
        api,
        &format!("the stream to resume after the black hole to {side}"),
        Duration::from_secs(90),
        |s| s["live"]["stream_state"] == "streaming",
    )
    .await;
}
