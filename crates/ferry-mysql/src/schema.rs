//! The objects of a MySQL/MariaDB database besides its tables' columns: indexes as MySQL
//! declares them (type, prefix lengths, order, the collation of each column), views, triggers,
//! stored routines and events, and how each reaches the PostgreSQL target (`docs/mysql-types.md`).
//!
//! Invariant: nothing read is dropped silently. Every object is in the plan (`ferry check`,
//! text and `--json`) with its [`Handling`]: built as it is, translated (a FULLTEXT index to a
//! GIN index, a prefix index to an expression index, a portable view to PostgreSQL's SQL), or
//! listed with its MySQL definition to port by hand (procedural code, views that are not
//! provably portable). What the load then fails to create is listed in its summary too.
//!
//! When: indexes after the data (like keys), views after the indexes and foreign keys, in
//! dependency order; a view the target refuses is listed and the load goes on.

mod view_sql;

use std::collections::{BTreeMap, HashSet};

use ferry_core::ident::quote_ident as q;
use ferry_postgres::preflight::{Finding, Severity};
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::endpoint::MyEndpoint;
use crate::error::MyError;
use crate::types::Mapping;

/// A migrated table as the planner needs it: its name and its columns with their mapping.
pub type TableColumns<'a> = (&'a str, &'a [(String, Mapping)]);

pub use view_sql::{translate as translate_view, Translated, PORTABLE_FUNCTIONS};

/// How an object reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handling {
    /// Created on the target as it is on the source.
    Built,
    /// Created on the target in an equivalent form (the note says how it differs).
    Translated,
    /// Not created: listed with its MySQL definition, to port by hand.
    PortByHand,
}

/// One key part of an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexPart {
    /// The column (None: a MySQL 8 functional key part, see `expression`).
    pub column: Option<String>,
    /// A functional key part's expression (MySQL 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Prefix length (`KEY (col(10))`): characters for text, bytes for binary columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u64>,
    /// Descending key part.
    pub descending: bool,
    /// The column's collation on the source (None: not a string column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
}

/// One index of a migrated table, with how it reaches the target.
#[derive(Debug, Clone, Serialize)]
pub struct MyIndex {
    /// The table.
    pub table: String,
    /// MySQL's name (`PRIMARY` for the primary key).
    pub name: String,
    /// MySQL's index type: BTREE, HASH, FULLTEXT, SPATIAL, RTREE.
    pub index_type: String,
    /// UNIQUE (or the primary key).
    pub unique: bool,
    /// Key parts, in order.
    pub parts: Vec<IndexPart>,
    /// Built, translated or listed.
    pub handling: Handling,
    /// What differs, or why it is listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The statement run on the target after the data (None: listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_sql: Option<String>,
}

/// A view of the source database.
#[derive(Debug, Clone, Serialize)]
pub struct MyView {
    /// The view's name.
    pub name: String,
    /// Its MySQL definition (`SHOW CREATE VIEW`).
    pub definition: String,
    /// Translated or listed.
    pub handling: Handling,
    /// What differs, or why it is listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The `CREATE VIEW` run on the target after the indexes (None: listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_sql: Option<String>,
    /// Views of the source database it reads (created before it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// A trigger of a migrated table: listed, never created (Ferry does not translate procedural
/// code).
#[derive(Debug, Clone, Serialize)]
pub struct MyTrigger {
    /// The trigger's name.
    pub name: String,
    /// Its table.
    pub table: String,
    /// BEFORE or AFTER.
    pub timing: String,
    /// INSERT, UPDATE or DELETE.
    pub event: String,
    /// Its MySQL definition.
    pub definition: String,
}

/// A stored procedure, function or event (or a MariaDB package): listed, never created.
#[derive(Debug, Clone, Serialize)]
pub struct MyRoutine {
    /// The routine's name.
    pub name: String,
    /// PROCEDURE, FUNCTION, EVENT, PACKAGE or PACKAGE BODY.
    pub kind: String,
    /// Its MySQL definition (None: not readable by Ferry's user).
    pub definition: Option<String>,
}

/// Everything of the source schema besides tables and columns, as the plan carries it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MySchemaObjects {
    /// The PostgreSQL schema the tables, types, indexes and views are created in.
    pub target_schema: String,
    /// Indexes and primary keys of the migrated tables.
    pub indexes: Vec<MyIndex>,
    /// Views of the source database (in scope of --include/--exclude), in creation order.
    pub views: Vec<MyView>,
    /// Triggers of the migrated tables.
    pub triggers: Vec<MyTrigger>,
    /// Stored procedures, functions and events of the source database.
    pub routines: Vec<MyRoutine>,
    /// Kinds of objects Ferry's user cannot see all of (the server hides them), with the grant
    /// that shows them.
    pub hidden: Vec<String>,
}

/// An object the load did not create on the target: to port by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortByHand {
    /// view, trigger, procedure, function, event, index.
    pub kind: String,
    /// Its name (`table.name` for an index or a trigger).
    pub name: String,
    /// Why.
    pub reason: String,
    /// Its MySQL definition, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

/// What the load did with the objects besides tables, for its summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectsOutcome {
    /// Views created on the target, in creation order.
    pub views_created: Vec<String>,
    /// Indexes created in a translated form (FULLTEXT as GIN, prefixes as expressions).
    pub indexes_translated: Vec<String>,
    /// Objects not created: listed by the plan, or refused by the target.
    pub port_by_hand: Vec<PortByHand>,
}

impl MySchemaObjects {
    /// Every object the plan does not create on the target, with why and its definition.
    pub fn port_by_hand(&self) -> Vec<PortByHand> {
        let mut out = Vec::new();
        for i in self.indexes.iter().filter(|i| i.handling == Handling::PortByHand) {
            out.push(PortByHand {
                kind: "index".into(),
                name: format!("{}.{}", i.table, i.name),
                reason: i.note.clone().unwrap_or_default(),
                definition: None,
            });
        }
        for v in self.views.iter().filter(|v| v.handling == Handling::PortByHand) {
            out.push(PortByHand {
                kind: "view".into(),
                name: v.name.clone(),
                reason: v.note.clone().unwrap_or_default(),
                definition: Some(v.definition.clone()),
            });
        }
        for t in &self.triggers {
            out.push(PortByHand {
                kind: "trigger".into(),
                name: format!("{}.{}", t.table, t.name),
                reason: format!(
                    "{} {} trigger: Ferry does not translate procedural code; port it by hand (a PL/pgSQL trigger function)",
                    t.timing, t.event
                ),
                definition: Some(t.definition.clone()),
            });
        }
        for r in &self.routines {
            out.push(PortByHand {
                kind: r.kind.to_lowercase(),
                name: r.name.clone(),
                reason: "Ferry does not translate procedural code; port it by hand".into(),
                definition: r.definition.clone(),
            });
        }
        out
    }

    /// `ferry check`'s findings about these objects: one per object not created as it is.
    pub(crate) fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut add = |severity, check, message: String, fix: Option<&str>| {
            out.push(Finding {
                severity,
                side: "source",
                check,
                message,
                fix: fix.map(str::to_string),
            })
        };
        for h in &self.hidden {
            add(Severity::Warning, "schema_objects", h.clone(), None);
        }
        for i in &self.indexes {
            let what = format!("{} index {} on {}", i.index_type, i.name, i.table);
            match i.handling {
                Handling::Built => {}
                Handling::Translated => add(
                    Severity::Info,
                    "indexes",
                    format!("{what}: {}", i.note.as_deref().unwrap_or_default()),
                    None,
                ),
                Handling::PortByHand => add(
                    Severity::Warning,
                    "indexes",
                    format!("{what} is not created: {}", i.note.as_deref().unwrap_or_default()),
                    Some("create an equivalent on the target by hand after the load"),
                ),
            }
        }
        for v in &self.views {
            match v.handling {
                Handling::PortByHand => add(
                    Severity::Warning,
                    "views",
                    format!("view {} is not translated: {}", v.name, v.note.as_deref().unwrap_or_default()),
                    Some("port it by hand after the load (its MySQL definition is in the plan)"),
                ),
                _ => add(
                    Severity::Info,
                    "views",
                    format!(
                        "view {} is translated and created after the data{}",
                        v.name,
                        v.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
                    ),
                    None,
                ),
            }
        }
        for t in &self.triggers {
            add(
                Severity::Warning,
                "triggers",
                format!(
                    "trigger {} ({} {} on {}) is not migrated: Ferry does not translate procedural code",
                    t.name, t.timing, t.event, t.table
                ),
                Some("port it by hand to a PL/pgSQL trigger on the target before the cutover (its definition is in the plan)"),
            );
        }
        for r in &self.routines {
            add(
                Severity::Warning,
                "routines",
                format!(
                    "{} {} is not migrated: Ferry does not translate procedural code",
                    r.kind.to_lowercase(),
                    r.name
                ),
                Some("port it by hand to PL/pgSQL on the target before the cutover (its definition is in the plan)"),
            );
        }
        out
    }
}

/// The rows the catalog gives, before planning.
#[derive(Debug, Default)]
pub(crate) struct SourceObjects {
    /// (table, index, non_unique, seq, column, sub_part, index_type, order, collation).
    indexes: Vec<IndexRow>,
    /// (table, index, seq) -> expression of a functional key part (MySQL 8).
    expressions: BTreeMap<(String, String, u64), String>,
    /// (name, VIEW_DEFINITION, CHECK_OPTION, SHOW CREATE VIEW).
    views: Vec<(String, String, String, Option<String>)>,
    triggers: Vec<MyTrigger>,
    routines: Vec<MyRoutine>,
}

type IndexRow = (
    String,
    String,
    u8,
    u64,
    Option<String>,
    Option<u64>,
    String,
    Option<String>,
    Option<String>,
);

fn my_q(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Reads indexes, views, triggers, routines and events of database `db` (catalog reads under
/// the catalog deadline; one `SHOW CREATE` per view and routine).
pub(crate) async fn read(src: &MyEndpoint, c: &mut mysql_async::Conn, db: &str, mariadb: bool) -> Result<SourceObjects, MyError> {
    const INDEXES: &str = "reading the source's indexes";
    let indexes: Vec<IndexRow> = src
        .within_catalog(INDEXES, async {
            c.exec(
                "SELECT s.TABLE_NAME, s.INDEX_NAME, s.NON_UNIQUE, s.SEQ_IN_INDEX, s.COLUMN_NAME, s.SUB_PART, s.INDEX_TYPE, s.COLLATION,
                        c.COLLATION_NAME
                 FROM information_schema.STATISTICS s
                 LEFT JOIN information_schema.COLUMNS c
                   ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME
                 WHERE s.TABLE_SCHEMA = ? ORDER BY s.TABLE_NAME, s.INDEX_NAME, s.SEQ_IN_INDEX",
                (db,),
            )
            .await
            .map_err(|e| MyError::query(INDEXES, e))
        })
        .await?;
    // MySQL 8's functional key parts (MariaDB has no EXPRESSION column).
    let expressions = if mariadb {
        BTreeMap::new()
    } else {
        src.within_catalog(INDEXES, async {
            Ok(c.exec::<(String, String, u64, String), _, _>(
                "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, EXPRESSION FROM information_schema.STATISTICS
                 WHERE TABLE_SCHEMA = ? AND EXPRESSION IS NOT NULL",
                (db,),
            )
            .await
            .unwrap_or_default())
        })
        .await?
        .into_iter()
        .map(|(t, i, s, e)| ((t, i, s), e))
        .collect()
    };
    const VIEWS: &str = "reading the source's views";
    let view_rows: Vec<(String, Option<String>, Option<String>)> = src
        .within_catalog(VIEWS, async {
            c.exec(
                "SELECT TABLE_NAME, VIEW_DEFINITION, CHECK_OPTION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
                (db,),
            )
            .await
            .map_err(|e| MyError::query(VIEWS, e))
        })
        .await?;
    let mut views = Vec::with_capacity(view_rows.len());
    for (name, definition, check) in view_rows {
        let show = format!("SHOW CREATE VIEW {}.{}", my_q(db), my_q(&name));
        // Without SHOW VIEW the statement fails: the view is listed without its text.
        let created: Option<String> = src
            .within(VIEWS, async {
                Ok(c.query_first::<mysql_async::Row, _>(show)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.get_opt::<Option<String>, _>(1).and_then(Result::ok).flatten()))
            })
            .await?;
        views.push((name, definition.unwrap_or_default(), check.unwrap_or_default(), created));
    }
    const TRIGGERS: &str = "reading the source's triggers";
    let triggers: Vec<(String, String, String, String, Option<String>)> = src
        .within_catalog(TRIGGERS, async {
            c.exec(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT
                 FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?
                 ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
                (db,),
            )
            .await
            .map_err(|e| MyError::query(TRIGGERS, e))
        })
        .await?;
    let triggers = triggers
        .into_iter()
        .map(|(name, table, timing, event, body)| MyTrigger {
            definition: format!(
                "CREATE TRIGGER {} {timing} {event} ON {} FOR EACH ROW {}",
                my_q(&name),
                my_q(&table),
                body.as_deref().unwrap_or("(body not readable)")
            ),
            name,
            table,
            timing,
            event,
        })
        .collect();
    const ROUTINES: &str = "reading the source's stored routines and events";
    let mut found: Vec<(String, String, Option<String>)> = src
        .within_catalog(ROUTINES, async {
            c.exec(
                "SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION FROM information_schema.ROUTINES
                 WHERE ROUTINE_SCHEMA = ? ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
                (db,),
            )
            .await
            .map_err(|e| MyError::query(ROUTINES, e))
        })
        .await?;
    found.extend(
        src.within_catalog(ROUTINES, async {
            c.exec::<(String, Option<String>), _, _>(
                "SELECT EVENT_NAME, EVENT_DEFINITION FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME",
                (db,),
            )
            .await
            .map_err(|e| MyError::query(ROUTINES, e))
        })
        .await?
        .into_iter()
        .map(|(n, d)| (n, "EVENT".to_string(), d)),
    );
    let mut routines = Vec::with_capacity(found.len());
    for (name, kind, body) in found {
        // SHOW CREATE gives the whole statement (parameters, characteristics); the column of
        // the statement: 2 for routines, 3 for events.
        let column = if kind == "EVENT" { 3 } else { 2 };
        let show = format!("SHOW CREATE {kind} {}.{}", my_q(db), my_q(&name));
        let created: Option<String> = src
            .within(ROUTINES, async {
                Ok(c.query_first::<mysql_async::Row, _>(show)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.get_opt::<Option<String>, _>(column).and_then(Result::ok).flatten()))
            })
            .await?;
        routines.push(MyRoutine {
            definition: created.or(body).filter(|d| !d.is_empty()),
            name,
            kind,
        });
    }
    Ok(SourceObjects {
        indexes,
        expressions,
        views,
        triggers,
        routines,
    })
}

/// Plans every object for the target schema `schema`: indexes of `tables`, views (those
/// `in_scope` says), triggers of `tables`, routines. `hidden`: what Ferry's user cannot see
/// (said by `check`, which knows the grants).
pub(crate) fn plan(
    raw: SourceObjects,
    tables: &[TableColumns<'_>],
    db: &str,
    schema: &str,
    in_scope: impl Fn(&str) -> bool,
    hidden: Vec<String>,
) -> MySchemaObjects {
    let by_name: BTreeMap<&str, &[(String, Mapping)]> = tables.iter().copied().collect();
    // Indexes, grouped in catalog order.
    let mut indexes: Vec<MyIndex> = Vec::new();
    for (table, name, non_unique, seq, column, sub_part, index_type, order, collation) in raw.indexes {
        if !by_name.contains_key(table.as_str()) {
            continue;
        }
        let expression = raw.expressions.get(&(table.clone(), name.clone(), seq)).cloned();
        let part = IndexPart {
            column,
            expression,
            prefix: sub_part,
            descending: order.as_deref() == Some("D"),
            collation,
        };
        match indexes.last_mut() {
            Some(last) if last.table == table && last.name == name => last.parts.push(part),
            _ => indexes.push(MyIndex {
                table,
                name,
                index_type: index_type.to_uppercase(),
                unique: non_unique == 0,
                parts: vec![part],
                handling: Handling::Built,
                note: None,
                target_sql: None,
            }),
        }
    }
    for idx in &mut indexes {
        let table = by_name[idx.table.as_str()];
        plan_index(idx, table, schema);
    }
    // Views: translated where provably portable, in dependency order.
    // Views out of scope are not created: a view reading one is listed.
    let names: HashSet<&str> = raw.views.iter().map(|v| v.0.as_str()).filter(|v| in_scope(v)).collect();
    let mut views: Vec<MyView> = Vec::new();
    for (name, definition, check, created) in raw.views.iter().filter(|v| in_scope(&v.0)) {
        let shown = created.clone().unwrap_or_else(|| {
            if definition.is_empty() {
                format!("CREATE VIEW {} AS (definition not readable)", my_q(name))
            } else {
                format!("CREATE VIEW {} AS {definition}", my_q(name))
            }
        });
        let mut v = MyView {
            name: name.clone(),
            definition: shown,
            handling: Handling::PortByHand,
            note: None,
            target_sql: None,
            depends_on: Vec::new(),
        };
        if definition.is_empty() {
            v.note = Some("its definition is not readable by Ferry's user (grant SHOW VIEW)".into());
        } else {
            match view_sql::translate(definition, db, schema) {
                Err(why) => v.note = Some(format!("not provably portable: {why}")),
                Ok(t) => {
                    let missing: Vec<&String> = t
                        .relations
                        .iter()
                        .filter(|r| !by_name.contains_key(r.as_str()) && !names.contains(r.as_str()))
                        .collect();
                    if let Some(m) = missing.first() {
                        v.note = Some(format!("it reads {db}.{m}, which is not migrated"));
                    } else {
                        v.depends_on = t.relations.iter().filter(|r| names.contains(r.as_str())).cloned().collect();
                        let check = match check.to_uppercase().as_str() {
                            "CASCADED" => " WITH CASCADED CHECK OPTION",
                            "LOCAL" => " WITH LOCAL CHECK OPTION",
                            _ => "",
                        };
                        v.target_sql = Some(format!("CREATE VIEW {}.{} AS {}{check}", q(schema), q(name), t.sql));
                        v.handling = Handling::Translated;
                        if t.has_strings {
                            v.note = Some(
                                "it compares strings: PostgreSQL compares them exactly, where a MySQL _ci collation ignored case".into(),
                            );
                        }
                    }
                }
            }
        }
        views.push(v);
    }
    let views = order_views(views);
    let triggers = raw
        .triggers
        .into_iter()
        .filter(|t| by_name.contains_key(t.table.as_str()))
        .collect();
    MySchemaObjects {
        target_schema: schema.to_string(),
        indexes,
        views,
        triggers,
        routines: raw.routines,
        hidden,
    }
}

/// Views in an order where each comes after the views it reads; a view reading one that is
/// not translated (or a cycle, which MySQL does not allow) is listed.
fn order_views(mut pending: Vec<MyView>) -> Vec<MyView> {
    let mut done: Vec<MyView> = Vec::with_capacity(pending.len());
    loop {
        let ready = pending.iter().position(|v| {
            v.depends_on
                .iter()
                .all(|d| done.iter().any(|x| &x.name == d) || !pending.iter().any(|x| &x.name == d))
        });
        let Some(i) = ready else { break };
        let mut v = pending.remove(i);
        if v.handling == Handling::Translated {
            if let Some(d) = v
                .depends_on
                .iter()
                .find(|d| done.iter().any(|x| &x.name == *d && x.handling != Handling::Translated))
            {
                v.handling = Handling::PortByHand;
                v.note = Some(format!("it reads view {d}, which is not translated"));
                v.target_sql = None;
            }
        }
        done.push(v);
    }
    for mut v in pending {
        v.handling = Handling::PortByHand;
        v.note = Some("its views read each other in a cycle".into());
        v.target_sql = None;
        done.push(v);
    }
    done
}

/// The name an index gets on the target: index names are per table in MySQL, per schema in
/// PostgreSQL.
pub fn index_name(table: &str, index: &str) -> String {
    format!("{table}_{index}").chars().take(63).collect()
}

/// Decides how `idx` (of a table with `columns`) reaches schema `schema`, and its statement.
fn plan_index(idx: &mut MyIndex, columns: &[(String, Mapping)], schema: &str) {
    let target_type = |col: &str| columns.iter().find(|(n, _)| n == col).map(|(_, m)| m.target.as_str()).unwrap_or("");
    let textual = |ty: &str| ty == "text" || ty.starts_with("varchar") || ty.starts_with("char");
    let table = format!("{}.{}", q(schema), q(&idx.table));
    let name = q(&index_name(&idx.table, &idx.name));
    fn port(idx: &mut MyIndex, why: String) {
        idx.handling = Handling::PortByHand;
        idx.note = Some(why);
        idx.target_sql = None;
    }
    if let Some(p) = idx.parts.iter().find(|p| p.column.is_none()) {
        let why = format!(
            "a functional key part ({}): port the expression by hand",
            p.expression.as_deref().unwrap_or("expression not readable")
        );
        return port(idx, why);
    }
    let cols: Vec<String> = idx.parts.iter().filter_map(|p| p.column.clone()).collect();
    match idx.index_type.as_str() {
        "FULLTEXT" => {
            if let Some(c) = cols.iter().find(|c| !textual(target_type(c.as_str()))) {
                let why = format!("column {c} is not text on the target, so no text-search index can be built");
                return port(idx, why);
            }
            let document = if cols.len() == 1 {
                q(&cols[0])
            } else {
                cols.iter()
                    .map(|c| format!("coalesce({}, '')", q(c)))
                    .collect::<Vec<_>>()
                    .join(" || ' ' || ")
            };
            let expr = format!("to_tsvector('simple', {document})");
            idx.target_sql = Some(format!("CREATE INDEX {name} ON {table} USING gin ({expr})"));
            idx.handling = Handling::Translated;
            idx.note = Some(format!(
                "a GIN index on {expr}: rewrite MATCH ... AGAINST as {expr} @@ plainto_tsquery('simple', ...) (the same expression, or the index is not used); ranking (ts_rank) differs from MySQL's relevance"
            ));
            return;
        }
        "SPATIAL" | "RTREE" => {
            return port(idx, "a spatial index: spatial columns are not migrated".into());
        }
        _ => {}
    }
    let mut prefixes = Vec::new();
    let parts: Vec<String> = idx
        .parts
        .iter()
        .map(|p| {
            let col = p.column.as_deref().unwrap_or_default();
            let key = match p.prefix {
                None => q(col),
                Some(n) if target_type(col) == "bytea" => {
                    prefixes.push(format!("{col}({n}) as substr({col}, 1, {n}), its first {n} bytes"));
                    format!("(substr({}, 1, {n}))", q(col))
                }
                Some(n) => {
                    prefixes.push(format!("{col}({n}) as left({col}, {n}), its first {n} characters"));
                    format!("(left({}, {n}))", q(col))
                }
            };
            if p.descending {
                format!("{key} DESC")
            } else {
                key
            }
        })
        .collect();
    let list = parts.join(", ");
    let mut notes = Vec::new();
    if idx.name == "PRIMARY" && prefixes.is_empty() {
        idx.target_sql = Some(format!("ALTER TABLE {table} ADD PRIMARY KEY ({list})"));
    } else {
        idx.target_sql = Some(format!(
            "CREATE {}INDEX {name} ON {table} ({list})",
            if idx.unique { "UNIQUE " } else { "" }
        ));
    }
    if !prefixes.is_empty() {
        idx.handling = Handling::Translated;
        notes.push(format!("an expression index on {}", prefixes.join(", ")));
        if idx.unique {
            notes.push(
                "UNIQUE on those prefixes, exactly MySQL's rule: no two rows share the first characters (or bytes) of the key; the whole values may differ"
                    .into(),
            );
        }
        if idx.name == "PRIMARY" {
            notes.push("PostgreSQL keys only whole columns: the primary key becomes this unique index, and the table has no primary key on the target".into());
        }
    }
    if idx.index_type == "HASH" {
        idx.handling = Handling::Translated;
        notes.push("a HASH index becomes a b-tree (PostgreSQL's hash indexes are neither unique nor multi-column)".into());
    }
    if !notes.is_empty() {
        idx.note = Some(notes.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Attention;

    fn table(cols: &[(&str, &str)]) -> Vec<(String, Mapping)> {
        cols.iter()
            .map(|(n, t)| {
                (
                    n.to_string(),
                    Mapping {
                        source: String::new(),
                        target: t.to_string(),
                        not_null: false,
                        identity: false,
                        labels: Vec::new(),
                        attention: Attention::None,
                        charset: None,
                        note: None,
                    },
                )
            })
            .collect()
    }

    fn index(name: &str, ty: &str, unique: bool, parts: &[(&str, Option<u64>)]) -> MyIndex {
        MyIndex {
            table: "docs".into(),
            name: name.into(),
            index_type: ty.into(),
            unique,
            parts: parts
                .iter()
                .map(|(c, p)| IndexPart {
                    column: Some(c.to_string()),
                    expression: None,
                    prefix: *p,
                    descending: false,
                    collation: None,
                })
                .collect(),
            handling: Handling::Built,
            note: None,
            target_sql: None,
        }
    }

    #[test]
    fn indexes_are_built_translated_or_listed() {
        let t = table(&[
            ("id", "bigint"),
            ("title", "varchar(200)"),
            ("body", "text"),
            ("blob", "bytea"),
            ("n", "integer"),
        ]);
        let mut pk = index("PRIMARY", "BTREE", true, &[("id", None)]);
        plan_index(&mut pk, &t, "app");
        assert_eq!(pk.target_sql.as_deref(), Some(r#"ALTER TABLE "app"."docs" ADD PRIMARY KEY ("id")"#));
        assert_eq!(pk.handling, Handling::Built);

        let mut ft = index("ft", "FULLTEXT", false, &[("title", None), ("body", None)]);
        plan_index(&mut ft, &t, "app");
        assert_eq!(
            ft.target_sql.as_deref(),
            Some(
                r#"CREATE INDEX "docs_ft" ON "app"."docs" USING gin (to_tsvector('simple', coalesce("title", '') || ' ' || coalesce("body", '')))"#
            )
        );
        assert_eq!(ft.handling, Handling::Translated);
        let mut ft1 = index("ft1", "FULLTEXT", false, &[("body", None)]);
        plan_index(&mut ft1, &t, "public");
        assert!(ft1.target_sql.unwrap().ends_with(r#"USING gin (to_tsvector('simple', "body"))"#));
        let mut bad = index("ftn", "FULLTEXT", false, &[("n", None)]);
        plan_index(&mut bad, &t, "app");
        assert_eq!(bad.handling, Handling::PortByHand);

        let mut prefix = index("p", "BTREE", true, &[("title", Some(10)), ("blob", Some(4)), ("n", None)]);
        prefix.parts[2].descending = true;
        plan_index(&mut prefix, &t, "app");
        assert_eq!(
            prefix.target_sql.as_deref(),
            Some(r#"CREATE UNIQUE INDEX "docs_p" ON "app"."docs" ((left("title", 10)), (substr("blob", 1, 4)), "n" DESC)"#)
        );
        assert_eq!(prefix.handling, Handling::Translated);
        assert!(prefix.note.unwrap().contains("exactly MySQL's rule"));

        let mut hash = index("h", "HASH", false, &[("n", None)]);
        plan_index(&mut hash, &t, "app");
        assert_eq!(hash.target_sql.as_deref(), Some(r#"CREATE INDEX "docs_h" ON "app"."docs" ("n")"#));
        let mut spatial = index("s", "SPATIAL", false, &[("blob", None)]);
        plan_index(&mut spatial, &t, "app");
        assert_eq!((spatial.handling, spatial.target_sql), (Handling::PortByHand, None));
        let mut functional = index("f", "BTREE", false, &[("n", None)]);
        functional.parts[0].column = None;
        functional.parts[0].expression = Some("(`n` + 1)".into());
        plan_index(&mut functional, &t, "app");
        assert!(functional.note.unwrap().contains("(`n` + 1)"));
    }

    fn view(name: &str, deps: &[&str], translated: bool) -> MyView {
        MyView {
            name: name.into(),
            definition: String::new(),
            handling: if translated { Handling::Translated } else { Handling::PortByHand },
            note: None,
            target_sql: translated.then(|| "CREATE VIEW ...".into()),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn views_come_after_the_views_they_read() {
        let ordered = order_views(vec![
            view("c", &["b"], true),
            view("b", &["a"], true),
            view("a", &[], true),
            view("d", &[], true),
        ]);
        let names: Vec<&str> = ordered.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let ordered = order_views(vec![view("top", &["bad"], true), view("bad", &[], false)]);
        assert_eq!(ordered[1].name, "top");
        assert_eq!(ordered[1].handling, Handling::PortByHand);
        assert!(ordered[1].note.as_deref().unwrap().contains("view bad"));
    }
}
