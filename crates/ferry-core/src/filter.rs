//! Which tables a migration moves.
//!
//! Patterns name tables as `schema.table`, with `*` (any run of characters) and `?` (one
//! character). A pattern without a dot matches the table name in any schema. Matching is exact
//! otherwise: names are compared as the source stores them (case-sensitive, no quoting).

use crate::ident::TableName;

/// A pattern was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid table pattern {pattern:?}: {why}")]
pub struct FilterError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    schema: Option<String>,
    table: String,
}

/// Include and exclude patterns. A table moves when it matches an include pattern (or there are
/// none) and matches no exclude pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl TableFilter {
    /// Builds a filter from `--include` and `--exclude` patterns.
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<Self, FilterError> {
        let parse = |ps: &[S]| ps.iter().map(|p| parse(p.as_ref())).collect::<Result<Vec<_>, _>>();
        Ok(Self {
            include: parse(include)?,
            exclude: parse(exclude)?,
        })
    }

    /// Whether the table is moved.
    pub fn matches(&self, t: &TableName) -> bool {
        let hit = |p: &Pattern| p.schema.as_deref().is_none_or(|s| glob(s, &t.schema)) && glob(&p.table, &t.name);
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }

    /// True when the filter lets every table through.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

fn parse(p: &str) -> Result<Pattern, FilterError> {
    let err = |why| FilterError {
        pattern: p.to_string(),
        why,
    };
    if p.is_empty() {
        return Err(err("empty pattern"));
    }
    match p.split_once('.') {
        Some((s, t)) if s.is_empty() || t.is_empty() => Err(err("schema and table must both be non-empty in schema.table")),
        Some((_, t)) if t.contains('.') => Err(err("too many dots: use schema.table")),
        Some((s, t)) => Ok(Pattern {
            schema: Some(s.to_string()),
            table: t.to_string(),
        }),
        None => Ok(Pattern {
            schema: None,
            table: p.to_string(),
        }),
    }
}

/// Glob match with `*` and `?`, iterative with backtracking to the last star (linear in practice).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> TableName {
        TableName::new(s, n)
    }

    #[test]
    fn include_and_exclude() {
        let f = TableFilter::new(&["public.pgbench_*", "audit"], &["*.pgbench_history"]).unwrap();
        assert!(f.matches(&t("public", "pgbench_accounts")));
        assert!(!f.matches(&t("public", "pgbench_history")));
        assert!(f.matches(&t("other", "audit")));
        assert!(!f.matches(&t("other", "audits")));
        assert!(!f.matches(&t("sales", "pgbench_accounts")));
        let all = TableFilter::new::<&str>(&[], &[]).unwrap();
        assert!(all.matches(&t("x", "y")) && all.is_everything());
    }

    #[test]
    fn glob_cases() {
        assert!(glob("a*b?c", "aXXbYc"));
        assert!(glob("*", ""));
        assert!(!glob("a*", "b"));
        assert!(glob("My Table", "My Table"));
        assert!(!glob("my table", "My Table"));
        assert!(glob("*a*a*a", "aaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn bad_patterns() {
        assert!(TableFilter::new(&[""], &[]).is_err());
        assert!(TableFilter::new(&["a."], &[]).is_err());
        assert!(TableFilter::new(&["a.b.c"], &[]).is_err());
    }
}
