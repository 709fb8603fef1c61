//! Planning the post-data build: indexes, keys and foreign keys, after the data, in parallel.
//!
//! | step group | runs | why |
//! |---|---|---|
//! | `instant` | first, one by one | indexes and keys on partitioned parents (`ON ONLY`): catalog-only |
//! | `parallel` | on every job connection | indexes and keys of tables that hold rows: the heavy work |
//! | `attach` | after both | `ALTER INDEX parent ATTACH PARTITION child` for partitioned indexes |
//! | `foreign_keys` | after attach | `ADD CONSTRAINT ... NOT VALID`: catalog-only, needs the keys |
//! | `validate` | in parallel | `VALIDATE CONSTRAINT`: scans, under a lock that lets others run |
//!
//! Each step checks the target's catalog first and does nothing when its object exists, so a
//! rerun after a crash finishes what is missing and touches nothing else.

use std::collections::{HashMap, HashSet};

use ferry_core::ident::{quote_ident, quote_literal};
use ferry_core::TableName;
use tokio_postgres::GenericClient;

use crate::error::PgError;

/// What a step builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A plain index.
    Index,
    /// A primary key.
    PrimaryKey,
    /// A unique constraint.
    Unique,
    /// An exclusion constraint.
    Exclusion,
    /// A partition index attached to its parent.
    Attach,
    /// A foreign key added (not yet validated).
    ForeignKey,
    /// A foreign key validated.
    Validate,
}

/// One idempotent unit of post-data work.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// Table the object belongs to.
    pub table: TableName,
    /// Object name (index or constraint).
    pub name: String,
    /// What it is.
    pub kind: StepKind,
    /// Statements, each committed on its own, in order: an index build holds a lock that a
    /// later `ADD CONSTRAINT ... USING INDEX` would upgrade, and two such upgrades on one
    /// table deadlock. Every statement is safe to repeat after the ones before it committed.
    pub sql: Vec<String>,
    /// A query returning one boolean: true when the step is already done on the target.
    pub done_check: String,
}

impl Step {
    /// `ANALYZE` of `table` after its rows are in (never counted as done: it always runs).
    pub fn analyze(table: &TableName) -> Self {
        Self {
            table: table.clone(),
            name: "analyze".into(),
            kind: StepKind::Index,
            sql: vec![format!("ANALYZE {}", table.quoted())],
            done_check: "SELECT false".into(),
        }
    }
}

/// Everything Ferry builds itself after the data.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PostDataPlan {
    /// Catalog-only steps on partitioned parents.
    pub instant: Vec<Step>,
    /// Index and key builds.
    pub parallel: Vec<Step>,
    /// Partition index attachments.
    pub attach: Vec<Step>,
    /// Foreign keys, added NOT VALID (or as on the source when the source's is not valid).
    pub foreign_keys: Vec<Step>,
    /// Foreign key validations.
    pub validate: Vec<Step>,
    /// Foreign keys not created because they reference a table left out of the migration.
    pub skipped: Vec<String>,
    /// Catalog OIDs (indexes and constraints) this plan covers, so pg_dump's copy is skipped.
    #[serde(skip)]
    pub handled: HashSet<u32>,
}

impl PostDataPlan {
    /// Number of objects the plan builds (attachments and validations not counted).
    pub fn object_count(&self) -> usize {
        self.instant.len() + self.parallel.len() + self.foreign_keys.len()
    }

    /// Counts per kind, for plans shown to humans.
    pub fn counts(&self) -> HashMap<StepKind, usize> {
        let mut m = HashMap::new();
        for s in self.instant.iter().chain(&self.parallel).chain(&self.foreign_keys) {
            *m.entry(s.kind).or_insert(0) += 1;
        }
        m
    }
}

/// True when the index exists (and, when asked, is the replica identity / clustered index).
fn index_done(schema: &str, name: &str, replident: bool, clustered: bool) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({}){}{})",
        quote_literal(&format!("{}.{}", quote_ident(schema), quote_ident(name))),
        if replident { " AND indisreplident" } else { "" },
        if clustered { " AND indisclustered" } else { "" }
    )
}

/// `CREATE [UNIQUE] INDEX name ...` as `CREATE [UNIQUE] INDEX IF NOT EXISTS name ...`, so a
/// step interrupted after its index committed can finish on rerun.
fn if_not_exists(indexdef: &str) -> String {
    for prefix in ["CREATE UNIQUE INDEX ", "CREATE INDEX "] {
        if let Some(rest) = indexdef.strip_prefix(prefix) {
            return format!("{prefix}IF NOT EXISTS {rest}");
        }
    }
    indexdef.to_string()
}

fn constraint_exists(t: &TableName, name: &str, validated: bool) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({}) AND conname = {}{})",
        quote_literal(&t.quoted()),
        quote_literal(name),
        if validated { " AND convalidated" } else { "" }
    )
}

/// Plans the post-data build for the tables with the given source OIDs (tables holding rows and
/// partitioned parents). Run inside the migration's snapshot.
pub async fn plan_post_data(c: &impl GenericClient, table_oids: &[u32]) -> Result<PostDataPlan, PgError> {
    let err = |e| PgError::query("planning indexes and constraints", e);
    let mut plan = PostDataPlan::default();
    let oids: Vec<u32> = table_oids.to_vec();

    // Plain indexes (not behind a key or exclusion constraint).
    let rows = c
        .query(
            "SELECT i.indexrelid, n.nspname::text, t.relname::text, ic.relname::text, pg_get_indexdef(i.indexrelid),
                    t.relkind = 'p', i.indisreplident, i.indisclustered
             FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             WHERE t.oid = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                               WHERE c.conindid = i.indexrelid AND c.conrelid = t.oid AND c.contype IN ('p', 'u', 'x'))
             ORDER BY 2, 3, 4",
            &[&oids],
        )
        .await
        .map_err(err)?;
    for r in rows {
        let oid: u32 = r.get(0);
        let table = TableName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let name: String = r.get(3);
        let (replident, clustered): (bool, bool) = (r.get(6), r.get(7));
        let mut sql = vec![if_not_exists(&r.get::<_, String>(4))];
        if replident {
            sql.push(format!(
                "ALTER TABLE ONLY {} REPLICA IDENTITY USING INDEX {}",
                table.quoted(),
                quote_ident(&name)
            ));
        }
        if clustered {
            sql.push(format!("ALTER TABLE ONLY {} CLUSTER ON {}", table.quoted(), quote_ident(&name)));
        }
        let step = Step {
            done_check: index_done(&table.schema, &name, replident, clustered),
            table,
            name,
            kind: StepKind::Index,
            sql,
        };
        plan.handled.insert(oid);
        if r.get::<_, bool>(5) {
            plan.instant.push(step);
        } else {
            plan.parallel.push(step);
        }
    }

    // Primary keys, unique and exclusion constraints.
    let rows = c
        .query(
            "SELECT c.oid, n.nspname::text, t.relname::text, c.conname::text, c.contype::text,
                    pg_get_constraintdef(c.oid), pg_get_indexdef(c.conindid), t.relkind = 'p',
                    ic.relname::text, c.condeferrable, c.condeferred, COALESCE(x.indisreplident, false), COALESCE(x.indisclustered, false)
             FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             LEFT JOIN pg_class ic ON ic.oid = c.conindid
             LEFT JOIN pg_index x ON x.indexrelid = c.conindid
             WHERE c.contype IN ('p', 'u', 'x') AND t.oid = ANY($1)
             ORDER BY 2, 3, 4",
            &[&oids],
        )
        .await
        .map_err(err)?;
    for r in rows {
        let oid: u32 = r.get(0);
        let table = TableName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let name: String = r.get(3);
        let contype: String = r.get(4);
        let condef: String = r.get(5);
        let partitioned: bool = r.get(7);
        let kind = match contype.as_str() {
            "p" => StepKind::PrimaryKey,
            "u" => StepKind::Unique,
            _ => StepKind::Exclusion,
        };
        let mut sql = if partitioned || kind == StepKind::Exclusion {
            // On a partitioned parent this only creates an invalid index until partitions attach.
            vec![format!(
                "ALTER TABLE ONLY {} ADD CONSTRAINT {} {}",
                table.quoted(),
                quote_ident(&name),
                condef
            )]
        } else {
            // Build the unique index first (the slow part), then adopt it as the constraint.
            let index_name: String = r.get(8);
            let mut add = format!(
                "ALTER TABLE ONLY {} ADD CONSTRAINT {} {} USING INDEX {}",
                table.quoted(),
                quote_ident(&name),
                if kind == StepKind::PrimaryKey { "PRIMARY KEY" } else { "UNIQUE" },
                quote_ident(&index_name)
            );
            if r.get::<_, bool>(9) {
                add.push_str(if r.get::<_, bool>(10) {
                    " DEFERRABLE INITIALLY DEFERRED"
                } else {
                    " DEFERRABLE"
                });
            }
            vec![if_not_exists(&r.get::<_, String>(6)), add]
        };
        let index_name: Option<String> = r.get(8);
        if let Some(ix) = &index_name {
            if r.get::<_, bool>(11) {
                sql.push(format!(
                    "ALTER TABLE ONLY {} REPLICA IDENTITY USING INDEX {}",
                    table.quoted(),
                    quote_ident(ix)
                ));
            }
            if r.get::<_, bool>(12) {
                sql.push(format!("ALTER TABLE ONLY {} CLUSTER ON {}", table.quoted(), quote_ident(ix)));
            }
        }
        let (replident, clustered): (bool, bool) = (r.get(11), r.get(12));
        let done_check = match (&index_name, replident || clustered) {
            (Some(ix), true) => format!(
                "SELECT ({}) AND ({})",
                constraint_exists(&table, &name, false).trim_start_matches("SELECT "),
                index_done(&table.schema, ix, replident, clustered).trim_start_matches("SELECT ")
            ),
            _ => constraint_exists(&table, &name, false),
        };
        let step = Step {
            done_check,
            table,
            name,
            kind,
            sql,
        };
        plan.handled.insert(oid);
        if partitioned {
            plan.instant.push(step);
        } else {
            plan.parallel.push(step);
        }
    }

    // Partition indexes to attach to their parents' indexes.
    let rows = c
        .query(
            "SELECT pn.nspname::text, p.relname::text, cn.nspname::text, ch.relname::text, pt.relname::text
             FROM pg_inherits h
             JOIN pg_class ch ON ch.oid = h.inhrelid AND ch.relkind IN ('i', 'I')
             JOIN pg_namespace cn ON cn.oid = ch.relnamespace
             JOIN pg_class p ON p.oid = h.inhparent
             JOIN pg_namespace pn ON pn.oid = p.relnamespace
             JOIN pg_index pi ON pi.indexrelid = p.oid
             JOIN pg_class pt ON pt.oid = pi.indrelid
             JOIN pg_index ci ON ci.indexrelid = ch.oid
             WHERE pi.indrelid = ANY($1) AND ci.indrelid = ANY($1)
             ORDER BY 1, 2, 3, 4",
            &[&oids],
        )
        .await
        .map_err(err)?;
    for r in rows {
        let parent = format!("{}.{}", quote_ident(&r.get::<_, String>(0)), quote_ident(&r.get::<_, String>(1)));
        let child = format!("{}.{}", quote_ident(&r.get::<_, String>(2)), quote_ident(&r.get::<_, String>(3)));
        plan.attach.push(Step {
            table: TableName::new(r.get::<_, String>(0), r.get::<_, String>(4)),
            name: r.get(3),
            kind: StepKind::Attach,
            sql: vec![format!("ALTER INDEX {parent} ATTACH PARTITION {child}")],
            done_check: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass({}) AND inhparent = to_regclass({}))",
                quote_literal(&child),
                quote_literal(&parent)
            ),
        });
    }

    // Foreign keys declared on the tables themselves (partition clones are made by recursion).
    let rows = c
        .query(
            "SELECT c.oid, n.nspname::text, t.relname::text, c.conname::text, pg_get_constraintdef(c.oid),
                    c.convalidated, t.relkind = 'p', c.confrelid, fn.nspname::text || '.' || f.relname::text
             FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             JOIN pg_class f ON f.oid = c.confrelid
             JOIN pg_namespace fn ON fn.oid = f.relnamespace
             WHERE c.contype = 'f' AND c.conparentid = 0 AND t.oid = ANY($1)
             ORDER BY 2, 3, 4",
            &[&oids],
        )
        .await
        .map_err(err)?;
    for r in rows {
        let oid: u32 = r.get(0);
        let table = TableName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let name: String = r.get(3);
        let def: String = r.get(4);
        let validated: bool = r.get(5);
        let partitioned: bool = r.get(6);
        let referenced: u32 = r.get(7);
        if !oids.contains(&referenced) {
            plan.skipped.push(format!(
                "foreign key {name} on {table}: it references {}, which is not part of the migration",
                r.get::<_, String>(8)
            ));
            plan.handled.insert(oid);
            continue;
        }
        plan.handled.insert(oid);
        let q = table.quoted();
        if partitioned {
            plan.foreign_keys.push(Step {
                done_check: constraint_exists(&table, &name, false),
                sql: vec![format!("ALTER TABLE {q} ADD CONSTRAINT {} {def}", quote_ident(&name))],
                table,
                name,
                kind: StepKind::ForeignKey,
            });
            continue;
        }
        let not_valid = if validated { " NOT VALID" } else { "" };
        plan.foreign_keys.push(Step {
            done_check: constraint_exists(&table, &name, false),
            sql: vec![format!(
                "ALTER TABLE ONLY {q} ADD CONSTRAINT {} {def}{not_valid}",
                quote_ident(&name)
            )],
            table: table.clone(),
            name: name.clone(),
            kind: StepKind::ForeignKey,
        });
        if validated {
            plan.validate.push(Step {
                done_check: constraint_exists(&table, &name, true),
                sql: vec![format!("ALTER TABLE ONLY {q} VALIDATE CONSTRAINT {}", quote_ident(&name))],
                table,
                name,
                kind: StepKind::Validate,
            });
        }
    }
    Ok(plan)
}
