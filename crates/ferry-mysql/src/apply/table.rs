//! A relation of the stream as the MySQL sink writes it: its MySQL table, each column's
//! conversion, and the statements of each change (values as parameters). No I/O.

use ferry_core::change::{Datum, Identity, Relation, Row};
use ferry_core::TableName;
use mysql_async::Value;

use super::convert::Conv;
use super::sql;

/// A MySQL column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyColumn {
    /// `COLUMN_NAME`.
    pub name: String,
    /// `DATA_TYPE`.
    pub data_type: String,
    /// `COLUMN_TYPE`.
    pub column_type: String,
    /// `EXTRA`: `VIRTUAL GENERATED`, `STORED GENERATED` (MariaDB also `PERSISTENT`).
    pub extra: String,
}

impl MyColumn {
    /// A generated column: MySQL computes it, and refuses a value for it.
    pub fn generated(&self) -> bool {
        let e = self.extra.to_ascii_uppercase();
        e.contains("GENERATED") || e.contains("VIRTUAL") || e.contains("PERSISTENT")
    }
}

/// How JSON values are compared when a row is found by all its columns
/// ([`Identity::Full`]): a JSON document is not equal to its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonEq {
    /// MySQL: `c = CAST(? AS JSON)`.
    Cast,
    /// MariaDB 10.7+: `JSON_EQUALS(c, ?)` (its JSON is text; PostgreSQL's jsonb output has
    /// another spacing and key order than what MariaDB stored).
    Equals,
    /// Older MariaDB: JSON columns are left out of the match.
    Skip,
}

/// One column of a relation on the MySQL side.
#[derive(Debug, Clone)]
pub struct Col {
    /// Name (for messages).
    pub name: String,
    /// Quoted for SQL.
    pub quoted: String,
    /// Value conversion.
    pub conv: Conv,
    /// Generated on MySQL: never written.
    pub generated: bool,
    /// Part of the stream's row identity.
    pub key: bool,
    /// Character column: compared byte for byte (`COLLATE utf8mb4_bin`) when every column
    /// finds the row, so that `'A'` does not find `'a'`.
    pub collate: bool,
}

/// A table in scope: where its changes go.
#[derive(Debug)]
pub struct Target {
    /// The stream's name (`public.orders`).
    pub pg: TableName,
    /// `` `db`.`orders` ``.
    pub quoted: String,
    /// How updates and deletes find their row.
    pub identity: Identity,
    /// One per column of the relation, in its order.
    pub cols: Vec<Col>,
    /// Relation indexes of the columns an INSERT writes (not generated).
    pub insert_cols: Vec<usize>,
    json_eq: JsonEq,
}

/// A value that does not convert, with its column.
pub type Refused = String;

impl Target {
    /// The target of a relation in scope, from the MySQL table's columns; Err names the
    /// column that has no counterpart or no conversion.
    pub fn new(rel: &Relation, database: &str, columns: &[MyColumn], json_eq: JsonEq) -> Result<Target, String> {
        let quoted = format!("{}.{}", sql::ident(database), sql::ident(&rel.table.name));
        let mut cols = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let my = columns.iter().find(|m| m.name == c.name).ok_or_else(|| {
                format!(
                    "column {} of {} has no column of that name in {database}.{} on MySQL/MariaDB",
                    c.name, rel.table, rel.table.name
                )
            })?;
            let conv = Conv::of(&my.data_type, &my.column_type, &c.type_sql).map_err(|e| format!("column {}: {e}", c.name))?;
            let collate = matches!(conv, Conv::Text { .. })
                && matches!(
                    my.data_type.to_ascii_lowercase().as_str(),
                    "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
                );
            cols.push(Col {
                name: c.name.clone(),
                quoted: sql::ident(&c.name),
                conv,
                generated: my.generated(),
                key: c.key,
                collate,
            });
        }
        let insert_cols = (0..cols.len()).filter(|&i| !cols[i].generated).collect();
        Ok(Target {
            pg: rel.table.clone(),
            quoted,
            identity: rel.identity,
            cols,
            insert_cols,
            json_eq,
        })
    }

    /// The MySQL value of column `i`'s datum (None: unchanged, not sent).
    pub fn value(&self, i: usize, d: &Datum) -> Result<Option<Value>, Refused> {
        let c = &self.cols[i];
        match d {
            Datum::Null => Ok(Some(Value::NULL)),
            Datum::Unchanged => Ok(None),
            Datum::Text(b) => c.conv.value(b).map(Some).map_err(|e| format!("column {}: {e}", c.name)),
            Datum::Binary(_) => Err(format!(
                "column {}: a value in binary format; the MySQL sink reads PostgreSQL's text output only",
                c.name
            )),
        }
    }

    /// An inserted row's parameters, in [`Target::insert_cols`] order.
    pub fn insert_params(&self, row: &Row, out: &mut Vec<Value>) -> Result<(), Refused> {
        for &i in &self.insert_cols {
            let d = row.get(i).unwrap_or(&Datum::Null);
            match self.value(i, d)? {
                Some(v) => out.push(v),
                None => return Err(format!("column {}: an insert without the column's value", self.cols[i].name)),
            }
        }
        Ok(())
    }

    /// `INSERT` of `rows` rows.
    pub fn insert_sql(&self, rows: usize) -> String {
        let names: Vec<&str> = self.insert_cols.iter().map(|&i| self.cols[i].quoted.as_str()).collect();
        sql::insert(&self.quoted, &names, rows)
    }

    /// Rows one INSERT may carry: MySQL takes at most 65,535 parameters per statement.
    pub fn rows_per_insert(&self, wanted: usize) -> usize {
        (65_535 / self.insert_cols.len().max(1)).clamp(1, wanted)
    }

    /// The conditions that find the row a change is about, and their parameters. `row` is the
    /// old key or old row (or, when the key did not change, the new row).
    pub fn find(&self, row: &Row, params: &mut Vec<Value>) -> Result<Vec<String>, Refused> {
        let mut conds = Vec::new();
        let full = self.identity == Identity::Full;
        for (i, c) in self.cols.iter().enumerate() {
            let wanted = if full { !c.generated } else { c.key };
            let Some(d) = row.get(i).filter(|_| wanted) else { continue };
            let Some(v) = self.value(i, d)? else { continue };
            // Every column: `<=>` (NULL-safe, so the statement's shape does not depend on which
            // values are NULL), except JSON, whose equality is a function. A key is never NULL.
            if v == Value::NULL && (!full || c.conv == Conv::Json) {
                conds.push(format!("{} IS NULL", c.quoted));
                continue;
            }
            let op = if full { "<=>" } else { "=" };
            let cond = match &c.conv {
                Conv::Json => match self.json_eq {
                    JsonEq::Cast => format!("{} = CAST(? AS JSON)", c.quoted),
                    JsonEq::Equals => format!("JSON_EQUALS({}, ?)", c.quoted),
                    JsonEq::Skip => continue,
                },
                // A string against a DECIMAL compares as a double in MySQL: 65 digits would not.
                Conv::Decimal { cast } => format!("{} {op} CAST(? AS {cast})", c.quoted),
                // CONVERT first: a NULL parameter has no character set to collate.
                _ if full && c.collate => format!("{} <=> (CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin)", c.quoted),
                _ => format!("{} {op} ?", c.quoted),
            };
            conds.push(cond);
            params.push(v);
        }
        Ok(conds)
    }

    /// The `SET` list of an update and its parameters: every column sent (an unchanged TOAST
    /// value keeps the stored one), but not generated ones, and not the key when it did not
    /// move (`key_moved`: the old key was sent, or every column finds the row).
    pub fn assignments(&self, new: &Row, key_moved: bool, params: &mut Vec<Value>) -> Result<Vec<String>, Refused> {
        let mut set = Vec::new();
        for (i, c) in self.cols.iter().enumerate() {
            if c.generated || (c.key && !key_moved) {
                continue;
            }
            let Some(d) = new.get(i) else { continue };
            if let Some(v) = self.value(i, d)? {
                set.push(format!("{} = ?", c.quoted));
                params.push(v);
            }
        }
        if set.is_empty() {
            // Nothing to change (only the key was sent, and it stays): the statement still has
            // to find its row, and with CLIENT_FOUND_ROWS a no-op assignment counts it.
            if let Some(c) = self.cols.iter().find(|c| !c.generated) {
                set.push(format!("{0} = {0}", c.quoted));
            }
        }
        Ok(set)
    }

    /// `col=value, ...` of the identity columns of `row` (every column without a key), for a
    /// dead letter.
    pub fn describe_key(&self, row: &Row) -> String {
        let keyed = self.cols.iter().any(|c| c.key);
        describe(self.cols.iter().zip(row).filter(|(c, _)| c.key || !keyed))
    }

    /// `col=value, ...` of the whole row, long values cut, for a dead letter.
    pub fn describe_row(&self, row: &Row) -> String {
        describe(self.cols.iter().zip(row))
    }
}

fn describe<'a>(cols: impl Iterator<Item = (&'a Col, &'a Datum)>) -> String {
    cols.map(|(c, d)| {
        let v = match d {
            Datum::Null => "NULL".to_string(),
            Datum::Unchanged => "(unchanged)".to_string(),
            Datum::Text(b) | Datum::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        };
        let n = v.chars().count();
        if n > 200 {
            format!("{}={}...({n} chars)", c.name, v.chars().take(200).collect::<String>())
        } else {
            format!("{}={v}", c.name)
        }
    })
    .collect::<Vec<_>>()
    .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_core::change::Column;

    fn rel(identity: Identity) -> Relation {
        let col = |name: &str, type_sql: &str, key: bool| Column {
            name: name.into(),
            type_sql: type_sql.into(),
            key,
            default: None,
            not_null: false,
        };
        Relation {
            id: 1,
            table: TableName::new("public", "t"),
            scope: TableName::new("public", "t"),
            identity,
            columns: vec![
                col("id", "numeric(65,30)", true),
                col("name", "varchar(10)", false),
                col("doc", "jsonb", false),
                col("g", "integer", false),
            ],
        }
    }

    fn my() -> Vec<MyColumn> {
        let c = |name: &str, dt: &str, ct: &str, extra: &str| MyColumn {
            name: name.into(),
            data_type: dt.into(),
            column_type: ct.into(),
            extra: extra.into(),
        };
        vec![
            c("id", "decimal", "decimal(65,30)", ""),
            c("g", "int", "int(11)", "VIRTUAL GENERATED"),
            c("name", "varchar", "varchar(10)", ""),
            c("doc", "longtext", "longtext", ""),
        ]
    }

    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::from(s.to_string()))
    }

    #[test]
    fn statements_find_rows_and_skip_generated_columns() {
        let target = Target::new(&rel(Identity::Key), "shop", &my(), JsonEq::Equals).unwrap();
        assert_eq!(
            target.insert_sql(1),
            "INSERT INTO `shop`.`t` (`id`, `name`, `doc`) VALUES (?, ?, ?)"
        );
        let row = vec![t("1.5"), t("a"), Datum::Null, t("2")];
        let mut p = Vec::new();
        assert_eq!(target.find(&row, &mut p).unwrap(), ["`id` = CAST(? AS decimal(65,30))"]);
        let mut p = Vec::new();
        let new = vec![t("1.5"), Datum::Unchanged, t("{}"), t("3")];
        assert_eq!(target.assignments(&new, false, &mut p).unwrap(), ["`doc` = ?"]);
        assert_eq!(p, [Value::Bytes(b"{}".to_vec())]);
        let mut p = Vec::new();
        let only_key = vec![t("1.5"), Datum::Unchanged, Datum::Unchanged, Datum::Unchanged];
        assert_eq!(target.assignments(&only_key, false, &mut p).unwrap(), ["`id` = `id`"]);
        assert_eq!(target.describe_key(&row), "id=1.5");

        let full = Target::new(&rel(Identity::Full), "shop", &my(), JsonEq::Equals).unwrap();
        let mut p = Vec::new();
        let old = vec![t("1"), t("A"), t("{\"a\": 1}"), t("2")];
        assert_eq!(
            full.find(&old, &mut p).unwrap(),
            [
                "`id` <=> CAST(? AS decimal(65,30))",
                "`name` <=> (CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin)",
                "JSON_EQUALS(`doc`, ?)"
            ]
        );
        assert_eq!(p.len(), 3);
        let mut p = Vec::new();
        let old = vec![t("1"), Datum::Null, Datum::Null, t("2")];
        assert_eq!(
            full.find(&old, &mut p).unwrap(),
            [
                "`id` <=> CAST(? AS decimal(65,30))",
                "`name` <=> (CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin)",
                "`doc` IS NULL"
            ]
        );
        assert_eq!(p, [Value::Bytes(b"1".to_vec()), Value::NULL]);
        let skip = Target::new(&rel(Identity::Full), "shop", &my(), JsonEq::Skip).unwrap();
        let mut p = Vec::new();
        assert_eq!(skip.find(&vec![t("1"), t("x"), t("{}"), t("2")], &mut p).unwrap().len(), 2);
    }

    #[test]
    fn a_column_missing_on_mysql_is_named() {
        let mut cols = my();
        cols.retain(|c| c.name != "name");
        let e = Target::new(&rel(Identity::Key), "shop", &cols, JsonEq::Cast).unwrap_err();
        assert!(e.contains("column name of public.t"), "{e}");
    }
}
