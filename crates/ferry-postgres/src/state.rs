//! Ferry's state schema on the target: migrations, per-table progress, and an event log.
//!
//! State lives on the target, beside the data it describes, so that a table's progress is
//! committed in the same transaction as its rows: after a crash, state and data always agree.

use ferry_core::ident::quote_ident;
use ferry_core::{Lsn, Phase, SourcePosition, TableName, TableState};
use tokio_postgres::{Client, GenericClient};

use crate::error::PgError;

mod export;
mod status;
mod verify_runs;

pub use export::Dropped;
pub use status::{iso_sql, DeadLetterSummary, EventRow, KafkaPartitionRow, MigrationSummary, TableSummary, TransitionRow};

/// Handle on the state schema (default `ferry`).
#[derive(Debug, Clone)]
pub struct StateStore {
    schema: String,
    q: String,
}

/// `migrations.source_engine` of a migration from a PostgreSQL source.
pub const ENGINE_POSTGRESQL: &str = "postgresql";
/// `migrations.source_engine` of a migration from a MySQL/MariaDB source.
pub const ENGINE_MYSQL: &str = "mysql";

/// A migration's durable record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationRecord {
    /// Migration id.
    pub id: String,
    /// Current phase.
    pub phase: Phase,
    /// Replication slot on the source (MySQL sources: `server_id N`, the replica server id
    /// the binlog stream registers with).
    pub slot_name: String,
    /// Publication on the source (MySQL sources: the source database).
    pub publication_name: String,
    /// The slot's consistent point, once the slot exists.
    pub consistent_lsn: Option<Lsn>,
    /// Whether the target's tables, types and sequences (pre-data) exist.
    pub schema_done: bool,
    /// Whether pg_restore's share of post-data (triggers, rules, policies...) is restored.
    pub post_data_done: bool,
}

/// One table's durable progress.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableRecord {
    /// Table.
    pub name: TableName,
    /// State.
    pub state: TableState,
    /// Changes committed on the source before this LSN are in the copied rows.
    pub snapshot_lsn: Option<Lsn>,
    /// The same for every engine (`pg:...`, `mysql:...`), when recorded that way.
    pub snapshot_position: Option<SourcePosition>,
    /// Rows committed on the target.
    pub rows_copied: i64,
    /// COPY bytes committed on the target.
    pub bytes_copied: i64,
}

impl StateStore {
    /// A store in `schema`.
    pub fn new(schema: &str) -> Self {
        Self {
            schema: schema.to_string(),
            q: quote_ident(schema),
        }
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema and its tables if missing. A column or table added here is added to
    /// [`Self::is_current`] too (commands that only read skip this when that says current).
    pub async fn ensure(&self, c: &Client) -> Result<(), PgError> {
        let s = &self.q;
        // One statement string is one transaction: the lock makes processes that start at the
        // same moment (the members of an apply group) create the schema one after the other.
        c.batch_execute(&format!(
            r#"
SELECT pg_advisory_xact_lock(hashtext('ferry state schema ' || {lit}));
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.migrations (
    id               text PRIMARY KEY,
    source           text NOT NULL,
    slot_name        text NOT NULL,
    publication_name text NOT NULL,
    consistent_lsn   pg_lsn,
    phase            text NOT NULL,
    schema_done      boolean NOT NULL DEFAULT false,
    post_data_done   boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.tables (
    migration_id  text NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    state         text NOT NULL,
    snapshot_lsn  pg_lsn,
    ranges_total  integer NOT NULL DEFAULT 1,
    ranges_done   integer NOT NULL DEFAULT 0,
    rows_estimate bigint,
    rows_copied   bigint NOT NULL DEFAULT 0,
    bytes_copied  bigint NOT NULL DEFAULT 0,
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (migration_id, schema_name, table_name)
);
CREATE TABLE IF NOT EXISTS {s}.events (
    id           bigserial PRIMARY KEY,
    migration_id text NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    phase        text NOT NULL,
    kind         text NOT NULL,
    message      text NOT NULL
);
ALTER TABLE {s}.migrations
    ADD COLUMN IF NOT EXISTS source_engine     text NOT NULL DEFAULT 'postgresql',
    ADD COLUMN IF NOT EXISTS snapshot_position text,
    ADD COLUMN IF NOT EXISTS applied_position  text;
ALTER TABLE {s}.tables
    ADD COLUMN IF NOT EXISTS snapshot_position text;
ALTER TABLE {s}.migrations
    ADD COLUMN IF NOT EXISTS applied_lsn      pg_lsn,
    ADD COLUMN IF NOT EXISTS applied_txns     bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS events_insert    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS events_update    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS events_delete    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS events_truncate  bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_commit_time timestamptz,
    ADD COLUMN IF NOT EXISTS applied_at       timestamptz;
CREATE TABLE IF NOT EXISTS {s}.dead_letters (
    id           bigserial PRIMARY KEY,
    migration_id text NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    commit_lsn   pg_lsn NOT NULL,
    change_index integer NOT NULL,
    table_name   text NOT NULL,
    operation    text NOT NULL,
    key          text,
    payload      text,
    error        text NOT NULL,
    skipped      boolean NOT NULL DEFAULT false,
    UNIQUE (migration_id, commit_lsn, change_index)
);
-- commit_lsn is the stream's ordering key (the LSN for PostgreSQL; for MySQL the binlog file
-- number and offset packed, ferry_postgres::apply::order_key); commit_position is the
-- transaction's SourcePosition text in the source's own terms.
ALTER TABLE {s}.dead_letters ADD COLUMN IF NOT EXISTS commit_position text;
CREATE TABLE IF NOT EXISTS {s}.transitions (
    id           bigserial PRIMARY KEY,
    migration_id text NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_phase   text,
    to_phase     text NOT NULL,
    actor        text NOT NULL,
    reason       text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.verify_runs (
    id            bigserial PRIMARY KEY,
    migration_id  text NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    actor         text NOT NULL,
    source_lsn    pg_lsn,
    status        text NOT NULL DEFAULT 'running',
    tables        integer NOT NULL DEFAULT 0,
    rows_compared bigint NOT NULL DEFAULT 0,
    differences   bigint NOT NULL DEFAULT 0,
    repaired      bigint,
    error         text,
    report        jsonb
);
CREATE TABLE IF NOT EXISTS {s}.verify_differences (
    run_id     bigint NOT NULL REFERENCES {s}.verify_runs (id) ON DELETE CASCADE,
    table_name text NOT NULL,
    key        text NOT NULL,
    kind       text NOT NULL,
    columns    jsonb NOT NULL
);
COMMENT ON SCHEMA {s} IS 'Ferry migration state: do not edit while a migration runs';
"#,
            lit = ferry_core::ident::quote_literal(&self.schema)
        ))
        .await
        .map_err(|e| PgError::query(format!("creating Ferry's state schema {s} on the target"), e))
    }

    /// Whether the state schema exists.
    pub async fn exists(&self, c: &Client) -> Result<bool, PgError> {
        c.query_one("SELECT to_regclass(format('%I.migrations', $1::text)) IS NOT NULL", &[&self.schema])
            .await
            .map(|r| r.get(0))
            .map_err(|e| PgError::query("reading Ferry's state on the target", e))
    }

    /// Whether the state schema has every table and column of this version of Ferry (a
    /// catalog read, no lock): commands that only read or update state call [`Self::ensure`]
    /// only when not, so that they never queue an `ALTER TABLE` behind a running stream.
    pub async fn is_current(&self, c: &impl GenericClient) -> Result<bool, PgError> {
        c.query_one(
            "SELECT count(*) = 3 FROM pg_attribute
             WHERE (attrelid, attname) IN ((to_regclass(format('%I.migrations', $1::text)), 'applied_position'),
                                          (to_regclass(format('%I.tables', $1::text)), 'snapshot_position'),
                                          (to_regclass(format('%I.dead_letters', $1::text)), 'commit_position'))
               AND NOT attisdropped",
            &[&self.schema],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| PgError::query("reading Ferry's state on the target", e))
    }

    /// The source engine (`postgresql`, `mysql`) and source of a recorded migration.
    pub async fn engine_of(&self, c: &impl GenericClient, id: &str) -> Result<Option<(String, String)>, PgError> {
        c.query_opt(
            &format!("SELECT source_engine, source FROM {}.migrations WHERE id = $1", self.q),
            &[&id],
        )
        .await
        .map(|r| r.map(|r| (r.get(0), r.get(1))))
        .map_err(|e| PgError::query("reading Ferry's migration record", e))
    }

    /// Loads a migration from a PostgreSQL source, if recorded. A migration of another source
    /// engine under this id is an error that says so (its slot and publication columns do not
    /// name PostgreSQL objects).
    pub async fn load(&self, c: &Client, id: &str) -> Result<Option<MigrationRecord>, PgError> {
        if !self.exists(c).await? {
            return Ok(None);
        }
        let engine = if self.is_current(c).await? {
            "source_engine"
        } else {
            "'postgresql'"
        };
        let row = c
            .query_opt(
                &format!("SELECT id, phase, slot_name, publication_name, consistent_lsn::text, schema_done, post_data_done, {engine}, source FROM {}.migrations WHERE id = $1", self.q),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query("reading Ferry's migration record", e))?;
        if let Some(r) = &row {
            let engine: String = r.get(7);
            if engine != ENGINE_POSTGRESQL {
                return Err(PgError::config(
                    format!("reading migration {id}"),
                    format!(
                        "migration {id} on the target is a migration from a {engine} source ({}), not from PostgreSQL",
                        r.get::<_, String>(8)
                    ),
                    "give this migration another id (--migration-id)",
                ));
            }
        }
        Ok(row.map(|r| MigrationRecord {
            id: r.get(0),
            phase: r.get::<_, String>(1).parse().unwrap_or(Phase::Assess),
            slot_name: r.get(2),
            publication_name: r.get(3),
            consistent_lsn: r.get::<_, Option<String>>(4).and_then(|s| s.parse().ok()),
            schema_done: r.get(5),
            post_data_done: r.get(6),
        }))
    }

    /// Records a new migration from a PostgreSQL source in phase `assess`.
    pub async fn create(&self, c: &Client, id: &str, source: &str, slot: &str, publication: &str) -> Result<(), PgError> {
        self.create_for(c, id, ENGINE_POSTGRESQL, source, slot, publication, "ferry migrate")
            .await
    }

    /// Records a new migration from a source of `engine` ([`ENGINE_POSTGRESQL`],
    /// [`ENGINE_MYSQL`]) in phase `assess`, with its first transition (by `actor`).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_for(
        &self,
        c: &impl GenericClient,
        id: &str,
        engine: &str,
        source: &str,
        slot: &str,
        publication: &str,
        actor: &str,
    ) -> Result<(), PgError> {
        c.execute(
            &format!(
                "INSERT INTO {}.migrations (id, source, slot_name, publication_name, phase, source_engine) VALUES ($1, $2, $3, $4, 'assess', $5)",
                self.q
            ),
            &[&id, &source, &slot, &publication, &engine],
        )
        .await
        .map_err(|e| PgError::query("recording the migration", e))?;
        c.execute(
            &format!(
                "INSERT INTO {}.transitions (migration_id, from_phase, to_phase, actor, reason) VALUES ($1, NULL, 'assess', $2, 'migration created')",
                self.q
            ),
            &[&id, &actor],
        )
        .await
        .map_err(|e| PgError::query("recording the phase transition", e))?;
        self.event(c, id, Phase::Assess, "created", &format!("migration created from {source}"))
            .await
    }

    /// The recorded phase of a migration (None: not recorded).
    pub async fn phase(&self, c: &impl GenericClient, id: &str) -> Result<Option<Phase>, PgError> {
        let row = c
            .query_opt(&format!("SELECT phase FROM {}.migrations WHERE id = $1", self.q), &[&id])
            .await
            .map_err(|e| PgError::query("reading the phase", e))?;
        row.map(|r| {
            r.get::<_, String>(0).parse().map_err(|e: ferry_core::state::UnknownState| {
                PgError::config(format!("reading the phase of {id}"), e.to_string(), "upgrade Ferry")
            })
        })
        .transpose()
    }

    /// Records where the source stood when the copied data was read (every engine's
    /// [`SourcePosition`] text; PostgreSQL keeps its LSN in `consistent_lsn` too).
    pub async fn set_snapshot_position(&self, c: &impl GenericClient, id: &str, at: Option<&SourcePosition>) -> Result<(), PgError> {
        let text = at.map(|p| p.to_string());
        c.execute(
            &format!(
                "UPDATE {}.migrations SET snapshot_position = $2, updated_at = now() WHERE id = $1",
                self.q
            ),
            &[&id, &text],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query("recording the snapshot position", e))
    }

    /// The recorded snapshot and applied positions ([`SourcePosition`] text columns).
    pub async fn positions(&self, c: &impl GenericClient, id: &str) -> Result<(Option<SourcePosition>, Option<SourcePosition>), PgError> {
        let row = c
            .query_opt(
                &format!(
                    "SELECT snapshot_position, applied_position FROM {}.migrations WHERE id = $1",
                    self.q
                ),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query("reading the recorded positions", e))?;
        let Some(r) = row else { return Ok((None, None)) };
        let parse = |col: usize| -> Result<Option<SourcePosition>, PgError> {
            r.get::<_, Option<String>>(col)
                .map(|t| {
                    t.parse().map_err(|e: ferry_core::position::ParsePositionError| {
                        PgError::config(format!("reading the positions of {id}"), e.to_string(), "upgrade Ferry")
                    })
                })
                .transpose()
        };
        Ok((parse(0)?, parse(1)?))
    }

    /// Moves the migration to `to`, if the state machine allows it from where it stands
    /// (`Phase::next`), recording who asked (`actor`: "ferry migrate", "api 10.0.0.5", ...)
    /// and why in `transitions` and in the event log. Staying in the same phase (a restart)
    /// is recorded too. Returns the phase it left. Compare-and-set: a concurrent change of
    /// phase makes this fail rather than overwrite it.
    pub async fn transition(&self, c: &impl GenericClient, id: &str, to: Phase, actor: &str, reason: &str) -> Result<Phase, PgError> {
        let context = || format!("moving migration {id} to phase {to}");
        let row = c
            .query_opt(&format!("SELECT phase FROM {}.migrations WHERE id = $1", self.q), &[&id])
            .await
            .map_err(|e| PgError::query("reading the phase", e))?
            .ok_or_else(|| PgError::config(context(), "the migration is not recorded on the target", "run ferry migrate first"))?;
        let from: Phase = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: ferry_core::state::UnknownState| PgError::config(context(), e.to_string(), "upgrade Ferry"))?;
        from.check_transition(to)
            .map_err(|e| PgError::config(context(), e.to_string(), "run the step the current phase allows first"))?;
        // One statement, so one transaction: a crash (kill -9 at any moment) leaves the phase
        // and its transitions row both written or both not.
        let n: i64 = c
            .query_one(
                &format!(
                    "WITH moved AS (
                       UPDATE {q}.migrations SET phase = $3, updated_at = now() WHERE id = $1 AND phase = $2 RETURNING id
                     ), logged AS (
                       INSERT INTO {q}.transitions (migration_id, from_phase, to_phase, actor, reason)
                       SELECT id, $2, $3, $4, $5 FROM moved RETURNING 1
                     )
                     SELECT count(*) FROM logged",
                    q = self.q
                ),
                &[&id, &from.as_str(), &to.as_str(), &actor, &reason],
            )
            .await
            .map_err(|e| PgError::query("recording the phase and its transition", e))?
            .get(0);
        if n != 1 {
            return Err(PgError::config(
                context(),
                "the phase changed while this change was being made",
                "look at `ferry status` and retry if still wanted",
            ));
        }
        self.event(c, id, to, "phase", reason).await?;
        if from != to {
            tracing::info!(migration = id, from = %from, to = %to, actor, reason, "phase changed");
        }
        Ok(from)
    }

    /// Appends to the event log.
    pub async fn event(&self, c: &impl GenericClient, id: &str, phase: Phase, kind: &str, message: &str) -> Result<(), PgError> {
        c.execute(
            &format!(
                "INSERT INTO {}.events (migration_id, phase, kind, message) VALUES ($1, $2, $3, $4)",
                self.q
            ),
            &[&id, &phase.as_str(), &kind, &message],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query("writing Ferry's event log", e))
    }

    /// Records a change the target rejected in `dead_letters`, idempotent across replays (keyed
    /// by the commit's ordering key and the change's index in its transaction), whichever
    /// engine's stream and sink it came from.
    pub async fn record_dead_letter(
        &self,
        c: &impl GenericClient,
        id: &str,
        d: &ferry_core::sink::DeadLetter,
        skipped: bool,
    ) -> Result<(), PgError> {
        c.execute(
            &format!(
                "INSERT INTO {}.dead_letters (migration_id, commit_lsn, change_index, table_name, operation, key, payload, error, skipped, commit_position)
                     VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (migration_id, commit_lsn, change_index) DO UPDATE SET skipped = EXCLUDED.skipped, error = EXCLUDED.error",
                self.q
            ),
            &[
                &id,
                // The ordering key keeps dead letters of every engine unique and in stream order;
                // commit_position says where the transaction is in the source's own terms.
                &d.commit.order_key().to_string(),
                &(d.change_index as i32),
                &d.table.to_string(),
                &d.operation,
                &d.key,
                &d.payload,
                &d.error,
                &skipped,
                &d.commit.to_string(),
            ],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query("recording a dead letter", e))
    }

    /// Records the slot's consistent point.
    pub async fn set_consistent_lsn(&self, c: &Client, id: &str, lsn: Option<Lsn>) -> Result<(), PgError> {
        let text = lsn.map(|l| l.to_string());
        c.execute(
            &format!(
                "UPDATE {}.migrations SET consistent_lsn = $2::text::pg_lsn, updated_at = now() WHERE id = $1",
                self.q
            ),
            &[&id, &text],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query("recording the slot position", e))
    }

    /// The quoted schema name, for SQL.
    pub fn quoted(&self) -> &str {
        &self.q
    }

    /// SQL that marks pg_restore's share of post-data as restored; run inside its transaction.
    pub fn post_data_done_sql(&self, id: &str) -> String {
        format!(
            "UPDATE {}.migrations SET post_data_done = true, updated_at = now() WHERE id = {}",
            self.q,
            ferry_core::ident::quote_literal(id)
        )
    }

    /// SQL that marks the pre-data schema as created; run inside the transaction that creates it.
    pub fn schema_done_sql(&self, id: &str) -> String {
        format!(
            "UPDATE {}.migrations SET schema_done = true, updated_at = now() WHERE id = {}",
            self.q,
            ferry_core::ident::quote_literal(id)
        )
    }

    /// Records planned tables (new ones as pending; existing records are kept).
    pub async fn plan_tables(&self, c: &Client, id: &str, tables: &[(TableName, i64)]) -> Result<(), PgError> {
        let stmt = c
            .prepare(&format!(
                "INSERT INTO {}.tables (migration_id, schema_name, table_name, state, rows_estimate) VALUES ($1, $2, $3, 'pending', $4)
                 ON CONFLICT (migration_id, schema_name, table_name) DO UPDATE SET rows_estimate = EXCLUDED.rows_estimate",
                self.q
            ))
            .await
            .map_err(|e| PgError::query("recording the table plan", e))?;
        for (t, est) in tables {
            c.execute(&stmt, &[&id, &t.schema, &t.name, est])
                .await
                .map_err(|e| PgError::query("recording the table plan", e))?;
        }
        Ok(())
    }

    /// Loads every table record of a migration.
    pub async fn tables(&self, c: &Client, id: &str) -> Result<Vec<TableRecord>, PgError> {
        let rows = c
            .query(
                &format!("SELECT schema_name, table_name, state, snapshot_lsn::text, rows_copied, bytes_copied, snapshot_position FROM {}.tables WHERE migration_id = $1 ORDER BY 1, 2", self.q),
                &[&id],
            )
            .await
            .map_err(|e| PgError::query("reading table progress", e))?;
        Ok(rows
            .into_iter()
            .map(|r| TableRecord {
                name: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                state: r.get::<_, String>(2).parse().unwrap_or(TableState::Pending),
                snapshot_lsn: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
                rows_copied: r.get(4),
                bytes_copied: r.get(5),
                snapshot_position: r.get::<_, Option<String>>(6).and_then(|s| s.parse().ok()),
            })
            .collect())
    }

    /// Marks a table as being copied from the snapshot at `lsn` in `ranges` ranges.
    pub async fn start_table(&self, c: &impl GenericClient, id: &str, t: &TableName, lsn: Lsn, ranges: i32) -> Result<(), PgError> {
        c.execute(
            &format!(
                "UPDATE {}.tables SET state = 'copying', snapshot_lsn = $4::text::pg_lsn, ranges_total = $5, ranges_done = 0,
                        rows_copied = 0, bytes_copied = 0, started_at = now(), finished_at = NULL
                 WHERE migration_id = $1 AND schema_name = $2 AND table_name = $3",
                self.q
            ),
            &[&id, &t.schema, &t.name, &lsn.to_string(), &ranges],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query(format!("recording the start of {t}"), e))
    }

    /// Marks a table as being copied from the snapshot at `at` (any engine) in `ranges` ranges.
    pub async fn start_table_at(
        &self,
        c: &impl GenericClient,
        id: &str,
        t: &TableName,
        at: &SourcePosition,
        ranges: i32,
    ) -> Result<(), PgError> {
        let lsn = at.as_lsn().map(|l| l.to_string());
        c.execute(
            &format!(
                "UPDATE {}.tables SET state = 'copying', snapshot_lsn = $4::text::pg_lsn, snapshot_position = $6, ranges_total = $5,
                        ranges_done = 0, rows_copied = 0, bytes_copied = 0, started_at = now(), finished_at = NULL
                 WHERE migration_id = $1 AND schema_name = $2 AND table_name = $3",
                self.q
            ),
            &[&id, &t.schema, &t.name, &lsn, &ranges, &at.to_string()],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query(format!("recording the start of {t}"), e))
    }

    /// Counts a committed range; the table becomes `copied` with its last range. Run inside the
    /// transaction that committed the range's rows.
    pub async fn finish_range(&self, c: &impl GenericClient, id: &str, t: &TableName, rows: i64, bytes: i64) -> Result<(), PgError> {
        c.execute(
            &format!(
                "UPDATE {}.tables SET ranges_done = ranges_done + 1, rows_copied = rows_copied + $4, bytes_copied = bytes_copied + $5,
                        state = CASE WHEN ranges_done + 1 >= ranges_total THEN 'copied' ELSE state END,
                        finished_at = CASE WHEN ranges_done + 1 >= ranges_total THEN now() END
                 WHERE migration_id = $1 AND schema_name = $2 AND table_name = $3",
                self.q
            ),
            &[&id, &t.schema, &t.name, &rows, &bytes],
        )
        .await
        .map(|_| ())
        .map_err(|e| PgError::query(format!("recording progress of {t}"), e))
    }
}
