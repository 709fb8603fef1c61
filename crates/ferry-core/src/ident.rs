//! Table identity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A table's schema-qualified name, as the source names it (case preserved, unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    /// Schema (PostgreSQL) or database (MySQL) the table lives in.
    pub schema: String,
    /// The table's own name.
    pub name: String,
}

impl TableName {
    /// Builds a name from its two parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name quoted for SQL: `"schema"."name"`, with embedded quotes doubled.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    /// Human form `schema.name`; use [`TableName::quoted`] for SQL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an identifier for PostgreSQL, always: `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string literal for PostgreSQL (standard_conforming_strings on): `it's` becomes `'it''s'`.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        let t = TableName::new("Sales Data", "we\"ird");
        assert_eq!(t.quoted(), r#""Sales Data"."we""ird""#);
        assert_eq!(t.to_string(), "Sales Data.we\"ird");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
