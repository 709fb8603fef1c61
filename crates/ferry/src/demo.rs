//! `ferry demo`: the whole story on throwaway local databases.

use std::time::Instant;

use anyhow::Context;

use crate::cli::{DemoArgs, Endpoints};
use crate::cluster::{self, Cluster};
use crate::migrate::{self, MigrateOptions};

const SAMPLE: &str = include_str!("../sql/sample.sql");

/// The sample schema and data for `rows` order lines.
pub fn sample_sql(rows: i64) -> String {
    SAMPLE.replace("{{ROWS}}", &rows.to_string())
}

struct Clusters {
    list: Vec<Cluster>,
    dir: std::path::PathBuf,
    keep: bool,
}

impl Drop for Clusters {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mut problems = Vec::new();
        for c in &self.list {
            if let Err(e) = c.stop() {
                problems.push(format!("could not stop the cluster in {}: {e:#}", c.dir.display()));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            problems.push(format!("could not remove {}: {e}", self.dir.display()));
        }
        if problems.is_empty() {
            eprintln!("Cleaned up: both clusters stopped, {} removed.", self.dir.display());
        } else {
            for p in problems {
                eprintln!("Cleanup problem: {p}");
            }
        }
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bin = cluster::find_bin(args.pg_bin.as_deref())?;
    let owner = cluster::owner()?;
    let dir = std::env::temp_dir().join(format!("ferry-demo-clusters-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(&dir, Some(u), Some(g))?;
    }
    let password = format!("demo-{:x}", std::process::id() as u64 * 2_654_435_761 % 0xFFFF_FFFF);
    eprintln!(
        "Starting two throwaway PostgreSQL clusters from {} in {} ...",
        bin.display(),
        dir.display()
    );
    let mut clusters = Clusters {
        list: Vec::new(),
        dir: dir.clone(),
        keep: args.keep,
    };
    let logical = ["wal_level=logical", "max_replication_slots=10", "max_wal_senders=10"];
    clusters
        .list
        .push(Cluster::start(&bin, &dir.join("source"), owner, &password, &logical)?);
    clusters
        .list
        .push(Cluster::start(&bin, &dir.join("target"), owner, &password, &logical)?);
    let (src, tgt) = (&clusters.list[0], &clusters.list[1]);
    eprintln!("  source on 127.0.0.1:{}, target on 127.0.0.1:{}", src.port, tgt.port);

    for (c, what) in [(src, "source"), (tgt, "target")] {
        let client = ferry_postgres::Endpoint::parse(&c.url(&password, "postgres"), None)?
            .connect("demo")
            .await?;
        client
            .batch_execute("CREATE DATABASE shop")
            .await
            .with_context(|| format!("creating database shop on the {what}"))?;
    }
    let t = Instant::now();
    eprintln!(
        "Filling the source with the sample shop ({} order lines, every common type, a partitioned table, a 1.3 MB TOASTed value) ...",
        args.rows
    );
    let source = ferry_postgres::Endpoint::parse(&src.url(&password, "shop"), None)?
        .connect("demo")
        .await?;
    source
        .batch_execute(&sample_sql(args.rows))
        .await
        .context("loading the sample data")?;
    eprintln!("  done in {:.1}s", t.elapsed().as_secs_f64());

    let endpoints = Endpoints {
        source: src.url(&password, "shop"),
        target: tgt.url(&password, "shop"),
        source_password_file: None,
        target_password_file: None,
        include: vec![],
        exclude: vec![],
        jobs: args.jobs,
        migration_id: Some("demo".into()),
        state_schema: "ferry".into(),
        pg_bin_dir: Some(bin.clone()),
        overwrite: false,
        split_size: 32 << 20,
        zero_dates: crate::cli::ZeroDatesArg::Error,
        tinyint1_boolean: false,
        target_schema: None,
    };
    let req = crate::settings::resolve(&endpoints)?;
    println!(
        "\n$ ferry check --source {} --target {}",
        req.source.redacted(),
        req.target.redacted()
    );
    let report = ferry_postgres::preflight::check(&req).await;
    print!("{}", crate::check_cmd::render(&report));
    println!(
        "\n$ ferry migrate --source {} --target {}",
        req.source.redacted(),
        req.target.redacted()
    );
    // The API, metrics and dashboard, as `ferry migrate` serves them (port 7117, or a free one).
    let live = std::sync::Arc::new(crate::live::Live::new());
    let verify_ctx = std::sync::Arc::new(crate::verify_cmd::VerifyCtx {
        source: req.source.clone(),
        target: req.target.clone(),
        filter: req.filter.clone(),
        state_schema: req.state_schema.clone(),
        options: ferry_postgres::verify::Options::default(),
        hold: Some(live.hold.clone()),
    });
    // The application connects to Ferry's proxy (port 6432, or a free one), not to the source.
    let (proxy_config, source_up, target_up) = crate::cutover::proxy_config(&req, ([127, 0, 0, 1], 6432).into(), None)?;
    let proxy = match ferry_proxy::Proxy::start(proxy_config.clone(), source_up.clone()).await {
        Ok(p) => p,
        Err(_) => {
            let mut any = proxy_config;
            any.listen = ([127, 0, 0, 1], 0).into();
            ferry_proxy::Proxy::start(any, source_up.clone()).await?
        }
    };
    let proxy_addr = proxy.local_addr();
    live.set_proxy(proxy);
    let board = std::sync::Arc::new(crate::cutover::Switchboard::new(
        req.clone(),
        live.clone(),
        Some((source_up, target_up)),
        None,
    ));
    let api = crate::server::Api {
        live: live.clone(),
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        token: None,
        target: req.target.clone(),
        store: ferry_postgres::state::StateStore::new(&req.state_schema),
        migration_id: req.migration_id.clone(),
        verify: Some(verify_ctx.clone()),
        switchboard: Some(board.clone()),
        mysql: None,
    };
    let listen = crate::server::ListenOptions::default();
    let api_addr = match crate::server::serve(([127, 0, 0, 1], 7117).into(), api.clone(), &listen).await {
        Ok(a) => a,
        Err(_) => crate::server::serve(([127, 0, 0, 1], 0).into(), api, &listen).await?,
    };
    tokio::spawn(live.clone().sample_forever(
        req.target.clone(),
        req.source.clone(),
        req.migration_id.clone(),
        req.state_schema.clone(),
        10 << 30,
    ));
    println!("  (dashboard: http://{api_addr}/   metrics: http://{api_addr}/metrics   proxy: postgres://{proxy_addr}/shop)");
    let opts = MigrateOptions {
        skip_dead_letters: false,
        max_batch: 5000,
        max_delay_ms: 100,
        stream_timeout: ferry_postgres::cdc::DEFAULT_STREAM_TIMEOUT,
        commit_interval: ferry_postgres::cdc::DEFAULT_COMMIT_INTERVAL,
        apply_timeout: ferry_postgres::cdc::DEFAULT_APPLY_TIMEOUT,
        maintenance_work_mem: "256MB".into(),
        analyze: true,
        quiet_check: true,
        live: Some(live),
        via: None,
    };
    // The application keeps writing, through the proxy, while Ferry copies and streams.
    let writer_url = format!("postgres://postgres:{password}@{proxy_addr}/shop");
    let (writer_stop_tx, writer_stop) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move { app_writes(&writer_url, writer_stop).await });
    println!("  (an application writes through the proxy meanwhile: new orders, updates, deletes, ~200 transactions/s)");
    let summary = migrate::run(&req, &opts)
        .await?
        .context("the demo's migration was already past its full load")?;
    println!("{}", migrate::render(&summary));

    println!("$ (change data capture: the target catches up with the writes made during and after the copy)");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let cdc_req = req.clone();
    let cdc_opts = opts.clone();
    let cdc = tokio::spawn(async move { migrate::cdc(&cdc_req, &cdc_opts, stop).await });
    let target = ferry_postgres::Endpoint::parse(&tgt.url(&password, "shop"), None)?
        .connect("demo")
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // Verification while the application keeps writing: one consistent source position, the
    // applier held only while the target snapshot opens.
    println!("\n$ ferry verify --api http://{api_addr}   (while the application writes)");
    let store = ferry_postgres::state::StateStore::new(&req.state_schema);
    let run = crate::verify_cmd::start_run(&target, &store, &req.migration_id, "ferry demo").await?;
    let outcome = crate::verify_cmd::verify_once(&verify_ctx, std::sync::Arc::new(ferry_postgres::verify::Progress::default()))
        .await
        .map(|(r, _)| (r, 0));
    // Recorded like an API run: cutover checks that the last verification was clean.
    crate::verify_cmd::finish_run(&target, &store, run, &outcome).await?;
    let (report, _) = outcome.context("verifying during change capture")?;
    print!("{}", crate::verify_cmd::render(&report));
    if !report.identical() {
        anyhow::bail!("verification found differences during change capture");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let applied_before = target
        .query_one("SELECT applied_txns FROM ferry.migrations", &[])
        .await?
        .get::<_, i64>(0);
    println!("  {applied_before} source transactions applied on the target so far");

    // Cutover while the application writes: its transactions wait (they do not fail) for the
    // fraction of a second the switch takes, then go on against the target.
    println!("\n$ ferry cutover --api http://{api_addr} --max-pause 2s   (while the application writes)");
    let report = board
        .cutover(&crate::cutover::SwitchOptions {
            max_pause: std::time::Duration::from_secs(2),
            max_lag: std::time::Duration::from_secs(10),
            catch_up: std::time::Duration::from_secs(30),
            allow_direct_sessions: false,
            no_proxy: false,
            grace: std::time::Duration::from_secs(10),
            skip_verify_check: false,
            shadow_clean_for: None,
            actor: "ferry demo".into(),
        })
        .await;
    print!("{}", crate::cutover::render(&serde_json::to_value(&report)?));
    if report.outcome != "done" {
        anyhow::bail!("the cutover did not happen: {}", report.reason.unwrap_or_default());
    }
    // The application writes on the target for a moment; reverse replication keeps the source
    // current so that a rollback would lose nothing.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let _ = writer_stop_tx.send(true);
    let writes = writer.await.context("the demo's writer failed")??;
    // The writer's last transaction (on the target now) leaves a marker; the source has caught
    // up when it has it.
    let started = Instant::now();
    loop {
        let done: bool = source
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM public.\"Audit Log\" WHERE \"Message\" = 'demo writer done')",
                &[],
            )
            .await?
            .get(0);
        if done {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!("reverse replication did not bring the last write to the source within a minute");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!(
        "  {writes} application transactions, not one failed; those made after the cutover went to the target and are on the source too ({:.1} s later)",
        started.elapsed().as_secs_f64()
    );
    // Let the API's once-a-second sample see the last batch.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    println!("\n$ ferry status --api http://{api_addr}");
    match crate::status::fetch(&format!("http://{api_addr}")).await {
        Ok(st) => print!("{}", crate::status::render(&st)),
        Err(e) => println!("  (status unavailable: {e:#})"),
    }
    let _ = stop_tx.send(true);
    cdc.await.context("change capture task failed")??;

    // An independent look: row counts and a hash of every row, both sides.
    println!("Independent comparison (count and md5 of all rows, ordered):");
    let tables = [
        "order_items",
        "orders",
        "customers",
        "products",
        "events",
        "\"Audit Log\"",
        "\"MixedCase\"",
        "page_views",
        "type_zoo",
    ];
    let mut all_same = true;
    for t in tables {
        let q = format!("SELECT count(*), md5(string_agg(x::text, E'\\n' ORDER BY x::text COLLATE \"C\")) FROM {t} x");
        let a = source.query_one(&q, &[]).await?;
        let b = target.query_one(&q, &[]).await?;
        let same = a.get::<_, i64>(0) == b.get::<_, i64>(0) && a.get::<_, Option<String>>(1) == b.get::<_, Option<String>>(1);
        all_same &= same;
        println!(
            "  {:<14} {:>10} rows  {}",
            t,
            a.get::<_, i64>(0),
            if same { "identical" } else { "DIFFERENT" }
        );
    }
    if args.keep {
        println!(
            "\nKept running: source {} and target {} (password in the URLs); stop with pg_ctl -D {}/{{source,target}}/data stop",
            src.url("****", "shop"),
            tgt.url("****", "shop"),
            dir.display()
        );
        println!("Password: {password}");
    }
    drop(source);
    drop(target);
    drop(clusters);
    if !all_same {
        anyhow::bail!("the target differs from the source");
    }
    Ok(())
}

/// A small application: new orders with their lines, customer updates, order deletions, each in
/// its own transaction, until told to stop; ends with a marker row. Returns the transactions made.
async fn app_writes(url: &str, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<u64> {
    let c = ferry_postgres::Endpoint::parse(url, None)?.connect("demo-app").await?;
    let mut n: u64 = 0;
    while !*stop.borrow() {
        let i = n as i64;
        c.batch_execute(&format!(
            "BEGIN;
             WITH o AS (INSERT INTO orders (customer_id, placed_at, status) VALUES (1 + {i} % 50, now(), 'new') RETURNING id)
             INSERT INTO order_items (order_id, line, product_id, qty, price) SELECT id, 1, 1 + {i} % 10, 1 + {i} % 3, 9.99 FROM o;
             UPDATE customers SET mood = (ARRAY['sad','ok','happy']::mood[])[1 + {i} % 3] WHERE id = 1 + {i} % 40;
             DELETE FROM order_items WHERE order_id = (SELECT min(id) FROM orders WHERE status = 'shipped' AND id % 97 = {} );
             COMMIT;",
            i % 97
        ))
        .await?;
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
            _ = stop.changed() => {}
        }
    }
    c.batch_execute("INSERT INTO \"Audit Log\" (\"Message\") VALUES ('demo writer done')")
        .await?;
    Ok(n + 1)
}
