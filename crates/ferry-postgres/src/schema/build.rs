//! Running post-data steps on the target, several at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::post_data::Step;
use crate::endpoint::Endpoint;
use crate::error::PgError;

/// Statements of Ferry sessions (other than this one) building an index or altering a table
/// in the database of `c` now: the orphans of a killed run, which end within about a second.
pub async fn earlier_builds(c: &tokio_postgres::Client) -> Result<i64, PgError> {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
           AND application_name LIKE 'ferry%'
           AND (query ILIKE 'CREATE%INDEX%' OR query ILIKE 'ALTER TABLE%')",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| PgError::query("looking for statements of an earlier run on the target", e))
}

/// Runs `script` (restored SQL) and then `done` (the state update that records it restored:
/// [`crate::state::StateStore::schema_done_sql`], [`crate::state::StateStore::post_data_done_sql`])
/// in one transaction on `c`, so that a crash leaves both or neither. `context` says what is
/// restored, for the error.
pub async fn restore_in_one_transaction(c: &tokio_postgres::Client, script: &str, done: &str, context: &str) -> Result<(), PgError> {
    c.batch_execute(&format!("BEGIN;\n{script}\n;\n{done};\nCOMMIT;"))
        .await
        .map_err(|e| PgError::query(context, e))
}

/// What happened to one step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepOutcome {
    /// The step.
    pub step: Step,
    /// False when the object already existed (a resumed run).
    pub ran: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Runs `steps` on up to `jobs` target connections, in the order given. A step whose
/// `done_check` is true is skipped; otherwise its statements run one after the other. Stops at
/// the first failure and returns it. `maintenance_work_mem` is raised per connection (the
/// index builds are the only thing running).
pub async fn run_steps(target: &Endpoint, steps: Vec<Step>, jobs: usize, maintenance_work_mem: &str) -> Result<Vec<StepOutcome>, PgError> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let n = jobs.max(1).min(steps.len());
    let queue = Arc::new(Mutex::new(steps.into_iter().collect::<std::collections::VecDeque<_>>()));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let queue = queue.clone();
        let target = target.clone();
        let mwm = maintenance_work_mem.to_string();
        set.spawn(async move {
            let client = target.connect(&format!("build-{i}")).await?;
            client
                .batch_execute(&format!(
                    "SET maintenance_work_mem = '{}'; SET lock_timeout = 0; SET statement_timeout = 0; SET synchronous_commit = off",
                    mwm.replace('\'', "")
                ))
                .await
                .map_err(|e| PgError::query("preparing an index build connection", e))?;
            let mut done = Vec::new();
            loop {
                let Some(step) = queue.lock().await.pop_front() else { break };
                let started = Instant::now();
                let exists: bool = client
                    .query_one(&step.done_check, &[])
                    .await
                    .map_err(|e| PgError::query(format!("checking whether {} exists on the target", step.name), e))?
                    .get(0);
                if !exists {
                    for sql in &step.sql {
                        if let Err(e) = client.batch_execute(sql).await {
                            return Err(PgError::query(format!("building {:?} {} on {} (statement: {sql})", step.kind, step.name, step.table), e));
                        }
                    }
                    tracing::debug!(table = %step.table, object = %step.name, kind = ?step.kind, seconds = started.elapsed().as_secs_f64(), "built");
                }
                done.push(StepOutcome {
                    step,
                    ran: !exists,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            Ok::<_, PgError>(done)
        });
    }
    let mut all = Vec::new();
    while let Some(res) = set.join_next().await {
        match res {
            Ok(Ok(mut v)) => all.append(&mut v),
            Ok(Err(e)) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(PgError::config(
                    "post-data build",
                    format!("a build task failed: {e}"),
                    "see the log",
                ));
            }
        }
    }
    let _ = Duration::ZERO;
    Ok(all)
}
