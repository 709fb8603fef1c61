//! Verification runs in the state schema: `verify_runs` (one row per run, its report as JSON)
//! and `verify_differences` (the differences a run described, one row each).

use ferry_core::Lsn;
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::StateStore;
use crate::error::PgError;
use crate::verify::Report;

impl StateStore {
    /// Records a new verification run of migration `id` started by `actor`; returns its id.
    pub async fn start_verify_run(&self, c: &impl GenericClient, id: &str, actor: &str) -> Result<i64, PgError> {
        c.query_one(
            &format!(
                "INSERT INTO {}.verify_runs (migration_id, actor) VALUES ($1, $2) RETURNING id",
                self.q
            ),
            &[&id, &actor],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| PgError::query("recording a verification run", e))
    }

    /// Stores a finished run and its described differences. The run's `source_lsn` column
    /// holds a PostgreSQL position only; a MySQL/MariaDB run's binlog position is in its report.
    pub async fn finish_verify_run(&self, c: &impl GenericClient, run: i64, report: &Report, repaired: u64) -> Result<(), PgError> {
        let q = &self.q;
        let json = serde_json::to_value(report).unwrap_or_default();
        c.execute(
            &format!(
                "UPDATE {q}.verify_runs SET finished_at = clock_timestamp(), status = $2, source_lsn = $3::text::pg_lsn,
                    tables = $4, rows_compared = $5, differences = $6, repaired = $7, report = $8 WHERE id = $1"
            ),
            &[
                &run,
                &if report.identical() { "identical" } else { "different" },
                &report.source_lsn.as_ref().filter(|l| l.parse::<Lsn>().is_ok()),
                &(report.tables.len() as i32),
                &(report.rows_compared as i64),
                &(report.differences as i64),
                &(repaired as i64),
                &json,
            ],
        )
        .await
        .map_err(|e| PgError::query("recording a verification run", e))?;
        for d in report.tables.iter().flat_map(|t| &t.details) {
            c.execute(
                &format!("INSERT INTO {q}.verify_differences (run_id, table_name, key, kind, columns) VALUES ($1, $2, $3, $4, $5)"),
                &[
                    &run,
                    &d.table,
                    &d.key,
                    &serde_json::to_value(d.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    &serde_json::to_value(&d.columns).unwrap_or_default(),
                ],
            )
            .await
            .map_err(|e| PgError::query("recording a difference", e))?;
        }
        Ok(())
    }

    /// Stores a run that failed, with its error.
    pub async fn fail_verify_run(&self, c: &impl GenericClient, run: i64, error: &str) -> Result<(), PgError> {
        c.execute(
            &format!(
                "UPDATE {}.verify_runs SET finished_at = clock_timestamp(), status = 'failed', error = $2 WHERE id = $1",
                self.q
            ),
            &[&run, &error],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query("recording a verification run", e))
    }

    /// Closes the runs of migration `id` still marked running: the process that ran them
    /// stopped (`reason` is stored as their error).
    pub async fn interrupt_verify_runs(&self, c: &impl GenericClient, id: &str, reason: &str) -> Result<(), PgError> {
        c.execute(
            &format!(
                "UPDATE {}.verify_runs SET status = 'interrupted', finished_at = clock_timestamp(), error = $2
                 WHERE migration_id = $1 AND status = 'running'",
                self.q
            ),
            &[&id, &reason],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query("closing an interrupted verification run", e))
    }

    /// Run `run` of migration `id` as the API serves it (`GET /api/verify/{run}`): id, status,
    /// actor, source_lsn, rows_compared, differences, repaired, error and report.
    pub async fn verify_run_json(&self, c: &impl GenericClient, id: &str, run: i64) -> Result<Option<Value>, PgError> {
        c.query_opt(
            &format!(
                "SELECT jsonb_build_object('id', id, 'status', status, 'actor', actor, 'source_lsn', source_lsn::text,
                    'rows_compared', rows_compared, 'differences', differences, 'repaired', repaired, 'error', error,
                    'report', report)
                 FROM {}.verify_runs WHERE id = $1 AND migration_id = $2",
                self.q
            ),
            &[&run, &id],
        )
        .await
        .map(|r| r.map(|r| r.get(0)))
        .map_err(|e| PgError::query("reading a verification run", e))
    }
}
