//! What a statement logged in a binlog QUERY event is to the stream, and which tables it names.
//! No I/O.
//!
//! With `binlog_format=ROW` the only statements the stream must act on are `TRUNCATE` (always
//! logged as a statement), DDL, and transaction boundaries. A row-changing statement (INSERT,
//! UPDATE, DELETE, REPLACE, LOAD DATA, or a SELECT calling a function that writes) in a QUERY
//! event means a session logged it in STATEMENT format (`SET SESSION binlog_format`, or
//! `MIXED`): its rows are not in the binlog, so the stream must stop there rather than skip it
//! (`docs/mysql-cdc.md`).
//!
//! Table names are read as the server reads them: `` `quoted` `` (a doubled backtick inside is
//! one), `"quoted"` (ANSI_QUOTES), or bare; `db.table` with either part quoted; comments,
//! including MySQL's executable `/*!NNNNN ... */` (whose content counts), are skipped. Names
//! compare exactly, or without regard to case under `lower_case_table_names` 1 or 2
//! ([`same_name`]).

/// A table named in a statement: its database when qualified, and its name, both unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// The database, when the name is qualified (else the statement's default database).
    pub db: Option<String>,
    /// The table.
    pub table: String,
}

impl TableRef {
    fn new(db: Option<&str>, table: &str) -> TableRef {
        TableRef {
            db: db.map(str::to_string),
            table: table.to_string(),
        }
    }
}

/// What a statement in a query event is to the applier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `BEGIN`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `TRUNCATE` of this table.
    Truncate(TableRef),
    /// DDL.
    SchemaChange,
    /// A statement that changes rows, logged as a statement (STATEMENT or MIXED format): the
    /// tables it writes to, or None when Ferry cannot tell (a multi-table UPDATE or DELETE, a
    /// SELECT or DO calling a function that writes).
    Write(Option<Vec<TableRef>>),
    /// A statement the stream must act on whose table Ferry cannot read (a TRUNCATE it cannot
    /// parse): never skipped silently.
    Unreadable,
    /// Anything else (grants, flushes, XA bookkeeping, ANALYZE): no row changes.
    Other,
}

/// One token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A bare word: a keyword or an unquoted identifier (or a number).
    Word(String),
    /// A quoted identifier, unquoted.
    Quoted(String),
    /// A string literal (its text is of no interest here).
    Str,
    /// Any other character.
    Punct(char),
}

impl Tok {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// The identifier this token is, quoted or not.
    fn ident(&self) -> Option<&str> {
        match self {
            Tok::Word(w) | Tok::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

/// Characters of a bare identifier (MySQL: letters, digits, `_`, `$`, and any non-ASCII).
fn bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// The tokens of `q`: comments skipped (the content of executable comments kept), at most
/// `limit` of them (only a statement's start matters here). A quote that is not closed ends
/// the list as a `Punct` of the quote (so that no name is read from it).
fn tokens(q: &str, limit: usize) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = q.char_indices().peekable();
    let mut in_exec = false;
    while let Some((i, c)) = chars.next() {
        if out.len() >= limit {
            break;
        }
        let rest = &q[i..];
        match c {
            c if c.is_whitespace() => {}
            '/' if rest.starts_with("/*!") || rest.starts_with("/*M!") => {
                // Executable comment: its marker and version number are skipped, its content read.
                let skip = if rest.starts_with("/*!") { 2 } else { 3 };
                for _ in 0..skip {
                    chars.next();
                }
                while chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
                    chars.next();
                }
                in_exec = true;
            }
            '/' if rest.starts_with("/*") => {
                let end = rest[2..].find("*/").map(|e| i + 2 + e + 2).unwrap_or(q.len());
                while chars.peek().is_some_and(|(j, _)| *j < end) {
                    chars.next();
                }
            }
            '*' if in_exec && rest.starts_with("*/") => {
                chars.next();
                in_exec = false;
            }
            '#' => skip_line(&mut chars),
            '-' if rest.starts_with("-- ") || rest.starts_with("--\t") || rest == "--" || rest.starts_with("--\n") => skip_line(&mut chars),
            '`' | '"' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        None => {
                            out.push(Tok::Punct(c));
                            return out;
                        }
                        Some((_, d)) if d == c => {
                            if chars.peek().is_some_and(|(_, e)| *e == c) {
                                chars.next();
                                name.push(c);
                            } else {
                                break;
                            }
                        }
                        Some((_, d)) => name.push(d),
                    }
                }
                out.push(Tok::Quoted(name));
            }
            '\'' => {
                loop {
                    match chars.next() {
                        None => {
                            out.push(Tok::Punct(c));
                            return out;
                        }
                        Some((_, '\\')) => {
                            chars.next();
                        }
                        Some((_, '\'')) => {
                            if chars.peek().is_some_and(|(_, e)| *e == '\'') {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        Some(_) => {}
                    }
                }
                out.push(Tok::Str);
            }
            c if bare(c) => {
                let mut word = String::from(c);
                while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| bare(*d)) {
                    word.push(d);
                    chars.next();
                }
                out.push(Tok::Word(word));
            }
            c => out.push(Tok::Punct(c)),
        }
    }
    out
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) {
    for (_, c) in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

/// A table name at `toks[*at]`: `name` or `db.name`; moves `at` past it.
fn table_ref(toks: &[Tok], at: &mut usize) -> Option<TableRef> {
    let first = toks.get(*at)?.ident()?;
    if toks.get(*at + 1) == Some(&Tok::Punct('.')) {
        let second = toks.get(*at + 2)?.ident()?;
        *at += 3;
        return Some(TableRef::new(Some(first), second));
    }
    *at += 1;
    Some(TableRef::new(None, first))
}

/// Skips any of `words` at `toks[*at]`.
fn skip_words(toks: &[Tok], at: &mut usize, words: &[&str]) {
    while toks.get(*at).is_some_and(|t| words.iter().any(|w| t.is(w))) {
        *at += 1;
    }
}

/// Whether nothing but a `;` is left from `at`.
fn ends(toks: &[Tok], at: usize) -> bool {
    toks[at.min(toks.len())..].iter().all(|t| *t == Tok::Punct(';'))
}

/// How many tokens of a statement are read: enough for every form below.
const TOKENS: usize = 64;

/// Classifies a logged statement.
pub fn classify(query: &str) -> Statement {
    let toks = tokens(query, TOKENS);
    let Some(Tok::Word(first)) = toks.first() else {
        return Statement::Other;
    };
    match first.to_ascii_uppercase().as_str() {
        "BEGIN" => Statement::Begin,
        "COMMIT" => Statement::Commit,
        "TRUNCATE" => {
            let mut at = 1;
            skip_words(&toks, &mut at, &["TABLE"]);
            let Some(t) = table_ref(&toks, &mut at) else {
                return Statement::Unreadable;
            };
            // MariaDB: `TRUNCATE t WAIT n` / `NOWAIT`.
            if toks.get(at).is_some_and(|t| t.is("WAIT")) {
                at += 2;
            } else if toks.get(at).is_some_and(|t| t.is("NOWAIT")) {
                at += 1;
            }
            if ends(&toks, at) {
                Statement::Truncate(t)
            } else {
                Statement::Unreadable
            }
        }
        "ALTER" if only_moves_auto_increment(&toks) => Statement::Other,
        "ALTER" | "CREATE" | "DROP" | "RENAME" => Statement::SchemaChange,
        "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "LOAD" => Statement::Write(written(&toks).map(|t| vec![t])),
        // Logged only in STATEMENT format, when a function it calls writes; so is a WITH
        // (common table expression) ahead of an UPDATE or DELETE.
        "SELECT" | "DO" | "WITH" => Statement::Write(None),
        _ => Statement::Other,
    }
}

/// The one table an INSERT, REPLACE, single-table UPDATE or DELETE, or LOAD DATA writes; None
/// for a form that may write several (multi-table UPDATE or DELETE) or one not read here.
fn written(toks: &[Tok]) -> Option<TableRef> {
    let mut at = 1;
    match toks[0].ident()?.to_ascii_uppercase().as_str() {
        "INSERT" | "REPLACE" => {
            skip_words(toks, &mut at, &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"]);
            table_ref(toks, &mut at)
        }
        "UPDATE" => {
            skip_words(toks, &mut at, &["LOW_PRIORITY", "IGNORE"]);
            let t = table_ref(toks, &mut at)?;
            // `UPDATE t [[AS] alias] SET`: anything else (a join, a list) may write several.
            if toks.get(at).is_some_and(|x| x.is("AS")) {
                at += 1;
            }
            if toks.get(at).is_some_and(|x| !x.is("SET") && x.ident().is_some()) {
                at += 1;
            }
            toks.get(at).is_some_and(|x| x.is("SET")).then_some(t)
        }
        "DELETE" => {
            skip_words(toks, &mut at, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            if !toks.get(at).is_some_and(|x| x.is("FROM")) {
                // `DELETE t1, t2 FROM ...`: multi-table.
                return None;
            }
            at += 1;
            let t = table_ref(toks, &mut at)?;
            let multi = |x: &Tok| {
                *x == Tok::Punct(',')
                    || ["USING", "JOIN", "INNER", "LEFT", "RIGHT", "CROSS", "STRAIGHT_JOIN", "NATURAL"]
                        .iter()
                        .any(|w| x.is(w))
            };
            (!toks[at.min(toks.len())..].iter().take(3).any(multi)).then_some(t)
        }
        "LOAD" => {
            // LOAD DATA|XML ... INTO TABLE name.
            let into = toks.iter().position(|x| x.is("INTO"))?;
            let mut at = into + 1;
            if !toks.get(at).is_some_and(|x| x.is("TABLE")) {
                return None;
            }
            at += 1;
            table_ref(toks, &mut at)
        }
        _ => None,
    }
}

/// Whether an `ALTER` is `ALTER TABLE name AUTO_INCREMENT [=] n` and nothing else: it moves the
/// table's counter and changes no column, so the stream goes on (a rollback to MySQL logs one
/// per table with a generated key: ferry_mysql::switch).
fn only_moves_auto_increment(toks: &[Tok]) -> bool {
    let mut at = 1;
    if !toks.get(at).is_some_and(|t| t.is("TABLE")) {
        return false;
    }
    at += 1;
    if table_ref(toks, &mut at).is_none() || !toks.get(at).is_some_and(|t| t.is("AUTO_INCREMENT")) {
        return false;
    }
    at += 1;
    if toks.get(at) == Some(&Tok::Punct('=')) {
        at += 1;
    }
    let number = matches!(toks.get(at), Some(Tok::Word(n)) if n.bytes().all(|b| b.is_ascii_digit()));
    number && ends(toks, at + 1)
}

/// Whether two database or table names are the same one: byte for byte, or without regard to
/// case when the server has `lower_case_table_names` 1 or 2 (names compared in lower case).
pub fn same_name(a: &str, b: &str, fold_case: bool) -> bool {
    if fold_case {
        a.to_lowercase() == b.to_lowercase()
    } else {
        a == b
    }
}

/// The name among `names` that `wanted` designates (see [`same_name`]): the exact one first.
pub fn find_name<'a>(names: impl IntoIterator<Item = &'a String>, wanted: &str, fold_case: bool) -> Option<&'a String> {
    let mut folded = None;
    for n in names {
        if n == wanted {
            return Some(n);
        }
        if folded.is_none() && fold_case && same_name(n, wanted, true) {
            folded = Some(n);
        }
    }
    folded
}

/// An XA statement as the binlog logs it (`XA START X'..',X'..',n`, `XA COMMIT ...`): what it
/// does, and its xid in the server's text form, [`xid_key`] making two spellings of one xid
/// equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XaStatement {
    /// `XA START xid` (MySQL logs it where a transaction would say BEGIN).
    Start(String),
    /// `XA COMMIT xid` of a prepared transaction (`ONE PHASE`: `one_phase`).
    Commit { xid: String, one_phase: bool },
    /// `XA ROLLBACK xid`.
    Rollback(String),
}

/// The XA statement `query` is, if it is `XA START`, `XA BEGIN`, `XA COMMIT` or `XA ROLLBACK`.
pub fn xa(query: &str) -> Option<XaStatement> {
    let q = query.trim().trim_end_matches(';').trim_end();
    let mut words = q.splitn(3, char::is_whitespace);
    if !words.next()?.eq_ignore_ascii_case("XA") {
        return None;
    }
    let verb = words.next()?.to_ascii_uppercase();
    let rest = words.next()?.trim();
    match verb.as_str() {
        "START" | "BEGIN" => Some(XaStatement::Start(rest.to_string())),
        "ROLLBACK" => Some(XaStatement::Rollback(rest.to_string())),
        "COMMIT" => {
            let upper = rest.to_ascii_uppercase();
            let one_phase = upper.ends_with("ONE PHASE");
            let xid = if one_phase {
                rest[..rest.len() - "ONE PHASE".len()].trim_end()
            } else {
                rest
            };
            Some(XaStatement::Commit {
                xid: xid.to_string(),
                one_phase,
            })
        }
        _ => None,
    }
}

/// The xid `X'6131',X'',1` as its parts are: format id, global transaction id, branch qualifier.
pub fn xid_text(format_id: u32, gtrid: &[u8], bqual: &[u8]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("X'{}',X'{}',{format_id}", hex(gtrid), hex(bqual))
}

/// One xid's spellings made equal: case and spaces left out (the server logs hex digits in
/// one case, a format id of 1 sometimes not at all).
pub fn xid_key(xid: &str) -> String {
    let mut k: String = xid.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    // `X'..',X'..'` without a format id is format id 1.
    if k.matches(',').count() == 1 {
        k.push_str(",1");
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xa_statements_and_their_xids() {
        assert_eq!(xa("XA START X'6131',X'',1"), Some(XaStatement::Start("X'6131',X'',1".into())));
        assert_eq!(
            xa("XA COMMIT X'6232',X'6271',7"),
            Some(XaStatement::Commit {
                xid: "X'6232',X'6271',7".into(),
                one_phase: false
            })
        );
        assert_eq!(
            xa("xa commit X'63',X'',1 one phase"),
            Some(XaStatement::Commit {
                xid: "X'63',X'',1".into(),
                one_phase: true
            })
        );
        assert_eq!(xa("XA ROLLBACK X'6131',X'',1"), Some(XaStatement::Rollback("X'6131',X'',1".into())));
        assert_eq!(xa("XA END X'6131',X'',1"), None);
        assert_eq!(xa("XA RECOVER"), None);
        assert_eq!(xa("COMMIT"), None);
        assert_eq!(xid_text(7, b"b2", b"bq"), "X'6232',X'6271',7");
        assert_eq!(xid_key(&xid_text(1, b"a1", b"")), xid_key("X'6131',X''"));
        assert_eq!(xid_key("X'6A',X'',1"), xid_key("x'6a', x'', 1"));
        assert_ne!(xid_key("X'6a',X'',1"), xid_key("X'6a',X'',2"));
    }

    fn t(db: Option<&str>, table: &str) -> Statement {
        Statement::Truncate(TableRef::new(db, table))
    }

    #[test]
    fn statements_are_classified() {
        assert_eq!(classify("BEGIN"), Statement::Begin);
        assert_eq!(classify("/* app */ COMMIT"), Statement::Commit);
        assert_eq!(classify("/*!40000 ALTER TABLE t DISABLE KEYS */"), Statement::SchemaChange);
        assert_eq!(classify("ALTER TABLE t ADD c int"), Statement::SchemaChange);
        // A counter moved (a rollback does it): no shape change.
        assert_eq!(classify("ALTER TABLE `db`.`t` AUTO_INCREMENT = 1001"), Statement::Other);
        assert_eq!(classify("alter table t auto_increment=5;"), Statement::Other);
        assert_eq!(classify("ALTER TABLE `my t` AUTO_INCREMENT 5"), Statement::Other);
        assert_eq!(classify("ALTER TABLE t AUTO_INCREMENT = 5, ADD c int"), Statement::SchemaChange);
        assert_eq!(classify("ALTER TABLE t AUTO_INCREMENT"), Statement::SchemaChange);
        assert_eq!(classify("FLUSH PRIVILEGES"), Statement::Other);
        assert_eq!(classify("GRANT SELECT ON d.* TO 'u'@'%'"), Statement::Other);
        assert_eq!(classify("SAVEPOINT a"), Statement::Other);
    }

    #[test]
    fn truncate_of_any_legal_name() {
        assert_eq!(classify("TRUNCATE TABLE `d`.`t`"), t(Some("d"), "t"));
        assert_eq!(classify("truncate t"), t(None, "t"));
        assert_eq!(classify("TRUNCATE t;"), t(None, "t"));
        assert_eq!(classify("TRUNCATE TABLE `my table`"), t(None, "my table"));
        assert_eq!(classify("TRUNCATE TABLE `a.b`"), t(None, "a.b"));
        assert_eq!(classify("TRUNCATE TABLE `odd``name`"), t(None, "odd`name"));
        assert_eq!(classify("TRUNCATE TABLE `my db`.`a.b c`"), t(Some("my db"), "a.b c"));
        assert_eq!(classify("TRUNCATE TABLE d.`x y`"), t(Some("d"), "x y"));
        assert_eq!(classify("TRUNCATE TABLE d . t"), t(Some("d"), "t"));
        assert_eq!(classify("TRUNCATE \"ansi quoted\""), t(None, "ansi quoted"));
        assert_eq!(classify("TRUNCATE TABLE Größe"), t(None, "Größe"));
        assert_eq!(classify("TRUNCATE TABLE table1"), t(None, "table1"));
        assert_eq!(classify("/* x */ TRUNCATE /* y */ TABLE -- z\n t # w"), t(None, "t"));
        assert_eq!(classify("TRUNCATE TABLE t WAIT 5"), t(None, "t"));
        assert_eq!(classify("TRUNCATE TABLE t NOWAIT"), t(None, "t"));
        assert_eq!(classify("/*!40000 TRUNCATE TABLE `t` */"), t(None, "t"));
        // Never a silent skip: what cannot be read is said so.
        assert_eq!(classify("TRUNCATE TABLE `unclosed"), Statement::Unreadable);
        assert_eq!(classify("TRUNCATE"), Statement::Unreadable);
        assert_eq!(classify("TRUNCATE TABLE t PARTITION (p0)"), Statement::Unreadable);
    }

    #[test]
    fn writes_logged_as_statements_name_their_table() {
        let w = |db: Option<&str>, table: &str| Statement::Write(Some(vec![TableRef::new(db, table)]));
        assert_eq!(classify("INSERT INTO t VALUES (1)"), w(None, "t"));
        assert_eq!(classify("insert ignore into `d`.`my t` (a) select 1"), w(Some("d"), "my t"));
        assert_eq!(classify("INSERT t SET a = 1"), w(None, "t"));
        assert_eq!(classify("REPLACE LOW_PRIORITY INTO d.t VALUES (1)"), w(Some("d"), "t"));
        assert_eq!(classify("UPDATE t SET a = 1 WHERE b = 'x;y'"), w(None, "t"));
        assert_eq!(classify("UPDATE LOW_PRIORITY IGNORE d.t AS x SET x.a = 1"), w(Some("d"), "t"));
        assert_eq!(classify("UPDATE t x SET x.a = 1"), w(None, "t"));
        assert_eq!(classify("DELETE FROM t WHERE a = 1"), w(None, "t"));
        assert_eq!(classify("DELETE QUICK FROM `d`.`t`"), w(Some("d"), "t"));
        assert_eq!(classify("LOAD DATA INFILE '/tmp/x' IGNORE INTO TABLE d.t"), w(Some("d"), "t"));
        // Several tables, or a function that writes: Ferry cannot tell which.
        assert_eq!(classify("UPDATE a JOIN b ON a.id = b.id SET a.v = b.v"), Statement::Write(None));
        assert_eq!(classify("UPDATE a, b SET a.v = 1"), Statement::Write(None));
        assert_eq!(classify("DELETE a FROM a JOIN b"), Statement::Write(None));
        assert_eq!(classify("DELETE FROM a USING a JOIN b"), Statement::Write(None));
        assert_eq!(classify("SELECT `d`.`f`(1)"), Statement::Write(None));
    }

    #[test]
    fn names_match_exactly_or_folded_under_lower_case_table_names() {
        let names = vec!["orders".to_string(), "Mixed".to_string(), "mixed".to_string()];
        // lower_case_table_names = 0: byte for byte.
        assert_eq!(find_name(&names, "orders", false), Some(&names[0]));
        assert_eq!(find_name(&names, "ORDERS", false), None);
        assert_eq!(find_name(&names, "Mixed", false), Some(&names[1]));
        // 1 or 2: any case; the exact name first when several fold alike.
        assert_eq!(find_name(&names, "ORDERS", true), Some(&names[0]));
        assert_eq!(find_name(&names, "OrDeRs", true), Some(&names[0]));
        assert_eq!(find_name(&names, "mixed", true), Some(&names[2]));
        assert_eq!(find_name(&names, "MIXED", true), Some(&names[1]));
        assert_eq!(find_name(&names, "other", true), None);
        assert!(same_name("Shop", "shop", true) && !same_name("Shop", "shop", false));
        assert!(same_name("ÄBC", "äbc", true));
    }
}
