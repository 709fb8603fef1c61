//! Statement text for applying changes. Every parameter is text, cast to its column's type.

use ferry_core::ident::quote_ident;

use super::relation::Rel;

fn cast(n: usize, type_sql: &str) -> String {
    format!("${n}::{}", input_type(type_sql))
}

/// The type a text value is cast to for a column of `type_sql`: the column's own, but for a
/// length-limited string or bit string its unlimited form. PostgreSQL cuts an over-length
/// value silently on an explicit cast to `varchar(n)`, `char(n)` or `bit(n)` and refuses it on
/// assignment (22001, 22026): a value that does not fit must fail (a dead letter), never
/// arrive shortened, and a key must not match a row by its cut prefix.
pub(crate) fn input_type(type_sql: &str) -> std::borrow::Cow<'_, str> {
    let (base, array) = match type_sql.strip_suffix("[]") {
        Some(b) => (b, "[]"),
        None => (type_sql, ""),
    };
    let name = base.split('(').next().unwrap_or(base).trim();
    let unlimited = match name {
        "character varying" | "varchar" => "text",
        "character" | "char" | "bpchar" => "bpchar",
        "bit" | "bit varying" | "varbit" => "bit varying",
        _ => return std::borrow::Cow::Borrowed(type_sql),
    };
    std::borrow::Cow::Owned(format!("{unlimited}{array}"))
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

/// `u.v1::type1, ...` for the columns of `unnest(...) AS u(v1, ...)`.
fn unnest(n: usize) -> String {
    let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (1..=n).map(|i| format!("v{i}")).collect();
    format!("unnest({}) AS u({})", params.join(", "), names.join(", "))
}

/// Set-based DELETE of many keys: one text[] per key column.
pub fn set_delete(rel: &Rel) -> String {
    let conds: Vec<String> = rel
        .key_columns()
        .enumerate()
        .map(|(i, c)| format!("t.{} = u.v{}::{}", quote_ident(&c.name), i + 1, input_type(&c.type_sql)))
        .collect();
    format!(
        "DELETE FROM {} AS t USING {} WHERE {}",
        rel.table.quoted(),
        unnest(conds.len()),
        conds.join(" AND ")
    )
}

/// Set-based UPDATE: one text[] per set column (in `mask` order), then one per key column.
pub fn set_update(rel: &Rel, mask: &[bool]) -> String {
    let set_cols: Vec<_> = rel.columns.iter().zip(mask).filter(|(_, m)| **m).map(|(c, _)| c).collect();
    let sets: Vec<String> = set_cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = u.v{}::{}", quote_ident(&c.name), i + 1, input_type(&c.type_sql)))
        .collect();
    let conds: Vec<String> = rel
        .key_columns()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "t.{} = u.v{}::{}",
                quote_ident(&c.name),
                set_cols.len() + i + 1,
                input_type(&c.type_sql)
            )
        })
        .collect();
    if sets.is_empty() {
        // Nothing known to set (only unchanged TOAST values): just prove the rows exist.
        return format!(
            "UPDATE {} AS t SET {} = t.{} FROM {} WHERE {}",
            rel.table.quoted(),
            quote_ident(&rel.key_columns().next().map(|c| c.name.clone()).unwrap_or_default()),
            quote_ident(&rel.key_columns().next().map(|c| c.name.clone()).unwrap_or_default()),
            unnest(conds.len()),
            conds.join(" AND ")
        );
    }
    format!(
        "UPDATE {} AS t SET {} FROM {} WHERE {}",
        rel.table.quoted(),
        sets.join(", "),
        unnest(sets.len() + conds.len()),
        conds.join(" AND ")
    )
}

/// Set-based INSERT: one text[] per column.
pub fn set_insert(rel: &Rel) -> String {
    let cols: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let vals: Vec<String> = rel
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("u.v{}::{}", i + 1, input_type(&c.type_sql)))
        .collect();
    format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}",
        rel.table.quoted(),
        cols.join(", "),
        vals.join(", "),
        unnest(cols.len())
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn length_limited_types_are_cast_unlimited() {
        use super::input_type;
        assert_eq!(input_type("character varying(255)"), "text");
        assert_eq!(input_type("character(3)[]"), "bpchar[]");
        assert_eq!(input_type("bit(3)"), "bit varying");
        assert_eq!(input_type("numeric(10,2)"), "numeric(10,2)");
        assert_eq!(input_type("public.\"character varying\""), "public.\"character varying\"");
    }

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
            compactable: true,
        }
    }

    #[test]
    fn set_statements() {
        let r = rel(false);
        assert_eq!(
            set_delete(&r),
            r#"DELETE FROM "public"."My T" AS t USING unnest($1::text[]) AS u(v1) WHERE t."id" = u.v1::integer"#
        );
        assert_eq!(
            set_update(&r, &[false, true, true]),
            r#"UPDATE "public"."My T" AS t SET "doc" = u.v1::json, "n" = u.v2::numeric(10,2) FROM unnest($1::text[], $2::text[], $3::text[]) AS u(v1, v2, v3) WHERE t."id" = u.v3::integer"#
        );
        assert_eq!(
            set_insert(&r),
            r#"INSERT INTO "public"."My T" ("id", "doc", "n") OVERRIDING SYSTEM VALUE SELECT u.v1::integer, u.v2::json, u.v3::numeric(10,2) FROM unnest($1::text[], $2::text[], $3::text[]) AS u(v1, v2, v3)"#
        );
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
