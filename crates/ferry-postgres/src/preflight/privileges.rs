//! The rights Ferry needs on each side, tested by trying them where that is harmless, and the
//! fix to print for the service a server turns out to be.
//!
//! Every right maps to a step of the migration (see docs/privileges.md for the whole table):
//!
//! | right | side | step |
//! |---|---|---|
//! | replication connection | source; target for rollback | slot, snapshot, change stream |
//! | `SET session_replication_role` | target; source for rollback | apply (triggers and FK checks off) |
//! | `pg_replication_origin_*` | target; source for rollback | exactly-once position, loop prevention |
//! | `ALTER DATABASE ... SET default_transaction_read_only` | source; target for rollback | cutover, rollback |
//! | `pg_signal_backend` | source; target for rollback | ending writers at a cutover without the proxy |
//!
//! The tries run inside a transaction that is rolled back (or, for the session-level origin
//! functions, reset at once): nothing of them remains on either server. Only an
//! `insufficient_privilege` (42501) answer counts as a missing right; another error (a lock
//! timeout, no free replication origin slot) is reported as "could not be tested".

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::finding::{Finding, Severity};
use crate::introspect::ServerInfo;

/// The managed service a server belongs to, recognised by the roles it ships with. The fixes
/// Ferry prints name that service's own roles and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Amazon RDS or Aurora PostgreSQL (`rds_superuser`, `rds_replication`).
    Rds,
    /// Google Cloud SQL (`cloudsqlsuperuser`).
    CloudSql,
    /// Azure Database for PostgreSQL (`azure_pg_admin`).
    Azure,
    /// Supabase (`supabase_admin`).
    Supabase,
    /// Neon (`neon_superuser`).
    Neon,
    /// Anything else: PostgreSQL as the community ships it.
    SelfManaged,
}

impl Service {
    /// The service's name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::Rds => "Amazon RDS/Aurora",
            Service::CloudSql => "Google Cloud SQL",
            Service::Azure => "Azure Database for PostgreSQL",
            Service::Supabase => "Supabase",
            Service::Neon => "Neon",
            Service::SelfManaged => "self-managed PostgreSQL",
        }
    }

    /// The role that stands for "administrator" on the service, if it has one.
    fn admin_role(self) -> Option<&'static str> {
        match self {
            Service::Rds => Some("rds_superuser"),
            Service::CloudSql => Some("cloudsqlsuperuser"),
            Service::Azure => Some("azure_pg_admin"),
            Service::Supabase => Some("supabase_admin"),
            Service::Neon => Some("neon_superuser"),
            Service::SelfManaged => None,
        }
    }
}

/// Recognises the service by the roles it creates in every instance.
pub async fn service(c: &Client) -> Service {
    let found: Vec<String> = c
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname IN
               ('rds_superuser', 'cloudsqlsuperuser', 'azure_pg_admin', 'supabase_admin', 'neon_superuser')",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let has = |r: &str| found.iter().any(|f| f == r);
    if has("rds_superuser") {
        Service::Rds
    } else if has("cloudsqlsuperuser") {
        Service::CloudSql
    } else if has("azure_pg_admin") {
        Service::Azure
    } else if has("supabase_admin") {
        Service::Supabase
    } else if has("neon_superuser") {
        Service::Neon
    } else {
        Service::SelfManaged
    }
}

/// What a try found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tried {
    Allowed,
    /// The server refused for want of a right; its message.
    Refused(String),
    /// Another failure: the right could not be tested.
    Untested(String),
}

/// Runs `sql` in a transaction that is always rolled back.
async fn try_rolled_back(c: &Client, sql: &str) -> Tried {
    if let Err(e) = c.batch_execute("BEGIN READ WRITE; SET LOCAL lock_timeout = '3s'").await {
        return Tried::Untested(e.to_string());
    }
    let r = c.batch_execute(sql).await;
    let _ = c.batch_execute("ROLLBACK").await;
    judge(r)
}

fn judge(r: Result<(), tokio_postgres::Error>) -> Tried {
    match r {
        Ok(()) => Tried::Allowed,
        Err(e) => {
            let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                Tried::Refused(msg)
            } else {
                Tried::Untested(msg)
            }
        }
    }
}

/// Which way a right is needed: for the forward migration, or for the reverse stream after a
/// cutover (rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The migration's source.
    Source,
    /// The migration's target.
    Target,
}

impl Role {
    fn side(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
        }
    }
}

/// Tests, on one side, the rights Ferry's applier needs there (on the target for the forward
/// stream, on the source for the reverse stream after cutover) and the right to switch the
/// database read-only (the source at cutover, the target at rollback). Every missing right is
/// a blocker: each is needed by a step that must not fail half-way.
pub async fn check_side(c: &Client, info: &ServerInfo, side: Role, svc: Service) -> Vec<Finding> {
    let mut out = Vec::new();
    let user = &info.user;
    let why_apply = match side {
        Role::Target => "to apply changes",
        Role::Source => "to stream changes back after a cutover (rollback)",
    };
    let why_read_only = match side {
        Role::Source => "at cutover, to stop writes on the source",
        Role::Target => "at rollback, to stop writes on the target",
    };
    let mut add = |severity, check, message: String, fix: Option<String>| {
        out.push(Finding {
            severity,
            side: side.side(),
            check,
            message,
            fix,
        })
    };

    // Triggers and foreign-key checks off while applying, as PostgreSQL's own apply worker.
    match try_rolled_back(c, "SET LOCAL session_replication_role = replica").await {
        Tried::Allowed => add(
            Severity::Ok,
            "session_replication_role",
            format!("user {user} may set session_replication_role = replica ({why_apply})"),
            None,
        ),
        Tried::Refused(m) => add(
            Severity::Blocker,
            "session_replication_role",
            format!(
                "user {user} may not set session_replication_role = replica ({m}); Ferry needs it {why_apply} without firing triggers and foreign-key checks the source already ran"
            ),
            Some(fix_session_replication_role(svc, info)),
        ),
        Tried::Untested(m) => add(
            Severity::Warning,
            "session_replication_role",
            format!("could not test whether user {user} may set session_replication_role: {m}"),
            None,
        ),
    }

    // Replication origins: the applied position and loop prevention. Creating one is rolled
    // back; the session functions are reset at once.
    let probe = format!("ferry_probe_{}", std::process::id());
    let origin_sql = format!(
        "SELECT pg_replication_origin_create('{probe}');
         SELECT pg_replication_origin_session_setup('{probe}');
         SELECT pg_replication_origin_xact_setup('0/1', now());
         SELECT pg_replication_origin_progress('{probe}', false);
         SELECT pg_replication_origin_session_reset();"
    );
    let tried = try_rolled_back(c, &origin_sql).await;
    // Whatever happened, the session must not stay marked with the probe's origin.
    let _ = c.batch_execute("SELECT pg_replication_origin_session_reset()").await;
    let drop_ok: bool = c
        .query_one("SELECT has_function_privilege('pg_replication_origin_drop(text)', 'EXECUTE')", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(true);
    match tried {
        Tried::Allowed if drop_ok || info.superuser => add(
            Severity::Ok,
            "replication_origins",
            format!("user {user} may create and use replication origins ({why_apply})"),
            None,
        ),
        Tried::Allowed => add(
            Severity::Blocker,
            "replication_origins",
            format!("user {user} may create replication origins but not drop them: `ferry abandon` and `ferry complete` could not clean up"),
            Some(fix_origins(svc, info)),
        ),
        Tried::Refused(m) => add(
            Severity::Blocker,
            "replication_origins",
            format!(
                "user {user} may not use replication origins ({m}); Ferry marks what it applies with one {why_apply}, for its exactly-once position and so that no change loops back"
            ),
            Some(fix_origins(svc, info)),
        ),
        Tried::Untested(m) => add(
            Severity::Warning,
            "replication_origins",
            format!("could not test replication origins for user {user}: {m}"),
            Some("each replication origin in use takes one of max_replication_slots: raise it if every slot is taken".into()),
        ),
    }

    // The read-only switch.
    let sql = format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        ferry_core::ident::quote_ident(&info.database)
    );
    match try_rolled_back(c, &sql).await {
        Tried::Allowed => add(
            Severity::Ok,
            "read_only_switch",
            format!("user {user} may make database {} read-only ({why_read_only})", info.database),
            None,
        ),
        Tried::Refused(m) => add(
            Severity::Blocker,
            "read_only_switch",
            format!(
                "user {user} may not run ALTER DATABASE {} SET default_transaction_read_only ({m}); Ferry needs it {why_read_only}",
                info.database
            ),
            Some(fix_alter_database(svc, info)),
        ),
        Tried::Untested(m) => add(
            Severity::Warning,
            "read_only_switch",
            format!("could not test ALTER DATABASE {} for user {user}: {m}", info.database),
            None,
        ),
    }

    // Ending writers: only a cutover without the proxy needs it.
    let signal: bool = c
        .query_one("SELECT pg_has_role(current_user, 'pg_signal_backend', 'USAGE')", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(false);
    if !signal && !info.superuser {
        add(
            Severity::Warning,
            "signal_backend",
            format!(
                "user {user} is not a member of pg_signal_backend: a cutover without the proxy (--no-proxy) cannot end sessions that keep writing on the {} after its grace period",
                side.side()
            ),
            Some(format!("GRANT pg_signal_backend TO {}; (or cut over through Ferry's proxy)", ident(user))),
        );
    }
    out
}

/// The fix for a refused replication connection, for the service the server belongs to.
pub fn fix_replication(svc: Service, user: &str) -> String {
    let u = ident(user);
    match svc {
        Service::Rds => format!(
            "GRANT rds_replication TO {u}; and set rds.logical_replication = 1 in the instance's parameter group (reboot)"
        ),
        Service::CloudSql => format!(
            "as a cloudsqlsuperuser: ALTER USER {u} WITH REPLICATION; and set the flag cloudsql.logical_decoding = on"
        ),
        Service::Azure => format!(
            "as a member of azure_pg_admin: ALTER ROLE {u} WITH REPLICATION; and set the server parameter wal_level = logical"
        ),
        Service::Supabase => {
            "connect as the postgres role (it has REPLICATION) on the direct connection (port 5432), not through the pooler".into()
        }
        Service::Neon => format!(
            "enable logical replication in the project's settings; roles made in the console (members of neon_superuser) then have REPLICATION (ALTER ROLE {u} REPLICATION as such a role)"
        ),
        Service::SelfManaged => format!(
            "as a superuser: ALTER ROLE {u} REPLICATION; and allow it in pg_hba.conf for this database"
        ),
    }
}

fn fix_session_replication_role(svc: Service, info: &ServerInfo) -> String {
    let u = ident(&info.user);
    match (svc.admin_role(), info.major() >= 15) {
        (Some(admin @ ("rds_superuser" | "cloudsqlsuperuser" | "azure_pg_admin")), _) => format!(
            "GRANT {admin} TO {u}; ({} lets its administrators set session_replication_role)",
            svc.name()
        ),
        (_, true) => format!("as a superuser: GRANT SET ON PARAMETER session_replication_role TO {u};"),
        (_, false) => format!(
            "PostgreSQL {} lets only superusers set session_replication_role: run Ferry as a superuser on this side (PostgreSQL 15 and later: GRANT SET ON PARAMETER session_replication_role TO {u})",
            info.major()
        ),
    }
}

fn fix_origins(svc: Service, info: &ServerInfo) -> String {
    let u = ident(&info.user);
    let grant = format!(
        "GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_drop(text), \
         pg_replication_origin_session_setup(text), pg_replication_origin_session_reset(), \
         pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone), \
         pg_replication_origin_progress(text, boolean) TO {u};"
    );
    if info.major() >= 14 {
        match svc.admin_role() {
            Some(admin) => format!("as {admin} (or the instance's administrator): {grant}"),
            None => format!("as a superuser: {grant}"),
        }
    } else {
        match svc.admin_role() {
            Some(admin) => format!(
                "PostgreSQL {} checks for superuser in the replication origin functions: GRANT {admin} TO {u}; if {} allows it there, or upgrade to 14+ and {grant}",
                info.major(),
                svc.name()
            ),
            None => format!(
                "PostgreSQL {} lets only superusers use replication origins: run Ferry as a superuser on this side, or upgrade to 14+ and {grant}",
                info.major()
            ),
        }
    }
}

fn fix_alter_database(svc: Service, info: &ServerInfo) -> String {
    let (u, db) = (ident(&info.user), ident(&info.database));
    let owner = match svc {
        Service::Rds => " (on RDS the master user owns the databases it creates)",
        _ => "",
    };
    format!("run Ferry as the owner of database {db}{owner}, or make it a member of the owner: GRANT <owner of {db}> TO {u}; or ALTER DATABASE {db} OWNER TO {u};")
}

/// A role or database name as a person would type it: bare when PostgreSQL would read it back
/// unchanged, quoted otherwise.
pub fn ident(name: &str) -> String {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "as",
        "check",
        "column",
        "current_role",
        "current_user",
        "default",
        "do",
        "end",
        "from",
        "grant",
        "group",
        "in",
        "not",
        "null",
        "only",
        "or",
        "order",
        "public",
        "role",
        "select",
        "session_user",
        "table",
        "to",
        "user",
        "where",
        "with",
    ];
    let simple = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !RESERVED.contains(&name);
    if simple {
        name.to_string()
    } else {
        ferry_core::ident::quote_ident(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: i32, user: &str) -> ServerInfo {
        ServerInfo {
            version_num: major * 10000,
            version: format!("{major}.0"),
            user: user.into(),
            superuser: false,
            replication: false,
            database: "app db".into(),
        }
    }

    #[test]
    fn fixes_name_the_services_roles_and_quote_names() {
        assert!(fix_replication(Service::Rds, "ferry").contains("GRANT rds_replication TO ferry"));
        assert!(fix_replication(Service::SelfManaged, "Ferry User").contains("ALTER ROLE \"Ferry User\" REPLICATION"));
        assert!(fix_session_replication_role(Service::SelfManaged, &info(15, "f"))
            .contains("GRANT SET ON PARAMETER session_replication_role TO f"));
        assert!(fix_session_replication_role(Service::SelfManaged, &info(14, "f")).contains("only superusers"));
        assert!(fix_session_replication_role(Service::CloudSql, &info(14, "f")).contains("GRANT cloudsqlsuperuser TO f"));
        assert!(fix_origins(Service::SelfManaged, &info(16, "f")).contains("pg_replication_origin_session_setup(text)"));
        assert!(fix_origins(Service::SelfManaged, &info(13, "f")).contains("only superusers"));
        assert!(fix_alter_database(Service::SelfManaged, &info(15, "f")).contains("ALTER DATABASE \"app db\" OWNER TO f"));
    }
}
