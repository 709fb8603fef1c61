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
    let summary = migrate::run(
        &req,
        &MigrateOptions {
            skip_dead_letters: false,
            max_batch: 5000,
            maintenance_work_mem: "256MB".into(),
            analyze: true,
            quiet_check: true,
        },
    )
    .await?
    .context("the demo's migration was already past its full load")?;
    println!("{}", migrate::render(&summary));

    // An independent look: row counts and a hash of every row, both sides.
    let target = ferry_postgres::Endpoint::parse(&tgt.url(&password, "shop"), None)?
        .connect("demo")
        .await?;
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
