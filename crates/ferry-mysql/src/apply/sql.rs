//! The SQL the MySQL sink sends: quoting, and the statements of each change's shape. No I/O.

/// Quotes a MySQL identifier: `` a`b `` becomes `` `a``b` ``.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MySQL string literal for the sink's own session, whose `sql_mode` (set at open) has no
/// `NO_BACKSLASH_ESCAPES`: backslashes and quotes are escaped.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `INSERT INTO t (a, b) VALUES (?, ?), (?, ?)` for `rows` rows.
pub fn insert(table: &str, columns: &[&str], rows: usize) -> String {
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut sql = String::with_capacity(32 + table.len() + columns.len() * 12 + rows * (one.len() + 2));
    sql.push_str("INSERT INTO ");
    sql.push_str(table);
    sql.push_str(" (");
    sql.push_str(&columns.join(", "));
    sql.push_str(") VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&one);
    }
    sql
}

/// `UPDATE t SET a = ?, b = ? WHERE <conditions> LIMIT 1` (`set`: the assignments).
pub fn update(table: &str, set: &[String], conditions: &[String]) -> String {
    format!("UPDATE {table} SET {} WHERE {} LIMIT 1", set.join(", "), where_clause(conditions))
}

/// `DELETE FROM t WHERE <conditions> LIMIT 1`.
pub fn delete(table: &str, conditions: &[String]) -> String {
    format!("DELETE FROM {table} WHERE {} LIMIT 1", where_clause(conditions))
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        // Nothing to match on would change an arbitrary row: match none (a dead letter).
        return "FALSE".into();
    }
    conditions.join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_shapes() {
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(literal("it's \\ ok"), "'it''s \\\\ ok'");
        assert_eq!(
            insert("`d`.`t`", &["`a`", "`b`"], 2),
            "INSERT INTO `d`.`t` (`a`, `b`) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(
            update("`t`", &["`a` = ?".into()], &["`k` = ?".into(), "`j` IS NULL".into()]),
            "UPDATE `t` SET `a` = ? WHERE `k` = ? AND `j` IS NULL LIMIT 1"
        );
        assert_eq!(delete("`t`", &[]), "DELETE FROM `t` WHERE FALSE LIMIT 1");
    }
}
