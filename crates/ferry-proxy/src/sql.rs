//! Just enough of PostgreSQL's lexical structure to look at statement text without being fooled
//! by comments, string literals and quoted identifiers: the read endpoint's guard against a
//! session turning its read-only transactions off. No parsing: tokens in, a decision out.

/// One lexical token. Words (keywords and unquoted identifiers) are lowercased, as PostgreSQL
/// folds them; quoted identifiers keep their case; string literals (all forms: '', E'', U&'',
/// B'', X'', dollar-quoted) carry their content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    Word(String),
    Quoted(String),
    Str(String),
    Number(String),
    Param,
    /// `;` outside any literal: the end of a statement.
    Semicolon,
    Punct(char),
}

/// The tokens of `sql`. Unterminated literals and comments end at the end of the text.
pub(crate) fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
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
            }
            b'\'' => {
                let (s, next) = quoted(sql, i, b'\'', false);
                out.push(Token::Str(s));
                i = next;
            }
            b'"' => {
                let (s, next) = quoted(sql, i, b'"', false);
                out.push(Token::Quoted(s));
                i = next;
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Token::Param);
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_len) => {
                    let tag = &sql[i..i + tag_len];
                    let body_start = i + tag_len;
                    let end = sql[body_start..].find(tag).map(|p| body_start + p);
                    let body_end = end.unwrap_or(b.len());
                    out.push(Token::Str(sql[body_start..body_end].to_owned()));
                    i = end.map_or(b.len(), |e| e + tag_len);
                }
                None => {
                    out.push(Token::Punct('$'));
                    i += 1;
                }
            },
            b';' => {
                out.push(Token::Semicolon);
                i += 1;
            }
            _ if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                out.push(Token::Number(sql[start..i].to_owned()));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80) {
                    i += 1;
                }
                let word = &sql[start..i];
                let next = b.get(i).copied();
                // String-literal prefixes: E'..' (backslash escapes), B'..', X'..', N'..', U&'..'.
                match (word.to_ascii_lowercase().as_str(), next) {
                    ("e", Some(b'\'')) => {
                        let (s, n) = quoted(sql, i, b'\'', true);
                        out.push(Token::Str(s));
                        i = n;
                    }
                    ("b" | "x" | "n", Some(b'\'')) => {
                        let (s, n) = quoted(sql, i, b'\'', false);
                        out.push(Token::Str(s));
                        i = n;
                    }
                    ("u", Some(b'&')) if matches!(b.get(i + 1), Some(b'\'' | b'"')) => {
                        let q = b[i + 1];
                        let (s, n) = quoted(sql, i + 1, q, false);
                        out.push(if q == b'\'' { Token::Str(s) } else { Token::Quoted(s) });
                        i = n;
                    }
                    (lower, _) => out.push(Token::Word(lower.to_owned())),
                }
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or('?');
                out.push(Token::Punct(ch));
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// The content of a literal quoted with `q` starting at `start` (the opening quote), a doubled
/// quote standing for one; with `backslash`, a backslash escapes the next character. Returns
/// the content and the index after the closing quote.
fn quoted(sql: &str, start: usize, q: u8, backslash: bool) -> (String, usize) {
    let b = sql.as_bytes();
    let mut i = start + 1;
    let mut s = Vec::new();
    while i < b.len() {
        if backslash && b[i] == b'\\' && i + 1 < b.len() {
            s.push(b[i + 1]);
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                s.push(q);
                i += 2;
            } else {
                return (String::from_utf8_lossy(&s).into_owned(), i + 1);
            }
        } else {
            s.push(b[i]);
            i += 1;
        }
    }
    (String::from_utf8_lossy(&s).into_owned(), b.len())
}

/// The length of a dollar-quote tag (`$$` or `$name$`) starting at `i`, if there is one.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

/// Whether `sql` (one or several statements) could make later transactions of its session
/// read-write: `READ WRITE` anywhere (BEGIN, START TRANSACTION, SET TRANSACTION, SET SESSION
/// CHARACTERISTICS), a `SET` of a `*read_only` setting to anything but on/true/yes/1, a
/// `set_config` call naming one, or any of these inside a literal (a `DO` block's body).
/// `SHOW`, `current_setting(...)` and `RESET` (back to the session's read-only default) pass.
pub(crate) fn unlocks_writes(sql: &str) -> bool {
    unlocks(&tokens(sql), 0)
}

fn unlocks(all: &[Token], depth: usize) -> bool {
    for statement in all.split(|t| *t == Token::Semicolon) {
        let first = match statement.first() {
            Some(Token::Word(w)) => w.as_str(),
            _ => "",
        };
        let names_read_only = |t: &Token| match t {
            Token::Word(w) => w.contains("read_only"),
            Token::Quoted(q) | Token::Str(q) => q.to_ascii_lowercase().contains("read_only"),
            _ => false,
        };
        let mut prev_read = false;
        for t in statement {
            if let Token::Word(w) = t {
                if prev_read && w == "write" {
                    return true;
                }
                prev_read = w == "read";
                if w == "set_config" && statement.iter().any(names_read_only) {
                    return true;
                }
            } else {
                prev_read = false;
            }
            // A DO block's body is code, and so are literals inside it (EXECUTE strings): look
            // inside, not too deep.
            if let Token::Str(s) = t {
                if (first == "do" || depth > 0) && depth < 4 && unlocks(&tokens(s), depth + 1) {
                    return true;
                }
            }
        }
        // `SET name = value` (also inside a DO block, after its BEGIN): the value is the last
        // word or literal.
        if let Some(at) = statement.iter().position(|t| *t == Token::Word("set".into())) {
            let rest = &statement[at + 1..];
            if rest.iter().any(names_read_only) {
                let enabling = rest.iter().rev().find(|t| !matches!(t, Token::Punct(_))).is_some_and(|v| {
                    let v = match v {
                        Token::Word(w) => w.clone(),
                        Token::Str(s) => s.to_ascii_lowercase(),
                        Token::Number(n) => n.clone(),
                        _ => String::new(),
                    };
                    matches!(v.as_str(), "on" | "true" | "yes" | "1" | "default")
                });
                if !enabling {
                    return true;
                }
            }
        }
    }
    false
}

/// A statement's fingerprint: its tokens with every literal, number and parameter replaced by
/// `?`, lists of them collapsed (`IN (?, ?, ?)` is `IN (?)`), words lowercased, comments and
/// whitespace gone: the same query with other values has the same fingerprint.
pub(crate) fn fingerprint(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(512));
    let mut prev_value = false;
    let mut prev_comma_after_value = false;
    // Operator characters in a row are one operator (`<=`, `::`, `->>`).
    const OPERATOR: &str = "+-*/<>=~!@#%^&|`?:";
    let mut last_was_op = false;
    for t in tokens(sql) {
        if !matches!(t, Token::Punct(_)) {
            last_was_op = false;
        }
        let piece: std::borrow::Cow<'_, str> = match &t {
            Token::Word(w) => w.as_str().into(),
            Token::Quoted(q) => format!("\"{}\"", q.replace('"', "\"\"")).into(),
            Token::Str(_) | Token::Number(_) | Token::Param => {
                if prev_comma_after_value {
                    // `?, ?` becomes `?`: drop the comma written before this value.
                    out.truncate(out.trim_end_matches([',', ' ']).len());
                    prev_value = true;
                    prev_comma_after_value = false;
                    continue;
                }
                prev_value = true;
                if !out.is_empty() && !out.ends_with(['(', ' ']) {
                    out.push(' ');
                }
                out.push('?');
                continue;
            }
            Token::Semicolon => {
                prev_value = false;
                prev_comma_after_value = false;
                ";".into()
            }
            Token::Punct(c) => {
                prev_comma_after_value = *c == ',' && prev_value;
                if *c != ',' {
                    prev_value = false;
                }
                let glued = out.ends_with(|p: char| OPERATOR.contains(p)) && OPERATOR.contains(*c) && last_was_op;
                last_was_op = OPERATOR.contains(*c);
                match c {
                    ',' | ')' => {
                        out.push(*c);
                        continue;
                    }
                    '(' | '.' => {
                        if out.ends_with(' ') {
                            out.pop();
                        }
                        out.push(*c);
                        continue;
                    }
                    _ if glued => {
                        out.push(*c);
                        continue;
                    }
                    _ => c.to_string().into(),
                }
            }
        };
        if !matches!(t, Token::Punct(',')) {
            prev_value = false;
            prev_comma_after_value = false;
        }
        if !out.is_empty() && !out.ends_with(['(', '.']) {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    while out.ends_with([';', ' ']) {
        out.pop();
    }
    if out.len() > 2000 {
        let mut cut = 2000;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" ...");
    }
    out
}

/// Whether `sql` is one statement that only reads, by its words: it starts with SELECT, WITH,
/// VALUES or TABLE, and names no INSERT, UPDATE, DELETE, MERGE, INTO (SELECT INTO), row locks
/// (FOR UPDATE / SHARE), sequence functions (nextval, setval) or LOCK. Shadow traffic runs only
/// such statements on the target (and there in read-only transactions, which catch the rest).
pub(crate) fn looks_read_only(sql: &str) -> bool {
    let t = tokens(sql);
    let end = t.iter().rposition(|t| *t != Token::Semicolon).map_or(0, |i| i + 1);
    let t = &t[..end];
    if t.contains(&Token::Semicolon) {
        return false;
    }
    let words = || {
        t.iter().filter_map(|t| match t {
            Token::Word(w) => Some(w.as_str()),
            _ => None,
        })
    };
    if !matches!(words().next(), Some("select" | "with" | "values" | "table")) || t.first().is_none_or(|f| !matches!(f, Token::Word(_))) {
        return false;
    }
    let mut prev = "";
    for w in words() {
        if matches!(w, "insert" | "update" | "delete" | "merge" | "into" | "nextval" | "setval" | "lock") {
            return false;
        }
        if prev == "for" && matches!(w, "share" | "no" | "key") {
            return false;
        }
        prev = w;
    }
    true
}

/// Whether the statement orders its result: an ORDER BY outside parentheses (a subquery's does
/// not order the result).
pub(crate) fn orders_result(sql: &str) -> bool {
    let mut depth = 0i32;
    let mut prev_order = false;
    for t in tokens(sql) {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            Token::Word(w) if depth == 0 => {
                if prev_order && w == "by" {
                    return true;
                }
                prev_order = w == "order";
                continue;
            }
            _ => {}
        }
        prev_order = false;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_forget_values_and_spacing() {
        let a = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 42;");
        let b = fingerprint("select   abalance\n from pgbench_accounts -- x\n where aid = $1");
        assert_eq!(a, b);
        assert_eq!(a, "select abalance from pgbench_accounts where aid = ?");
        assert_eq!(
            fingerprint("SELECT * FROM t WHERE id IN (1, 2, 3) AND name = 'x'"),
            fingerprint("SELECT * FROM t WHERE id IN ($1,$2) AND name = E'y'")
        );
        assert_eq!(fingerprint("SELECT f(1)"), "select f(?)");
        assert_eq!(
            fingerprint("SELECT o.n::text FROM s.t o WHERE id <= 3 AND j->>'k' <> 'v'"),
            "select o.n :: text from s.t o where id <= ? and j ->> ? <> ?"
        );
        assert_ne!(fingerprint("SELECT a FROM t"), fingerprint("SELECT b FROM t"));
    }

    #[test]
    fn read_only_statements_are_told_from_the_rest() {
        for sql in ["SELECT 1", "with x as (select * from t) select * from x;", "VALUES (1)", "TABLE t"] {
            assert!(looks_read_only(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * INTO t2 FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT nextval('s')",
            "SELECT 1; SELECT 2",
            "SET x = 1",
            "BEGIN",
            "(SELECT 1)",
        ] {
            assert!(!looks_read_only(sql), "{sql}");
        }
    }

    #[test]
    fn only_a_top_level_order_by_orders_the_result() {
        assert!(orders_result("SELECT * FROM t ORDER BY a"));
        assert!(orders_result("select * from (select * from t order by a) s order  by b"));
        assert!(!orders_result("SELECT * FROM (SELECT * FROM t ORDER BY a LIMIT 3) s"));
        assert!(!orders_result("SELECT 'order by' FROM t"));
        assert!(!orders_result("SELECT array_agg(a ORDER BY a) FROM t"));
    }

    #[test]
    fn tokens_skip_comments_and_keep_literals_whole() {
        let t = tokens("SELECT /* a /* nested */ c */ 'it''s', E'a\\'b', $x$ d;$ $x$, \"Q\"\"x\", $1, 1.5e3 -- tail");
        assert_eq!(
            t,
            vec![
                Token::Word("select".into()),
                Token::Str("it's".into()),
                Token::Punct(','),
                Token::Str("a'b".into()),
                Token::Punct(','),
                Token::Str(" d;$ ".into()),
                Token::Punct(','),
                Token::Quoted("Q\"x".into()),
                Token::Punct(','),
                Token::Param,
                Token::Punct(','),
                Token::Number("1.5e3".into()),
            ]
        );
    }

    #[test]
    fn statements_that_turn_read_only_off_are_seen() {
        for sql in [
            "SET default_transaction_read_only = off",
            "set default_transaction_read_only to false",
            "SET SESSION default_transaction_read_only = 'off'",
            "SET default_transaction_read_only = 0",
            "SET transaction_read_only = off",
            "SET \"default_transaction_read_only\" TO no",
            "BEGIN READ WRITE",
            "begin isolation level serializable, read   write",
            "START TRANSACTION READ /* sneaky */ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "SELECT 1; SET default_transaction_read_only = off",
            "DO $$ BEGIN SET default_transaction_read_only = off; END $$",
            "DO 'BEGIN EXECUTE ''SET default_transaction_read_only = off''; END'",
        ] {
            assert!(unlocks_writes(sql), "{sql}");
        }
    }

    #[test]
    fn reads_and_harmless_settings_pass() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SHOW transaction_read_only",
            "SELECT current_setting('transaction_read_only')",
            "SET default_transaction_read_only = on",
            "SET default_transaction_read_only TO DEFAULT",
            "RESET default_transaction_read_only",
            "RESET ALL",
            "BEGIN READ ONLY",
            "SELECT 'read write', \"read_only\" FROM t",
            "-- SET default_transaction_read_only = off\nSELECT 1",
            "SET work_mem = '64MB'",
        ] {
            assert!(!unlocks_writes(sql), "{sql}");
        }
    }
}
