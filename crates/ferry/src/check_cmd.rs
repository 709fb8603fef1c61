//! Rendering `ferry check` for humans.

use ferry_postgres::preflight::{Report, Severity};

/// Formats bytes as kB/MB/GB.
pub fn human_bytes(b: i64) -> String {
    let b = b as f64;
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b} B"),
    }
}

/// Formats a count with thousands separators.
pub fn human_count(n: i64) -> String {
    if n < 0 {
        return "?".into();
    }
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let host = |i: &Option<ferry_postgres::introspect::ServerInfo>| {
        i.as_ref()
            .map(|i| format!("PostgreSQL {} as {} on database {}", i.version, i.user, i.database))
            .unwrap_or_else(|| "not reachable".into())
    };
    o.push_str(&format!("Source: {}\nTarget: {}\n\nChecks:\n", host(&r.source), host(&r.target)));
    findings(&mut o, &r.findings);
    if let Some(p) = &r.plan {
        o.push_str(&format!("\nPlan{}:\n", if p.resuming { " (resuming an earlier run)" } else { "" }));
        o.push_str("  On the source, Ferry creates:\n");
        for s in &p.source_objects {
            o.push_str(&format!("    - {s}\n"));
        }
        o.push_str("  On the target, before the data:\n");
        for s in &p.target_objects {
            o.push_str(&format!("    - {s}\n"));
        }
        o.push_str(&format!("  Tables ({}):\n", p.tables.len()));
        o.push_str(&format!(
            "    {:<44} {:>14} {:>10} {:>7}  {}\n",
            "table", "est. rows", "size", "ranges", "replica identity"
        ));
        let (mut rows, mut bytes) = (0i64, 0i64);
        for t in &p.tables {
            let kind = match t.kind {
                ferry_postgres::introspect::TableKind::Ordinary => "",
                ferry_postgres::introspect::TableKind::Partitioned => " (partitioned: leaves copied)",
                ferry_postgres::introspect::TableKind::Foreign => " (foreign: not copied)",
                ferry_postgres::introspect::TableKind::MaterializedView => " (materialized view: refreshed)",
            };
            o.push_str(&format!(
                "    {:<44} {:>14} {:>10} {:>7}  {:?}{kind}\n",
                t.name.to_string(),
                human_count(t.estimated_rows),
                human_bytes(t.bytes),
                t.ranges,
                t.replica_identity
            ));
            if t.kind == ferry_postgres::introspect::TableKind::Ordinary {
                rows += t.estimated_rows.max(0);
                bytes += t.bytes;
            }
        }
        o.push_str(&format!(
            "    {:<44} {:>14} {:>10}\n",
            "total",
            human_count(rows),
            human_bytes(bytes)
        ));
        o.push_str("  Deferred until after the data, built in parallel:\n");
        for (what, n) in &p.deferred {
            if *n > 0 {
                o.push_str(&format!("    - {n} {what}\n"));
            } else {
                o.push_str(&format!("    - {what}\n"));
            }
        }
        o.push_str(&format!("    - {} sequence values, set from the snapshot\n", p.sequences));
        for s in &p.skipped {
            o.push_str(&format!("  Not created: {s}\n"));
        }
        if let Some(roles) = &p.roles {
            roles_section(&mut o, roles);
        }
        if !p.not_replicated.is_empty() {
            o.push_str("  Not carried by change data capture (logical replication) after the full load:\n");
            for s in &p.not_replicated {
                o.push_str(&format!("    - {s}\n"));
            }
        }
    }
    result(&mut o, &r.findings);
    o
}

/// The report for a MySQL/MariaDB source as text: findings, then the plan with the type map.
pub fn render_mysql(r: &ferry_mysql::preflight::MyReport) -> String {
    let mut o = String::new();
    let source = r
        .source
        .as_ref()
        .map(|s| format!("{} {} as {} on database {}", s.flavor, s.version, s.user, s.database))
        .unwrap_or_else(|| "not reachable".into());
    let target = r
        .target
        .as_ref()
        .map(|i| format!("PostgreSQL {} as {} on database {}", i.version, i.user, i.database))
        .unwrap_or_else(|| "not reachable".into());
    o.push_str(&format!("Source: {source}\nTarget: {target}\n\nChecks:\n"));
    findings(&mut o, &r.findings);
    if let Some(p) = &r.plan {
        o.push_str("\nPlan:\n  On the source:\n");
        for s in &p.source_objects {
            o.push_str(&format!("    - {s}\n"));
        }
        o.push_str("  On the target:\n");
        for s in &p.target_objects {
            o.push_str(&format!("    - {s}\n"));
        }
        o.push_str(&format!("  Tables ({}):\n", p.tables.len()));
        for t in &p.tables {
            o.push_str(&format!(
                "    {} ({}, ~{} rows, {}, primary key {}{})\n",
                t.name,
                t.engine,
                human_count(t.estimated_rows),
                human_bytes(t.bytes),
                if t.primary_key.is_empty() {
                    "none".to_string()
                } else {
                    t.primary_key.join(", ")
                },
                t.auto_increment.map(|a| format!(", next AUTO_INCREMENT {a}")).unwrap_or_default()
            ));
            for (name, m) in &t.columns {
                let flags = format!(
                    "{}{}",
                    if m.not_null { " NOT NULL" } else { "" },
                    if m.identity { " IDENTITY" } else { "" }
                );
                o.push_str(&format!("      {:<28} {:<30} -> {}{flags}\n", name, m.source, m.target));
                if let Some(n) = &m.note {
                    o.push_str(&format!("      {:<28} {}\n", "", n));
                }
            }
            for i in p.schema.indexes.iter().filter(|i| i.table == t.name) {
                mysql_index(&mut o, i);
            }
        }
        mysql_objects(&mut o, &p.schema);
    }
    result(&mut o, &r.findings);
    o
}

/// One index of a MySQL table: type, key parts with prefix, order and collation, and how it
/// reaches the target.
fn mysql_index(o: &mut String, i: &ferry_mysql::schema::MyIndex) {
    use ferry_mysql::schema::Handling;
    let parts: Vec<String> = i
        .parts
        .iter()
        .map(|p| {
            let mut s = p.column.clone().or_else(|| p.expression.clone()).unwrap_or_else(|| "?".into());
            if let Some(n) = p.prefix {
                s.push_str(&format!("({n})"));
            }
            if p.descending {
                s.push_str(" DESC");
            }
            if let Some(c) = &p.collation {
                s.push_str(&format!(" {c}"));
            }
            s
        })
        .collect();
    let kind = if i.name == "PRIMARY" {
        "PRIMARY KEY".to_string()
    } else if i.unique {
        format!("UNIQUE {}", i.index_type)
    } else {
        i.index_type.clone()
    };
    let how = match i.handling {
        Handling::Built => "built as is",
        Handling::Translated => "translated",
        Handling::PortByHand => "NOT created: port by hand",
    };
    o.push_str(&format!("      index {} {kind} ({}): {how}\n", i.name, parts.join(", ")));
    if let Some(n) = &i.note {
        o.push_str(&format!("        {n}\n"));
    }
    if let Some(sql) = &i.target_sql {
        o.push_str(&format!("        {sql}\n"));
    }
}

/// Views, triggers, routines and events: each with its handling; what is not created comes
/// with its MySQL definition.
fn mysql_objects(o: &mut String, s: &ferry_mysql::schema::MySchemaObjects) {
    use ferry_mysql::schema::Handling;
    let definition = |o: &mut String, d: &str| {
        for line in d.lines() {
            o.push_str(&format!("        | {line}\n"));
        }
    };
    o.push_str(&format!("  Views ({}):\n", s.views.len()));
    for v in &s.views {
        match v.handling {
            Handling::PortByHand => {
                o.push_str(&format!(
                    "    {}: NOT translated, port by hand: {}\n",
                    v.name,
                    v.note.as_deref().unwrap_or_default()
                ));
                definition(o, &v.definition);
            }
            _ => {
                o.push_str(&format!(
                    "    {}: translated, created after the data{}\n",
                    v.name,
                    v.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
                ));
                if let Some(sql) = &v.target_sql {
                    o.push_str(&format!("        {sql}\n"));
                }
            }
        }
    }
    o.push_str(&format!(
        "  Triggers ({}): not migrated, port by hand (Ferry does not translate procedural code):\n",
        s.triggers.len()
    ));
    for t in &s.triggers {
        o.push_str(&format!("    {} on {} ({} {})\n", t.name, t.table, t.timing, t.event));
        definition(o, &t.definition);
    }
    o.push_str(&format!(
        "  Routines and events ({}): not migrated, port by hand (Ferry does not translate procedural code):\n",
        s.routines.len()
    ));
    for r in &s.routines {
        o.push_str(&format!("    {} {}\n", r.kind.to_lowercase(), r.name));
        definition(o, r.definition.as_deref().unwrap_or("(definition not readable by Ferry's user)"));
    }
}

/// Roles, owners and privileges (docs/roles.md).
fn roles_section(o: &mut String, r: &ferry_postgres::roles::RolesPlan) {
    let mode = match r.mode {
        ferry_postgres::roles::RoleMode::Require => "require",
        ferry_postgres::roles::RoleMode::Create => "create",
    };
    o.push_str(&format!(
        "  Owners and privileges, as on the source (--roles {mode}): owners and GRANTs before the data; row-level security, policies and default privileges after it\n"
    ));
    o.push_str(&format!("    {:<28} {:<28} {:<44} on target\n", "role", "target role", "uses"));
    for u in &r.roles {
        let mut uses = Vec::new();
        for (n, what) in [
            (u.owns, "owns"),
            (u.grantee, "granted"),
            (u.grantor, "grantor"),
            (u.policies, "policies"),
            (u.default_privileges, "default privs"),
            (u.user_mappings, "user mappings"),
        ] {
            if n > 0 {
                uses.push(format!("{what} {n}"));
            }
        }
        let status = if u.exists_on_target {
            "exists".to_string()
        } else if r.mode == ferry_postgres::roles::RoleMode::Create && u.create_sql.is_some() {
            "missing: created, no password".to_string()
        } else {
            "MISSING".to_string()
        };
        o.push_str(&format!("    {:<28} {:<28} {:<44} {status}\n", u.source, u.target, uses.join(", ")));
    }
    for m in &r.memberships {
        o.push_str(&format!("    membership: {} is a member of {}\n", m.member, m.role));
    }
    for s in &r.ferry_needs {
        o.push_str(&format!("    Ferry's target user needs: {s}\n"));
    }
    for f in &r.security_definer {
        o.push_str(&format!("    SECURITY DEFINER: {f}\n"));
    }
    for t in &r.row_security {
        o.push_str(&format!("    row-level security: {t}\n"));
    }
}

fn findings(o: &mut String, fs: &[ferry_postgres::preflight::Finding]) {
    for f in fs {
        let tag = match f.severity {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "WARNING",
            Severity::Info => "info   ",
            Severity::Ok => "ok     ",
        };
        o.push_str(&format!("  [{tag}] {:<6} {:<22} {}\n", f.side, f.check, f.message));
        if let Some(fix) = &f.fix {
            o.push_str(&format!("  {:>40}fix: {fix}\n", ""));
        }
    }
}

fn result(o: &mut String, fs: &[ferry_postgres::preflight::Finding]) {
    let blockers = fs.iter().filter(|f| f.severity == Severity::Blocker).count();
    let warnings = fs.iter().filter(|f| f.severity == Severity::Warning).count();
    o.push_str(&format!(
        "\nResult: {}\n",
        if blockers > 0 {
            format!("{blockers} blocker(s), {warnings} warning(s): the migration cannot start until the blockers are fixed")
        } else {
            format!("ready ({warnings} warning(s))")
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_humans() {
        assert_eq!(human_count(1234567), "1,234,567");
        assert_eq!(human_count(12), "12");
        assert_eq!(human_count(-1), "?");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
