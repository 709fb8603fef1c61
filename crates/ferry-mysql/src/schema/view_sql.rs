//! The view translator: a MySQL/MariaDB view's `SELECT` (as the server prints it in
//! `information_schema.VIEWS`) to PostgreSQL, or the reason it cannot. No I/O.
//!
//! Conservative by design: it translates only what it can prove means the same on both
//! engines, token by token, and refuses everything else; a refused view is listed with its
//! MySQL definition for porting by hand, never half-translated. What passes:
//! identifiers (backticks to double quotes, the source database to the target schema), string
//! and numeric literals, the clauses of a plain `SELECT` (joins, `WHERE`, `GROUP BY`,
//! `HAVING`, `ORDER BY`, `UNION`, subqueries, `CASE`, `LIMIT n`), comparisons and `AND`/`OR`/
//! `NOT`/`IS`/`IN`/`BETWEEN`/`LIKE`/`EXISTS` where a condition stands, `+ - *`, and the
//! functions of [`PORTABLE_FUNCTIONS`]. What does not, among others: `IF()`, `GROUP_CONCAT`,
//! `CONCAT` (NULL rules differ), `/` (integer division differs), `LIMIT a, b`, user variables,
//! `CAST`, date arithmetic, `COLLATE`, `<=>`, `||`, and a comparison in the select list (MySQL
//! returns 0/1, PostgreSQL a boolean). Whatever passes is still created on the target for
//! real, and a view the target refuses is listed too.

use ferry_core::ident::{quote_ident, quote_literal};

/// Functions that exist on both engines with the same arguments, result and NULL rules (for
/// the argument types a view's columns can have after the type map).
pub const PORTABLE_FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "coalesce",
    "nullif",
    "lower",
    "upper",
    "abs",
    "floor",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "trim",
    "ltrim",
    "rtrim",
    "replace",
    "left",
    "right",
];

/// Keywords that read the same on both engines anywhere a SELECT may hold them.
const KEYWORDS: &[&str] = &[
    "select", "distinct", "from", "join", "inner", "left", "right", "outer", "cross", "on", "using", "where", "group", "by", "having",
    "order", "asc", "desc", "case", "when", "then", "else", "end", "as", "union", "all", "null", "limit",
];

/// Keywords that make a boolean: on PostgreSQL a boolean, on MySQL 0 or 1. Allowed where a
/// condition stands, refused in a select list.
const CONDITION_WORDS: &[&str] = &["and", "or", "not", "is", "in", "between", "like", "exists", "true", "false"];

/// Comparison operators (the same remark).
const COMPARISONS: &[&str] = &["=", "<>", "!=", "<", ">", "<=", ">="];

/// The character sets whose introducer (`_utf8mb4'abc'`) may be dropped: the literal's
/// characters are the same in the target's UTF-8.
const INTRODUCERS: &[&str] = &["_utf8mb4", "_utf8mb3", "_utf8", "_latin1", "_ascii"];

/// A translated view's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The PostgreSQL query.
    pub sql: String,
    /// Relations of the source database it reads (tables or views), in order of appearance.
    pub relations: Vec<String>,
    /// It compares or holds string literals: MySQL compared them under the column's collation
    /// (often case-insensitive), PostgreSQL compares them exactly.
    pub has_strings: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A backticked identifier, unquoted.
    Ident(String),
    /// A bare word, lower case.
    Word(String),
    /// A string literal's value.
    Str(String),
    Num(String),
    /// Punctuation or an operator.
    Op(String),
}

/// Tokens with whether whitespace stood before each.
fn tokenize(sql: &str) -> Result<Vec<(bool, Tok)>, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut space = false;
    while i < chars.len() {
        let ch = chars[i];
        if ch.is_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        let tok = match ch {
            '`' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        Some('`') if chars.get(i + 1) == Some(&'`') => {
                            s.push('`');
                            i += 2;
                        }
                        Some('`') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                        None => return Err("an identifier quote is not closed".into()),
                    }
                }
                Tok::Ident(s)
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let Some(&n) = chars.get(i + 1) else {
                                return Err("a string literal is not closed".into());
                            };
                            match n {
                                '0' => return Err("a string literal holds a NUL character, which PostgreSQL text cannot".into()),
                                'n' => s.push('\n'),
                                'r' => s.push('\r'),
                                't' => s.push('\t'),
                                'b' => s.push('\u{8}'),
                                'Z' => s.push('\u{1a}'),
                                // Kept with the backslash by MySQL (LIKE escapes), as by PostgreSQL.
                                '%' | '_' => {
                                    s.push('\\');
                                    s.push(n);
                                }
                                other => s.push(other),
                            }
                            i += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                        None => return Err("a string literal is not closed".into()),
                    }
                }
                Tok::Str(s)
            }
            '"' => return Err("a double-quoted string (MySQL's, not PostgreSQL's identifier quote)".into()),
            c if c.is_ascii_digit() => {
                let start = i;
                if c == '0' && matches!(chars.get(i + 1), Some('x' | 'X' | 'b' | 'B')) {
                    return Err("a hexadecimal or bit literal".into());
                }
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                    i += 1;
                    if i < chars.len() && matches!(chars[i], '+' | '-') {
                        i += 1;
                    }
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    return Err(format!(
                        "the token {} is neither a number nor a quoted name",
                        chars[start..=i].iter().collect::<String>()
                    ));
                }
                Tok::Num(chars[start..i].iter().collect())
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                    i += 1;
                }
                Tok::Word(chars[start..i].iter().collect::<String>().to_lowercase())
            }
            _ => {
                // Two-character operators first.
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let three: String = chars[i..(i + 3).min(chars.len())].iter().collect();
                let op = if three == "<=>" {
                    three
                } else if ["<>", "!=", "<=", ">=", "||", "&&", ":=", "->", "<<", ">>"].contains(&two.as_str()) {
                    two
                } else {
                    ch.to_string()
                };
                i += op.chars().count();
                out.push((space, Tok::Op(op)));
                space = false;
                continue;
            }
        };
        out.push((space, tok));
        space = false;
    }
    Ok(out)
}

/// Where a token stands: in a list of values (a select list, a THEN), or in a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Value,
    Condition,
}

/// Translates the view query `sql` of database `db` (the tables it names are in database
/// `db` on the source and in schema `schema` on the target). `Err`: why it is not provably
/// portable.
pub fn translate(sql: &str, db: &str, schema: &str) -> Result<Translated, String> {
    let toks = tokenize(sql)?;
    let mut out = String::with_capacity(sql.len() + 16);
    let mut relations: Vec<String> = Vec::new();
    let mut has_strings = false;
    // The context of each open parenthesis level, and of each open CASE.
    let mut ctx = vec![Ctx::Value];
    let mut cases: Vec<Ctx> = Vec::new();
    let mut i = 0;
    let emit = |out: &mut String, space: bool, text: &str| {
        if space && !out.is_empty() {
            out.push(' ');
        }
        out.push_str(text);
    };
    while i < toks.len() {
        let (space, tok) = &toks[i];
        let next = toks.get(i + 1).map(|t| &t.1);
        let top = *ctx.last().expect("the outermost level is never closed");
        match tok {
            Tok::Ident(first) => {
                // A dotted name: up to three backticked parts.
                let mut parts = vec![first.clone()];
                let mut j = i + 1;
                while j + 1 < toks.len() && toks[j].1 == Tok::Op(".".into()) && !toks[j].0 && !toks[j + 1].0 {
                    match &toks[j + 1].1 {
                        Tok::Ident(p) => parts.push(p.clone()),
                        other => return Err(format!("a qualified name ends in {other:?}")),
                    }
                    j += 2;
                }
                let text = match parts.as_slice() {
                    [one] => quote_ident(one),
                    [a, b] if a == db => {
                        if !relations.contains(b) {
                            relations.push(b.clone());
                        }
                        format!("{}.{}", quote_ident(schema), quote_ident(b))
                    }
                    [a, b] => format!("{}.{}", quote_ident(a), quote_ident(b)),
                    [a, b, c] if a == db => format!("{}.{}.{}", quote_ident(schema), quote_ident(b), quote_ident(c)),
                    [a, b, _] => return Err(format!("it reads {a}.{b}, a table of another database")),
                    _ => return Err(format!("the name {} has too many parts", parts.join("."))),
                };
                emit(&mut out, *space, &text);
                i = j;
                continue;
            }
            Tok::Str(s) => {
                has_strings = true;
                emit(&mut out, *space, &quote_literal(s));
            }
            Tok::Num(n) => emit(&mut out, *space, n),
            Tok::Word(w) if w.starts_with('_') && matches!(next, Some(Tok::Str(_))) => {
                // A character set introducer: dropped when the characters are the same in UTF-8.
                if !INTRODUCERS.contains(&w.as_str()) {
                    return Err(format!("a string literal in character set {}", &w[1..]));
                }
                let (_, Tok::Str(s)) = &toks[i + 1] else {
                    unreachable!("checked above")
                };
                has_strings = true;
                emit(&mut out, *space, &quote_literal(s));
                i += 2;
                continue;
            }
            Tok::Word(w)
                if next == Some(&Tok::Op("(".into()))
                    && !toks[i + 1].0
                    && (!KEYWORDS.contains(&w.as_str()) || matches!(w.as_str(), "left" | "right"))
                    && !CONDITION_WORDS.contains(&w.as_str()) =>
            {
                if !PORTABLE_FUNCTIONS.contains(&w.as_str()) {
                    return Err(format!(
                        "it calls {}(), which PostgreSQL lacks or which behaves differently there",
                        w.to_uppercase()
                    ));
                }
                emit(&mut out, *space, w);
            }
            Tok::Word(w) if w == "limit" => {
                let ok = matches!(next, Some(Tok::Num(n)) if n.chars().all(|c| c.is_ascii_digit()))
                    && toks.get(i + 2).map(|t| &t.1) != Some(&Tok::Op(",".into()))
                    && !matches!(toks.get(i + 2).map(|t| &t.1), Some(Tok::Word(w)) if w == "offset");
                if !ok {
                    return Err("LIMIT with an offset or an expression (its syntax differs)".into());
                }
                emit(&mut out, *space, w);
            }
            Tok::Word(w) if KEYWORDS.contains(&w.as_str()) => {
                match w.as_str() {
                    "select" | "then" | "else" => *ctx.last_mut().expect("open") = Ctx::Value,
                    "from" | "where" | "on" | "having" | "when" | "group" | "order" => *ctx.last_mut().expect("open") = Ctx::Condition,
                    "case" => cases.push(top),
                    "end" => *ctx.last_mut().expect("open") = cases.pop().ok_or("END without CASE")?,
                    _ => {}
                }
                emit(&mut out, *space, w);
            }
            Tok::Word(w) if CONDITION_WORDS.contains(&w.as_str()) => {
                if top == Ctx::Value {
                    return Err(format!(
                        "its select list holds a condition ({}): MySQL returns 0 or 1 there, PostgreSQL a boolean",
                        w.to_uppercase()
                    ));
                }
                emit(&mut out, *space, w);
            }
            Tok::Word(w) => return Err(format!("{} is MySQL syntax Ferry does not translate", w.to_uppercase())),
            Tok::Op(op) => {
                match op.as_str() {
                    "(" => ctx.push(top),
                    ")" => {
                        if ctx.len() == 1 {
                            return Err("unbalanced parentheses".into());
                        }
                        ctx.pop();
                    }
                    "," | "." | "+" | "-" | "*" => {}
                    o if COMPARISONS.contains(&o) => {
                        if top == Ctx::Value {
                            return Err(format!(
                                "its select list holds a comparison ({o}): MySQL returns 0 or 1 there, PostgreSQL a boolean"
                            ));
                        }
                    }
                    "/" => return Err("it divides (/): MySQL's division of integers gives a decimal, PostgreSQL's an integer".into()),
                    "@" => return Err("it reads a variable (@)".into()),
                    "||" => return Err("it uses ||, an OR in MySQL and a concatenation in PostgreSQL".into()),
                    other => return Err(format!("it uses the operator {other}, which Ferry does not translate")),
                }
                emit(&mut out, *space, op);
            }
        }
        i += 1;
    }
    if ctx.len() != 1 || !cases.is_empty() {
        return Err("unbalanced parentheses or CASE".into());
    }
    Ok(Translated {
        sql: out,
        relations,
        has_strings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> Translated {
        translate(sql, "shop", "app").unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn refused(sql: &str) -> String {
        match translate(sql, "shop", "app") {
            Ok(t) => panic!("{sql} was translated to {}", t.sql),
            Err(e) => e,
        }
    }

    #[test]
    fn portable_views_are_translated() {
        // MariaDB's form of `SELECT id, total FROM orders WHERE total > 10`.
        let t = ok("select `shop`.`orders`.`id` AS `id`,`shop`.`orders`.`total` AS `total` from `shop`.`orders` where `shop`.`orders`.`total` > 10");
        assert_eq!(
            t.sql,
            r#"select "app"."orders"."id" as "id","app"."orders"."total" as "total" from "app"."orders" where "app"."orders"."total" > 10"#
        );
        assert_eq!(t.relations, ["orders"]);
        assert!(!t.has_strings);
        // A join with aliases, an aggregate, GROUP BY, HAVING, ORDER BY, LIMIT n.
        let t = ok("select `c`.`name` AS `name`,count(0) AS `n`,coalesce(sum(`o`.`total`),0) AS `spent` \
                    from (`shop`.`customers` `c` left join `shop`.`orders` `o` on((`o`.`customer_id` = `c`.`id`))) \
                    where `c`.`name` like 'A%' and `o`.`id` is not null group by `c`.`name` having count(0) >= 2 order by `c`.`name` desc limit 10");
        assert!(
            t.sql
                .contains(r#"from ("app"."customers" "c" left join "app"."orders" "o" on(("o"."customer_id" = "c"."id")))"#),
            "{}",
            t.sql
        );
        assert!(t.sql.ends_with(r#"order by "c"."name" desc limit 10"#), "{}", t.sql);
        assert_eq!(t.relations, ["customers", "orders"]);
        assert!(t.has_strings);
        // CASE in the select list: the WHEN is a condition, the THEN a value.
        let t = ok("select case when `shop`.`t`.`a` > 1 then 'big' else 'small' end AS `size`,`shop`.`t`.`a` + 1 AS `b` from `shop`.`t`");
        assert!(t.sql.starts_with("select case when"), "{}", t.sql);
        // MySQL 8's introducers, and escapes.
        let t = ok(r"select `shop`.`t`.`a` AS `a` from `shop`.`t` where `shop`.`t`.`s` = _utf8mb4'it\'s' or `shop`.`t`.`s` = 'a''b'");
        assert!(t.sql.ends_with(r#"= 'it''s' or "app"."t"."s" = 'a''b'"#), "{}", t.sql);
        // A subquery reading a view.
        let t = ok("select `v`.`id` AS `id` from `shop`.`v` where `v`.`id` in (select `shop`.`t`.`id` from `shop`.`t`)");
        assert_eq!(t.relations, ["v", "t"]);
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        for (sql, why) in [
            ("select if(`shop`.`t`.`a` > 1,1,0) AS `x` from `shop`.`t`", "IF()"),
            (
                "select group_concat(`shop`.`t`.`a` separator ',') AS `x` from `shop`.`t`",
                "GROUP_CONCAT()",
            ),
            ("select concat(`shop`.`t`.`a`,'x') AS `x` from `shop`.`t`", "CONCAT()"),
            ("select `shop`.`t`.`a` / 2 AS `x` from `shop`.`t`", "divides"),
            ("select `shop`.`t`.`a` AS `a` from `shop`.`t` limit 5,10", "LIMIT"),
            ("select @x AS `x`", "variable"),
            ("select `shop`.`t`.`a` > 1 AS `big` from `shop`.`t`", "comparison"),
            ("select `shop`.`t`.`a` is null AS `n` from `shop`.`t`", "condition (IS)"),
            ("select `shop`.`t`.`a` AS `a` from `shop`.`t` where `shop`.`t`.`a` <=> 1", "<=>"),
            ("select `other`.`t`.`a` AS `a` from `other`.`t`", "another database"),
            (
                "select cast(`shop`.`t`.`a` as char charset utf8mb4) AS `a` from `shop`.`t`",
                "CAST()",
            ),
            (
                "select `shop`.`t`.`a` AS `a` from `shop`.`t` where `shop`.`t`.`s` = _binary'x'",
                "character set binary",
            ),
            (
                "select `shop`.`t`.`a` AS `a` from `shop`.`t` where `shop`.`t`.`a` = 0x1f",
                "hexadecimal",
            ),
            ("select now() AS `n`", "NOW()"),
            (
                "select `shop`.`t`.`a` AS `a` from `shop`.`t` straight_join `shop`.`u`",
                "STRAIGHT_JOIN",
            ),
            ("select `shop`.`t`.`s` collate utf8mb4_bin AS `a` from `shop`.`t`", "COLLATE"),
        ] {
            let e = refused(sql);
            assert!(e.contains(why), "{sql}: {e}");
        }
    }

    #[test]
    fn bad_input_is_refused_not_panicked_on() {
        for sql in [
            "select `a",
            "select 'a",
            "select (",
            "select )",
            "select case",
            "select 'x\\",
            "",
            "select 1e",
            "`a`.",
            "select 12abc",
        ] {
            let _ = translate(sql, "shop", "app");
        }
        assert!(translate("select (", "shop", "app").is_err());
        assert!(translate("select 12abc", "shop", "app").is_err());
    }
}
