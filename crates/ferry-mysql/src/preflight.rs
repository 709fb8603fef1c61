//! `ferry check` for a MySQL/MariaDB source: every prerequisite collected (not stopping at the
//! first), each naming the setting, what it is, what it must be and the fix; and the plan with
//! the type map of every column.

use std::collections::{BTreeMap, HashMap};

use ferry_core::TableFilter;
use ferry_postgres::preflight::{Finding, Severity};
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::apply::reverse_position_table;
use crate::apply::DEFAULT_STATE_DB;
use crate::endpoint::{query, MyEndpoint};
use crate::error::MyError;
use crate::flavor::{Need, ServerVersion, Use};
use crate::schema::MySchemaObjects;
use crate::types::{map_column, Attention, MapOptions, Mapping, SourceColumn, ZeroDates};

/// What `check` needs.
#[derive(Debug, Clone)]
pub struct MyCheckRequest {
    /// The MySQL/MariaDB source.
    pub source: MyEndpoint,
    /// The PostgreSQL target.
    pub target: ferry_postgres::Endpoint,
    /// Tables in scope (patterns match `database.table`).
    pub filter: TableFilter,
    /// Type-map options.
    pub map: MapOptions,
    /// Overwrite non-empty target tables.
    pub overwrite: bool,
    /// The PostgreSQL schema the tables land in (`--target-schema`; `public` by default, and
    /// the one recorded for a migration already loaded: docs/decisions.md).
    pub target_schema: String,
}

impl MyCheckRequest {
    /// The source side of the request.
    pub fn scope(&self) -> SourceScope<'_> {
        SourceScope {
            source: &self.source,
            filter: &self.filter,
            map: &self.map,
            target_schema: &self.target_schema,
        }
    }
}

/// What the source's checks and plan need: the source and what of it moves where.
#[derive(Debug, Clone, Copy)]
pub struct SourceScope<'a> {
    /// The MySQL/MariaDB source.
    pub source: &'a MyEndpoint,
    /// Tables in scope.
    pub filter: &'a TableFilter,
    /// Type-map options.
    pub map: &'a MapOptions,
    /// The PostgreSQL schema the tables land in.
    pub target_schema: &'a str,
}

/// The source's checks and plan alone, for a stream with no PostgreSQL target (`ferry capture`
/// to Kafka): the plan, and every finding about the source (blockers first).
pub async fn source_plan(scope: SourceScope<'_>) -> Result<(MyServerInfo, MyPlan, Vec<Finding>), MyError> {
    let mut f = Findings(Vec::new());
    let mut conn = scope.source.connect().await?;
    tls_finding(scope.source, &mut f);
    let r = source_checks(scope, &mut conn, &mut f).await;
    scope.source.disconnect(conn).await;
    let (info, plan) = r?;
    f.0.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok((info, plan, f.0))
}

/// The source server.
#[derive(Debug, Clone, Serialize)]
pub struct MyServerInfo {
    /// "MariaDB" or "MySQL".
    pub flavor: String,
    /// `VERSION()`.
    pub version: String,
    /// The connected user (`CURRENT_USER()`).
    pub user: String,
    /// The database migrated.
    pub database: String,
}

/// One source table in the plan.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MyTable {
    /// Table name (in the source database; created in the target schema).
    pub name: String,
    /// Storage engine.
    pub engine: String,
    /// `TABLE_ROWS` (an estimate for InnoDB).
    pub estimated_rows: i64,
    /// Data and index bytes.
    pub bytes: i64,
    /// Primary-key columns, in order (empty: none).
    pub primary_key: Vec<String>,
    /// The next AUTO_INCREMENT value (the identity starts there).
    pub auto_increment: Option<u64>,
    /// Every column with its mapping, in order.
    pub columns: Vec<(String, Mapping)>,
}

/// What `check` proposes.
#[derive(Debug, Clone, Serialize)]
pub struct MyPlan {
    /// Tables in scope.
    pub tables: Vec<MyTable>,
    /// What Ferry will create or change on the source.
    pub source_objects: Vec<String>,
    /// What Ferry will create on the target.
    pub target_objects: Vec<String>,
    /// Zero-date policy in force.
    pub zero_dates: ZeroDates,
    /// Indexes, views, triggers, routines and events, each with how it reaches the target.
    pub schema: MySchemaObjects,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct MyReport {
    /// The source, when reachable.
    pub source: Option<MyServerInfo>,
    /// The target, when reachable.
    pub target: Option<ferry_postgres::introspect::ServerInfo>,
    /// Every finding, blockers first.
    pub findings: Vec<Finding>,
    /// The plan, when the source could be read.
    pub plan: Option<MyPlan>,
}

impl MyReport {
    /// Whether anything blocks the migration.
    pub fn blocked(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Blocker)
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, severity: Severity, side: &'static str, check: &'static str, message: String, fix: Option<&str>) {
        self.0.push(Finding {
            severity,
            side,
            check,
            message,
            fix: fix.map(str::to_string),
        });
    }
}

/// Runs every check.
pub async fn check(req: &MyCheckRequest) -> MyReport {
    let mut f = Findings(Vec::new());
    let mut report = MyReport {
        source: None,
        target: None,
        findings: Vec::new(),
        plan: None,
    };
    match req.source.connect().await {
        Err(e) => f.add(Severity::Blocker, "source", "connect", e.to_string(), None),
        Ok(mut conn) => {
            tls_finding(&req.source, &mut f);
            match source_checks(req.scope(), &mut conn, &mut f).await {
                Ok((info, plan)) => {
                    report.source = Some(info);
                    report.plan = Some(plan);
                }
                Err(e) => f.add(Severity::Blocker, "source", "read", e.to_string(), None),
            }
            req.source.disconnect(conn).await;
        }
    }
    match req.target.connect("check").await {
        Err(e) => f.add(Severity::Blocker, "target", "connect", e.to_string(), None),
        Ok(t) => match target_checks(req, &t, report.plan.as_ref(), &mut f).await {
            Ok(info) => report.target = Some(info),
            Err(e) => f.add(Severity::Blocker, "target", "read", e.to_string(), None),
        },
    }
    f.0.sort_by_key(|f| std::cmp::Reverse(f.severity));
    report.findings = f.0;
    report
}

/// Whether the source connection is encrypted, and how far the server is verified.
fn tls_finding(source: &crate::MyEndpoint, f: &mut Findings) {
    use crate::tls::SslMode;
    let mode = source.tls().mode;
    // After a successful connection, only DISABLED or PREFERRED's fallback are plain text.
    if source.encrypted() == Some(false) {
        let why = if mode == SslMode::Disabled {
            "ssl-mode=DISABLED".to_string()
        } else {
            format!("ssl-mode={}, and the server offers no TLS", mode.name())
        };
        f.add(
            Severity::Info,
            "source",
            "tls",
            format!("the connection is not encrypted ({why}): the password and the data cross the network in clear text"),
            Some("enable TLS on the server (ssl_cert, ssl_key) and use ssl-mode=VERIFY_IDENTITY with ssl-ca=/path/ca.pem"),
        );
        return;
    }
    let checked = match mode {
        SslMode::VerifyIdentity => "certificate chain and host name verified",
        SslMode::VerifyCa => "certificate chain verified, not the host name",
        _ => "the server's certificate is not checked",
    };
    f.add(
        Severity::Ok,
        "source",
        "tls",
        format!("encrypted with TLS (ssl-mode={}: {checked})", mode.name()),
        None,
    );
}

async fn source_checks(req: SourceScope<'_>, c: &mut mysql_async::Conn, f: &mut Findings) -> Result<(MyServerInfo, MyPlan), MyError> {
    // Every query here is a short one under the query deadline, or a catalog read under the
    // catalog deadline (`endpoint.rs`): a server that stops answering ends the check with an
    // error naming it instead of hanging.
    let src = &req.source;
    const VERSION: &str = "reading the server version";
    let (version, user, comment): (String, String, Option<String>) = src
        .within(VERSION, query(c, VERSION, "SELECT VERSION(), CURRENT_USER(), @@version_comment"))
        .await?
        .pop()
        .ok_or_else(|| MyError::new("reading the server version", "no answer", "report this as a bug"))?;
    let server = ServerVersion::parse(&version, comment.as_deref().unwrap_or_default());
    let mariadb = server.is_mariadb();
    let info = MyServerInfo {
        flavor: if mariadb { "MariaDB" } else { "MySQL" }.into(),
        version: version.clone(),
        user: user.clone(),
        database: req.source.database().to_string(),
    };
    // Version.
    let [major, minor, _] = server.numbers;
    let supported = if mariadb { (major, minor) >= (10, 5) } else { major >= 8 };
    if supported && !mariadb {
        // Coded against MySQL's reference manual: no MySQL 8 server has run Ferry yet.
        f.add(
            Severity::Warning,
            "source",
            "version",
            format!(
                "{} {version}: Ferry follows MySQL's manual for it ({}, no binlog_snapshot_position, super_read_only), but has not yet run against a real MySQL 8 server",
                server.name(),
                server.binlog_status_sql()
            ),
            Some("try the whole migration on a copy of the source first (docs/mysql-cdc.md, \"MySQL 8.0 / 8.4: what differs\")"),
        );
    } else if supported {
        f.add(Severity::Ok, "source", "version", format!("{} {version}", info.flavor), None);
    } else {
        f.add(
            Severity::Blocker,
            "source",
            "version",
            format!("{} {version} is not supported", info.flavor),
            Some("Ferry needs MySQL 8.0+ or MariaDB 10.5+ (row metadata in the binlog); upgrade the source first"),
        );
    }

    // Server variables.
    const VARIABLES: &str = "reading server variables";
    let vars: HashMap<String, String> = src
        .within(
            VARIABLES,
            query::<(String, String)>(
                c,
                VARIABLES,
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata',
                    'server_id', 'gtid_mode', 'gtid_binlog_pos', 'gtid_strict_mode', 'expire_logs_days', 'binlog_expire_logs_seconds',
                    'sql_mode', 'lower_case_table_names', 'system_time_zone', 'time_zone', 'character_set_server')",
            ),
        )
        .await?
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let var = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
    let on = |v: &str| matches!(v.to_ascii_uppercase().as_str(), "ON" | "1" | "TRUE");
    if on(var("log_bin")) {
        f.add(Severity::Ok, "source", "log_bin", "binary logging is on".into(), None);
    } else {
        f.add(
            Severity::Blocker,
            "source",
            "log_bin",
            "log_bin is OFF on the source: without the binary log there is no change stream".into(),
            Some("add log-bin=mysql-bin, server-id=1 and binlog-format=ROW to the [mysqld] section of my.cnf and restart the server"),
        );
    }
    match var("binlog_format").to_ascii_uppercase().as_str() {
        "ROW" => f.add(Severity::Ok, "source", "binlog_format", "binlog_format is ROW".into(), None),
        other => f.add(
            Severity::Blocker,
            "source",
            "binlog_format",
            format!("binlog_format is {} on the source; change capture needs row events (ROW)", if other.is_empty() { "unknown" } else { other }),
            Some("SET GLOBAL binlog_format = 'ROW' and put binlog-format=ROW in my.cnf; sessions already connected keep the old format until they reconnect"),
        ),
    }
    match var("binlog_row_image").to_ascii_uppercase().as_str() {
        "FULL" => f.add(Severity::Ok, "source", "binlog_row_image", "binlog_row_image is FULL".into(), None),
        other => f.add(
            Severity::Blocker,
            "source",
            "binlog_row_image",
            format!(
                "binlog_row_image is {} on the source; Ferry needs every column before and after each change (FULL)",
                if other.is_empty() { "unknown" } else { other }
            ),
            Some("SET GLOBAL binlog_row_image = 'FULL' and put binlog-row-image=FULL in my.cnf"),
        ),
    }
    match var("binlog_row_metadata").to_ascii_uppercase().as_str() {
        "FULL" => f.add(Severity::Ok, "source", "binlog_row_metadata", "binlog_row_metadata is FULL".into(), None),
        other => f.add(
            Severity::Warning,
            "source",
            "binlog_row_metadata",
            format!(
                "binlog_row_metadata is {} on the source: row events carry no column names, so a schema change during change capture is only found by its column count",
                if other.is_empty() { "unset" } else { other }
            ),
            Some("SET GLOBAL binlog_row_metadata = 'FULL' and put binlog-row-metadata=FULL in my.cnf"),
        ),
    }
    if var("server_id").parse::<u64>().unwrap_or(0) == 0 {
        f.add(
            Severity::Blocker,
            "source",
            "server_id",
            "server_id is 0 on the source: a server with id 0 refuses replication clients".into(),
            Some("set server-id to a unique non-zero number in my.cnf and restart"),
        );
    } else {
        f.add(
            Severity::Ok,
            "source",
            "server_id",
            format!("server_id is {}", var("server_id")),
            None,
        );
    }
    if mariadb {
        f.add(
            Severity::Info,
            "source",
            "gtid",
            format!(
                "MariaDB GTIDs: current position {}; Ferry resumes by GTID",
                if var("gtid_binlog_pos").is_empty() {
                    "(none yet)"
                } else {
                    var("gtid_binlog_pos")
                }
            ),
            None,
        );
    } else {
        f.add(
            Severity::Info,
            "source",
            "gtid",
            format!(
                "gtid_mode is {}; Ferry records {}",
                var("gtid_mode"),
                if on(var("gtid_mode")) {
                    "GTID sets"
                } else {
                    "binlog file and position"
                }
            ),
            None,
        );
    }
    let retention_s = var("binlog_expire_logs_seconds")
        .parse::<u64>()
        .unwrap_or(0)
        .max(var("expire_logs_days").parse::<f64>().map(|d| (d * 86_400.0) as u64).unwrap_or(0));
    if retention_s > 0 && retention_s < 86_400 {
        f.add(
            Severity::Warning,
            "source",
            "binlog_retention",
            format!(
                "binary logs are purged after {:.1} h: a change-capture stop longer than that loses the stream",
                retention_s as f64 / 3600.0
            ),
            Some("keep binlogs for at least a day during the migration (binlog_expire_logs_seconds = 86400 or more)"),
        );
    }
    let sql_mode = var("sql_mode").to_ascii_uppercase();
    if !sql_mode.contains("STRICT_TRANS_TABLES") && !sql_mode.contains("STRICT_ALL_TABLES") {
        f.add(
            Severity::Warning,
            "source",
            "sql_mode",
            format!(
                "sql_mode ({}) is not strict: the source may hold truncated values, '' in ENUM columns and zero dates",
                if sql_mode.is_empty() { "empty" } else { &sql_mode }
            ),
            Some("review the zero-date policy (--zero-dates) below; ENUM '' values are refused at load time"),
        );
    }

    // Privileges, from the grants and by trying.
    const GRANTS: &str = "reading the user's grants";
    let grants: Vec<String> = src.within(GRANTS, query(c, GRANTS, "SHOW GRANTS FOR CURRENT_USER()")).await?;
    let g = Grants::parse(&grants);
    let select = g.database(req.source.database(), "SELECT");
    // Per flavour and version (crate::flavor): the load's and the stream's are blockers, the
    // cutover's a warning (needed only then).
    let needs = server.needed_privileges();
    let held = |n: &Need| n.any_of.iter().any(|p| g.global(p));
    let mut missing = Vec::new();
    if !select {
        missing.push("SELECT");
    }
    missing.extend(needs.iter().filter(|n| n.when != Use::Cutover && !held(n)).map(|n| n.any_of[0]));
    // Reading the binlog position is what REPLICATION CLIENT / BINLOG MONITOR allows.
    let status_sql = server.binlog_status_sql();
    let repl_client = needs.iter().filter(|n| n.why.contains(status_sql)).all(held);
    let master_status = src
        .within(&format!("reading the binlog position ({status_sql})"), async {
            Ok(c.query_drop(status_sql).await)
        })
        .await?;
    if let Err(e) = master_status {
        if repl_client {
            f.add(Severity::Blocker, "source", "privileges", format!("{status_sql} failed: {e}"), None);
        }
    }
    let cutover: Vec<&Need> = needs.iter().filter(|n| n.when == Use::Cutover && !held(n)).collect();
    if !cutover.is_empty() {
        let grant = cutover.iter().map(|n| n.any_of[0]).collect::<Vec<_>>().join(", ");
        f.add(
            Severity::Warning,
            "source",
            "cutover_privileges",
            format!(
                "{user} lacks what ferry cutover needs on {server}: {}",
                cutover
                    .iter()
                    .map(|n| format!("{} ({})", n.any_of.join(" or "), n.why))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Some(&format!("GRANT {grant} ON *.* TO {} before the cutover", quote_account(&user))),
        );
    }
    if missing.is_empty() {
        let names = needs
            .iter()
            .filter(|n| n.when != Use::Cutover)
            .map(|n| n.any_of[0])
            .collect::<Vec<_>>();
        f.add(
            Severity::Ok,
            "source",
            "privileges",
            format!("{user} has SELECT, {}", names.join(", ")),
            None,
        );
    } else {
        let fix = format!("GRANT {} ON *.* TO {user_q}", missing.join(", "), user_q = quote_account(&user));
        f.add(
            Severity::Blocker,
            "source",
            "privileges",
            format!(
                "{user} lacks {} on the source (needed to read the tables and the binary log)",
                missing.join(", ")
            ),
            Some(&fix),
        );
    }

    // Tables, columns, keys.
    let db = req.source.database().to_string();
    type TableRow = (String, Option<String>, Option<u64>, Option<u64>, Option<u64>);
    const TABLES: &str = "listing the source's tables";
    let tables: Vec<TableRow> = src
        .within_catalog(TABLES, async {
            c.exec(
                "SELECT TABLE_NAME, ENGINE, TABLE_ROWS, COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0), AUTO_INCREMENT
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db.clone(),),
            )
            .await
            .map_err(|e| MyError::query(TABLES, e))
        })
        .await?;
    type ColRow = (
        String,
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
        Option<String>,
        String,
        String,
    );
    const COLUMNS: &str = "reading the source's columns";
    let col_rows: Vec<ColRow> = src
        .within_catalog(COLUMNS, async {
            c.exec(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION,
                        CHARACTER_MAXIMUM_LENGTH, CHARACTER_SET_NAME, COLLATION_NAME, IS_NULLABLE, EXTRA
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (db.clone(),),
            )
            .await
            .map_err(|e| MyError::query(COLUMNS, e))
        })
        .await?;
    const GENERATED: &str = "reading generated columns";
    let generation: HashMap<(String, String), String> = src
        .within_catalog(GENERATED, async {
            c.exec::<(String, String, Option<String>), _, _>(
                "SELECT TABLE_NAME, COLUMN_NAME, GENERATION_EXPRESSION FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = ? AND GENERATION_EXPRESSION IS NOT NULL AND GENERATION_EXPRESSION <> ''",
                (db.clone(),),
            )
            .await
            .map_err(|e| MyError::query(GENERATED, e))
        })
        .await?
        .into_iter()
        .filter_map(|(t, col, e)| Some(((t, col), e?)))
        .collect();
    // MariaDB's JSON: LONGTEXT with CHECK (json_valid(`column`)).
    let json_checks: Vec<(String, String)> = src
        .within_catalog("reading check constraints", async {
            Ok(c.exec(
                "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ?",
                (db.clone(),),
            )
            .await
            .unwrap_or_default())
        })
        .await?;
    let is_json = |table: &str, column: &str| {
        json_checks.iter().any(|(t, clause)| {
            t == table && clause.to_ascii_lowercase().replace(' ', "") == format!("json_valid(`{}`)", column.to_ascii_lowercase())
        })
    };
    const INDEXES: &str = "reading the source's indexes";
    let keys: Vec<(String, String, u8, String, u64)> = src
        .within_catalog(INDEXES, async {
            c.exec(
                "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SEQ_IN_INDEX FROM information_schema.STATISTICS
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
                (db.clone(),),
            )
            .await
            .map_err(|e| MyError::query(INDEXES, e))
        })
        .await?;
    let mut unique: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (t, idx, non_unique, col, _) in &keys {
        if *non_unique == 0 {
            unique.entry((t.clone(), idx.clone())).or_default().push(col.clone());
        }
    }

    let mut planned = Vec::new();
    for (name, engine, rows, bytes, auto_inc) in tables {
        if !req.filter.matches(&ferry_core::TableName::new(&db, &name)) {
            continue;
        }
        let engine = engine.unwrap_or_default();
        let mut columns = Vec::new();
        let mut collations = HashMap::new();
        for r in col_rows.iter().filter(|r| r.0 == name) {
            let sc = SourceColumn {
                name: r.1.clone(),
                data_type: r.2.to_ascii_lowercase(),
                column_type: r.3.to_ascii_lowercase(),
                precision: r.4,
                scale: r.5,
                datetime_precision: r.6,
                char_length: r.7,
                charset: r.8.clone(),
                collation: r.9.clone(),
                nullable: r.10 == "YES",
                extra: r.11.to_ascii_lowercase(),
                generation_expression: generation.get(&(name.clone(), r.1.clone())).cloned(),
                json_check: is_json(&name, &r.1),
                auto_increment_next: auto_inc,
            };
            if let Some(coll) = &sc.collation {
                collations.insert(sc.name.clone(), coll.clone());
            }
            let m = map_column(&name, &sc, req.map);
            match m.attention {
                Attention::Unsupported => f.add(
                    Severity::Blocker,
                    "source",
                    "types",
                    format!("{name}.{}: {}", sc.name, m.note.clone().unwrap_or_default()),
                    Some("exclude the table with --exclude, or change the column"),
                ),
                Attention::Decision => f.add(
                    Severity::Warning,
                    "source",
                    "types",
                    format!(
                        "{name}.{} {} -> {}: {}",
                        sc.name,
                        m.source,
                        m.target,
                        m.note.clone().unwrap_or_default()
                    ),
                    None,
                ),
                _ => {}
            }
            columns.push((sc.name, m));
        }
        let primary_key = unique.get(&(name.clone(), "PRIMARY".to_string())).cloned().unwrap_or_default();
        if !engine.eq_ignore_ascii_case("InnoDB") {
            f.add(
                Severity::Warning,
                "source",
                "engine",
                format!("{name} uses {engine}, which has no transactions: its copy is not part of the consistent snapshot"),
                Some("convert it (ALTER TABLE ... ENGINE=InnoDB), or stop writes to it during the full load"),
            );
        }
        if primary_key.is_empty() {
            f.add(
                Severity::Warning,
                "source",
                "primary_key",
                format!("{name} has no primary key: updates and deletes are matched on every column (slower; identical duplicate rows are told apart only by count)"),
                Some("add a primary key before migrating if you can"),
            );
        }
        for ((t, idx), cols) in unique.iter().filter(|((t, _), _)| *t == name) {
            let ci: Vec<String> = cols
                .iter()
                .filter_map(|col| collations.get(col).filter(|c| c.ends_with("_ci")).map(|c| format!("{col} ({c})")))
                .collect();
            if !ci.is_empty() {
                f.add(
                    Severity::Warning,
                    "source",
                    "case_insensitive_key",
                    format!(
                        "unique key {idx} on {t} compares {} case-insensitively: MySQL refuses 'A' next to 'a', PostgreSQL will not after the move",
                        ci.join(", ")
                    ),
                    Some("keep the rule with a unique index on lower(column) on the target, or the citext type"),
                );
            }
        }
        planned.push(MyTable {
            name,
            engine,
            estimated_rows: rows.map(|r| r as i64).unwrap_or(-1),
            bytes: bytes.map(|b| b as i64).unwrap_or(0),
            primary_key,
            auto_increment: auto_inc,
            columns,
        });
    }
    if planned.is_empty() {
        f.add(
            Severity::Blocker,
            "source",
            "tables",
            format!("no table to migrate in database {db}"),
            Some("check the database name in the URL and the --include/--exclude patterns"),
        );
    }
    // Indexes, views, triggers, routines and events (`schema.rs`): each planned or listed.
    let raw = crate::schema::read(src, c, &db, mariadb).await?;
    let columns: Vec<crate::schema::TableColumns<'_>> = planned.iter().map(|t| (t.name.as_str(), t.columns.as_slice())).collect();
    let objects = crate::schema::plan(
        raw,
        &columns,
        &db,
        req.target_schema,
        |view| req.filter.matches(&ferry_core::TableName::new(&db, view)),
        hidden_objects(&g, &db, &user),
    );
    f.0.extend(objects.findings());
    f.add(
        Severity::Info,
        "source",
        "rollback",
        "cutover from MySQL/MariaDB is a gate without a proxy (writes stopped, position reached, sequences set, then a signal); \
         after it the target's writes stream back to the source, and ferry rollback --source ... switches back without losing one"
            .into(),
        None,
    );
    let plan = MyPlan {
        tables: planned,
        source_objects: vec![
            "nothing: Ferry reads the tables in one consistent snapshot and the binary log as a replication client (no table, trigger or setting is changed)".into(),
            "at cutover only (ferry cutover): SET GLOBAL read_only = ON (and super_read_only on MySQL), sessions of the migrated database still in a transaction after --grace are killed; ferry rollback makes the source writable again".into(),
            format!(
                "with reverse replication (rollback to the source): table {state} (created at cutover: where the reverse stream records its position, in the transaction of each change it applies to the source; dropped when the migration completes), and the reverse stream's writes to the migrated tables; at rollback, AUTO_INCREMENT of the migrated tables set past every id PostgreSQL handed out",
                state = reverse_position_table(DEFAULT_STATE_DB)
            ),
        ],
        target_objects: vec![
            format!(
                "schema ferry (Ferry's state) and, in schema {} (created if missing), one table per source table with the types above; an enum type per ENUM column",
                req.target_schema
            ),
            "primary keys, unique keys, indexes and foreign keys after the data (FULLTEXT as GIN text-search indexes, prefix keys as expression indexes); identities restarted at each AUTO_INCREMENT".into(),
            "translated views after the indexes, in dependency order; triggers, routines, events and views that are not portable are listed below to port by hand".into(),
        ],
        zero_dates: req.map.zero_dates,
        schema: objects,
    };
    Ok((info, plan))
}

/// What Ferry's user cannot see, with the grant that shows it: the server hides triggers of
/// tables it holds no TRIGGER privilege on, routines it was not granted, and view definitions
/// without SHOW VIEW.
fn hidden_objects(g: &Grants, db: &str, user: &str) -> Vec<String> {
    let account = quote_account(user);
    let db_q = format!("`{}`", db.replace('`', "``"));
    let mut out = Vec::new();
    if !g.database(db, "TRIGGER") {
        out.push(format!(
            "{user} lacks the TRIGGER privilege on {db}: the server hides triggers from it, so triggers may exist that this check cannot list \
             (fix: GRANT TRIGGER ON {db_q}.* TO {account}, or list them as an administrator: SHOW TRIGGERS FROM {db_q})"
        ));
    }
    if !(g.global("SELECT") || g.global("SHOW_ROUTINE") || g.table("mysql", "proc", "SELECT")) {
        out.push(format!(
            "{user} can see only the stored routines it was granted: others may exist that this check cannot list \
             (fix: GRANT SELECT ON mysql.proc TO {account} on MariaDB, GRANT SHOW_ROUTINE ON *.* TO {account} on MySQL 8)"
        ));
    }
    if !g.database(db, "SHOW VIEW") {
        out.push(format!(
            "{user} lacks SHOW VIEW on {db}: view definitions are hidden from it, so views cannot be translated \
             (fix: GRANT SHOW VIEW ON {db_q}.* TO {account})"
        ));
    }
    out
}

/// `'user'@'host'` from CURRENT_USER()'s `user@host`.
pub(crate) fn quote_account(user: &str) -> String {
    match user.rsplit_once('@') {
        Some((u, h)) => format!("'{}'@'{}'", u.replace('\'', "''"), h.replace('\'', "''")),
        None => format!("'{}'", user.replace('\'', "''")),
    }
}

/// What an account may do, read from its `SHOW GRANTS` lines: privileges on every object
/// (`*.*`), on databases (`` `db`.* ``, whose name is a pattern: `_` and `%` are wildcards, `\`
/// escapes them) and on tables. `ALL [PRIVILEGES]` holds every privilege of its level.
///
/// Privileges are whole names (`DELETE` is not `DELETE HISTORY`, `REPLICATION SLAVE` not
/// `REPLICATION SLAVE ADMIN`). Not counted: column privileges (they do not cover a whole row),
/// routine and proxy grants, and roles (`GRANT role TO user`: a role's privileges count only
/// once the role is set, which Ferry's sessions do not do).
#[derive(Debug, Default, Clone)]
pub(crate) struct Grants(Vec<Grant>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// Upper case, single spaces; `ALL` for `ALL [PRIVILEGES]`.
    privileges: Vec<String>,
    on: Level,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Global,
    /// A database name pattern, unquoted.
    Database(String),
    /// Database and table, unquoted.
    Table(String, String),
}

impl Grants {
    /// The grants of `SHOW GRANTS` lines; a line that is no grant of privileges on an object
    /// (a role grant, a proxy grant) is left out.
    pub(crate) fn parse(lines: &[String]) -> Grants {
        Grants(lines.iter().filter_map(|l| parse_grant(l)).collect())
    }

    fn holds(g: &Grant, privilege: &str) -> bool {
        g.privileges.iter().any(|p| p == "ALL" || p.eq_ignore_ascii_case(privilege))
    }

    /// Whether `privilege` is held on every object (`ON *.*`).
    pub(crate) fn global(&self, privilege: &str) -> bool {
        self.0.iter().any(|g| g.on == Level::Global && Self::holds(g, privilege))
    }

    /// Whether `privilege` is held on every table of database `db`: on `*.*` or on a database
    /// pattern that matches `db`.
    pub(crate) fn database(&self, db: &str, privilege: &str) -> bool {
        self.0.iter().any(|g| {
            Self::holds(g, privilege)
                && match &g.on {
                    Level::Global => true,
                    Level::Database(pattern) => like(pattern, db),
                    Level::Table(..) => false,
                }
        })
    }

    /// Whether `privilege` is held on table `db`.`table`, at any level.
    pub(crate) fn table(&self, db: &str, table: &str, privilege: &str) -> bool {
        self.database(db, privilege)
            || self
                .0
                .iter()
                .any(|g| matches!(&g.on, Level::Table(d, t) if d == db && t == table) && Self::holds(g, privilege))
    }
}

/// One `GRANT <privileges> ON <object> TO ...` line; None for any other. Identifiers may be
/// quoted with backticks, or double quotes under `sql_mode=ANSI_QUOTES`.
fn parse_grant(line: &str) -> Option<Grant> {
    let line = line.trim();
    if !line.get(..6)?.eq_ignore_ascii_case("GRANT ") {
        return None;
    }
    let rest = &line[6..];
    // The privilege list ends at ` ON ` outside quotes and parentheses (column lists); a ` TO `
    // first is a role grant.
    let mut privileges = Vec::new();
    let mut start = 0;
    let mut object = None;
    let mut depth = 0u32;
    for (i, ch) in unquoted(rest) {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                privileges.push(&rest[start..i]);
                start = i + 1;
            }
            ' ' if depth == 0 && word_at(rest, i, " ON ") => {
                privileges.push(&rest[start..i]);
                object = Some(&rest[i + 4..]);
                break;
            }
            ' ' if depth == 0 && word_at(rest, i, " TO ") => return None,
            _ => {}
        }
    }
    let object = object?.trim_start();
    // `ON TABLE db.t` is a table; `ON FUNCTION`, `ON PROCEDURE`, `ON PACKAGE` are routines.
    let (first, after) = object.split_once(' ').unwrap_or((object, ""));
    let object = match first.to_ascii_uppercase().as_str() {
        "TABLE" => after.trim_start(),
        "FUNCTION" | "PROCEDURE" | "PACKAGE" => return None,
        _ => object,
    };
    // The object ends at ` TO `; it is `db`.`table`, `db`.* or *.* (split at the dot).
    let end = unquoted(object).find(|&(i, ch)| ch == ' ' && word_at(object, i, " TO "))?.0;
    let object = &object[..end];
    let dot = unquoted(object).find(|&(_, ch)| ch == '.')?.0;
    let on = match (&object[..dot], &object[dot + 1..]) {
        ("*", "*") => Level::Global,
        (db, "*") => Level::Database(unquote(db)),
        (db, t) => Level::Table(unquote(db), unquote(t)),
    };
    let privileges = privileges
        .into_iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase())
        .filter(|p| !p.is_empty() && !p.contains('('))
        .map(|p| if p == "ALL PRIVILEGES" { "ALL".to_string() } else { p })
        .collect();
    Some(Grant { privileges, on })
}

/// The characters of `s` (with their byte offsets) that stand outside quotes (`` ` ``, `'`,
/// `"`), quotes left out.
fn unquoted(s: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote = None;
    s.char_indices().filter(move |&(_, ch)| match quote {
        Some(q) => {
            if ch == q {
                quote = None;
            }
            false
        }
        None if matches!(ch, '`' | '\'' | '"') => {
            quote = Some(ch);
            false
        }
        None => true,
    })
}

/// Whether `s` holds the keyword `w` (with its spaces, any case) at byte `i`.
fn word_at(s: &str, i: usize, w: &str) -> bool {
    s.get(i..i + w.len()).is_some_and(|x| x.eq_ignore_ascii_case(w))
}

/// An identifier without its quotes (a doubled quote inside is one).
fn unquote(ident: &str) -> String {
    for q in ['`', '"'] {
        if let Some(inner) = ident.strip_prefix(q).and_then(|i| i.strip_suffix(q)) {
            return inner.replace(&format!("{q}{q}"), &q.to_string());
        }
    }
    ident.to_string()
}

/// Whether `name` matches the database-grant pattern `pattern` (`_` one character, `%` any
/// run, `\` makes the next one literal), as the server matches it.
fn like(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('%', rest)) => (0..=n.len()).any(|k| go(rest, &n[k..])),
            Some(('_', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('\\', rest)) if !rest.is_empty() => n.first() == Some(&rest[0]) && go(&rest[1..], &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

async fn target_checks(
    req: &MyCheckRequest,
    t: &tokio_postgres::Client,
    plan: Option<&MyPlan>,
    f: &mut Findings,
) -> Result<ferry_postgres::introspect::ServerInfo, ferry_postgres::PgError> {
    let info = ferry_postgres::introspect::server_info(t).await?;
    f.add(Severity::Ok, "target", "version", format!("PostgreSQL {}", info.version), None);
    if let Some(plan) = plan {
        let names: Vec<String> = plan.tables.iter().map(|t| t.name.clone()).collect();
        let rows = t
            .query(
                "SELECT c.relname, c.reltuples::int8, EXISTS (SELECT 1 FROM pg_stat_user_tables s WHERE s.relid = c.oid AND s.n_live_tup > 0)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $2 AND c.relkind IN ('r', 'p') AND c.relname = ANY($1)",
                &[&names, &req.target_schema],
            )
            .await
            .map_err(|e| ferry_postgres::PgError::query("looking for existing tables on the target", e))?;
        for r in rows {
            let name: String = r.get(0);
            let has_rows: bool = r.get(2);
            let exists_msg = format!(
                "{}.{name} already exists on the target{}",
                req.target_schema,
                if has_rows { " and holds rows" } else { "" }
            );
            if has_rows && !req.overwrite {
                f.add(
                    Severity::Blocker,
                    "target",
                    "existing_table",
                    exists_msg,
                    Some("drop it, use another target database, or pass --overwrite to replace its rows"),
                );
            } else {
                f.add(Severity::Warning, "target", "existing_table", exists_msg, None);
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(lines: &[&str]) -> Grants {
        Grants::parse(&lines.iter().map(|l| l.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn grants_are_read_by_level_and_whole_name() {
        let g = grants(&[
            "GRANT REPLICATION SLAVE ADMIN, DELETE HISTORY, READ_ONLY ADMIN ON *.* TO `ferry`@`%` IDENTIFIED BY PASSWORD '*ABC ON x.y'",
            "GRANT SELECT, INSERT, UPDATE (`a`, `b`) ON `shop`.* TO `ferry`@`%`",
            "GRANT ALL PRIVILEGES ON `ferry`.* TO `ferry`@`%` WITH GRANT OPTION",
            "GRANT DELETE ON `shop`.`or``ders` TO `ferry`@`%`",
            "GRANT INSERT ON TABLE `other`.`t` TO 'ferry'@'%'",
            "GRANT EXECUTE ON PROCEDURE `shop`.`p` TO `ferry`@`%`",
            "GRANT `app_role` TO `ferry`@`%`",
            "GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION",
        ]);
        assert!(g.global("READ_ONLY ADMIN") && g.global("read_only admin"));
        assert!(!g.global("REPLICATION SLAVE"), "REPLICATION SLAVE ADMIN is another privilege");
        assert!(!g.global("DELETE"), "DELETE HISTORY is another privilege");
        assert!(g.database("shop", "SELECT") && g.database("shop", "INSERT"));
        assert!(!g.database("shop", "UPDATE"), "a column privilege covers no whole row");
        assert!(!g.database("shop", "DELETE") && g.table("shop", "or`ders", "DELETE"));
        assert!(!g.table("shop", "orders", "DELETE"));
        assert!(g.database("ferry", "CREATE") && g.table("ferry", "reverse_position", "DELETE"));
        assert!(g.table("other", "t", "INSERT") && !g.database("other", "INSERT"));
        assert!(!g.table("shop", "p", "EXECUTE") && !g.global("PROXY") && !g.global("EXECUTE"));
        assert!(!g.global("SELECT"));
        let root = grants(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` IDENTIFIED VIA unix_socket WITH GRANT OPTION"]);
        assert!(root.global("READ_ONLY ADMIN") && root.table("x", "y", "ALTER"));
        let mysql8 = grants(&["GRANT BACKUP_ADMIN,CONNECTION_ADMIN,XA_RECOVER_ADMIN ON *.* TO `root`@`localhost` WITH GRANT OPTION"]);
        assert!(mysql8.global("CONNECTION_ADMIN") && !mysql8.global("SUPER"));
        assert!(grants(&["GRANT USAGE ON *.* TO `x`@`%`"]).0[0].privileges == ["USAGE"]);
        let ansi = grants(&[r#"GRANT INSERT ON "my db"."t" TO "ferry"@"%""#]);
        assert!(ansi.table("my db", "t", "INSERT"));
    }

    #[test]
    fn database_grants_are_patterns() {
        let g = grants(&[
            "GRANT INSERT ON `shop\\_%`.* TO `ferry`@`%`",
            "GRANT UPDATE ON `a_b`.* TO `ferry`@`%`",
        ]);
        assert!(g.database("shop_eu", "INSERT") && g.database("shop_", "INSERT"));
        assert!(!g.database("shopXeu", "INSERT"), "an escaped _ is literal");
        assert!(g.database("a_b", "UPDATE") && g.database("aXb", "UPDATE") && !g.database("ab", "UPDATE"));
        assert!(like("%", "") && like("a%c", "abbc") && !like("a%c", "abb") && like("\\%", "%") && !like("\\%", "x"));
    }

    #[test]
    fn accounts_are_quoted() {
        assert_eq!(quote_account("ferry@%"), "'ferry'@'%'");
        assert_eq!(quote_account("o'brien@10.0.0.1"), "'o''brien'@'10.0.0.1'");
    }
}
