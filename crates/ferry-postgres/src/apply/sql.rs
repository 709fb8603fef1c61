//! Statement text for applying changes. Every parameter is text, cast to its column's type.

use ferry_core::ident::quote_ident;

use super::relation::Rel;

fn cast(n: usize, type_sql: &str) -> String {
    format!("${n}::{type_sql}")
}

/// `INSERT INTO t (all columns) VALUES (...)`.
pub fn insert(rel: &Rel) -> String {
    let cols: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let vals: Vec<String> = rel.columns.iter().enumerate().map(|(i, c)| cast(i + 1, &c.type_sql)).collect();
    // OVERRIDING SYSTEM VALUE: identity columns GENERATED ALWAYS take the source's values.
    format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
        rel.table.quoted(),
        cols.join(", "),
        vals.join(", ")
    )
}

/// The predicate that finds the row, with parameters from `$first` on: key columns by equality,
/// or under REPLICA IDENTITY FULL one row matching every column.
fn predicate(rel: &Rel, first: usize) -> String {
    if rel.full {
        let conds: Vec<String> = rel
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if c.text_compare {
                    // Types without an equality operator (json, xml, geometric) compare as text.
                    format!("{}::text IS NOT DISTINCT FROM ${}", quote_ident(&c.name), first + i)
                } else {
                    format!("{} IS NOT DISTINCT FROM {}", quote_ident(&c.name), cast(first + i, &c.type_sql))
                }
            })
            .collect();
        format!(
            "ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)",
            rel.table.quoted(),
            conds.join(" AND ")
        )
    } else {
        let conds: Vec<String> = rel
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("{} = {}", quote_ident(&c.name), cast(first + i, &c.type_sql)))
            .collect();
        conds.join(" AND ")
    }
}

/// `UPDATE t SET (columns in mask) WHERE key`; with an empty mask, a `SELECT` that only proves
/// the row exists (an update that changed nothing still must find its row).
pub fn update(rel: &Rel, mask: &[bool]) -> String {
    if !mask.iter().any(|m| *m) {
        return format!("SELECT 1 FROM {} WHERE {}", rel.table.quoted(), predicate(rel, 1));
    }
    let mut n = 0;
    let sets: Vec<String> = rel
        .columns
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(c, _)| {
            n += 1;
            format!("{} = {}", quote_ident(&c.name), cast(n, &c.type_sql))
        })
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        rel.table.quoted(),
        sets.join(", "),
        predicate(rel, n + 1)
    )
}

/// `DELETE FROM t WHERE key`.
pub fn delete(rel: &Rel) -> String {
    format!("DELETE FROM {} WHERE {}", rel.table.quoted(), predicate(rel, 1))
}

#[cfg(test)]
mod tests {
    use super::super::relation::RelColumn;
    use super::*;
    use ferry_core::{Lsn, TableName};

    fn rel(full: bool) -> Rel {
        Rel {
            id: 1,
            table: TableName::new("public", "My T"),
            columns: vec![
                RelColumn {
                    name: "id".into(),
                    type_sql: "integer".into(),
                    key: true,
                    text_compare: false,
                },
                RelColumn {
                    name: "doc".into(),
                    type_sql: "json".into(),
                    key: false,
                    text_compare: true,
                },
                RelColumn {
                    name: "n".into(),
                    type_sql: "numeric(10,2)".into(),
                    key: false,
                    text_compare: false,
                },
            ],
            full,
            in_scope: true,
            snapshot_lsn: Lsn(0),
        }
    }

    #[test]
    fn statements() {
        assert_eq!(
            insert(&rel(false)),
            r#"INSERT INTO "public"."My T" ("id", "doc", "n") OVERRIDING SYSTEM VALUE VALUES ($1::integer, $2::json, $3::numeric(10,2))"#
        );
        assert_eq!(
            update(&rel(false), &[true, false, true]),
            r#"UPDATE "public"."My T" SET "id" = $1::integer, "n" = $2::numeric(10,2) WHERE "id" = $3::integer"#
        );
        assert_eq!(
            update(&rel(false), &[false, false, false]),
            r#"SELECT 1 FROM "public"."My T" WHERE "id" = $1::integer"#
        );
        assert_eq!(delete(&rel(false)), r#"DELETE FROM "public"."My T" WHERE "id" = $1::integer"#);
        assert_eq!(
            delete(&rel(true)),
            r#"DELETE FROM "public"."My T" WHERE ctid = (SELECT ctid FROM "public"."My T" WHERE "id" IS NOT DISTINCT FROM $1::integer AND "doc"::text IS NOT DISTINCT FROM $2 AND "n" IS NOT DISTINCT FROM $3::numeric(10,2) LIMIT 1)"#
        );
    }
}
