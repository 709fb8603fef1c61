//! Session state that a switch carries to the new server, and the recognition of the simple-query
//! statements that change it.
//!
//! The log keeps entries in execution order, because a prepared statement is analysed with the
//! settings (search_path above all) in force when it was prepared. To keep it bounded, a SET of a
//! parameter replaces an earlier SET of the same parameter when no statement was prepared after
//! that earlier one.

use bytes::Bytes;

/// One thing to redo on a new server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A `SET`/`RESET` statement, sent as a simple Query. `key` is the lower-cased parameter.
    Set { key: String, sql: String },
    /// A named prepared statement made by a Parse message: its raw bytes (type, length, body).
    Parse { name: String, raw: Bytes },
    /// A named prepared statement made by SQL `PREPARE name AS ...`.
    Prepare { name: String, sql: String },
}

/// A statement, recognised by its text, that changes replayable session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlAction {
    /// `SET name ...` or `RESET name` (key = parameter name, lower case).
    Set {
        key: String,
    },
    ResetAll,
    DiscardAll,
    Prepare {
        name: String,
    },
    Deallocate {
        name: String,
    },
    DeallocateAll,
}

/// The replay log of one session.
#[derive(Debug, Default, Clone)]
pub struct ReplayLog {
    entries: Vec<Entry>,
}

impl ReplayLog {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn last_statement(&self) -> Option<usize> {
        self.entries.iter().rposition(|e| !matches!(e, Entry::Set { .. }))
    }

    /// Records a statement that completed successfully (outside a transaction or in one that
    /// committed).
    pub fn apply(&mut self, action: &SqlAction, sql: &str) {
        let after = self.last_statement().map_or(0, |i| i + 1);
        match action {
            SqlAction::Set { key } => {
                let mut i = after;
                while i < self.entries.len() {
                    if matches!(&self.entries[i], Entry::Set { key: k, .. } if k == key) {
                        self.entries.remove(i);
                    } else {
                        i += 1;
                    }
                }
                self.entries.push(Entry::Set {
                    key: key.clone(),
                    sql: sql.to_owned(),
                });
            }
            SqlAction::ResetAll => {
                self.entries.truncate(after);
                if self.entries.iter().any(|e| matches!(e, Entry::Set { .. })) {
                    self.entries.push(Entry::Set {
                        key: "*".into(),
                        sql: "RESET ALL".into(),
                    });
                }
            }
            SqlAction::DiscardAll => self.entries.clear(),
            SqlAction::Prepare { name } => self.entries.push(Entry::Prepare {
                name: name.clone(),
                sql: sql.to_owned(),
            }),
            SqlAction::Deallocate { name } => self.remove_statement(name),
            SqlAction::DeallocateAll => self.entries.retain(|e| matches!(e, Entry::Set { .. })),
        }
    }

    /// Records a named Parse that the server completed.
    pub fn add_parse(&mut self, name: String, raw: Bytes) {
        self.entries.push(Entry::Parse { name, raw });
    }

    /// Forgets a named prepared statement (Close 'S' or DEALLOCATE).
    pub fn remove_statement(&mut self, name: &str) {
        self.entries.retain(|e| match e {
            Entry::Parse { name: n, .. } | Entry::Prepare { name: n, .. } => n != name,
            Entry::Set { .. } => true,
        });
    }
}

/// Splits off the first keyword-ish token (letters, digits, '_') after skipping whitespace.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// An SQL identifier (plain or double-quoted) at the start of `s`, normalised as PostgreSQL
/// does (plain ones lower-cased).
fn identifier(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let (w, rest) = word(s);
        (!w.is_empty()).then(|| (w.to_ascii_lowercase(), rest))
    }
}

/// True when the text holds exactly one statement (a trailing ';' allowed). Strings, quoted
/// identifiers and comments are honoured; dollar quoting makes us give up (None).
fn single_statement(sql: &str) -> Option<bool> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut ended = false;
    while i < b.len() {
        let c = b[i];
        if ended && !c.is_ascii_whitespace() && c != b';' {
            return Some(false);
        }
        match c {
            b'\'' | b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if i + 1 < b.len() && b[i + 1] == c {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            // $1 is a parameter; anything else may start a dollar-quoted string.
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'-' if b.get(i + 1) == Some(&b'-') || b.get(i + 1) == Some(&b'*') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b';' => ended = true,
            _ => {}
        }
        i += 1;
    }
    Some(true)
}

/// Recognises the simple-query statements whose effect outlives the statement and that a
/// switch can redo. Anything else (including multi-statement strings) is `None`.
pub fn classify(sql: &str) -> Option<SqlAction> {
    // Called for every simple Query: decide on the first word without allocating.
    let (first, rest) = word(sql);
    let keyword = ["set", "reset", "discard", "prepare", "deallocate"]
        .into_iter()
        .find(|k| first.eq_ignore_ascii_case(k))?;
    if single_statement(sql) != Some(true) {
        return None;
    }
    match keyword {
        "set" => {
            let (mut key, mut after) = identifier(rest)?;
            if key == "local" || key == "transaction" {
                return None;
            }
            if key == "session" {
                let (next, after_next) = identifier(after)?;
                match next.as_str() {
                    "characteristics" => {
                        return Some(SqlAction::Set {
                            key: "session characteristics".into(),
                        })
                    }
                    "authorization" => {
                        return Some(SqlAction::Set {
                            key: "session authorization".into(),
                        })
                    }
                    _ => {
                        key = next;
                        after = after_next;
                    }
                }
            }
            // Qualified names (SET myapp.user_id = ...) and the "TIME ZONE" spelling.
            while let Some(rest) = after.strip_prefix('.') {
                let (part, r) = identifier(rest)?;
                key = format!("{key}.{part}");
                after = r;
            }
            if key == "time" {
                key = "timezone".into();
            }
            Some(SqlAction::Set { key })
        }
        "reset" => {
            let (key, _) = identifier(rest)?;
            match key.as_str() {
                "all" => Some(SqlAction::ResetAll),
                "session" => Some(SqlAction::Set {
                    key: "session authorization".into(),
                }),
                "time" => Some(SqlAction::Set { key: "timezone".into() }),
                _ => Some(SqlAction::Set { key }),
            }
        }
        "discard" => {
            let (what, _) = word(rest);
            what.eq_ignore_ascii_case("all").then_some(SqlAction::DiscardAll)
        }
        "prepare" => {
            let (name, after) = identifier(rest)?;
            if name == "transaction" && after.trim_start().starts_with('\'') {
                return None;
            }
            Some(SqlAction::Prepare { name })
        }
        "deallocate" => {
            let (mut name, mut after) = identifier(rest)?;
            if name == "prepare" {
                let (n, a) = identifier(after)?;
                name = n;
                after = a;
            }
            let _ = after;
            if name == "all" {
                Some(SqlAction::DeallocateAll)
            } else {
                Some(SqlAction::Deallocate { name })
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str) -> Option<SqlAction> {
        Some(SqlAction::Set { key: k.into() })
    }

    #[test]
    fn classifies_session_statements() {
        assert_eq!(classify("SET search_path = app, public"), set("search_path"));
        assert_eq!(classify("  set Application_Name to 'x';  "), set("application_name"));
        assert_eq!(classify("SET SESSION statement_timeout = 5"), set("statement_timeout"));
        assert_eq!(classify("SET TIME ZONE 'UTC'"), set("timezone"));
        assert_eq!(classify("SET myapp.tenant = '7'"), set("myapp.tenant"));
        assert_eq!(classify("set \"MyApp\".x = 1"), set("MyApp.x"));
        assert_eq!(classify("SET LOCAL search_path = x"), None);
        assert_eq!(classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), None);
        assert_eq!(classify("RESET search_path"), set("search_path"));
        assert_eq!(classify("RESET ALL"), Some(SqlAction::ResetAll));
        assert_eq!(classify("DISCARD ALL"), Some(SqlAction::DiscardAll));
        assert_eq!(classify("DISCARD PLANS"), None);
        assert_eq!(
            classify("PREPARE q1 (int) AS SELECT $1"),
            Some(SqlAction::Prepare { name: "q1".into() })
        );
        assert_eq!(classify("PREPARE q2 AS SELECT $$x$$"), None);
        assert_eq!(classify("PREPARE q1 AS SELECT 1"), Some(SqlAction::Prepare { name: "q1".into() }));
        assert_eq!(classify("DEALLOCATE q1"), Some(SqlAction::Deallocate { name: "q1".into() }));
        assert_eq!(classify("DEALLOCATE PREPARE ALL"), Some(SqlAction::DeallocateAll));
        assert_eq!(classify("SET a = 1; SELECT 1"), None);
        assert_eq!(classify("SET search_path = 'a;b'"), set("search_path"));
        assert_eq!(classify("SELECT 1"), None);
    }

    #[test]
    fn log_keeps_order_and_stays_bounded() {
        let mut log = ReplayLog::default();
        log.apply(&SqlAction::Set { key: "search_path".into() }, "SET search_path = a");
        log.apply(&SqlAction::Set { key: "search_path".into() }, "SET search_path = b");
        assert_eq!(log.entries().len(), 1);
        log.add_parse("s1".into(), Bytes::from_static(b"P..."));
        log.apply(&SqlAction::Set { key: "search_path".into() }, "SET search_path = c");
        // The SET before s1 stays: s1 was prepared under it.
        assert_eq!(log.entries().len(), 3);
        log.apply(&SqlAction::Set { key: "search_path".into() }, "SET search_path = d");
        assert_eq!(log.entries().len(), 3);
        log.remove_statement("s1");
        assert_eq!(log.entries().len(), 2);
        log.apply(&SqlAction::ResetAll, "RESET ALL");
        assert_eq!(log.entries().len(), 0);
        log.apply(&SqlAction::Prepare { name: "p".into() }, "PREPARE p AS SELECT 1");
        log.apply(&SqlAction::DiscardAll, "DISCARD ALL");
        assert!(log.is_empty());
    }
}
