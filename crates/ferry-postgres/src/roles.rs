//! Roles: which roles the migrated schema refers to (object owners, grantees and grantors of
//! ACL entries including column privileges, default privileges, row-level security policies,
//! user mappings), whether the target has them, renaming them through a map, and creating the
//! missing ones without passwords (`--roles create`).
//!
//! Owners and privileges themselves travel in pg_dump's output (see [`crate::schema`]), with
//! role names rewritten by the map; this module decides whether that can work before anything
//! is written, and what Ferry's target user must be allowed to do for it. docs/roles.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferry_core::ident::{quote_ident, quote_literal};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::PgError;
use crate::finding::{Finding, Severity};

/// What happens to a role the schema needs and the target lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleMode {
    /// Stop before anything is written, naming the roles and the CREATE ROLE to run.
    #[default]
    Require,
    /// Create them on the target, without passwords, with their safe attributes and the
    /// memberships among them.
    Create,
}

/// Source role name to target role name, from `--roles-map FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoleMap(pub BTreeMap<String, String>);

impl RoleMap {
    /// Parses the map file format: one `source_role = target_role` per line; `#` starts a
    /// comment; a name may be written in double quotes (needed for `=`, `#`, leading or trailing
    /// spaces; `""` is a quote inside). Names are taken as written: no case folding.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let mut rest = raw.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            let (from, r) = name(rest).map_err(|e| format!("line {n}: {e}"))?;
            rest = r.trim_start();
            rest = rest
                .strip_prefix('=')
                .ok_or_else(|| format!("line {n}: expected `=` after {from:?} (the format is `source_role = target_role`)"))?
                .trim_start();
            let (to, r) = name(rest).map_err(|e| format!("line {n}: {e}"))?;
            let r = r.trim();
            if !(r.is_empty() || r.starts_with('#')) {
                return Err(format!("line {n}: unexpected {r:?} after the target role"));
            }
            for role in [&from, &to] {
                if role.len() > 63 {
                    return Err(format!("line {n}: role name {role:?} is longer than 63 bytes"));
                }
                if role.eq_ignore_ascii_case("public") {
                    return Err(format!("line {n}: PUBLIC is not a role and cannot be mapped"));
                }
            }
            if let Some(prev) = map.insert(from.clone(), to) {
                return Err(format!("line {n}: {from:?} is mapped twice (also to {prev:?})"));
            }
        }
        Ok(Self(map))
    }

    /// Reads and parses a map file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the role map {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("role map {}: {e}", path.display()))
    }

    /// The target name of a source role.
    pub fn target<'a>(&'a self, source: &'a str) -> &'a str {
        self.0.get(source).map(String::as_str).unwrap_or(source)
    }
}

/// One name of the map file: bare up to `=`, `#` or the end (trimmed), or double-quoted.
fn name(s: &str) -> Result<(String, &str), String> {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, c)| *c) == Some('"') {
                    out.push('"');
                    chars.next();
                } else {
                    if out.is_empty() {
                        return Err("empty role name".into());
                    }
                    return Ok((out, &q[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        return Err("unterminated double quote".into());
    }
    let end = s.find(['=', '#']).unwrap_or(s.len());
    let n = s[..end].trim();
    if n.is_empty() {
        return Err("missing role name".into());
    }
    Ok((n.to_string(), &s[end..]))
}

/// How roles are handled: `--roles` and `--roles-map`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolePolicy {
    /// Create or require.
    pub mode: RoleMode,
    /// Renames.
    pub map: RoleMap,
}

/// One role the schema refers to.
#[derive(Debug, Clone, Serialize)]
pub struct RoleUse {
    /// Name on the source.
    pub source: String,
    /// Name on the target (after the map).
    pub target: String,
    /// Whether the target has it.
    pub exists_on_target: bool,
    /// Objects it owns.
    pub owns: i64,
    /// ACL entries (column privileges included) naming it as grantee.
    pub grantee: i64,
    /// ACL entries it granted on objects it does not own.
    pub grantor: i64,
    /// Policies naming it.
    pub policies: i64,
    /// Default-privilege entries it defines or receives.
    pub default_privileges: i64,
    /// User mappings for it.
    pub user_mappings: i64,
    /// The CREATE ROLE that `--roles create` runs for it (no password), when missing.
    pub create_sql: Option<String>,
    /// Source attributes not carried by `--roles create` (SUPERUSER, REPLICATION, ...).
    pub not_carried: Vec<String>,
}

/// A membership among the referenced roles, on the source.
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    /// The role granted (target name).
    pub role: String,
    /// The member (target name).
    pub member: String,
    /// GRANT statement recreating it.
    pub sql: String,
}

/// What check shows about roles and privileges.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolesPlan {
    /// `--roles`.
    pub mode: RoleMode,
    /// Roles referenced by the schema.
    pub roles: Vec<RoleUse>,
    /// Memberships among them that `--roles create` recreates for roles it creates.
    pub memberships: Vec<Membership>,
    /// SECURITY DEFINER functions: name, owner on the target, who may execute.
    pub security_definer: Vec<String>,
    /// Tables with row-level security: name, ENABLE/FORCE, policies.
    pub row_security: Vec<String>,
    /// Memberships Ferry's target user lacks and needs (GRANT statements), when not superuser.
    pub ferry_needs: Vec<String>,
    /// Statements `ferry migrate` runs first on the target (in the schema's transaction):
    /// CREATE ROLE, memberships, Ferry's own membership in the roles it creates.
    #[serde(skip)]
    pub setup_sql: Vec<String>,
    /// Target names of every referenced role (existing or to be created).
    #[serde(skip)]
    pub target_names: BTreeSet<String>,
}

/// The query listing, per role oid, how the schema uses it. `$1`: OIDs of tables left out;
/// `$2`: Ferry's state schema (never migrated).
const USES: &str = r"
WITH nsp AS (
  SELECT n.oid, n.nspowner, n.nspacl FROM pg_namespace n
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)' AND n.nspname <> $2
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')),
ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e'),
rel AS (
  SELECT c.oid, c.relowner AS owner, c.relacl AS acl FROM pg_class c JOIN nsp ON nsp.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT (c.oid = ANY($1))
    AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_class'::regclass AND ext.objid = c.oid)),
obj AS (
  SELECT owner, acl FROM rel
  UNION ALL SELECT nspowner, nspacl FROM nsp
  UNION ALL SELECT p.proowner, p.proacl FROM pg_proc p JOIN nsp ON nsp.oid = p.pronamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_proc'::regclass AND ext.objid = p.oid)
  UNION ALL SELECT t.typowner, t.typacl FROM pg_type t JOIN nsp ON nsp.oid = t.typnamespace
    WHERE (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
      AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_type'::regclass AND ext.objid = t.oid)
  UNION ALL SELECT o.collowner, NULL FROM pg_collation o JOIN nsp ON nsp.oid = o.collnamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_collation'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.conowner, NULL FROM pg_conversion o JOIN nsp ON nsp.oid = o.connamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_conversion'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.oprowner, NULL FROM pg_operator o JOIN nsp ON nsp.oid = o.oprnamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_operator'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.opcowner, NULL FROM pg_opclass o JOIN nsp ON nsp.oid = o.opcnamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_opclass'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.opfowner, NULL FROM pg_opfamily o JOIN nsp ON nsp.oid = o.opfnamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_opfamily'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.dictowner, NULL FROM pg_ts_dict o JOIN nsp ON nsp.oid = o.dictnamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_ts_dict'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.cfgowner, NULL FROM pg_ts_config o JOIN nsp ON nsp.oid = o.cfgnamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_ts_config'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.stxowner, NULL FROM pg_statistic_ext o JOIN rel ON rel.oid = o.stxrelid
  UNION ALL SELECT o.fdwowner, o.fdwacl FROM pg_foreign_data_wrapper o
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_foreign_data_wrapper'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.srvowner, o.srvacl FROM pg_foreign_server o
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_foreign_server'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.evtowner, NULL FROM pg_event_trigger o
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_event_trigger'::regclass AND ext.objid = o.oid)
  UNION ALL SELECT o.lanowner, o.lanacl FROM pg_language o WHERE o.oid >= 16384
    AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_language'::regclass AND ext.objid = o.oid)),
uses AS (
  SELECT owner AS role, 'owns' AS how FROM obj
  UNION ALL SELECT a.grantee, 'grantee' FROM obj, aclexplode(obj.acl) a WHERE a.grantee <> obj.owner
  UNION ALL SELECT a.grantor, 'grantor' FROM obj, aclexplode(obj.acl) a WHERE a.grantor <> obj.owner
  UNION ALL SELECT a.grantee, 'grantee' FROM pg_attribute att JOIN rel ON rel.oid = att.attrelid, aclexplode(att.attacl) a
    WHERE a.grantee <> rel.owner
  UNION ALL SELECT a.grantor, 'grantor' FROM pg_attribute att JOIN rel ON rel.oid = att.attrelid, aclexplode(att.attacl) a
    WHERE a.grantor <> rel.owner
  UNION ALL SELECT d.defaclrole, 'default_privileges' FROM pg_default_acl d
    WHERE d.defaclnamespace = 0 OR d.defaclnamespace IN (SELECT oid FROM nsp)
  UNION ALL SELECT a.grantee, 'default_privileges' FROM pg_default_acl d, aclexplode(d.defaclacl) a
    WHERE (d.defaclnamespace = 0 OR d.defaclnamespace IN (SELECT oid FROM nsp)) AND a.grantee <> d.defaclrole
  UNION ALL SELECT r.role, 'policies' FROM pg_policy p JOIN rel ON rel.oid = p.polrelid, unnest(p.polroles) r(role)
  UNION ALL SELECT u.umuser, 'user_mappings' FROM pg_user_mappings u)
SELECT r.rolname::text, u.how, count(*)::int8,
       r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls,
       r.rolconnlimit,
       CASE WHEN r.rolvaliduntil IS NULL THEN NULL
            WHEN isfinite(r.rolvaliduntil) THEN to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'
            ELSE r.rolvaliduntil::text END
FROM uses u JOIN pg_roles r ON r.oid = u.role
GROUP BY 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12
ORDER BY 1, 2";

#[derive(Debug, Clone, Default)]
struct Attrs {
    superuser: bool,
    inherit: bool,
    createrole: bool,
    createdb: bool,
    login: bool,
    replication: bool,
    bypassrls: bool,
    connlimit: i32,
    valid_until: Option<String>,
}

/// Facts about Ferry's user on the target.
#[derive(Debug, Clone)]
struct TargetUser {
    name: String,
    superuser: bool,
    createrole: bool,
    bypassrls: bool,
    major: i32,
}

/// Inspects the roles the migrated schema refers to (tables in `excluded` left out) and what the
/// target has; returns the plan and check's findings. `target` is None when it was unreachable.
pub async fn inspect(
    source: &Client,
    target: Option<&Client>,
    policy: &RolePolicy,
    excluded: &[u32],
    state_schema: &str,
) -> Result<(RolesPlan, Vec<Finding>), PgError> {
    let mut findings = Vec::new();
    let mut add = |severity, check: &'static str, message: String, fix: Option<String>| {
        findings.push(Finding {
            severity,
            side: "target",
            check,
            message,
            fix,
        })
    };
    let rows = source
        .query(USES, &[&excluded, &state_schema])
        .await
        .map_err(|e| PgError::query("listing the roles the schema refers to on the source", e))?;
    let mut by_role: BTreeMap<String, (RoleUse, Attrs)> = BTreeMap::new();
    for r in &rows {
        let name: String = r.get(0);
        let how: String = r.get(1);
        let n: i64 = r.get(2);
        let entry = by_role.entry(name.clone()).or_insert_with(|| {
            (
                RoleUse {
                    target: policy.map.target(&name).to_string(),
                    source: name.clone(),
                    exists_on_target: false,
                    owns: 0,
                    grantee: 0,
                    grantor: 0,
                    policies: 0,
                    default_privileges: 0,
                    user_mappings: 0,
                    create_sql: None,
                    not_carried: Vec::new(),
                },
                Attrs {
                    superuser: r.get(3),
                    inherit: r.get(4),
                    createrole: r.get(5),
                    createdb: r.get(6),
                    login: r.get(7),
                    replication: r.get(8),
                    bypassrls: r.get(9),
                    connlimit: r.get(10),
                    valid_until: r.get(11),
                },
            )
        });
        match how.as_str() {
            "owns" => entry.0.owns += n,
            "grantee" => entry.0.grantee += n,
            "grantor" => entry.0.grantor += n,
            "policies" => entry.0.policies += n,
            "default_privileges" => entry.0.default_privileges += n,
            _ => entry.0.user_mappings += n,
        }
    }
    let mut plan = RolesPlan {
        mode: policy.mode,
        ..Default::default()
    };
    for from in policy.map.0.keys() {
        if !by_role.contains_key(from) {
            add(
                Severity::Warning,
                "role_map",
                format!("the role map renames {from:?}, but the migrated schema does not refer to a role of that name on the source"),
                Some("check the spelling (names are case-sensitive, as in pg_roles)".into()),
            );
        }
    }

    // Security-definer functions and row-level security, for the plan.
    let rows = source
        .query(
            "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text,
                    COALESCE((SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END, ', ' ORDER BY 1)
                              FROM aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) a
                              WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> $1
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
             ORDER BY 1",
            &[&state_schema],
        )
        .await
        .map_err(|e| PgError::query("listing SECURITY DEFINER functions on the source", e))?;
    for r in rows {
        let (f, owner, exec): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        plan.security_definer.push(format!(
            "{f} runs as {}; EXECUTE: {}",
            policy.map.target(&owner),
            if exec.is_empty() {
                "owner only".to_string()
            } else {
                map_list(&policy.map, &exec)
            }
        ));
    }
    let rls = source
        .query(
            "SELECT c.oid::regclass::text, c.relforcerowsecurity,
                    (SELECT count(*)::int8 FROM pg_policy p WHERE p.polrelid = c.oid),
                    pg_has_role(c.relowner, 'USAGE')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relrowsecurity AND c.relkind IN ('r', 'p') AND NOT (c.oid = ANY($1))
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> $2
             ORDER BY 1",
            &[&excluded, &state_schema],
        )
        .await
        .map_err(|e| PgError::query("listing tables with row-level security on the source", e))?;
    let src_user = source
        .query_one(
            "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading the source user's attributes", e))?;
    let (src_name, src_super, src_bypass): (String, bool, bool) = (src_user.get(0), src_user.get(1), src_user.get(2));
    let mut filtered_on_source = Vec::new();
    for r in &rls {
        let (t, force, policies, owner): (String, bool, i64, bool) = (r.get(0), r.get(1), r.get(2), r.get(3));
        plan.row_security.push(format!(
            "{t}: ENABLE{}, {policies} polic{}",
            if force { " + FORCE" } else { "" },
            if policies == 1 { "y" } else { "ies" }
        ));
        if !(src_super || src_bypass || (owner && !force)) {
            filtered_on_source.push(t);
        }
    }
    if !filtered_on_source.is_empty() {
        findings.push(Finding {
            severity: Severity::Blocker,
            side: "source",
            check: "row_security",
            message: format!(
                "row-level security would hide rows of {} from user {src_name} (not superuser, no BYPASSRLS{}): the copy and the verification would see only part of the data",
                filtered_on_source.join(", "),
                if filtered_on_source.len() == 1 { ", and not the owner of a table without FORCE" } else { "" }
            ),
            fix: Some(format!("ALTER ROLE {} BYPASSRLS (as a superuser), or run Ferry as a superuser", quote_ident(&src_name))),
        });
    }

    let Some(t) = target else {
        plan.roles = by_role.into_values().map(|(u, _)| u).collect();
        return Ok((plan, findings));
    };
    let tu = t
        .query_one(
            "SELECT current_user::text, rolsuper, rolcreaterole, rolbypassrls, current_setting('server_version_num')::int4 / 10000
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading the target user's attributes", e))?;
    let tu = TargetUser {
        name: tu.get(0),
        superuser: tu.get(1),
        createrole: tu.get(2),
        bypassrls: tu.get(3),
        major: tu.get(4),
    };
    let mut add = |severity, check: &'static str, message: String, fix: Option<String>| {
        findings.push(Finding {
            severity,
            side: "target",
            check,
            message,
            fix,
        })
    };
    let names: Vec<String> = by_role.values().map(|(u, _)| u.target.clone()).collect();
    let existing: BTreeSet<String> = t
        .query("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)", &[&names])
        .await
        .map_err(|e| PgError::query("looking up roles on the target", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut missing = Vec::new();
    let mut reserved = Vec::new();
    let mut created: BTreeSet<String> = BTreeSet::new();
    for (u, a) in by_role.values_mut() {
        u.exists_on_target = existing.contains(&u.target);
        plan.target_names.insert(u.target.clone());
        if u.exists_on_target || created.contains(&u.target) {
            continue;
        }
        if u.target.starts_with("pg_") {
            reserved.push(u.target.clone());
            continue;
        }
        let (sql, not_carried) = create_role_sql(&u.target, a, &tu);
        u.not_carried = not_carried;
        u.create_sql = Some(sql.clone());
        missing.push(u.target.clone());
        if policy.mode == RoleMode::Create {
            plan.setup_sql.push(sql);
            created.insert(u.target.clone());
        }
    }
    if !reserved.is_empty() {
        add(
            Severity::Blocker,
            "roles",
            format!(
                "the schema refers to built-in role(s) {} that the target's PostgreSQL does not have (role names starting with pg_ cannot be created)",
                reserved.join(", ")
            ),
            Some("use a target of the source's major version or newer, or map them to other roles with --roles-map".into()),
        );
    }
    let create_list: Vec<String> = by_role.values().filter_map(|(u, _)| u.create_sql.clone()).collect();
    if missing.is_empty() {
        add(
            Severity::Ok,
            "roles",
            format!(
                "the {} role(s) the schema refers to exist on the target{}",
                by_role.len(),
                if policy.map.0.is_empty() { "" } else { " (after the role map)" }
            ),
            None,
        );
    } else if policy.mode == RoleMode::Require {
        add(
            Severity::Blocker,
            "roles",
            format!(
                "role(s) {} own objects of, or are granted privileges in, the migrated schema but do not exist on the target",
                missing.join(", ")
            ),
            Some(format!(
                "create them on the target first ({}), or rerun with --roles create (no passwords set), or rename them with --roles-map FILE",
                create_list.join(" ")
            )),
        );
    } else if !(tu.superuser || tu.createrole) {
        add(
            Severity::Blocker,
            "roles",
            format!(
                "--roles create: role(s) {} are missing on the target, and user {} may not create roles",
                missing.join(", "),
                tu.name
            ),
            Some(format!(
                "ALTER ROLE {} CREATEROLE (as a superuser), or create them yourself: {}",
                quote_ident(&tu.name),
                create_list.join(" ")
            )),
        );
    } else {
        add(
            Severity::Info,
            "roles",
            format!(
                "--roles create: `ferry migrate` creates role(s) {} on the target without passwords (set one with ALTER ROLE ... PASSWORD for those that log in)",
                missing.join(", ")
            ),
            None,
        );
    }
    for (u, _) in by_role.values() {
        if u.create_sql.is_some() && !u.not_carried.is_empty() {
            add(
                Severity::Warning,
                "roles",
                format!(
                    "source role {} has {}, which {} not given to the role created on the target",
                    u.source,
                    u.not_carried.join(", "),
                    if u.not_carried.len() == 1 { "is" } else { "are" }
                ),
                Some(format!(
                    "if the application needs it, grant it by hand (ALTER ROLE {} ...) as a superuser",
                    quote_ident(&u.target)
                )),
            );
        }
    }

    // Memberships among the referenced roles, recreated where the member is created now.
    let oids_rows = source
        .query(
            "SELECT r.rolname::text, m.rolname::text, am.admin_option,
                    (to_jsonb(am) ->> 'inherit_option')::bool, (to_jsonb(am) ->> 'set_option')::bool
             FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
             WHERE r.rolname = ANY($1) AND m.rolname = ANY($1) ORDER BY 1, 2",
            &[&by_role.keys().cloned().collect::<Vec<_>>()],
        )
        .await
        .map_err(|e| PgError::query("reading memberships among the roles on the source", e))?;
    for r in oids_rows {
        let (role, member): (String, String) = (r.get(0), r.get(1));
        let (role, member) = (policy.map.target(&role).to_string(), policy.map.target(&member).to_string());
        if role == member {
            continue;
        }
        let admin: bool = r.get(2);
        let inherit: Option<bool> = r.get(3);
        let set: Option<bool> = r.get(4);
        let mut opts = Vec::new();
        if admin {
            opts.push("ADMIN TRUE".to_string());
        }
        if tu.major >= 16 {
            if let Some(i) = inherit {
                opts.push(format!("INHERIT {}", if i { "TRUE" } else { "FALSE" }));
            }
            if let Some(s) = set {
                opts.push(format!("SET {}", if s { "TRUE" } else { "FALSE" }));
            }
        }
        let sql = format!(
            "GRANT {} TO {}{};",
            quote_ident(&role),
            quote_ident(&member),
            if opts.is_empty() {
                String::new()
            } else if tu.major >= 16 {
                format!(" WITH {}", opts.join(", "))
            } else {
                " WITH ADMIN OPTION".into()
            }
        );
        if policy.mode == RoleMode::Create && created.contains(&member) {
            plan.setup_sql.push(sql.clone());
        }
        plan.memberships.push(Membership { role, member, sql });
    }

    // Ferry's target user gives objects away (ALTER ... OWNER TO), builds indexes and keys on
    // them, restores triggers and policies, and writes rows into them: it must be a superuser
    // or hold the privileges of every owner (and may SET ROLE to the grantors of grants made
    // by non-owners).
    if !tu.superuser {
        let acting: Vec<String> = by_role
            .values()
            .filter(|(u, _)| u.owns > 0 || u.grantor > 0 || u.default_privileges > 0)
            .map(|(u, _)| u.target.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let set_priv = if tu.major >= 16 { "SET" } else { "MEMBER" };
        let lacking: Vec<String> = t
            .query(
                &format!(
                    "SELECT r.rolname::text FROM pg_roles r WHERE r.rolname = ANY($1)
                     AND NOT (pg_has_role(current_user, r.oid, 'USAGE') AND pg_has_role(current_user, r.oid, '{set_priv}'))
                     ORDER BY 1"
                ),
                &[&acting],
            )
            .await
            .map_err(|e| PgError::query("checking the target user's role memberships", e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        for r in &acting {
            if created.contains(r) {
                plan.setup_sql.push(format!(
                    "GRANT {} TO {}{};",
                    quote_ident(r),
                    quote_ident(&tu.name),
                    if tu.major >= 16 { " WITH INHERIT TRUE, SET TRUE" } else { "" }
                ));
            }
        }
        plan.ferry_needs = lacking
            .iter()
            .map(|r| {
                format!(
                    "GRANT {} TO {}{};",
                    quote_ident(r),
                    quote_ident(&tu.name),
                    if tu.major >= 16 { " WITH INHERIT TRUE, SET TRUE" } else { "" }
                )
            })
            .collect();
        if !lacking.is_empty() {
            add(
                Severity::Blocker,
                "role_membership",
                format!(
                    "user {} is not a superuser and lacks membership in role(s) {}, which own objects (or granted privileges) of the migrated schema: it could not give objects to them, build their indexes or write their rows",
                    tu.name,
                    lacking.join(", ")
                ),
                Some(format!("as a superuser or a role with ADMIN on them: {}", plan.ferry_needs.join(" "))),
            );
        } else if !acting.is_empty() {
            add(
                Severity::Ok,
                "role_membership",
                format!(
                    "user {} may act as the owner role(s) {}{}",
                    tu.name,
                    acting.join(", "),
                    if created.is_empty() {
                        ""
                    } else {
                        " (Ferry grants itself membership in the roles it creates)"
                    }
                ),
                None,
            );
        }
    }

    // Row-level security must not filter Ferry's own writes and reads on the target.
    if !plan.row_security.is_empty() {
        if tu.superuser || tu.bypassrls {
            add(
                Severity::Ok,
                "row_security",
                format!(
                    "{} table(s) use row-level security; user {} bypasses it ({}), so the load, change capture and verification see every row",
                    plan.row_security.len(),
                    tu.name,
                    if tu.superuser { "superuser" } else { "BYPASSRLS" }
                ),
                None,
            );
        } else {
            add(
                Severity::Blocker,
                "row_security",
                format!(
                    "{} table(s) use row-level security and user {} is neither superuser nor BYPASSRLS: policies would filter the changes Ferry applies and the rows verification reads",
                    plan.row_security.len(),
                    tu.name
                ),
                Some(format!("ALTER ROLE {} BYPASSRLS (as a superuser)", quote_ident(&tu.name))),
            );
        }
    }

    // Default privileges of Ferry's own user on the target would open the objects it creates.
    let own_defaults: i64 = t
        .query_one(
            "SELECT count(*)::int8 FROM pg_default_acl WHERE defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading the target user's default privileges", e))?
        .get(0);
    if own_defaults > 0 {
        add(
            Severity::Blocker,
            "default_privileges",
            format!(
                "user {} has {own_defaults} default-privilege entr{} on the target: every object Ferry creates would get those grants on top of the source's",
                tu.name,
                if own_defaults == 1 { "y" } else { "ies" }
            ),
            Some(format!(
                "remove them (psql \\ddp lists them; ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE ...), or run Ferry as another user",
                quote_ident(&tu.name)
            )),
        );
    }
    plan.roles = by_role.into_values().map(|(u, _)| u).collect();
    Ok((plan, findings))
}

impl RolesPlan {
    /// Target names of the roles `ferry migrate` creates (`--roles create`).
    pub fn created(&self) -> BTreeSet<String> {
        if self.mode != RoleMode::Create {
            return BTreeSet::new();
        }
        self.roles
            .iter()
            .filter(|u| u.create_sql.is_some())
            .map(|u| u.target.clone())
            .collect()
    }
}

/// How pg_dump's owners and grants are rewritten for this target: the map, and, when Ferry's
/// target user is not a superuser, the temporary CREATE grants on schemas that giving objects
/// away needs (kept where the role holds CREATE on the source).
pub async fn rewrite_for(source: &Client, target: &Client, policy: &RolePolicy) -> Result<crate::schema::RoleRewrite, PgError> {
    let superuser: bool = target
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(|e| PgError::query("reading the target user's attributes", e))?
        .get(0);
    let owner_grants = if superuser {
        None
    } else {
        let rows = source
            .query(
                "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n
                 UNION
                 SELECT n.nspname::text, pg_get_userbyid(a.grantee)::text FROM pg_namespace n, aclexplode(n.nspacl) a
                 WHERE a.privilege_type = 'CREATE' AND a.grantee <> 0",
                &[],
            )
            .await
            .map_err(|e| PgError::query("reading CREATE privileges on schemas on the source", e))?;
        Some(crate::schema::OwnerSchemaGrants {
            keep: rows
                .into_iter()
                .map(|r| {
                    let (s, role): (String, String) = (r.get(0), r.get(1));
                    (s, policy.map.target(&role).to_string())
                })
                .collect(),
        })
    };
    Ok(crate::schema::RoleRewrite {
        map: policy.map.0.clone(),
        owner_grants,
    })
}

/// Maps each name of a `, `-separated list.
fn map_list(map: &RoleMap, list: &str) -> String {
    list.split(", ").map(|r| map.target(r)).collect::<Vec<_>>().join(", ")
}

/// `CREATE ROLE` for a missing role: no password; LOGIN/NOLOGIN, INHERIT/NOINHERIT, CONNECTION
/// LIMIT and VALID UNTIL as on the source; BYPASSRLS only when the target user may grant it
/// (a superuser); never SUPERUSER, REPLICATION, CREATEDB or CREATEROLE (those are returned).
fn create_role_sql(name: &str, a: &Attrs, tu: &TargetUser) -> (String, Vec<String>) {
    let mut sql = format!(
        "CREATE ROLE {} {} {}",
        quote_ident(name),
        if a.login { "LOGIN" } else { "NOLOGIN" },
        if a.inherit { "INHERIT" } else { "NOINHERIT" }
    );
    if a.connlimit >= 0 {
        sql.push_str(&format!(" CONNECTION LIMIT {}", a.connlimit));
    }
    if let Some(v) = &a.valid_until {
        sql.push_str(&format!(" VALID UNTIL {}", quote_literal(v)));
    }
    let mut not_carried = Vec::new();
    if a.bypassrls {
        if tu.superuser {
            sql.push_str(" BYPASSRLS");
        } else {
            not_carried.push("BYPASSRLS".to_string());
        }
    }
    for (has, what) in [
        (a.superuser, "SUPERUSER"),
        (a.replication, "REPLICATION"),
        (a.createdb, "CREATEDB"),
        (a.createrole, "CREATEROLE"),
    ] {
        if has {
            not_carried.push(what.to_string());
        }
    }
    sql.push(';');
    (sql, not_carried)
}

/// Last line of defence before a script runs on the target: every role it names in an owner,
/// grant, policy or session position exists there (or is in `created`). Errors name them.
pub async fn require_on_target(
    target: &Client,
    script_roles: &BTreeSet<String>,
    created: &BTreeSet<String>,
    what: &str,
) -> Result<(), PgError> {
    let names: Vec<String> = script_roles.iter().filter(|r| !created.contains(*r)).cloned().collect();
    let existing: BTreeSet<String> = target
        .query("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)", &[&names])
        .await
        .map_err(|e| PgError::query("looking up roles on the target", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&String> = names.iter().filter(|n| !existing.contains(*n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PgError::config(
        format!("restoring {what} on the target"),
        format!(
            "it names role(s) {} that do not exist on the target; Ferry will not drop owners or grants (that would leave objects owned by its own user)",
            missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
        ),
        "create them on the target (CREATE ROLE ... NOLOGIN), rerun with --roles create, or rename them with --roles-map FILE",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_file_format() {
        let m = RoleMap::parse("# comment\n\napp = app_prod\n\"Weird = Role\" = \"x\"\"y\" # trailing\n  postgres=rds_admin\n").unwrap();
        assert_eq!(m.target("app"), "app_prod");
        assert_eq!(m.target("Weird = Role"), "x\"y");
        assert_eq!(m.target("postgres"), "rds_admin");
        assert_eq!(m.target("other"), "other");
        assert!(RoleMap::parse("a b").unwrap_err().contains("line 1"));
        assert!(RoleMap::parse("a = b\na = c").unwrap_err().contains("mapped twice"));
        assert!(RoleMap::parse("a = public").unwrap_err().contains("PUBLIC"));
        assert!(RoleMap::parse("a = \"b").unwrap_err().contains("unterminated"));
        assert!(RoleMap::parse("= b").unwrap_err().contains("missing role name"));
        assert!(RoleMap::parse("a = b c = d").unwrap_err().contains("expected `=`") || RoleMap::parse("a = b c = d").is_err());
    }

    #[test]
    fn created_roles_carry_only_safe_attributes() {
        let tu = TargetUser {
            name: "ferry".into(),
            superuser: false,
            createrole: true,
            bypassrls: false,
            major: 15,
        };
        let a = Attrs {
            superuser: true,
            inherit: true,
            login: true,
            bypassrls: true,
            connlimit: 5,
            valid_until: Some("2030-01-01 00:00:00.000000+00".into()),
            ..Default::default()
        };
        let (sql, not) = create_role_sql("App", &a, &tu);
        assert_eq!(
            sql,
            "CREATE ROLE \"App\" LOGIN INHERIT CONNECTION LIMIT 5 VALID UNTIL '2030-01-01 00:00:00.000000+00';"
        );
        assert_eq!(not, vec!["BYPASSRLS".to_string(), "SUPERUSER".to_string()]);
        let su = TargetUser { superuser: true, ..tu };
        let (sql, _) = create_role_sql(
            "r",
            &Attrs {
                bypassrls: true,
                connlimit: -1,
                ..Default::default()
            },
            &su,
        );
        assert_eq!(sql, "CREATE ROLE \"r\" NOLOGIN NOINHERIT BYPASSRLS;");
    }
}
