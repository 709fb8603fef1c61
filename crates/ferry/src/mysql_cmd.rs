//! `ferry migrate` with a MySQL/MariaDB source: the checks, then the full load from one
//! consistent snapshot. Change capture from the binlog is not built yet, so the command needs
//! `--stop-after full-load` and says what it would take next.

use ferry_mysql::preflight;

use crate::cli::{MigrateArgs, StopAfter};
use crate::exit::{self, UsageError};

/// Runs it; returns the exit code.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<i32> {
    let req = crate::settings::resolve_mysql(&args.endpoints)?;
    if args.stop_after != Some(StopAfter::FullLoad) {
        return Err(UsageError(
            "--source is MySQL/MariaDB: change capture from the binlog is not built yet; pass --stop-after full-load \
             to copy one consistent snapshot (its binlog position is printed)"
                .into(),
        )
        .into());
    }
    // A load of this source into this target that started and did not finish (a crash, a kill)
    // left tables that are Ferry's own: they are dropped and copied again from a new snapshot.
    let mut req = req;
    let source_id = req.source.describe();
    let state_schema = &args.endpoints.state_schema;
    let target = req.target.connect("mysql-state").await?;
    match ferry_mysql::load::load_state(&target, state_schema, &source_id).await? {
        Some(false) => {
            eprintln!("An earlier full load from {source_id} did not finish: its tables are dropped and copied again from a new snapshot");
            req.overwrite = true;
        }
        Some(true) if !req.overwrite => {
            return Err(UsageError(format!(
                "the full load from {source_id} into {} already finished; pass --overwrite to load it again (its tables are replaced)",
                req.target.describe()
            ))
            .into());
        }
        _ => {}
    }
    let report = preflight::check(&req).await;
    if report.blocked() {
        eprint!("{}", crate::check_cmd::render_mysql(&report));
        eprintln!("ferry: the checks above found blockers; nothing was changed");
        return Ok(exit::FOUND_PROBLEM);
    }
    let plan = report.plan.expect("a report without blockers has a plan");
    let jobs = args
        .endpoints
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    eprintln!(
        "Full load of {} ({} tables) into {} with {jobs} connection(s)",
        req.source.describe(),
        plan.tables.len(),
        req.target.describe()
    );
    ferry_mysql::load::mark_started(&target, state_schema, &source_id).await?;
    let summary = ferry_mysql::load::full_load(&req, &plan, jobs, args.endpoints.split_size).await?;
    ferry_mysql::load::mark_finished(&target, state_schema, &source_id, &summary).await?;
    println!(
        "Full load from {} done at binlog position {}:{} (GTID {}):",
        req.source.describe(),
        summary.binlog_file,
        summary.binlog_pos,
        if summary.gtid.is_empty() { "-" } else { &summary.gtid }
    );
    println!(
        "  {} table(s) copied in {} piece(s) (large tables split into key ranges)",
        summary.tables.len(),
        summary.pieces
    );
    for (t, n) in &summary.tables {
        println!("  {:<44} {:>14} rows", t, crate::check_cmd::human_count(*n as i64));
    }
    println!(
        "  schema {:.2}s, data {:.2}s, keys/indexes/foreign keys/identities {:.2}s",
        summary.seconds.0, summary.seconds.1, summary.seconds.2
    );
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(exit::OK)
}
