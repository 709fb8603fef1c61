//! `ferry check`: every prerequisite, collected rather than stopping at the first, each naming
//! the setting, what it is, what it must be, and the fix. Also builds the plan a human reviews.

pub mod privileges;

use std::path::PathBuf;

use ferry_core::{TableFilter, TableName};
use serde::Serialize;
use tokio_postgres::Client;

use crate::endpoint::Endpoint;
use crate::error::PgError;
use crate::introspect::{self, ReplicaIdentity, ServerInfo, SourceTable, TableKind};
use crate::replication::ReplicationConnection;
use crate::schema::{plan_post_data, PgTools, StepKind};
use crate::state::StateStore;

pub use crate::finding::{Finding, Severity};

/// What check is asked about.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// Source.
    pub source: Endpoint,
    /// Target.
    pub target: Endpoint,
    /// Tables to move.
    pub filter: TableFilter,
    /// Parallel jobs planned.
    pub jobs: usize,
    /// Migration id, slot and publication names.
    pub migration_id: String,
    /// Slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// State schema on the target.
    pub state_schema: String,
    /// Drop and recreate target tables that exist.
    pub overwrite: bool,
    /// Where pg_dump lives, if not found by itself.
    pub pg_bin_dir: Option<PathBuf>,
    /// Tables at least this large are split into page ranges.
    pub split_bytes: i64,
    /// Roles the schema refers to: create or require, and the rename map (docs/roles.md).
    pub roles: crate::roles::RolePolicy,
}

/// One table in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTable {
    /// Name.
    pub name: TableName,
    /// Kind.
    pub kind: TableKind,
    /// Estimated rows (-1 unknown).
    pub estimated_rows: i64,
    /// Bytes including TOAST.
    pub bytes: i64,
    /// Ranges the copy splits it into (0: not copied).
    pub ranges: i64,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
}

/// The reviewable plan.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Plan {
    /// Tables, largest first.
    pub tables: Vec<PlannedTable>,
    /// Objects Ferry creates on the source.
    pub source_objects: Vec<String>,
    /// Objects Ferry creates on the target before the data.
    pub target_objects: Vec<String>,
    /// What is deferred until after the data, by kind.
    pub deferred: Vec<(String, usize)>,
    /// Foreign keys that will not be created.
    pub skipped: Vec<String>,
    /// What change data capture (logical replication) does not carry after the full load.
    pub not_replicated: Vec<String>,
    /// Sequences whose values are copied.
    pub sequences: usize,
    /// Whether an earlier run of this migration is resumed.
    pub resuming: bool,
    /// Roles, owners and privileges carried to the target (docs/roles.md).
    pub roles: Option<crate::roles::RolesPlan>,
}

/// Everything check found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Source server.
    pub source: Option<ServerInfo>,
    /// Target server.
    pub target: Option<ServerInfo>,
    /// Findings, blockers first.
    pub findings: Vec<Finding>,
    /// The plan, when the source could be read.
    pub plan: Option<Plan>,
}

impl Report {
    /// Whether anything blocks the migration.
    pub fn blocked(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Blocker)
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, severity: Severity, side: &'static str, check: &'static str, message: impl Into<String>, fix: Option<String>) {
        self.0.push(Finding {
            severity,
            side,
            check,
            message: message.into(),
            fix,
        });
    }
    fn error(&mut self, side: &'static str, check: &'static str, e: &PgError) {
        self.add(
            Severity::Blocker,
            side,
            check,
            format!("{}: {}", e.context, e.reason),
            e.fix.clone(),
        );
    }
}

/// Runs every check and builds the plan.
pub async fn check(req: &CheckRequest) -> Report {
    let mut f = Findings(Vec::new());
    let source = match req.source.connect("check").await {
        Ok(c) => Some(c),
        Err(e) => {
            f.error("source", "connect", &e);
            None
        }
    };
    let target = match req.target.connect("check").await {
        Ok(c) => Some(c),
        Err(e) => {
            f.error("target", "connect", &e);
            None
        }
    };
    let mut report = Report {
        source: None,
        target: None,
        findings: Vec::new(),
        plan: None,
    };
    let mut resuming = false;
    if let Some(t) = &target {
        match target_checks(req, t, &mut f).await {
            Ok((info, r)) => {
                report.target = Some(info);
                resuming = r;
            }
            Err(e) => f.error("target", "read", &e),
        }
    }
    if let Some(s) = &source {
        match source_checks(req, s, target.as_ref(), resuming, &mut f).await {
            Ok((info, plan)) => {
                report.source = Some(info);
                report.plan = Some(plan);
            }
            Err(e) => f.error("source", "read", &e),
        }
    }
    if let (Some(s), Some(t)) = (&report.source, &report.target) {
        if t.major() < s.major() {
            f.add(Severity::Warning, "target", "version", format!("target runs PostgreSQL {} but the source runs {}: moving to an older major version may fail on features the target lacks", t.major(), s.major()), Some("use a target of the same or a newer major version".into()));
        } else {
            f.add(
                Severity::Ok,
                "target",
                "version",
                format!("PostgreSQL {} -> {}", s.major(), t.major()),
                None,
            );
        }
    }
    let mut findings = f.0;
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    report.findings = findings;
    report
}

async fn target_checks(req: &CheckRequest, t: &Client, f: &mut Findings) -> Result<(ServerInfo, bool), PgError> {
    let info = introspect::server_info(t).await?;
    let store = StateStore::new(&req.state_schema);
    let resuming = store.load(t, &req.migration_id).await?.is_some();
    if resuming {
        f.add(
            Severity::Info,
            "target",
            "resume",
            format!(
                "migration {:?} is recorded on the target: `ferry migrate` resumes it",
                req.migration_id
            ),
            None,
        );
    }
    let can_create: bool = t
        .query_one("SELECT has_database_privilege(current_user, current_database(), 'CREATE')", &[])
        .await
        .map_err(|e| PgError::query("checking privileges on the target", e))?
        .get(0);
    if can_create || info.superuser {
        f.add(
            Severity::Ok,
            "target",
            "privileges",
            format!("user {} may create schemas in database {}", info.user, info.database),
            None,
        );
    } else {
        f.add(
            Severity::Blocker,
            "target",
            "privileges",
            format!("user {} may not create schemas in database {}", info.user, info.database),
            Some(format!("GRANT CREATE ON DATABASE {} TO {}", info.database, info.user)),
        );
    }
    let svc = privileges::service(t).await;
    if svc != privileges::Service::SelfManaged {
        f.add(
            Severity::Info,
            "target",
            "service",
            format!("the target is {}: fixes below name its roles", svc.name()),
            None,
        );
    }
    f.0.extend(privileges::check_side(t, &info, privileges::Role::Target, svc).await);
    let wal_level = introspect::setting(t, "wal_level").await?;
    if wal_level == "logical" {
        // Rollback streams changes back from the target: its user needs a replication connection.
        match ReplicationConnection::connect(&req.target).await {
            Ok(mut r) => {
                let ok = r.identify_system().await;
                r.close().await;
                match ok {
                    Ok(_) => f.add(Severity::Ok, "target", "replication_connection", format!("user {} may open a replication connection (for rollback)", info.user), None),
                    Err(e) => f.add(Severity::Warning, "target", "replication_connection", format!("a replication connection to the target fails ({e}): rollback after cutover streams changes back from the target and will need one"), Some(privileges::fix_replication(svc, &info.user))),
                }
            }
            Err(e) => f.add(Severity::Warning, "target", "replication_connection", format!("a replication connection to the target fails ({e}): rollback after cutover streams changes back from the target and will need one"), Some(privileges::fix_replication(svc, &info.user))),
        }
    }
    if wal_level != "logical" {
        f.add(Severity::Info, "target", "wal_level", format!("wal_level is {wal_level} on the target: fine for the load, but rollback after cutover streams changes back from the target and will need wal_level=logical"), Some("set wal_level=logical on the target before cutover".into()));
    }
    Ok((info, resuming))
}

async fn source_checks(
    req: &CheckRequest,
    s: &Client,
    target: Option<&Client>,
    resuming: bool,
    f: &mut Findings,
) -> Result<(ServerInfo, Plan), PgError> {
    let info = introspect::server_info(s).await?;
    if info.major() < 10 {
        f.add(
            Severity::Blocker,
            "source",
            "version",
            format!("source runs PostgreSQL {}; logical replication needs 10 or newer", info.version),
            Some("upgrade the source to PostgreSQL 10+ first".into()),
        );
    } else {
        f.add(Severity::Ok, "source", "version", format!("PostgreSQL {}", info.version), None);
    }

    // Change capture reads pgoutput's text values as UTF-8; another server encoding would
    // corrupt every non-ASCII character on the way.
    let encoding: String = s
        .query_one(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading the source database's encoding", e))?
        .get(0);
    if encoding == "UTF8" {
        f.add(Severity::Ok, "source", "encoding", "database encoding is UTF8", None);
    } else {
        f.add(
            Severity::Blocker,
            "source",
            "encoding",
            format!("the source database's encoding is {encoding}; Ferry's change capture handles UTF8 databases only"),
            Some("migrate a UTF8 copy of the database, or wait for Ferry's support of other encodings".into()),
        );
    }

    let wal_level = introspect::setting(s, "wal_level").await?;
    if wal_level == "logical" {
        f.add(Severity::Ok, "source", "wal_level", "wal_level is logical", None);
    } else {
        f.add(
            Severity::Blocker,
            "source",
            "wal_level",
            format!("wal_level is {wal_level} on source; change data capture needs logical"),
            Some("set wal_level=logical (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL".into()),
        );
    }

    // The replication connection itself is the test: on RDS the right comes from membership in
    // rds_replication, not from the REPLICATION attribute.
    let svc = privileges::service(s).await;
    if svc != privileges::Service::SelfManaged {
        f.add(
            Severity::Info,
            "source",
            "service",
            format!("the source is {}: fixes below name its roles", svc.name()),
            None,
        );
    }
    let replication = match ReplicationConnection::connect(&req.source).await {
        Ok(mut r) => {
            let id = r.identify_system().await;
            r.close().await;
            id
        }
        Err(e) => Err(e),
    };
    match replication {
        Ok(id) => f.add(
            Severity::Ok,
            "source",
            "replication_connection",
            format!(
                "user {} may open a replication connection (system {}, WAL at {})",
                info.user, id.system_id, id.xlogpos
            ),
            None,
        ),
        Err(e) if !(info.superuser || info.replication) => f.add(
            Severity::Blocker,
            "source",
            "replication_role",
            format!(
                "user {} may not open a replication connection ({}); Ferry needs one for its replication slot and change stream",
                info.user, e.reason
            ),
            Some(privileges::fix_replication(svc, &info.user)),
        ),
        Err(e) => f.error("source", "replication_connection", &e),
    }
    f.0.extend(privileges::check_side(s, &info, privileges::Role::Source, svc).await);

    let r = s
        .query_one(
            "SELECT current_setting('max_replication_slots')::int4,
                    (SELECT count(*)::int4 FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int4,
                    (SELECT count(*)::int4 FROM pg_stat_activity WHERE backend_type = 'walsender'),
                    current_setting('max_connections')::int4 - current_setting('superuser_reserved_connections')::int4,
                    (SELECT count(*)::int4 FROM pg_stat_activity WHERE backend_type = 'client backend'),
                    current_setting('max_slot_wal_keep_size'),
                    (SELECT count(*)::int8 FROM pg_largeobject_metadata),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2)",
            &[&req.slot, &req.state_schema],
        )
        .await
        .map_err(|e| PgError::query("reading replication settings on the source", e))?;
    let (max_slots, used_slots, max_senders, used_senders): (i32, i32, i32, i32) = (r.get(0), r.get(1), r.get(2), r.get(3));
    let slot_exists: bool = r.get(8);
    let need_slots = if slot_exists { 1 } else { 2 }; // our slot, plus a temporary one on resume
    if max_slots - used_slots >= need_slots {
        f.add(
            Severity::Ok,
            "source",
            "replication_slots",
            format!("{used_slots} of max_replication_slots={max_slots} in use"),
            None,
        );
    } else if max_slots - used_slots >= 1 && !slot_exists {
        f.add(Severity::Warning, "source", "replication_slots", format!("{used_slots} of max_replication_slots={max_slots} in use: enough for Ferry's slot, but resuming an interrupted full load needs one more, temporary slot"), Some(format!("raise max_replication_slots to at least {} (restart needed)", used_slots + 2)));
    } else if !slot_exists {
        f.add(
            Severity::Blocker,
            "source",
            "replication_slots",
            format!("all {max_slots} replication slots are in use (max_replication_slots={max_slots})"),
            Some(format!(
                "raise max_replication_slots to at least {} and restart, or drop an unused slot",
                used_slots + 2
            )),
        );
    }
    if max_senders - used_senders >= 1 {
        f.add(
            Severity::Ok,
            "source",
            "wal_senders",
            format!("{used_senders} of max_wal_senders={max_senders} in use"),
            None,
        );
    } else {
        f.add(
            Severity::Blocker,
            "source",
            "wal_senders",
            format!("all {max_senders} WAL senders are busy (max_wal_senders={max_senders})"),
            Some(format!("raise max_wal_senders to at least {} and restart", used_senders + 1)),
        );
    }
    let (max_conn, used_conn): (i32, i32) = (r.get(4), r.get(5));
    let need_conn = req.jobs as i32 + 3;
    if max_conn - used_conn < need_conn {
        f.add(
            Severity::Blocker,
            "source",
            "connections",
            format!(
                "only {} connections free on the source; Ferry needs {need_conn} with --jobs {}",
                max_conn - used_conn,
                req.jobs
            ),
            Some("lower --jobs or raise max_connections".into()),
        );
    }
    let keep: String = r.get(6);
    if keep == "-1" {
        f.add(Severity::Warning, "source", "max_slot_wal_keep_size", "max_slot_wal_keep_size is -1 (unlimited): if Ferry stops consuming its slot, the source keeps WAL until its disk fills", Some("set max_slot_wal_keep_size (for example ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf()) and watch ferry_replication_lag_bytes".into()));
    } else {
        f.add(Severity::Ok, "source", "max_slot_wal_keep_size", format!("max_slot_wal_keep_size is {keep}: a stalled slot cannot fill the disk, but past that it is invalidated and the migration must restart"), None);
    }
    let lobs: i64 = r.get(7);
    if lobs > 0 {
        f.add(
            Severity::Warning,
            "source",
            "large_objects",
            format!(
                "{lobs} large object(s) (pg_largeobject) exist: the full load copies them from its snapshot (OIDs, owners, grants), \
                 but change data capture does not carry them (logical replication cannot): a large object created, changed or \
                 unlinked on the source after the load is not on the target"
            ),
            Some(
                "do not change large objects on the source during the migration, or copy them again before cutover \
                 (ferry verify lists every object that differs, by OID); or store the data in bytea columns, which are replicated"
                    .into(),
            ),
        );
    }
    if slot_exists && !resuming {
        f.add(Severity::Info, "source", "slot", format!("replication slot {} exists from an earlier attempt that never recorded state on the target; `ferry migrate` drops and recreates it", req.slot), None);
    }
    if r.get::<_, bool>(9) {
        f.add(
            Severity::Blocker,
            "source",
            "state_schema",
            format!(
                "the source has a schema named {:?}, the name of Ferry's state schema",
                req.state_schema
            ),
            Some("pass --state-schema with another name".into()),
        );
    }

    let tools = PgTools::find(info.major(), req.pg_bin_dir.as_deref()).await;
    match &tools {
        Ok(t) => f.add(
            Severity::Ok,
            "tools",
            "pg_dump",
            format!("{} (PostgreSQL {}) renders the schema", t.pg_dump.display(), t.major),
            None,
        ),
        Err(e) => f.add(
            Severity::Blocker,
            "tools",
            "pg_dump",
            e.to_string(),
            Some("install the PostgreSQL client tools of the source's version or newer".into()),
        ),
    }

    // Tables.
    let all = introspect::list_tables(s, &TableFilter::default(), Some(&req.state_schema)).await?;
    let tables: Vec<SourceTable> = all.iter().filter(|t| req.filter.matches(t.filter_name())).cloned().collect();
    if tables.is_empty() {
        f.add(
            Severity::Blocker,
            "source",
            "tables",
            "no table matches the include/exclude patterns",
            Some("check --include and --exclude".into()),
        );
    }
    let mut no_identity = Vec::new();
    let mut full_identity = Vec::new();
    for t in &tables {
        match (t.kind, t.replica_identity) {
            (TableKind::Ordinary, ReplicaIdentity::Nothing) => no_identity.push(t.name.to_string()),
            (TableKind::Ordinary, ReplicaIdentity::Full) if !t.has_primary_key => full_identity.push(t.name.to_string()),
            _ => {}
        }
        if t.unlogged {
            f.add(
                Severity::Warning,
                "source",
                "unlogged",
                format!(
                    "{} is UNLOGGED: its rows are copied, but its changes are not in the WAL, so they cannot be streamed",
                    t.name
                ),
                Some(format!("ALTER TABLE {} SET LOGGED, or exclude it", t.name.quoted())),
            );
        }
        if t.kind == TableKind::Foreign {
            f.add(
                Severity::Warning,
                "source",
                "foreign_table",
                format!("{} is a foreign table: its definition is recreated, its data is not copied", t.name),
                None,
            );
        }
    }
    if !no_identity.is_empty() {
        f.add(Severity::Blocker, "source", "replica_identity", format!("{} table(s) have no primary key and no replica identity: {}. Once published, UPDATE and DELETE on them would fail on the source", no_identity.len(), no_identity.join(", ")), Some("add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL, or leave them out with --exclude".into()));
    } else {
        f.add(
            Severity::Ok,
            "source",
            "replica_identity",
            "every table has a primary key or a replica identity",
            None,
        );
    }
    if !full_identity.is_empty() {
        f.add(Severity::Info, "source", "replica_identity", format!("{} table(s) use REPLICA IDENTITY FULL without a primary key ({}): changes apply by whole-row match, slower on large tables", full_identity.len(), full_identity.join(", ")), None);
    }
    let names: Vec<String> = tables.iter().map(|t| t.name.quoted()).collect();
    let no_select: Vec<String> = s
        .query(
            "SELECT t FROM unnest($1::text[]) t WHERE NOT has_table_privilege(t, 'SELECT')",
            &[&names],
        )
        .await
        .map_err(|e| PgError::query("checking SELECT privileges on the source", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if !no_select.is_empty() {
        f.add(
            Severity::Blocker,
            "source",
            "select_privilege",
            format!("user {} cannot read {}", info.user, no_select.join(", ")),
            Some(format!("GRANT SELECT ON ... TO {}", info.user)),
        );
    }
    let all_tables_pub = info.superuser && req.filter.is_everything();
    if !info.superuser {
        let can_create: bool = s
            .query_one("SELECT has_database_privilege(current_user, current_database(), 'CREATE')", &[])
            .await
            .map_err(|e| PgError::query("checking privileges on the source", e))?
            .get(0);
        if !can_create {
            f.add(
                Severity::Blocker,
                "source",
                "publication",
                format!(
                    "user {} may not create a publication in database {} (CREATE PUBLICATION needs CREATE on the database)",
                    info.user, info.database
                ),
                Some(format!(
                    "GRANT CREATE ON DATABASE {} TO {};",
                    privileges::ident(&info.database),
                    privileges::ident(&info.user)
                )),
            );
        }
        let rows = s
            .query(
                "SELECT t, pg_get_userbyid(c.relowner)::text FROM unnest($1::text[]) t JOIN pg_class c ON c.oid = t::regclass
                 WHERE NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 2, 1",
                &[&names],
            )
            .await
            .map_err(|e| PgError::query("checking table ownership on the source", e))?;
        let not_owner: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut owners: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        owners.dedup();
        if !not_owner.is_empty() {
            let grants: Vec<String> = owners
                .iter()
                .map(|o| format!("GRANT {} TO {};", privileges::ident(o), privileges::ident(&info.user)))
                .collect();
            f.add(
                Severity::Blocker,
                "source",
                "publication",
                format!(
                    "user {} does not own {}; only owners (or superusers) may add tables to Ferry's publication",
                    info.user,
                    not_owner.join(", ")
                ),
                Some(format!(
                    "make Ferry's user a member of the owning role(s): {} (or run Ferry as the tables' owner)",
                    grants.join(" ")
                )),
            );
        }
    }

    // Extensions the target must offer.
    if let Some(t) = target {
        let exts: Vec<String> = s
            .query("SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1", &[])
            .await
            .map_err(|e| PgError::query("listing extensions on the source", e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<String> = t
            .query(
                "SELECT e FROM unnest($1::text[]) e WHERE NOT EXISTS (SELECT 1 FROM pg_available_extensions a WHERE a.name = e)",
                &[&exts],
            )
            .await
            .map_err(|e| PgError::query("listing extensions available on the target", e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        if !missing.is_empty() {
            f.add(
                Severity::Blocker,
                "target",
                "extensions",
                format!("the source uses extension(s) the target does not offer: {}", missing.join(", ")),
                Some("install them on the target server (packages), then rerun".into()),
            );
        }
        if !resuming {
            conflicts(req, t, &tables, f).await?;
        }
    }

    // Roles the schema refers to (owners, grants, policies) and what the target has: roles.rs.
    let excluded_oids: Vec<u32> = all.iter().filter(|t| !req.filter.matches(t.filter_name())).map(|t| t.oid).collect();
    let (roles_plan, role_findings) = crate::roles::inspect(s, target, &req.roles, &excluded_oids, &req.state_schema).await?;
    f.0.extend(role_findings);

    // The plan.
    let oids: Vec<u32> = tables
        .iter()
        .filter(|t| matches!(t.kind, TableKind::Ordinary | TableKind::Partitioned))
        .map(|t| t.oid)
        .collect();
    let post = plan_post_data(s, &oids).await?;
    let seqs = crate::sequences::read(s, Some(&req.state_schema))
        .await
        .map(|v| v.len())
        .unwrap_or(0);
    let tid_ranges = info.major() >= 14;
    let mut planned: Vec<PlannedTable> = tables
        .iter()
        .map(|t| PlannedTable {
            name: t.name.clone(),
            kind: t.kind,
            estimated_rows: t.estimated_rows,
            bytes: t.total_bytes,
            ranges: if !t.holds_rows() {
                0
            } else if tid_ranges && req.split_bytes > 0 && t.heap_bytes > req.split_bytes {
                ((t.heap_bytes + req.split_bytes - 1) / req.split_bytes).clamp(2, 256)
            } else {
                1
            },
            replica_identity: t.replica_identity,
        })
        .collect();
    planned.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let counts = post.counts();
    let mut deferred = Vec::new();
    for (kind, label) in [
        (
            StepKind::PrimaryKey,
            "primary keys (unique index, then ADD CONSTRAINT ... USING INDEX)",
        ),
        (StepKind::Unique, "unique constraints"),
        (StepKind::Exclusion, "exclusion constraints"),
        (StepKind::Index, "indexes"),
        (StepKind::ForeignKey, "foreign keys (added NOT VALID, then validated)"),
    ] {
        if let Some(n) = counts.get(&kind) {
            deferred.push((label.to_string(), *n));
        }
    }
    deferred.push((
        "other post-data objects (triggers, rules, policies, statistics) restored by pg_restore".into(),
        0,
    ));
    let plan = Plan {
        tables: planned,
        source_objects: vec![
            format!(
                "publication {} ({})",
                req.publication,
                if all_tables_pub {
                    "FOR ALL TABLES".to_string()
                } else {
                    format!(
                        "FOR TABLE, {} tables",
                        tables.iter().filter(|t| t.kind != TableKind::Foreign).count()
                    )
                }
            ),
            format!("logical replication slot {} (pgoutput), kept until the migration ends", req.slot),
            format!(
                "at cutover only: ALTER DATABASE ... SET default_transaction_read_only = on (reset by rollback), \
                 a logical message marking the final position, and replication origin ferry_rev_{} for the \
                 reverse stream's writes (ferry abandon drops it)",
                req.migration_id
            ),
        ],
        target_objects: vec![
            format!("schema {} (Ferry's state: migrations, tables, events)", req.state_schema),
            format!(
                "replication origin ferry_fwd_{} marking the applier's writes; at cutover, publication {}_rev and slot {}_rev \
                 for reverse replication (ferry abandon drops them)",
                req.migration_id, req.publication, req.slot
            ),
            "schemas, types, domains, tables, sequences, functions and views from pg_dump --section=pre-data".into(),
        ],
        deferred,
        skipped: post.skipped.clone(),
        not_replicated: vec![
            "schema changes (DDL): a new column or a new table is applied; any other change stops change capture \
             with the fix (make it on the target too, then resume)"
                .into(),
            "sequence values: set from the snapshot at the full load and synced again at cutover, not in between".into(),
            format!(
                "large objects: {lobs} copied at the full load from its snapshot (OIDs, owners, grants); later changes \
                 to them are not carried (ferry verify compares them by OID, size and MD5)"
            ),
        ],
        sequences: seqs,
        resuming,
        roles: Some(roles_plan),
    };
    for s in &post.skipped {
        f.add(
            Severity::Warning,
            "source",
            "foreign_keys",
            s.clone(),
            Some("include the referenced table to keep the foreign key".into()),
        );
    }
    Ok((info, plan))
}

/// Target tables that already exist under a name the migration would create.
async fn conflicts(req: &CheckRequest, t: &Client, tables: &[SourceTable], f: &mut Findings) -> Result<(), PgError> {
    let names: Vec<String> = tables.iter().map(|t| t.name.quoted()).collect();
    let existing: Vec<String> = t
        .query("SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NOT NULL", &[&names])
        .await
        .map_err(|e| PgError::query("looking for existing tables on the target", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut non_empty = Vec::new();
    let mut empty = Vec::new();
    for n in existing {
        let has_rows: bool = t
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {n} LIMIT 1)"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(true);
        if has_rows {
            non_empty.push(n);
        } else {
            empty.push(n);
        }
    }
    let severity = if req.overwrite { Severity::Warning } else { Severity::Blocker };
    if !non_empty.is_empty() {
        let msg = if req.overwrite {
            format!(
                "target table(s) {} hold rows and will be DROPPED and recreated (--overwrite)",
                non_empty.join(", ")
            )
        } else {
            format!(
                "target table(s) {} already hold rows; Ferry refuses to overwrite a non-empty target table",
                non_empty.join(", ")
            )
        };
        f.add(
            severity,
            "target",
            "non_empty_target",
            msg,
            (!req.overwrite)
                .then(|| "empty or drop them, use another target database, or pass --overwrite to drop and recreate them".into()),
        );
    }
    if !empty.is_empty() {
        f.add(
            severity,
            "target",
            "existing_tables",
            format!(
                "target table(s) {} already exist (empty); Ferry creates the schema itself",
                empty.join(", ")
            ),
            (!req.overwrite).then(|| "drop them, or pass --overwrite to drop and recreate them".into()),
        );
    }
    if non_empty.is_empty() && empty.is_empty() {
        f.add(
            Severity::Ok,
            "target",
            "non_empty_target",
            format!("none of the {} tables exists on the target yet", tables.len()),
            None,
        );
    }
    Ok(())
}
