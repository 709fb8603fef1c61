//! Reading the source's catalog: which tables there are, how big, how keyed, what they hold.

use ferry_core::{TableFilter, TableName};
use tokio_postgres::Client;

use crate::error::PgError;

/// What kind of relation a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// An ordinary table or a leaf partition: holds rows, copied with COPY.
    Ordinary,
    /// A partitioned table: holds no rows itself; its leaves are copied.
    Partitioned,
    /// A foreign table: its data lives elsewhere and is not copied.
    Foreign,
    /// A materialized view: recreated and refreshed after the load.
    MaterializedView,
}

/// How updates and deletes on the table identify rows in the change stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaIdentity {
    /// The primary key (the default): usable.
    PrimaryKey,
    /// A chosen unique index: usable.
    Index,
    /// The whole old row: usable, slower to apply.
    Full,
    /// Nothing: updates and deletes cannot be replicated, and once the table is published the
    /// source itself rejects them.
    Nothing,
}

/// One table of the source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceTable {
    /// Catalog OID on the source.
    pub oid: u32,
    /// Qualified name.
    pub name: TableName,
    /// Kind of relation.
    pub kind: TableKind,
    /// For partitions: the root of the partition tree (the filter applies to it).
    pub partition_root: Option<TableName>,
    /// UNLOGGED tables are copied but their changes are not in the WAL, so CDC cannot see them.
    pub unlogged: bool,
    /// How rows are identified in the change stream.
    pub replica_identity: ReplicaIdentity,
    /// Whether it has a primary key.
    pub has_primary_key: bool,
    /// Estimated rows (`pg_class.reltuples`); -1 when the table was never analyzed or vacuumed.
    pub estimated_rows: i64,
    /// Heap size in bytes (without indexes and TOAST).
    pub heap_bytes: i64,
    /// Table size in bytes including TOAST.
    pub total_bytes: i64,
    /// Columns copied, in order: not dropped, not generated (generated columns are computed by
    /// the target).
    pub columns: Vec<String>,
}

impl SourceTable {
    /// Whether COPY moves rows for this relation.
    pub fn holds_rows(&self) -> bool {
        self.kind == TableKind::Ordinary
    }

    /// The name the filter is applied to.
    pub fn filter_name(&self) -> &TableName {
        self.partition_root.as_ref().unwrap_or(&self.name)
    }
}

/// Lists the user tables of the connected database that `filter` selects (partition leaves
/// follow their root), skipping system schemas, extension members and `skip_schema`.
pub async fn list_tables(client: &Client, filter: &TableFilter, skip_schema: Option<&str>) -> Result<Vec<SourceTable>, PgError> {
    let rows = client
        .query(
            r#"
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relpersistence::text, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) AS has_ri_index,
       c.reltuples::int8 AS est_rows,
       pg_relation_size(c.oid)::int8 AS heap_bytes,
       pg_table_size(c.oid)::int8 AS total_bytes,
       rn.nspname AS root_schema, rc.relname AS root_name,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON c.relispartition AND rc.oid = pg_partition_root(c.oid)
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname"#,
            &[],
        )
        .await
        .map_err(|e| PgError::query("listing the source's tables", e))?;
    let mut out = Vec::new();
    for r in rows {
        let name = TableName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        if Some(name.schema.as_str()) == skip_schema {
            continue;
        }
        let kind = match r.get::<_, String>(3).as_str() {
            "r" => TableKind::Ordinary,
            "p" => TableKind::Partitioned,
            "f" => TableKind::Foreign,
            _ => TableKind::MaterializedView,
        };
        let has_pk: bool = r.get(6);
        let replica_identity = match r.get::<_, String>(5).as_str() {
            "f" => ReplicaIdentity::Full,
            "i" if r.get::<_, bool>(7) => ReplicaIdentity::Index,
            "d" if has_pk => ReplicaIdentity::PrimaryKey,
            _ => ReplicaIdentity::Nothing,
        };
        let partition_root = match (r.get::<_, Option<String>>(11), r.get::<_, Option<String>>(12)) {
            (Some(s), Some(n)) => Some(TableName::new(s, n)),
            _ => None,
        };
        let t = SourceTable {
            oid: r.get(0),
            name,
            kind,
            partition_root,
            unlogged: r.get::<_, String>(4) == "u",
            replica_identity,
            has_primary_key: has_pk,
            estimated_rows: r.get(8),
            heap_bytes: r.get(9),
            total_bytes: r.get(10),
            columns: r.get(13),
        };
        if filter.matches(t.filter_name()) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Server facts that checks and plans need.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150010.
    pub version_num: i32,
    /// `server_version`, e.g. "15.10 (Debian 15.10-1)".
    pub version: String,
    /// The connected user.
    pub user: String,
    /// Whether the user is a superuser.
    pub superuser: bool,
    /// Whether the user has the REPLICATION attribute.
    pub replication: bool,
    /// The connected database.
    pub database: String,
}

impl ServerInfo {
    /// Major version, e.g. 15.
    pub fn major(&self) -> i32 {
        self.version_num / 10000
    }
}

/// Reads version and role facts.
pub async fn server_info(client: &Client) -> Result<ServerInfo, PgError> {
    let r = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version'),
                    r.rolname::text, r.rolsuper, r.rolreplication, current_database()::text
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading server version and role", e))?;
    Ok(ServerInfo {
        version_num: r.get(0),
        version: r.get(1),
        user: r.get(2),
        superuser: r.get(3),
        replication: r.get(4),
        database: r.get(5),
    })
}

/// Reads one setting with `current_setting`.
pub async fn setting(client: &Client, name: &str) -> Result<String, PgError> {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map(|r| r.get(0))
        .map_err(|e| PgError::query(format!("reading setting {name}"), e))
}
