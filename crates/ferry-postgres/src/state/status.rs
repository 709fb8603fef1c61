//! Reads of the state schema for `ferry status`, `GET /api/status` and `GET /api/events`:
//! typed rows, timestamps as RFC 3339 text in UTC (milliseconds), as the JSON shows them.

use serde_json::Value;
use tokio_postgres::GenericClient;

use super::StateStore;
use crate::error::PgError;

/// What the status reads when a query fails.
const READING: &str = "reading Ferry's state on the target";

/// SQL rendering a timestamptz column as RFC 3339 in UTC (milliseconds), for JSON.
pub fn iso_sql(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

/// A migration's record as the status shows it.
#[derive(Debug, Clone)]
pub struct MigrationSummary {
    /// Migration id.
    pub id: String,
    /// Phase.
    pub phase: String,
    /// Slot (MySQL sources: `server_id N`).
    pub slot_name: String,
    /// The slot's consistent point (PostgreSQL sources).
    pub consistent_lsn: Option<String>,
    /// Last source commit applied (PostgreSQL sources).
    pub applied_lsn: Option<String>,
    /// Source transactions applied.
    pub applied_txns: i64,
    /// Inserts applied.
    pub events_insert: i64,
    /// Updates applied.
    pub events_update: i64,
    /// Deletes applied.
    pub events_delete: i64,
    /// Truncates applied.
    pub events_truncate: i64,
    /// Seconds since the last applied source commit (None: none applied).
    pub since_commit_seconds: Option<f64>,
    /// Dead letters recorded.
    pub dead_letters: i64,
    /// `postgresql` or `mysql` (`postgresql` for schemas older than the column).
    pub source_engine: String,
    /// Snapshot position text, when recorded.
    pub snapshot_position: Option<String>,
    /// Applied position text, when recorded.
    pub applied_position: Option<String>,
}

/// One table's progress as the status shows it.
#[derive(Debug, Clone)]
pub struct TableSummary {
    /// `schema.table`.
    pub table: String,
    /// State.
    pub state: String,
    /// Rows copied.
    pub rows_copied: i64,
    /// Estimated rows.
    pub rows_estimate: Option<i64>,
    /// COPY bytes copied.
    pub bytes_copied: i64,
}

/// One row of `transitions`.
#[derive(Debug, Clone)]
pub struct TransitionRow {
    /// When (RFC 3339).
    pub at: String,
    /// Phase left (None for the first).
    pub from: Option<String>,
    /// Phase entered.
    pub to: String,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// One row of `dead_letters`.
#[derive(Debug, Clone)]
pub struct DeadLetterSummary {
    /// When recorded (RFC 3339).
    pub at: String,
    /// The stream's ordering key of its transaction.
    pub commit_lsn: String,
    /// Table.
    pub table: String,
    /// Operation.
    pub operation: String,
    /// Key.
    pub key: Option<String>,
    /// Error.
    pub error: String,
    /// Stepped over.
    pub skipped: bool,
    /// Its transaction's position in the source's own terms, when recorded.
    pub commit_position: Option<String>,
}

/// One row of the event log.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Id (increasing).
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Phase.
    pub phase: String,
    /// Kind.
    pub kind: String,
    /// Message.
    pub message: String,
}

/// A partition read by a Kafka apply (`ferry apply`, one or a group), as its holder last
/// recorded it (`ferry status` shows these as they are).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KafkaPartitionRow {
    /// The apply group (a single applier: its id).
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The member holding it.
    pub member: String,
    /// The next record to apply.
    pub next_offset: i64,
    /// Records the broker has after it, as of the holder's last look.
    pub lag_records: Option<i64>,
    /// Seconds since the holder last advanced (or claimed) it.
    pub idle_seconds: f64,
}

impl StateStore {
    /// Every partition of the Kafka applies the migration `id` takes part in (none without the
    /// table).
    pub async fn kafka_partitions(&self, c: &impl GenericClient, id: &str) -> Result<Vec<KafkaPartitionRow>, PgError> {
        if !self.has_table(c, "kafka_offsets").await? {
            return Ok(Vec::new());
        }
        let q = &self.q;
        let rows = c
            .query(
                &format!(
                    "SELECT group_id, topic, partition, member, next_offset, high_watermark - next_offset,
                            extract(epoch FROM now() - GREATEST(updated_at, claimed_at))::float8
                       FROM {q}.kafka_offsets
                      WHERE group_id IN (SELECT group_id FROM {q}.kafka_offsets WHERE member_id = $1)
                      ORDER BY 1, 4, 2, 3"
                ),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query(READING, e))?;
        Ok(rows
            .iter()
            .map(|r| KafkaPartitionRow {
                group: r.get(0),
                topic: r.get(1),
                partition: r.get(2),
                member: r.get(3),
                next_offset: r.get(4),
                lag_records: r.get::<_, Option<i64>>(5).map(|l| l.max(0)),
                idle_seconds: r.get(6),
            })
            .collect())
    }

    /// Whether the state schema has table `table` (older schemas lack some).
    pub async fn has_table(&self, c: &impl GenericClient, table: &str) -> Result<bool, PgError> {
        c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{}.{table}", self.q)])
            .await
            .map(|r| r.get(0))
            .map_err(|e| PgError::query(READING, e))
    }

    /// The recorded migrations (only `id` when given), most recently updated first.
    pub async fn migration_summaries(&self, c: &impl GenericClient, id: Option<&str>) -> Result<Vec<MigrationSummary>, PgError> {
        let q = &self.q;
        let rows = c
            .query(
                &format!(
                    "SELECT id, phase, slot_name, consistent_lsn::text, applied_lsn::text, applied_txns, events_insert, events_update,
                        events_delete, events_truncate,
                        CASE WHEN last_commit_time IS NULL THEN NULL ELSE extract(epoch FROM now() - last_commit_time)::float8 END,
                        (SELECT count(*) FROM {q}.dead_letters d WHERE d.migration_id = m.id),
                        coalesce(to_jsonb(m)->>'source_engine', 'postgresql'), to_jsonb(m)->>'snapshot_position',
                        to_jsonb(m)->>'applied_position'
                 FROM {q}.migrations m WHERE $1::text IS NULL OR id = $1 ORDER BY updated_at DESC"
                ),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query(READING, e))?;
        Ok(rows
            .iter()
            .map(|r| MigrationSummary {
                id: r.get(0),
                phase: r.get(1),
                slot_name: r.get(2),
                consistent_lsn: r.get(3),
                applied_lsn: r.get(4),
                applied_txns: r.get(5),
                events_insert: r.get(6),
                events_update: r.get(7),
                events_delete: r.get(8),
                events_truncate: r.get(9),
                since_commit_seconds: r.get(10),
                dead_letters: r.get(11),
                source_engine: r.get(12),
                snapshot_position: r.get(13),
                applied_position: r.get(14),
            })
            .collect())
    }

    /// The tables of migration `id`, largest estimate first.
    pub async fn table_summaries(&self, c: &impl GenericClient, id: &str) -> Result<Vec<TableSummary>, PgError> {
        let rows = c
            .query(
                &format!("SELECT format('%s.%s', schema_name, table_name), state, rows_copied, rows_estimate, bytes_copied FROM {}.tables WHERE migration_id = $1 ORDER BY rows_estimate DESC NULLS LAST, 1", self.q),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query(READING, e))?;
        Ok(rows
            .iter()
            .map(|row| TableSummary {
                table: row.get(0),
                state: row.get(1),
                rows_copied: row.get(2),
                rows_estimate: row.get(3),
                bytes_copied: row.get(4),
            })
            .collect())
    }

    /// Seconds since migration `id` entered its current phase (None: no transition recorded).
    pub async fn phase_seconds(&self, c: &impl GenericClient, id: &str) -> Result<Option<f64>, PgError> {
        c.query_one(
            &format!(
                "SELECT extract(epoch FROM now() - max(at))::float8 FROM {}.transitions
                 WHERE migration_id = $1 AND from_phase IS DISTINCT FROM to_phase",
                self.q
            ),
            &[&id],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| PgError::query(READING, e))
    }

    /// The last 100 phase changes of migration `id`, oldest first.
    pub async fn transitions(&self, c: &impl GenericClient, id: &str) -> Result<Vec<TransitionRow>, PgError> {
        let rows = c
            .query(
                &format!(
                    "SELECT * FROM (SELECT id, {}, from_phase, to_phase, actor, reason
                     FROM {}.transitions WHERE migration_id = $1 ORDER BY id DESC LIMIT 100) x ORDER BY id",
                    iso_sql("at"),
                    self.q
                ),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query(READING, e))?;
        Ok(rows
            .iter()
            .map(|row| TransitionRow {
                at: row.get(1),
                from: row.get(2),
                to: row.get(3),
                actor: row.get(4),
                reason: row.get(5),
            })
            .collect())
    }

    /// The latest verification run of migration `id` as JSON (id, status, actor, started_at,
    /// finished_at, source_lsn, tables, rows_compared, differences, repaired, error).
    pub async fn last_verify_run_json(&self, c: &impl GenericClient, id: &str) -> Result<Option<Value>, PgError> {
        c.query_opt(
            &format!(
                "SELECT jsonb_build_object('id', id, 'status', status, 'actor', actor,
                    'started_at', {}, 'finished_at', {},
                    'source_lsn', source_lsn::text, 'tables', tables, 'rows_compared', rows_compared,
                    'differences', differences, 'repaired', repaired, 'error', error)
                 FROM {}.verify_runs WHERE migration_id = $1 ORDER BY id DESC LIMIT 1",
                iso_sql("started_at"),
                iso_sql("finished_at"),
                self.q
            ),
            &[&id],
        )
        .await
        .map(|r| r.map(|r| r.get(0)))
        .map_err(|e| PgError::query(READING, e))
    }

    /// Rows compared by all verification runs of migration `id`.
    pub async fn verify_rows_compared(&self, c: &impl GenericClient, id: &str) -> Result<i64, PgError> {
        c.query_one(
            &format!(
                "SELECT COALESCE(sum(rows_compared), 0)::int8 FROM {}.verify_runs WHERE migration_id = $1",
                self.q
            ),
            &[&id],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| PgError::query(READING, e))
    }

    /// Differences found by all verification runs of migration `id`, per table.
    pub async fn verify_differences_by_table(&self, c: &impl GenericClient, id: &str) -> Result<Vec<(String, i64)>, PgError> {
        let rows = c
            .query(
                &format!(
                    "SELECT x->>'table', sum((x->>'differences')::int8)::int8 FROM {}.verify_runs r, jsonb_array_elements(r.report->'tables') x
                     WHERE r.migration_id = $1 GROUP BY 1 ORDER BY 1",
                    self.q
                ),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query(READING, e))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// The latest `limit` dead letters of migration `id`, newest first.
    pub async fn recent_dead_letters(&self, c: &impl GenericClient, id: &str, limit: i64) -> Result<Vec<DeadLetterSummary>, PgError> {
        let rows = c
            .query(
                &format!(
                    "SELECT {}, commit_lsn::text, table_name, operation, key, error, skipped, to_jsonb(d)->>'commit_position'
                     FROM {}.dead_letters d WHERE migration_id = $1 ORDER BY id DESC LIMIT $2",
                    iso_sql("at"),
                    self.q
                ),
                &[&id, &limit],
            )
            .await
            .map_err(|e| PgError::query(READING, e))?;
        Ok(rows
            .iter()
            .map(|row| DeadLetterSummary {
                at: row.get(0),
                commit_lsn: row.get(1),
                table: row.get(2),
                operation: row.get(3),
                key: row.get(4),
                error: row.get(5),
                skipped: row.get(6),
                commit_position: row.get(7),
            })
            .collect())
    }

    /// Event log entries of migration `id` after entry `after`, oldest first, at most `limit`.
    pub async fn events_after(&self, c: &impl GenericClient, id: &str, after: i64, limit: i64) -> Result<Vec<EventRow>, PgError> {
        let rows = c
            .query(
                &format!(
                    "SELECT id, {}, phase, kind, message
                     FROM {}.events WHERE migration_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    iso_sql("at"),
                    self.q
                ),
                &[&id, &after, &limit],
            )
            .await
            .map_err(|e| PgError::query("reading the event log", e))?;
        Ok(rows
            .iter()
            .map(|r| EventRow {
                id: r.get(0),
                at: r.get(1),
                phase: r.get(2),
                kind: r.get(3),
                message: r.get(4),
            })
            .collect())
    }

    /// Ids of the migrations streaming changes into the target now (phase `cdc` or `verify`).
    pub async fn streaming_migrations(&self, c: &impl GenericClient) -> Result<Vec<String>, PgError> {
        c.query(
            &format!("SELECT id FROM {}.migrations WHERE phase IN ('cdc', 'verify')", self.q),
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .map_err(|e| PgError::query(READING, e))
    }
}
