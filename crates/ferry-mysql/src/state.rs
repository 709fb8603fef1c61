//! Ferry's state of a MySQL/MariaDB migration on the target: every SQL statement Ferry runs on
//! its state schema for a MySQL source is in this module.
//!
//! A MySQL migration is recorded like a PostgreSQL one, through the same
//! [`ferry_postgres::state::StateStore`] and the same [`Phase`] state machine: a row in
//! `ferry.migrations` (`source_engine = 'mysql'`, positions as [`SourcePosition`] text in
//! `snapshot_position` and `applied_position`, `slot_name` = `server_id N`, the replica server id
//! the binlog stream registers with, `publication_name` = the source database), phases through
//! `StateStore::transition` (assess -> schema -> full_load -> post_load -> cdc -> cutover ->
//! cut_over), the event log, and per-table progress in `ferry.tables`.
//!
//! What only a MySQL migration has lives in one side table keyed by migration id,
//! `ferry.mysql_state`: the load's summary, the stream's table shapes (`cdc_tables`), a schema
//! change it stopped before (`cdc_blocked`), the hold a verification asks for (`hold`,
//! `held_at`), the last verification and the cutover report.
//!
//! Earlier versions kept a MySQL migration in `ferry.mysql_loads`, keyed by the source. Every
//! command that opens a MySQL migration ([`MyState::open`]) converts such a row into this layout
//! in one target transaction, and drops `mysql_loads` once it is empty.

use ferry_core::{BinlogPosition, Phase, SourcePosition, TableName};
use ferry_postgres::state::{StateStore, ENGINE_MYSQL};
use ferry_postgres::PgError;
use serde_json::Value;
use tokio_postgres::{Client, GenericClient};

use crate::error::MyError;
use crate::preflight::MyTable;

/// A prepared XA transaction the stream has passed (`mysql_xa_prepared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XaPrepared {
    /// The xid as the server writes it (`X'6131',X'',1`).
    pub xid: String,
    /// Where its group starts in the binlog.
    pub at: BinlogPosition,
    /// It changes rows of the migrated tables (else its XA COMMIT has nothing to apply).
    pub migrated_rows: bool,
}

/// The reason recorded with the transition of a converted migration.
pub const CONVERTED: &str = "converted from ferry.mysql_loads";

/// Ferry's replica server id on a source: stable per (source, target), away from the small ids
/// people give their replicas.
pub fn replica_server_id(source: &str, target: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in source.bytes().chain(target.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    0x4600_0000 | (h & 0x00ff_ffff)
}

/// A state-schema error: its class (a lost connection stays transient), SQLSTATE and fix kept.
fn pg(what: &str) -> impl Fn(PgError) -> MyError + '_ {
    move |e| {
        let inner = e.context.clone();
        let mut m = MyError::from(e);
        if inner != what {
            m.reason = format!("{inner}: {}", m.reason);
        }
        m.context = what.to_string();
        m.fix
            .get_or_insert_with(|| "check the target and Ferry's state schema on it".into());
        m
    }
}

/// A driver error on the state schema.
fn db(what: &str) -> impl Fn(tokio_postgres::Error) -> MyError + '_ {
    move |e| pg(what)(PgError::query(what, e))
}

/// A position text in the state that does not parse: the state was edited, or written by a
/// newer Ferry.
fn bad_position(what: &str, e: impl std::fmt::Display) -> MyError {
    MyError::new(
        what,
        &e.to_string(),
        "check Ferry's state on the target (was it edited by hand?), or upgrade Ferry",
    )
}

/// What a verification asks of the running stream (`mysql_state.hold`): nothing, stop at the
/// next transaction boundary, or apply up to a source position exactly and stop there. The
/// stream says where it stands while it holds in `held_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Apply as usual.
    Run,
    /// Stop at the next transaction boundary.
    Freeze,
    /// Apply every transaction that ends at or before this position, none after, and stop.
    Until(BinlogPosition),
    /// The migration was cut over (`ferry cutover`): stop streaming.
    CutOver,
}

impl Hold {
    /// From the stored JSON (`{"freeze": true}`, `{"file": ..., "pos": ...}`).
    pub fn parse(json: Option<&str>) -> Hold {
        let Some(v) = json.and_then(|j| serde_json::from_str::<Value>(j).ok()) else {
            return Hold::Run;
        };
        match (v["file"].as_str(), v["pos"].as_u64()) {
            (Some(f), Some(p)) => BinlogPosition::new(f, p, "").map(Hold::Until).unwrap_or(Hold::Run),
            _ if v["freeze"].as_bool() == Some(true) => Hold::Freeze,
            _ => Hold::Run,
        }
    }

    /// The JSON stored for it.
    pub fn to_json(&self) -> Option<String> {
        match self {
            Hold::Run => None,
            Hold::Freeze => Some(r#"{"freeze": true}"#.into()),
            Hold::Until(p) => Some(serde_json::json!({"file": p.file(), "pos": p.pos()}).to_string()),
            Hold::CutOver => None,
        }
    }
}

/// Where a full load stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadState {
    /// Never started (no migration recorded).
    None,
    /// Started, not finished (a crash, a kill).
    Unfinished,
    /// Finished.
    Finished,
}

/// What the cutover gate needs to know.
#[derive(Debug, Clone)]
pub struct GateState {
    /// Current phase.
    pub phase: Phase,
    /// A verification ran after the load finished.
    pub verified: bool,
    /// Its differences.
    pub differences: Option<i64>,
    /// The stream's tables.
    pub tables: Vec<MyTable>,
}

/// One MySQL migration's state on the target.
#[derive(Debug, Clone)]
pub struct MyState {
    store: StateStore,
    id: String,
    /// The source, as `MyEndpoint::describe` gives it (host:port/database).
    source: String,
    /// `server_id N`.
    slot: String,
    /// The source database.
    database: String,
    /// The PostgreSQL schema the migration's tables are in ([`Self::choose_target_schema`]).
    target_schema: String,
    /// The one recorded for this migration (`mysql_state.target_schema`; None: no load
    /// recorded yet). A load of an earlier version, which recorded none, went to `public`.
    recorded_schema: Option<String>,
}

/// The target schema of a migration that names none: see docs/decisions.md.
pub const DEFAULT_TARGET_SCHEMA: &str = "public";

impl MyState {
    /// Opens the migration from `source` (`MyEndpoint::describe`) into the target `c` is
    /// connected to, in state schema `schema`: creates or extends the state schema when needed,
    /// converts a `mysql_loads` row of this source into this layout, and finds the migration:
    /// `given_id` (`--migration-id`, sanitized) when given, else the MySQL migration recorded for
    /// this source, else `default_id` (not recorded yet: [`Self::load_state`] says
    /// [`LoadState::None`]). An id taken by a migration of another source is refused.
    /// Without `create` (commands that only read) and no Ferry state on the target at all,
    /// None, and nothing is created.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        c: &mut Client,
        schema: &str,
        given_id: Option<&str>,
        default_id: &str,
        source: &str,
        database: &str,
        target_describe: &str,
        actor: &str,
        create: bool,
    ) -> Result<Option<MyState>, MyError> {
        let store = StateStore::new(schema);
        let exists = store.exists(&*c).await.map_err(pg("reading Ferry's state on the target"))?;
        let current = exists
            && store.is_current(&*c).await.map_err(pg("reading Ferry's state on the target"))?
            && Self::side_table_exists(c, schema).await?;
        if !current {
            if !exists && !create && !Self::old_exists_in(c, schema).await? {
                return Ok(None);
            }
            Self::ensure_schema(c, &store).await?;
        }
        let mut st = MyState {
            store,
            id: String::new(),
            source: source.to_string(),
            slot: format!("server_id {}", replica_server_id(source, target_describe)),
            database: database.to_string(),
            target_schema: DEFAULT_TARGET_SCHEMA.to_string(),
            recorded_schema: None,
        };
        st.id = match given_id {
            Some(id) => id.to_string(),
            None => {
                let rows = c
                    .query(
                        &format!(
                            "SELECT id FROM {}.migrations WHERE source_engine = $1 AND source = $2 ORDER BY updated_at DESC",
                            st.q()
                        ),
                        &[&ENGINE_MYSQL, &source],
                    )
                    .await
                    .map_err(db("reading Ferry's state on the target"))?;
                let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                match ids.len() {
                    0 => default_id.to_string(),
                    1 => ids[0].clone(),
                    _ if ids.iter().any(|i| i == default_id) => default_id.to_string(),
                    _ => {
                        return Err(MyError::new(
                            &format!("finding the migration from {source}"),
                            &format!(
                                "{} migrations from this source are recorded on the target: {}",
                                ids.len(),
                                ids.join(", ")
                            ),
                            "name one with --migration-id",
                        ))
                    }
                }
            }
        };
        st.convert_old(c, actor).await?;
        if let Some((engine, from)) = st
            .store
            .engine_of(&*c, &st.id)
            .await
            .map_err(pg("reading Ferry's state on the target"))?
        {
            if engine != ENGINE_MYSQL || from != st.source {
                return Err(MyError::new(
                    &format!("opening migration {} for {source}", st.id),
                    &format!("migration {} on this target is the migration from {from} ({engine} source)", st.id),
                    "give this migration its own id: ferry migrate --migration-id NAME (and ferry status --migration-id NAME)",
                ));
            }
        }
        st.recorded_schema = c
            .query_opt(
                &format!(
                    "SELECT coalesce(target_schema, $2) FROM {}.mysql_state WHERE migration_id = $1",
                    st.q()
                ),
                &[&st.id, &DEFAULT_TARGET_SCHEMA],
            )
            .await
            .map_err(db("reading Ferry's state on the target"))?
            .map(|r| r.get(0));
        if let Some(recorded) = &st.recorded_schema {
            st.target_schema = recorded.clone();
        }
        Ok(Some(st))
    }

    /// Whether the side tables exist in their current form (`target_schema`, `mysql_xa_prepared`).
    async fn side_table_exists(c: &Client, schema: &str) -> Result<bool, MyError> {
        c.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(format('%I.mysql_state', $1::text))
                            AND attname = 'target_schema' AND NOT attisdropped)
                    AND to_regclass(format('%I.mysql_xa_prepared', $1::text)) IS NOT NULL",
            &[&schema],
        )
        .await
        .map(|r| r.get(0))
        .map_err(db("reading Ferry's state on the target"))
    }

    /// The PostgreSQL schema the migration's tables are in.
    pub fn target_schema(&self) -> &str {
        &self.target_schema
    }

    /// Chooses the target schema from `given` (`--target-schema`) and the recorded one: a
    /// migration already loaded stays where it was loaded (an earlier version's load: `public`),
    /// so a flag naming another schema is refused unless the tables are loaded again
    /// (`reload`); a migration not loaded yet goes to `given`, else [`DEFAULT_TARGET_SCHEMA`].
    pub fn choose_target_schema(&mut self, given: Option<&str>, reload: bool) -> Result<String, MyError> {
        let chosen = match (&self.recorded_schema, given) {
            (Some(r), Some(g)) if r != g && !reload => {
                return Err(MyError::new(
                    &format!("choosing the target schema of migration {}", self.id),
                    &format!("its tables were loaded into schema {r}, and --target-schema names {g}"),
                    &format!(
                        "leave --target-schema out (the recorded schema {r} is used), or load the tables again into {g}: ferry migrate --overwrite --target-schema {g}"
                    ),
                ))
            }
            (_, Some(g)) => g.to_string(),
            (Some(r), None) => r.clone(),
            (None, None) => DEFAULT_TARGET_SCHEMA.to_string(),
        };
        self.target_schema = chosen.clone();
        Ok(chosen)
    }

    fn table(&self, name: &str) -> TableName {
        TableName::new(&self.target_schema, name)
    }

    /// Creates or extends the shared state schema and the MySQL side table.
    async fn ensure_schema(c: &Client, store: &StateStore) -> Result<(), MyError> {
        store.ensure(c).await.map_err(pg("creating Ferry's state schema on the target"))?;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {s}.mysql_state (
                 migration_id       text PRIMARY KEY REFERENCES {s}.migrations (id) ON DELETE CASCADE,
                 target_schema      text,
                 load_started_at    timestamptz,
                 load_finished_at   timestamptz,
                 load_summary       jsonb,
                 cdc_tables         jsonb,
                 cdc_blocked        jsonb,
                 hold               jsonb,
                 held_at            text,
                 verified_at        timestamptz,
                 verify_differences bigint,
                 cutover            jsonb
             );
             COMMENT ON TABLE {s}.mysql_state IS 'Ferry: what only a MySQL/MariaDB migration records, by migration id';
             -- Added later: the schema the tables were loaded into (NULL: public, by an earlier version).
             ALTER TABLE {s}.mysql_state ADD COLUMN IF NOT EXISTS target_schema text;
             CREATE TABLE IF NOT EXISTS {s}.mysql_xa_prepared (
                 migration_id text NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
                 xid          text NOT NULL,
                 xid_text     text NOT NULL,
                 position     text NOT NULL,
                 migrated_rows boolean NOT NULL,
                 recorded_at  timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (migration_id, xid)
             );
             COMMENT ON TABLE {s}.mysql_xa_prepared IS 'Ferry: prepared XA transactions the MySQL stream has passed, not yet committed or rolled back on the source: where each starts in the binlog'",
            s = store.quoted()
        ))
        .await
        .map_err(db("creating Ferry's state schema on the target"))
    }

    fn q(&self) -> &str {
        self.store.quoted()
    }

    /// The migration id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The source (host:port/database).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The shared store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// `mysql_loads` of an earlier version holds a row for this source: converted into this
    /// layout in one transaction (the old row deleted, the table dropped when empty). Returns
    /// whether a row was converted. Safe to repeat and to interrupt: the transaction leaves
    /// either layout, never both.
    async fn convert_old(&self, c: &mut Client, actor: &str) -> Result<bool, MyError> {
        if !self.old_table_exists(c).await? {
            return Ok(false);
        }
        match self.convert_in_one_transaction(c, actor).await {
            Ok(done) => Ok(done),
            // Another Ferry converted it (and dropped the table) while this one waited.
            Err(_) if !self.old_table_exists(c).await? => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn old_table_exists(&self, c: &Client) -> Result<bool, MyError> {
        Self::old_exists_in(c, self.store.schema()).await
    }

    async fn old_exists_in(c: &Client, schema: &str) -> Result<bool, MyError> {
        c.query_one("SELECT to_regclass(format('%I.mysql_loads', $1::text)) IS NOT NULL", &[&schema])
            .await
            .map(|r| r.get::<_, bool>(0))
            .map_err(db("reading ferry.mysql_loads"))
    }

    async fn convert_in_one_transaction(&self, c: &mut Client, actor: &str) -> Result<bool, MyError> {
        const WHAT: &str = "converting the migration's state from ferry.mysql_loads";
        let q = self.q().to_string();
        let tx = c.transaction().await.map_err(db(WHAT))?;
        // One converter at a time (and no old-version stream moving the row meanwhile).
        tx.batch_execute(&format!("LOCK TABLE {q}.mysql_loads IN SHARE ROW EXCLUSIVE MODE"))
            .await
            .map_err(db(WHAT))?;
        let row = tx
            .query_opt(
                &format!("SELECT to_jsonb(l)::text FROM {q}.mysql_loads l WHERE source = $1"),
                &[&self.source],
            )
            .await
            .map_err(db(WHAT))?;
        let Some(row) = row else {
            Self::drop_old_if_empty(&tx, &q).await?;
            tx.commit().await.map_err(db(WHAT))?;
            return Ok(false);
        };
        let old: Value = serde_json::from_str(&row.get::<_, String>(0)).map_err(|e| bad_position(WHAT, e))?;
        if let Some((engine, from)) = self.store.engine_of(&tx, &self.id).await.map_err(pg(WHAT))? {
            return Err(MyError::new(
                WHAT,
                &format!(
                    "ferry.mysql_loads holds the migration from {}, and migration {} ({engine} source {from}) is recorded in the new layout too: \
                     Ferry cannot tell which is current",
                    self.source, self.id
                ),
                &format!(
                    "if migration {} is the one from {} that runs now, delete the old row (DELETE FROM {q}.mysql_loads WHERE source = '{}'); \
                     else give the migration from {} its own id with ferry migrate --migration-id NAME",
                    self.id, self.source, self.source, self.source
                ),
            ));
        }
        let text = |k: &str| old[k].as_str().map(str::to_string);
        let finished = !old["finished_at"].is_null();
        let old_phase = text("phase").unwrap_or_else(|| "full_load".into());
        let phase = if !finished {
            Phase::FullLoad
        } else if old_phase == "cut_over" {
            Phase::CutOver
        } else {
            Phase::Cdc
        };
        let summary = &old["summary"];
        let snapshot = match (summary["binlog_file"].as_str(), summary["binlog_pos"].as_u64()) {
            (Some(f), Some(p)) if finished => Some(SourcePosition::Mysql(
                BinlogPosition::new(f, p, summary["gtid"].as_str().unwrap_or_default()).map_err(|e| bad_position(WHAT, e))?,
            )),
            _ => None,
        };
        let applied = match (old["cdc_file"].as_str(), old["cdc_pos"].as_u64()) {
            (Some(f), Some(p)) if finished => Some(SourcePosition::Mysql(
                BinlogPosition::new(f, p, old["cdc_gtid"].as_str().unwrap_or_default()).map_err(|e| bad_position(WHAT, e))?,
            )),
            _ => None,
        };
        let held_at = text("held_at")
            .and_then(|h| h.parse::<BinlogPosition>().ok())
            .map(|p| SourcePosition::Mysql(p).to_string());
        let json = |k: &str| (!old[k].is_null()).then(|| old[k].to_string());
        tx.execute(
            &format!(
                "INSERT INTO {q}.migrations (id, source, slot_name, publication_name, phase, source_engine, snapshot_position,
                                             applied_position, applied_txns, applied_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::timestamptz, coalesce($11::text::timestamptz, now()))"
            ),
            &[
                &self.id,
                &self.source,
                &self.slot,
                &self.database,
                &phase.as_str(),
                &ENGINE_MYSQL,
                &snapshot.as_ref().map(|p| p.to_string()),
                &applied.as_ref().map(|p| p.to_string()),
                &old["cdc_transactions"].as_i64().unwrap_or(0),
                &text("cdc_applied_at"),
                &text("started_at"),
            ],
        )
        .await
        .map_err(db(WHAT))?;
        tx.execute(
            &format!("INSERT INTO {q}.transitions (migration_id, from_phase, to_phase, actor, reason) VALUES ($1, NULL, $2, $3, $4)"),
            &[&self.id, &phase.as_str(), &actor, &CONVERTED],
        )
        .await
        .map_err(db(WHAT))?;
        tx.execute(
            &format!(
                "INSERT INTO {q}.mysql_state (migration_id, load_started_at, load_finished_at, load_summary, cdc_tables, cdc_blocked,
                                              hold, held_at, verified_at, verify_differences, cutover)
                 VALUES ($1, $2::text::timestamptz, $3::text::timestamptz, $4::text::jsonb, $5::text::jsonb, $6::text::jsonb,
                         $7::text::jsonb, $8, $9::text::timestamptz, $10, $11::text::jsonb)"
            ),
            &[
                &self.id,
                &text("started_at"),
                &text("finished_at"),
                &json("summary"),
                &json("cdc_tables"),
                &json("cdc_blocked"),
                &json("hold"),
                &held_at,
                &text("verified_at"),
                &old["verify_differences"].as_i64(),
                &json("cutover"),
            ],
        )
        .await
        .map_err(db(WHAT))?;
        if let (Some(at), Some(tables)) = (&snapshot, summary["tables"].as_array()) {
            for t in tables {
                let (Some(name), Some(rows)) = (t[0].as_str(), t[1].as_i64()) else {
                    continue;
                };
                tx.execute(
                    &format!(
                        "INSERT INTO {q}.tables (migration_id, schema_name, table_name, state, snapshot_position, ranges_total, ranges_done,
                                                 rows_estimate, rows_copied, finished_at)
                         VALUES ($1, 'public', $2, 'copied', $3, 1, 1, $4, $4, $5::text::timestamptz)"
                    ),
                    &[&self.id, &name, &at.to_string(), &rows, &text("finished_at")],
                )
                .await
                .map_err(db(WHAT))?;
            }
        }
        let message = format!(
            "{CONVERTED} (phase there: {old_phase}{}): snapshot {}, applied {}",
            if finished { ", load finished" } else { ", load not finished" },
            snapshot.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            applied.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        );
        self.store
            .event(&tx, &self.id, phase, "converted", &message)
            .await
            .map_err(pg(WHAT))?;
        tx.execute(&format!("DELETE FROM {q}.mysql_loads WHERE source = $1"), &[&self.source])
            .await
            .map_err(db(WHAT))?;
        Self::drop_old_if_empty(&tx, &q).await?;
        tx.commit().await.map_err(db(WHAT))?;
        tracing::info!(migration = %self.id, source = %self.source, %phase, "{message}");
        Ok(true)
    }

    async fn drop_old_if_empty(tx: &tokio_postgres::Transaction<'_>, q: &str) -> Result<(), MyError> {
        let left: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {q}.mysql_loads)"), &[])
            .await
            .map_err(db("reading ferry.mysql_loads"))?
            .get(0);
        if !left {
            tx.batch_execute(&format!("DROP TABLE {q}.mysql_loads"))
                .await
                .map_err(db("dropping the converted ferry.mysql_loads"))?;
        }
        Ok(())
    }

    /// The recorded phase (None: not recorded).
    pub async fn phase(&self, c: &impl GenericClient) -> Result<Option<Phase>, MyError> {
        self.store.phase(c, &self.id).await.map_err(pg("reading the migration's phase"))
    }

    /// Where the full load stands.
    pub async fn load_state(&self, c: &Client) -> Result<LoadState, MyError> {
        let row = c
            .query_opt(
                &format!(
                    "SELECT s.load_finished_at IS NOT NULL FROM {q}.migrations m LEFT JOIN {q}.mysql_state s ON s.migration_id = m.id
                     WHERE m.id = $1",
                    q = self.q()
                ),
                &[&self.id],
            )
            .await
            .map_err(db("reading Ferry's state on the target"))?;
        Ok(match row.map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false)) {
            None => LoadState::None,
            Some(false) => LoadState::Unfinished,
            Some(true) => LoadState::Finished,
        })
    }

    /// Moves forward to `to` (the state machine checks the move); stays put when the migration
    /// stands at `to` or past it in the lifecycle (a reload after a crash in `post_load` stays
    /// there until the load is done again; a restart in `cutover` is not a move back to `cdc`).
    /// Returns the phase it stands in.
    pub async fn advance(&self, c: &impl GenericClient, to: Phase, actor: &str, reason: &str) -> Result<Phase, MyError> {
        let what = format!("moving migration {} to phase {to}", self.id);
        let Some(from) = self.phase(c).await? else {
            return Err(MyError::new(
                &what,
                "the migration is not recorded on the target",
                "run ferry migrate first",
            ));
        };
        let order = |p: Phase| Phase::ALL.iter().position(|x| *x == p).unwrap_or(0);
        if order(from) >= order(to) {
            return Ok(from);
        }
        self.store.transition(c, &self.id, to, actor, reason).await.map_err(pg(&what))?;
        Ok(to)
    }

    /// Records a same-phase transition (a restart), so the log shows every one.
    pub async fn restarted(&self, c: &impl GenericClient, actor: &str, reason: &str) -> Result<(), MyError> {
        let Some(p) = self.phase(c).await? else { return Ok(()) };
        self.store
            .transition(c, &self.id, p, actor, reason)
            .await
            .map(|_| ())
            .map_err(pg("recording the restart"))
    }

    /// Records the start (or restart, `overwrite` of a finished one: the record starts over) of
    /// a full load of `tables`: the migration in phase `schema` or wherever an unfinished load
    /// stood, the tables planned, the load's fields cleared.
    pub async fn start_load(&self, c: &Client, tables: &[MyTable], actor: &str) -> Result<(), MyError> {
        const WHAT: &str = "recording the full load's start";
        let q = self.q();
        match self.load_state(c).await? {
            LoadState::Finished => {
                // --overwrite of a finished load: the migration starts over (its tables are
                // dropped and copied again), so does its record.
                c.execute(&format!("DELETE FROM {q}.migrations WHERE id = $1"), &[&self.id])
                    .await
                    .map_err(db(WHAT))?;
                self.create(c, actor).await?;
            }
            LoadState::None => self.create(c, actor).await?,
            LoadState::Unfinished => {
                self.restarted(
                    c,
                    actor,
                    "the full load did not finish: its tables are dropped and copied again from a new snapshot",
                )
                .await?;
            }
        }
        c.execute(
            &format!(
                "INSERT INTO {q}.mysql_state (migration_id, load_started_at, target_schema) VALUES ($1, clock_timestamp(), $2)
                 ON CONFLICT (migration_id) DO UPDATE SET load_started_at = clock_timestamp(), load_finished_at = NULL,
                     load_summary = NULL, cdc_tables = NULL, cdc_blocked = NULL, hold = NULL, held_at = NULL, target_schema = $2"
            ),
            &[&self.id, &self.target_schema],
        )
        .await
        .map_err(db(WHAT))?;
        c.execute(
            &format!(
                "UPDATE {q}.migrations SET snapshot_position = NULL, applied_position = NULL, applied_txns = 0, applied_at = NULL,
                        last_commit_time = NULL, updated_at = now()
                 WHERE id = $1"
            ),
            &[&self.id],
        )
        .await
        .map_err(db(WHAT))?;
        let planned: Vec<(TableName, i64)> = tables.iter().map(|t| (self.table(&t.name), t.estimated_rows)).collect();
        self.store.plan_tables(c, &self.id, &planned).await.map_err(pg(WHAT))?;
        self.advance(c, Phase::Schema, actor, "creating the tables on the target").await?;
        Ok(())
    }

    async fn create(&self, c: &Client, actor: &str) -> Result<(), MyError> {
        self.store
            .create_for(c, &self.id, ENGINE_MYSQL, &self.source, &self.slot, &self.database, actor)
            .await
            .map_err(pg("recording the migration"))
    }

    /// Records the snapshot's binlog position (the load copies from there; the stream starts
    /// there).
    pub async fn set_snapshot(&self, c: &impl GenericClient, at: &BinlogPosition) -> Result<(), MyError> {
        self.store
            .set_snapshot_position(c, &self.id, Some(&SourcePosition::Mysql(at.clone())))
            .await
            .map_err(pg("recording the snapshot position"))
    }

    /// Marks `table` as being copied from `at` in `pieces` pieces.
    pub async fn start_table(&self, c: &impl GenericClient, table: &str, at: &BinlogPosition, pieces: usize) -> Result<(), MyError> {
        self.store
            .start_table_at(c, &self.id, &self.table(table), &SourcePosition::Mysql(at.clone()), pieces as i32)
            .await
            .map_err(pg("recording a table's copy"))
    }

    /// Counts a piece of `table` copied: run in the transaction that committed its rows.
    pub async fn finish_piece(&self, c: &impl GenericClient, table: &str, rows: u64, bytes: u64) -> Result<(), MyError> {
        self.store
            .finish_range(c, &self.id, &self.table(table), rows as i64, bytes as i64)
            .await
            .map_err(pg("recording a table's progress"))
    }

    /// Records the finished load (`summary`: what `ferry migrate --summary-json` writes) and
    /// moves the migration to `cdc`: the changes since the snapshot stream from there.
    pub async fn finish_load(&self, c: &Client, summary: &Value, actor: &str) -> Result<(), MyError> {
        c.execute(
            &format!(
                "UPDATE {}.mysql_state SET load_finished_at = clock_timestamp(), load_summary = $2::text::jsonb WHERE migration_id = $1",
                self.q()
            ),
            &[&self.id, &summary.to_string()],
        )
        .await
        .map_err(db("recording the full load's end"))?;
        let at = self
            .store
            .positions(c, &self.id)
            .await
            .map_err(pg("reading the snapshot position"))?
            .0
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        self.advance(
            c,
            Phase::Cdc,
            actor,
            &format!("full load finished; the changes since its snapshot ({at}) stream from there"),
        )
        .await?;
        Ok(())
    }

    /// Where the stream resumes: the last applied position, else the snapshot's; and the schema
    /// change it stopped before. None: no finished load.
    pub async fn resume_point(&self, c: &impl GenericClient) -> Result<Option<(BinlogPosition, Option<Value>)>, MyError> {
        const WHAT: &str = "reading the stream's position";
        let row = c
            .query_opt(
                &format!(
                    "SELECT coalesce(m.applied_position, m.snapshot_position), s.cdc_blocked::text
                     FROM {q}.migrations m JOIN {q}.mysql_state s ON s.migration_id = m.id
                     WHERE m.id = $1 AND s.load_finished_at IS NOT NULL",
                    q = self.q()
                ),
                &[&self.id],
            )
            .await
            .map_err(db(WHAT))?;
        let Some(row) = row else { return Ok(None) };
        let Some(text) = row.get::<_, Option<String>>(0) else {
            return Ok(None);
        };
        let at = match text.parse::<SourcePosition>().map_err(|e| bad_position(WHAT, e))? {
            SourcePosition::Mysql(p) => p,
            other => return Err(bad_position(WHAT, format!("{other} is not a binlog position"))),
        };
        let blocked = row.get::<_, Option<String>>(1).and_then(|b| serde_json::from_str(&b).ok());
        Ok(Some((at, blocked)))
    }

    /// The last applied position (None: no source transaction applied yet, or not recorded).
    pub async fn applied(&self, c: &impl GenericClient) -> Result<Option<BinlogPosition>, MyError> {
        let (_, applied) = self
            .store
            .positions(c, &self.id)
            .await
            .map_err(pg("reading the stream's position"))?;
        Ok(applied.and_then(|p| p.as_mysql().cloned()))
    }

    /// The prepared XA transactions the stream has passed without seeing them resolved, by
    /// [`crate::statement::xid_key`] (`docs/mysql-cdc.md`, "XA transactions").
    pub async fn xa_prepared(&self, c: &impl GenericClient) -> Result<std::collections::HashMap<String, XaPrepared>, MyError> {
        const WHAT: &str = "reading the prepared XA transactions the stream has passed";
        let rows = c
            .query(
                &format!(
                    "SELECT xid, xid_text, position, migrated_rows FROM {}.mysql_xa_prepared WHERE migration_id = $1",
                    self.q()
                ),
                &[&self.id],
            )
            .await
            .map_err(db(WHAT))?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let (key, text, at): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let at = at.parse::<BinlogPosition>().map_err(|e| {
                MyError::new(
                    WHAT,
                    &format!("the recorded position {at:?} of XA transaction {text}: {e}"),
                    "report this as a bug",
                )
            })?;
            out.insert(
                key,
                XaPrepared {
                    xid: text,
                    at,
                    migrated_rows: r.get(3),
                },
            );
        }
        Ok(out)
    }

    /// Records that the prepared XA transaction `xid` starts at `at`: before the stream's
    /// position passes it, so that its XA COMMIT, wherever the stream resumes, finds its rows.
    pub async fn record_xa_prepared(&self, c: &impl GenericClient, key: &str, p: &XaPrepared) -> Result<(), MyError> {
        c.execute(
            &format!(
                "INSERT INTO {}.mysql_xa_prepared (migration_id, xid, xid_text, position, migrated_rows) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (migration_id, xid) DO UPDATE SET xid_text = EXCLUDED.xid_text, position = EXCLUDED.position,
                     migrated_rows = EXCLUDED.migrated_rows, recorded_at = now()",
                self.q()
            ),
            &[&self.id, &key, &p.xid, &p.at.to_string(), &p.migrated_rows],
        )
        .await
        .map(|_| ())
        .map_err(db("recording a prepared XA transaction"))
    }

    /// Forgets the prepared XA transaction `xid` that started at `at`, when its XA COMMIT or
    /// XA ROLLBACK comes (the same xid prepared again later is another row: kept).
    pub async fn forget_xa_prepared(&self, c: &impl GenericClient, key: &str, at: &BinlogPosition) -> Result<(), MyError> {
        c.execute(
            &format!(
                "DELETE FROM {}.mysql_xa_prepared WHERE migration_id = $1 AND xid = $2 AND position = $3",
                self.q()
            ),
            &[&self.id, &key, &at.to_string()],
        )
        .await
        .map(|_| ())
        .map_err(db("forgetting a resolved XA transaction"))
    }

    /// Forgets the schema change the stream stopped before, once a transaction after it is
    /// applied (`--ddl-applied`).
    pub async fn clear_blocked(&self, c: &impl GenericClient) -> Result<(), MyError> {
        c.execute(
            &format!("UPDATE {}.mysql_state SET cdc_blocked = NULL WHERE migration_id = $1", self.q()),
            &[&self.id],
        )
        .await
        .map(|_| ())
        .map_err(db("forgetting the schema change the stream stopped before"))
    }

    /// Records the schema change (or the statement it cannot apply) the stream stopped before.
    pub async fn set_blocked(&self, c: &impl GenericClient, blocked: &Value) -> Result<(), MyError> {
        c.execute(
            &format!(
                "UPDATE {}.mysql_state SET cdc_blocked = $2::text::jsonb WHERE migration_id = $1",
                self.q()
            ),
            &[&self.id, &blocked.to_string()],
        )
        .await
        .map(|_| ())
        .map_err(db("recording the schema change the stream stopped at"))?;
        self.store
            .event(
                c,
                &self.id,
                Phase::Cdc,
                "blocked",
                &format!("stopped before {}: {blocked}", blocked_text(blocked).0),
            )
            .await
            .map_err(pg("writing Ferry's event log"))
    }

    /// The stream's tables as stored when it first started (None: not stored yet), or, with
    /// `fresh` (a schema change applied) or none stored, `current`, stored from now on. Moves
    /// the migration to `cdc` when it is not there yet (or past it).
    pub async fn stream_tables(&self, c: &Client, current: &[MyTable], fresh: bool, actor: &str) -> Result<Vec<MyTable>, MyError> {
        const WHAT: &str = "reading the stream's tables from Ferry's state";
        self.advance(c, Phase::Cdc, actor, "streaming the binlog").await?;
        let stored: Option<String> = c
            .query_opt(
                &format!("SELECT cdc_tables::text FROM {}.mysql_state WHERE migration_id = $1", self.q()),
                &[&self.id],
            )
            .await
            .map_err(db(WHAT))?
            .and_then(|r| r.get(0));
        if let (Some(text), false) = (&stored, fresh) {
            return serde_json::from_str::<Vec<MyTable>>(text).map_err(|e| {
                MyError::new(
                    WHAT,
                    &e.to_string(),
                    "report this as a bug; reloading with --overwrite starts afresh",
                )
            });
        }
        let json = serde_json::to_string(current).unwrap_or_default();
        c.execute(
            &format!(
                "UPDATE {}.mysql_state SET cdc_tables = $2::text::jsonb WHERE migration_id = $1",
                self.q()
            ),
            &[&self.id, &json],
        )
        .await
        .map_err(db(WHAT))?;
        Ok(current.to_vec())
    }

    /// The stored stream tables (None: none stored, or no migration).
    pub async fn stored_tables(&self, c: &Client) -> Result<Option<Vec<MyTable>>, MyError> {
        let text: Option<String> = c
            .query_opt(
                &format!("SELECT cdc_tables::text FROM {}.mysql_state WHERE migration_id = $1", self.q()),
                &[&self.id],
            )
            .await
            .map_err(db("reading the stream's tables from Ferry's state"))?
            .and_then(|r| r.get(0));
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The hold request and whether the migration was cut over, as the stream polls them.
    pub async fn read_hold(&self, c: &Client) -> Result<Option<Hold>, tokio_postgres::Error> {
        let row = c
            .query_opt(
                &format!(
                    "SELECT s.hold::text, m.phase FROM {q}.migrations m JOIN {q}.mysql_state s ON s.migration_id = m.id WHERE m.id = $1",
                    q = self.q()
                ),
                &[&self.id],
            )
            .await?;
        Ok(row.map(|r| {
            if r.get::<_, String>(1) == Phase::CutOver.as_str() {
                Hold::CutOver
            } else {
                Hold::parse(r.get::<_, Option<String>>(0).as_deref())
            }
        }))
    }

    /// Says where the stream holds (None: it does not).
    pub async fn set_held(&self, c: &impl GenericClient, at: Option<&BinlogPosition>) -> Result<u64, tokio_postgres::Error> {
        let text = at.map(|p| SourcePosition::Mysql(p.clone()).to_string());
        c.execute(
            &format!("UPDATE {}.mysql_state SET held_at = $2 WHERE migration_id = $1", self.q()),
            &[&self.id, &text],
        )
        .await
    }

    /// Asks the stream to hold (or to stop holding: [`Hold::Run`]); forgets where it held.
    pub async fn request_hold(&self, c: &Client, hold: &Hold) -> Result<(), MyError> {
        c.execute(
            &format!(
                "UPDATE {}.mysql_state SET hold = $2::text::jsonb, held_at = CASE WHEN $2::text IS NULL THEN held_at END
                 WHERE migration_id = $1",
                self.q()
            ),
            &[&self.id, &hold.to_json()],
        )
        .await
        .map(|_| ())
        .map_err(db("asking the stream to hold"))
    }

    /// Where the stream says it holds.
    pub async fn held_at(&self, c: &Client) -> Result<Option<BinlogPosition>, MyError> {
        let text: Option<String> = c
            .query_opt(
                &format!("SELECT held_at FROM {}.mysql_state WHERE migration_id = $1", self.q()),
                &[&self.id],
            )
            .await
            .map_err(db("reading where the stream holds"))?
            .and_then(|r| r.get(0));
        Ok(text
            .and_then(|t| t.parse::<SourcePosition>().ok())
            .and_then(|p| p.as_mysql().cloned()))
    }

    /// Whether the stream has applied a source transaction (a running stream answers holds).
    pub async fn has_streamed(&self, c: &Client) -> Result<bool, MyError> {
        Ok(self.applied(c).await?.is_some())
    }

    /// Records a finished verification, for the cutover gate.
    pub async fn record_verification(&self, c: &Client, differences: u64) -> Result<(), MyError> {
        const WHAT: &str = "recording the verification";
        let n = c
            .execute(
                &format!(
                    "UPDATE {}.mysql_state SET verified_at = clock_timestamp(), verify_differences = $2 WHERE migration_id = $1",
                    self.q()
                ),
                &[&self.id, &(differences as i64)],
            )
            .await
            .map_err(db(WHAT))?;
        if n == 1 {
            let phase = self.phase(c).await?.unwrap_or(Phase::Cdc);
            self.store
                .event(
                    c,
                    &self.id,
                    phase,
                    "verified",
                    &format!("verification: {differences} difference(s)"),
                )
                .await
                .map_err(pg(WHAT))?;
        }
        Ok(())
    }

    /// What the cutover gate checks. None: no finished load recorded.
    pub async fn gate_state(&self, c: &Client) -> Result<Option<GateState>, MyError> {
        const WHAT: &str = "reading Ferry's state";
        let row = c
            .query_opt(
                &format!(
                    "SELECT m.phase, s.verified_at IS NOT NULL AND s.verified_at > s.load_finished_at, s.verify_differences, s.cdc_tables::text
                     FROM {q}.migrations m JOIN {q}.mysql_state s ON s.migration_id = m.id
                     WHERE m.id = $1 AND s.load_finished_at IS NOT NULL",
                    q = self.q()
                ),
                &[&self.id],
            )
            .await
            .map_err(db(WHAT))?;
        let Some(r) = row else { return Ok(None) };
        let phase: Phase = r
            .get::<_, String>(0)
            .parse()
            .map_err(|e: ferry_core::state::UnknownState| MyError::new(WHAT, &e.to_string(), "upgrade Ferry"))?;
        Ok(Some(GateState {
            phase,
            verified: r.get(1),
            differences: r.get(2),
            tables: r
                .get::<_, Option<String>>(3)
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        }))
    }

    /// Records the cutover: the report and the phase `cut_over` in one transaction (the
    /// running stream stops when it sees the phase).
    pub async fn record_cutover(&self, c: &mut Client, report: &Value, actor: &str) -> Result<(), MyError> {
        const WHAT: &str = "recording the cutover";
        let tx = c.transaction().await.map_err(db(WHAT))?;
        // `migrations` before `mysql_state`, as in every transaction that writes both (a
        // stream's batch): no lock-order deadlock.
        let at = report["final_position"].as_str().unwrap_or("-");
        self.store
            .transition(&tx, &self.id, Phase::CutOver, actor, &format!("cut over at binlog {at}"))
            .await
            .map_err(pg(WHAT))?;
        tx.execute(
            &format!(
                "UPDATE {}.mysql_state SET cutover = $2::text::jsonb WHERE migration_id = $1",
                self.q()
            ),
            &[&self.id, &report.to_string()],
        )
        .await
        .map_err(db(WHAT))?;
        tx.commit().await.map_err(db(WHAT))
    }

    /// The reverse stream of this migration (PostgreSQL target to MySQL/MariaDB source after a
    /// cutover): its slot and publication on the target, named from the migration id as a
    /// PostgreSQL migration's are (`ferry_<id>_rev`).
    pub fn reverse_stream(&self) -> ferry_postgres::switch::ReverseStream {
        let forward = format!("ferry_{}", self.id);
        ferry_postgres::switch::ReverseStream::of(&forward, &forward)
    }

    /// Records a rollback: the phase `rolled_back` and where the forward stream resumes, in one
    /// transaction. `forward_from` is the source's binlog end read once the reverse stream had
    /// applied the final position and before the source took writes again: every transaction
    /// before it is either applied on the target already or one of Ferry's reverse writes, so
    /// the stream resumes there and never sees them.
    pub async fn record_rollback(&self, c: &mut Client, forward_from: &BinlogPosition, actor: &str, reason: &str) -> Result<(), MyError> {
        const WHAT: &str = "recording the rollback";
        let tx = c.transaction().await.map_err(db(WHAT))?;
        self.store
            .transition(&tx, &self.id, Phase::RolledBack, actor, reason)
            .await
            .map_err(pg(WHAT))?;
        tx.execute(
            &format!("UPDATE {}.migrations SET applied_position = $2 WHERE id = $1", self.q()),
            &[&self.id, &SourcePosition::Mysql(forward_from.clone()).to_string()],
        )
        .await
        .map_err(db(WHAT))?;
        tx.commit().await.map_err(db(WHAT))
    }

    /// Moves to `cutover` (the gate starts) or back to `cdc` (it was aborted; the source is
    /// writable again).
    pub async fn gate_phase(&self, c: &Client, to: Phase, actor: &str, reason: &str) -> Result<(), MyError> {
        self.store
            .transition(c, &self.id, to, actor, reason)
            .await
            .map(|_| ())
            .map_err(pg("recording the cutover's phase"))
    }

    /// The migration as `ferry status --json` prints it (the keys of earlier versions, plus
    /// `migration_id`, the positions as text, and `tables`). None: not recorded.
    pub async fn status_json(&self, c: &Client) -> Result<Option<Value>, MyError> {
        const WHAT: &str = "reading the migration's state";
        let row = c
            .query_opt(
                &format!(
                    "SELECT jsonb_build_object(
                        'migration_id', m.id, 'source', m.source, 'phase', m.phase,
                        'target_schema', coalesce(s.target_schema, 'public'),
                        'load_started_at', s.load_started_at, 'load_finished_at', s.load_finished_at, 'load', s.load_summary,
                        'snapshot_position', m.snapshot_position, 'applied_position', m.applied_position,
                        'transactions', m.applied_txns, 'last_apply_at', m.applied_at,
                        'seconds_since_last_apply', extract(epoch FROM clock_timestamp() - m.applied_at)::float8,
                        'blocked_at', s.cdc_blocked, 'verified_at', s.verified_at, 'verify_differences', s.verify_differences,
                        'cutover', s.cutover,
                        'dead_letters', (SELECT count(*) FROM {q}.dead_letters d WHERE d.migration_id = m.id),
                        'recent_dead_letters', (SELECT coalesce(jsonb_agg(x ORDER BY x.id DESC), '[]') FROM (
                             SELECT d.id, d.at, to_jsonb(d)->>'commit_position' AS commit_position, d.change_index,
                                    d.table_name AS table, d.operation, d.key, d.error, d.skipped
                             FROM {q}.dead_letters d WHERE d.migration_id = m.id ORDER BY d.id DESC LIMIT 20) x),
                        'tables', (SELECT coalesce(jsonb_agg(jsonb_build_object('table', t.table_name, 'state', t.state, 'rows', t.rows_copied)
                                                             ORDER BY t.table_name), '[]')
                                   FROM {q}.tables t WHERE t.migration_id = m.id))::text
                     FROM {q}.migrations m LEFT JOIN {q}.mysql_state s ON s.migration_id = m.id
                     WHERE m.id = $1",
                    q = self.q()
                ),
                &[&self.id],
            )
            .await
            .map_err(db(WHAT))?;
        let Some(row) = row else { return Ok(None) };
        let mut st: Value =
            serde_json::from_str(&row.get::<_, String>(0)).map_err(|e| MyError::new(WHAT, &e.to_string(), "report this as a bug"))?;
        let applied = st["applied_position"]
            .as_str()
            .and_then(|p| p.parse::<SourcePosition>().ok())
            .and_then(|p| p.as_mysql().cloned());
        match applied {
            Some(p) => {
                st["applied_file"] = p.file().into();
                st["applied_pos"] = p.pos().into();
                st["applied_gtid"] = p.gtid().into();
            }
            None => {
                st["applied_file"] = Value::Null;
                st["applied_pos"] = Value::Null;
                st["applied_gtid"] = Value::Null;
            }
        }
        Ok(Some(st))
    }
}

/// What the stream stopped before, as recorded in `cdc_blocked` (`{"query", "file", "pos",
/// "kind"}`): what it is and what to do, for `ferry status`.
pub fn blocked_text(blocked: &serde_json::Value) -> (&'static str, &'static str) {
    match blocked["kind"].as_str() {
        Some("statement_format") => (
            "a write logged in STATEMENT format (its rows are not in the binlog)",
            "make the same change on the target, then run ferry migrate with --ddl-applied (or load again with --overwrite); keep binlog_format=ROW on the source",
        ),
        Some("xa_unknown") => (
            "an XA COMMIT whose prepared transaction is in no binlog file the source still has",
            "if it did not write to the migrated tables (or you made its changes on the target), run ferry migrate with --ddl-applied; otherwise load again with --overwrite",
        ),
        Some("unreadable_truncate") => (
            "a TRUNCATE whose table Ferry cannot read",
            "empty that table on the target if it is migrated, then run ferry migrate with --ddl-applied",
        ),
        _ => ("a schema change", "make it on the target, then run ferry migrate with --ddl-applied"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_requests_round_trip() {
        for h in [Hold::Freeze, Hold::Until(BinlogPosition::new("binlog.000002", 1234, "").unwrap())] {
            assert_eq!(Hold::parse(h.to_json().as_deref()), h);
        }
        assert_eq!(Hold::parse(None), Hold::Run);
        assert_eq!(Hold::parse(Some(r#"{"file": "garbage", "pos": 4}"#)), Hold::Run);
    }

    #[test]
    fn server_ids_are_stable_and_away_from_small_ones() {
        let a = replica_server_id("db1:3306/shop", "pg1:5432/shop");
        assert_eq!(a, replica_server_id("db1:3306/shop", "pg1:5432/shop"));
        assert_ne!(a, replica_server_id("db2:3306/shop", "pg1:5432/shop"));
        assert_eq!(a & 0xff00_0000, 0x4600_0000);
    }
}
