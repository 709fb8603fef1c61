//! Role names in pg_dump's output: found and renamed by position, never by text search.
//!
//! pg_dump names roles in a few statement forms only: `ALTER ... OWNER TO r`, `GRANT ... TO r`,
//! `REVOKE ... FROM r`, `ALTER DEFAULT PRIVILEGES FOR ROLE r ...`, `CREATE POLICY ... TO r`,
//! `CREATE USER MAPPING FOR r` and `SET SESSION AUTHORIZATION r` (for grants made by someone
//! other than the owner). A tokenizer that knows quoted identifiers, string literals,
//! dollar-quoted bodies and comments splits the script into statements; in those forms only the
//! role tokens, at parenthesis depth 0 and in their grammatical place, are replaced by the
//! mapped name (always double-quoted). Everything else is copied byte for byte.
//!
//! `SET SESSION AUTHORIZATION r` / `RESET SESSION AUTHORIZATION` become `SET ROLE r` /
//! `RESET ROLE`: the same grantor is recorded, and a non-superuser member of the role may run it.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::ident::quote_ident;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Word,
    Quoted,
    Literal,
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Splits SQL into tokens. Unterminated quotes run to the end of the text.
fn tokenize(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Kind::Comment
        } else if c == b'"' {
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            Kind::Quoted
        } else if c == b'\'' || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'')) {
            let backslash = c != b'\'';
            i += if backslash { 2 } else { 1 };
            while i < b.len() {
                if backslash && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            i = i.min(b.len());
            Kind::Literal
        } else if c == b'$' && dollar_tag(&b[i..]).is_some() {
            let tag = dollar_tag(&b[i..]).unwrap_or(1);
            let delim = &b[i..i + tag];
            i += tag;
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i..].starts_with(delim) {
                    i += tag;
                    break;
                }
                i += 1;
            }
            Kind::Literal
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80) {
                i += 1;
            }
            Kind::Word
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            Kind::Word
        } else {
            // One byte of punctuation; a multi-byte character cannot start here (>= 0x80 above).
            i += 1;
            Kind::Punct
        };
        out.push(Tok { kind, start, end: i });
    }
    out
}

/// Length of a dollar-quote delimiter (`$$` or `$tag$`) at the start of `b`.
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let mut j = 1;
    while j < b.len() {
        match b[j] {
            b'$' => return Some(j + 1),
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                if j == 1 && c.is_ascii_digit() {
                    return None;
                }
                j += 1;
            }
            _ => return None,
        }
    }
    None
}

/// A role named in the script: its place and its name.
struct RoleRef {
    start: usize,
    end: usize,
    name: String,
}

/// The significant tokens of one statement, with their parenthesis depth.
struct Stmt<'a> {
    text: &'a str,
    toks: Vec<(Tok, i32)>,
}

impl Stmt<'_> {
    fn word(&self, i: usize) -> Option<String> {
        let (t, d) = self.toks.get(i)?;
        (t.kind == Kind::Word && *d == 0).then(|| self.text[t.start..t.end].to_ascii_uppercase())
    }
    fn is(&self, i: usize, w: &str) -> bool {
        self.word(i).as_deref() == Some(w)
    }
    /// First index >= from holding keyword `w` at depth 0.
    fn find(&self, from: usize, w: &str) -> Option<usize> {
        (from..self.toks.len()).find(|&i| self.is(i, w))
    }
    /// The role name a token stands for, or None for PUBLIC, CURRENT_USER and the like.
    fn role_at(&self, i: usize) -> Option<RoleRef> {
        let (t, d) = self.toks.get(i)?;
        if *d != 0 {
            return None;
        }
        let raw = &self.text[t.start..t.end];
        let name = match t.kind {
            Kind::Quoted if raw.len() >= 2 => raw[1..raw.len() - 1].replace("\"\"", "\""),
            Kind::Word => {
                let up = raw.to_ascii_uppercase();
                if ["PUBLIC", "CURRENT_USER", "CURRENT_ROLE", "SESSION_USER", "USER", "GROUP"].contains(&up.as_str()) {
                    return None;
                }
                raw.to_lowercase()
            }
            _ => return None,
        };
        Some(RoleRef {
            start: t.start,
            end: t.end,
            name,
        })
    }
    /// Roles of a comma-separated list starting at `from`, up to the first token that is not a
    /// role or a comma (or `GROUP`, the old spelling).
    fn role_list(&self, from: usize, out: &mut Vec<RoleRef>) -> usize {
        let mut i = from;
        while i < self.toks.len() {
            if self.is(i, "GROUP") {
                i += 1;
                continue;
            }
            let (t, d) = self.toks[i];
            let is_name = d == 0 && matches!(t.kind, Kind::Word | Kind::Quoted);
            if !is_name {
                break;
            }
            if let Some(w) = self.word(i) {
                if [
                    "WITH", "GRANTED", "CASCADE", "RESTRICT", "USING", "SERVER", "IN", "GRANT", "REVOKE", "OPTIONS",
                ]
                .contains(&w.as_str())
                {
                    break;
                }
            }
            if let Some(r) = self.role_at(i) {
                out.push(r);
            }
            i += 1;
            if self
                .toks
                .get(i)
                .is_some_and(|(t, _)| t.kind == Kind::Punct && &self.text[t.start..t.end] == ",")
            {
                i += 1;
            } else {
                break;
            }
        }
        i
    }
}

/// `GRANT ... TO list [WITH ...] [GRANTED BY r]` or `REVOKE ... FROM list [GRANTED BY r]`,
/// starting at token `at` (the GRANT or REVOKE).
fn grant_roles(s: &Stmt, at: usize, out: &mut Vec<RoleRef>) {
    let grant = s.is(at, "GRANT");
    let to = if grant { "TO" } else { "FROM" };
    let on = s.find(at + 1, "ON");
    let Some(t) = s.find(on.unwrap_or(at) + 1, to) else { return };
    if on.is_none() || on.is_some_and(|o| o > t) {
        // Role membership: GRANT a, b TO c / REVOKE a FROM c.
        let mut first = at + 1;
        if !grant && (s.is(first, "ADMIN") || s.is(first, "INHERIT") || s.is(first, "SET")) {
            first = s.find(first, "FOR").map(|f| f + 1).unwrap_or(first);
        }
        s.role_list(first, out);
    }
    let end = s.role_list(t + 1, out);
    if let Some(g) = s.find(end, "GRANTED") {
        if s.is(g + 1, "BY") {
            if let Some(r) = s.role_at(g + 2) {
                out.push(r);
            }
        }
    }
}

/// The roles a statement names, by form.
fn statement_roles(s: &Stmt) -> Vec<RoleRef> {
    let mut out = Vec::new();
    let n = s.toks.len();
    match s.word(0).as_deref() {
        Some("GRANT") | Some("REVOKE") => grant_roles(s, 0, &mut out),
        Some("ALTER") if s.is(1, "DEFAULT") && s.is(2, "PRIVILEGES") => {
            let mut i = 3;
            if s.is(i, "FOR") && (s.is(i + 1, "ROLE") || s.is(i + 1, "USER")) {
                i = s.role_list(i + 2, &mut out);
            }
            if let Some(g) = (i..n).find(|&j| s.is(j, "GRANT") || s.is(j, "REVOKE")) {
                grant_roles(s, g, &mut out);
            }
        }
        Some("ALTER") if n >= 3 && s.is(n - 3, "OWNER") && s.is(n - 2, "TO") => {
            if let Some(r) = s.role_at(n - 1) {
                out.push(r);
            }
        }
        Some("CREATE") if s.is(1, "POLICY") => {
            if let Some(t) = s.find(2, "TO") {
                s.role_list(t + 1, &mut out);
            }
        }
        Some("CREATE") if s.is(1, "USER") && s.is(2, "MAPPING") => {
            let at = if s.is(3, "IF") { 6 } else { 3 };
            if s.is(at, "FOR") {
                if let Some(r) = s.role_at(at + 1) {
                    out.push(r);
                }
            }
        }
        Some("SET") if s.is(1, "SESSION") && s.is(2, "AUTHORIZATION") => {
            if let Some(r) = s.role_at(3) {
                out.push(r);
            }
        }
        _ => {}
    }
    out
}

/// The schema of the object an `ALTER ... OWNER TO` statement gives away: the name before the
/// first `.` (pg_dump qualifies every object in a schema, and nothing else).
fn owned_object_schema(s: &Stmt) -> Option<String> {
    let n = s.toks.len();
    for i in 1..n.saturating_sub(3) {
        let (t, d) = s.toks[i];
        let (next, _) = s.toks[i + 1];
        if d == 0 && matches!(t.kind, Kind::Word | Kind::Quoted) && next.kind == Kind::Punct && &s.text[next.start..next.end] == "." {
            let raw = &s.text[t.start..t.end];
            return Some(if t.kind == Kind::Quoted {
                raw[1..raw.len() - 1].replace("\"\"", "\"")
            } else {
                raw.to_lowercase()
            });
        }
    }
    None
}

/// For a target user that is not a superuser: giving an object to role `r` needs `r` to hold
/// CREATE on the object's schema. Before the first `ALTER ... OWNER TO r` of an object in schema
/// `s`, `GRANT CREATE ON SCHEMA s TO r` is inserted; at the end of the script the grant is
/// revoked again unless `(s, r)` is in `keep` (r holds CREATE on s on the source: owner or ACL).
#[derive(Debug, Clone, Default)]
pub struct OwnerSchemaGrants {
    /// (schema, target role) pairs that hold CREATE on the source.
    pub keep: BTreeSet<(String, String)>,
}

/// Renames roles in a pg_dump script by `map` (source name to target name) and returns the new
/// script with the set of role names it names afterwards (owners, grantees, grantors, policy
/// roles, session roles). With `grants`, see [`OwnerSchemaGrants`].
pub fn map_roles(sql: &str, map: &BTreeMap<String, String>) -> (String, BTreeSet<String>) {
    map_roles_with(sql, map, None)
}

/// [`map_roles`] with temporary schema grants for a non-superuser target user.
pub fn map_roles_with(sql: &str, map: &BTreeMap<String, String>, grants: Option<&OwnerSchemaGrants>) -> (String, BTreeSet<String>) {
    let mut granted: Vec<(String, String)> = Vec::new();
    let toks = tokenize(sql);
    let mut out = String::with_capacity(sql.len() + 64);
    let mut names = BTreeSet::new();
    let mut copied = 0;
    let mut i = 0;
    while i < toks.len() {
        // One statement: up to a ';' outside parentheses.
        let mut depth = 0;
        let mut sig = Vec::new();
        while i < toks.len() {
            let t = toks[i];
            i += 1;
            match t.kind {
                Kind::Space | Kind::Comment => continue,
                Kind::Punct => match &sql[t.start..t.end] {
                    "(" => depth += 1,
                    ")" => depth -= 1,
                    ";" if depth <= 0 => break,
                    _ => {}
                },
                _ => {}
            }
            sig.push((t, depth));
        }
        let stmt = Stmt { text: sql, toks: sig };
        let session = stmt.is(0, "SET") && stmt.is(1, "SESSION") && stmt.is(2, "AUTHORIZATION");
        let reset = stmt.is(0, "RESET") && stmt.is(1, "SESSION") && stmt.is(2, "AUTHORIZATION") && stmt.toks.len() == 3;
        if reset {
            let (a, z) = (stmt.toks[0].0.start, stmt.toks[2].0.end);
            out.push_str(&sql[copied..a]);
            out.push_str("RESET ROLE");
            copied = z;
            continue;
        }
        let refs = statement_roles(&stmt);
        let n = stmt.toks.len();
        if let (Some(g), true) = (
            grants,
            stmt.is(0, "ALTER") && n >= 3 && stmt.is(n - 3, "OWNER") && stmt.is(n - 2, "TO"),
        ) {
            if let (Some(schema), Some(r)) = (owned_object_schema(&stmt), refs.first()) {
                let to = map.get(&r.name).unwrap_or(&r.name).clone();
                let pair = (schema, to);
                if !g.keep.contains(&pair) && !granted.contains(&pair) {
                    let at = stmt.toks[0].0.start;
                    out.push_str(&sql[copied..at]);
                    out.push_str(&format!(
                        "GRANT CREATE ON SCHEMA {} TO {};\n",
                        quote_ident(&pair.0),
                        quote_ident(&pair.1)
                    ));
                    copied = at;
                    granted.push(pair);
                }
            }
        }
        if session && refs.len() == 1 {
            let r = &refs[0];
            let to = map.get(&r.name).unwrap_or(&r.name);
            names.insert(to.clone());
            out.push_str(&sql[copied..stmt.toks[0].0.start]);
            out.push_str(&format!("SET ROLE {}", quote_ident(to)));
            copied = r.end;
            continue;
        }
        for r in refs {
            let to = map.get(&r.name).unwrap_or(&r.name);
            names.insert(to.clone());
            if to != &r.name {
                out.push_str(&sql[copied..r.start]);
                out.push_str(&quote_ident(to));
                copied = r.end;
            }
        }
    }
    out.push_str(&sql[copied..]);
    for (schema, role) in granted {
        out.push_str(&format!(
            "\nREVOKE CREATE ON SCHEMA {} FROM {};",
            quote_ident(&schema),
            quote_ident(&role)
        ));
    }
    (out, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn renames_roles_in_their_places_only() {
        let sql = r#"CREATE SCHEMA app;
ALTER SCHEMA app OWNER TO app_owner;
CREATE FUNCTION app.f(app_owner integer) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT 1; -- OWNER TO app_owner; GRANT x TO app_owner;
$$;
ALTER FUNCTION app.f(app_owner integer) OWNER TO app_owner;
COMMENT ON TABLE app.t IS 'ALTER TABLE x OWNER TO app_owner; it''s';
ALTER TABLE app."OWNER TO app_owner" OWNER TO "Weird Role";
GRANT SELECT(id) ON TABLE app.accounts TO app_user;
GRANT SELECT ON TABLE public.t2 TO app_user WITH GRANT OPTION;
SET SESSION AUTHORIZATION app_user;
GRANT SELECT ON TABLE public.t2 TO "Weird Role", PUBLIC;
RESET SESSION AUTHORIZATION;
REVOKE ALL ON FUNCTION app.f(app_owner integer) FROM PUBLIC;
REVOKE ALL ON TABLE app.t FROM app_owner;
CREATE POLICY own ON app.accounts TO app_user, "Weird Role" USING ((owner = CURRENT_USER));
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA app GRANT SELECT ON TABLES  TO app_user;
CREATE USER MAPPING FOR app_user SERVER s OPTIONS (user 'app_owner');
"#;
        let (out, names) = map_roles(
            sql,
            &m(&[("app_owner", "prod_owner"), ("app_user", "prod_user"), ("Weird Role", "w")]),
        );
        let want = r#"CREATE SCHEMA app;
ALTER SCHEMA app OWNER TO "prod_owner";
CREATE FUNCTION app.f(app_owner integer) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT 1; -- OWNER TO app_owner; GRANT x TO app_owner;
$$;
ALTER FUNCTION app.f(app_owner integer) OWNER TO "prod_owner";
COMMENT ON TABLE app.t IS 'ALTER TABLE x OWNER TO app_owner; it''s';
ALTER TABLE app."OWNER TO app_owner" OWNER TO "w";
GRANT SELECT(id) ON TABLE app.accounts TO "prod_user";
GRANT SELECT ON TABLE public.t2 TO "prod_user" WITH GRANT OPTION;
SET ROLE "prod_user";
GRANT SELECT ON TABLE public.t2 TO "w", PUBLIC;
RESET ROLE;
REVOKE ALL ON FUNCTION app.f(app_owner integer) FROM PUBLIC;
REVOKE ALL ON TABLE app.t FROM "prod_owner";
CREATE POLICY own ON app.accounts TO "prod_user", "w" USING ((owner = CURRENT_USER));
ALTER DEFAULT PRIVILEGES FOR ROLE "prod_owner" IN SCHEMA app GRANT SELECT ON TABLES  TO "prod_user";
CREATE USER MAPPING FOR "prod_user" SERVER s OPTIONS (user 'app_owner');
"#;
        assert_eq!(out, want);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec!["prod_owner".to_string(), "prod_user".into(), "w".into()]
        );
    }

    #[test]
    fn a_non_superuser_gets_create_on_the_schema_only_while_giving_objects_away() {
        let sql = "ALTER SCHEMA app OWNER TO o;\nALTER TABLE public.t OWNER TO o;\nALTER TABLE public.u OWNER TO o;\nALTER TABLE app.v OWNER TO o;\nALTER FUNCTION \"My\".f(integer) OWNER TO p;\n";
        let keep = OwnerSchemaGrants {
            keep: [("app".to_string(), "o".to_string())].into_iter().collect(),
        };
        let (out, _) = map_roles_with(sql, &BTreeMap::new(), Some(&keep));
        assert_eq!(
            out,
            "ALTER SCHEMA app OWNER TO o;\nGRANT CREATE ON SCHEMA \"public\" TO \"o\";\nALTER TABLE public.t OWNER TO o;\nALTER TABLE public.u OWNER TO o;\nALTER TABLE app.v OWNER TO o;\nGRANT CREATE ON SCHEMA \"My\" TO \"p\";\nALTER FUNCTION \"My\".f(integer) OWNER TO p;\n\nREVOKE CREATE ON SCHEMA \"public\" FROM \"o\";\nREVOKE CREATE ON SCHEMA \"My\" FROM \"p\";"
        );
    }

    #[test]
    fn without_a_map_only_session_statements_change() {
        let sql = "GRANT SELECT ON TABLE t TO \"A\"\"b\";\nSET SESSION AUTHORIZATION x;\nRESET SESSION AUTHORIZATION;\n";
        let (out, names) = map_roles(sql, &BTreeMap::new());
        assert_eq!(out, "GRANT SELECT ON TABLE t TO \"A\"\"b\";\nSET ROLE \"x\";\nRESET ROLE;\n");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["A\"b".to_string(), "x".into()]);
    }

    #[test]
    fn bare_names_fold_to_lower_case_and_atomic_bodies_do_not_confuse() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nALTER TABLE t OWNER TO App;\n";
        let (out, names) = map_roles(sql, &m(&[("app", "b")]));
        assert!(out.ends_with("ALTER TABLE t OWNER TO \"b\";\n"), "{out}");
        assert!(out.starts_with("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;"));
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["b".to_string()]);
    }
}
