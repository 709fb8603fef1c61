//! Large objects (`pg_largeobject`): copied at full load, from the load's snapshot, and compared
//! by verification.
//!
//! pg_dump's `--schema-only` leaves large objects out, and logical replication does not carry
//! them (their writes are not published): Ferry copies them itself, once, at the full load.
//! Changes to large objects after the load's snapshot are NOT on the target; `ferry verify`
//! shows them (count, size and MD5 of every object), and `ferry check` says so in its plan.
//!
//! Memory stays bounded whatever the objects' sizes: the object list is read through a cursor
//! ([`LIST_BATCH`] at a time) and every object moves in chunks of [`CHUNK`] bytes (`lo_get` with
//! an offset on the source, `lo_from_bytea` then `lo_put` on the target); no whole object is
//! ever held by Ferry, and the servers handle one chunk at a time too. Each object keeps its OID,
//! its owner (when that role exists on the target) and its grants (those whose grantee exists).

use std::collections::HashSet;

use ferry_core::ident::quote_ident;
use tokio_postgres::Client;

use crate::error::PgError;
use crate::verify::{ColumnDiff, DiffKind, Difference, TableReport};

/// Bytes moved per round trip.
pub const CHUNK: i32 = 256 * 1024;
/// Object list rows fetched from the cursor at a time.
const LIST_BATCH: i32 = 1000;
/// A target transaction commits after this many objects...
const COMMIT_OBJECTS: u64 = 1000;
/// ...or this many bytes, whichever comes first.
const COMMIT_BYTES: u64 = 64 << 20;
/// The name verification reports large objects under (it is not a table).
pub const REPORT_NAME: &str = "large objects (pg_largeobject)";

/// What the copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// Objects copied.
    pub objects: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Owners (roles) missing on the target: those objects belong to the copying user.
    pub missing_owners: Vec<String>,
    /// Grants applied.
    pub grants: u64,
    /// Grants left out because the grantee does not exist on the target, as `role (n objects)`.
    pub missing_grantees: Vec<String>,
}

/// Number of large objects the session sees.
pub async fn count(c: &Client) -> Result<i64, PgError> {
    c.query_one("SELECT count(*)::int8 FROM pg_catalog.pg_largeobject_metadata", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| PgError::query("counting large objects", e))
}

/// Copies every large object `src` sees to `target`, with its OID, owner and grants.
///
/// `src` must be inside a transaction (the load's snapshot: `REPEATABLE READ` with `SET
/// TRANSACTION SNAPSHOT`); the objects are read as of that snapshot (`lo_get` reads through
/// the transaction's snapshot). An object that exists on the target already (an interrupted
/// earlier run) is replaced, so the copy can run again after a crash.
pub async fn copy_all(src: &Client, target: &Client) -> Result<CopyReport, PgError> {
    let mut report = CopyReport::default();
    let roles: HashSet<String> = target
        .query("SELECT rolname::text FROM pg_catalog.pg_roles", &[])
        .await
        .map_err(|e| PgError::query("listing roles on the target (for large object owners)", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let me: String = target
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| PgError::query("reading the target's user", e))?
        .get(0);
    src.batch_execute(
        "DECLARE ferry_large_objects NO SCROLL CURSOR FOR
           SELECT m.oid, pg_catalog.pg_get_userbyid(m.lomowner)::text, m.lomacl IS NOT NULL
           FROM pg_catalog.pg_largeobject_metadata m ORDER BY m.oid",
    )
    .await
    .map_err(|e| {
        PgError::query("listing large objects on the source", e)
            .with_fix("the copy runs inside the load's snapshot transaction; report this as a bug if it is not")
    })?;
    let read = src
        .prepare("SELECT pg_catalog.lo_get($1::oid, $2::int8, $3::int4)")
        .await
        .map_err(|e| PgError::query("preparing large object reads on the source", e))?;
    let grants_q = src
        .prepare(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
                    a.privilege_type, a.is_grantable
             FROM pg_catalog.pg_largeobject_metadata m, pg_catalog.aclexplode(m.lomacl) a
             WHERE m.oid = $1 AND a.grantee <> m.lomowner",
        )
        .await
        .map_err(|e| PgError::query("preparing large object grant reads on the source", e))?;
    let unlink = target
        .prepare("SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = $1::oid")
        .await
        .map_err(|e| PgError::query("preparing large object writes on the target", e))?;
    let create = target
        .prepare("SELECT pg_catalog.lo_from_bytea($1::oid, $2::bytea)")
        .await
        .map_err(|e| PgError::query("preparing large object writes on the target", e))?;
    let put = target
        .prepare("SELECT pg_catalog.lo_put($1::oid, $2::int8, $3::bytea)")
        .await
        .map_err(|e| PgError::query("preparing large object writes on the target", e))?;
    let mut missing_owners: Vec<String> = Vec::new();
    let mut missing_grantees: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut in_txn, mut txn_objects, mut txn_bytes) = (false, 0u64, 0u64);
    loop {
        let rows = src
            .query(&format!("FETCH {LIST_BATCH} FROM ferry_large_objects"), &[])
            .await
            .map_err(|e| PgError::query("listing large objects on the source", e))?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let oid: u32 = row.get(0);
            let owner: String = row.get(1);
            let has_acl: bool = row.get(2);
            if !in_txn {
                target
                    .batch_execute("BEGIN")
                    .await
                    .map_err(|e| PgError::query("starting a transaction on the target", e))?;
                in_txn = true;
            }
            target
                .execute(&unlink, &[&oid])
                .await
                .map_err(|e| PgError::query(format!("replacing large object {oid} left by an earlier run on the target"), e))?;
            let mut offset: i64 = 0;
            loop {
                let chunk: Vec<u8> = src
                    .query_one(&read, &[&oid, &offset, &CHUNK])
                    .await
                    .map_err(|e| {
                        PgError::query(format!("reading large object {oid} on the source"), e).with_fix(
                            "Ferry's source user must own the large objects or have SELECT on them \
                             (GRANT SELECT ON LARGE OBJECT ...), or be a superuser",
                        )
                    })?
                    .get(0);
                let n = chunk.len();
                if offset == 0 {
                    target
                        .execute(&create, &[&oid, &chunk])
                        .await
                        .map_err(|e| PgError::query(format!("creating large object {oid} on the target"), e))?;
                } else if n > 0 {
                    target
                        .execute(&put, &[&oid, &offset, &chunk])
                        .await
                        .map_err(|e| PgError::query(format!("writing large object {oid} on the target"), e))?;
                }
                offset += n as i64;
                if n < CHUNK as usize {
                    break;
                }
            }
            report.objects += 1;
            report.bytes += offset as u64;
            txn_objects += 1;
            txn_bytes += offset as u64;
            if owner != me {
                if roles.contains(&owner) {
                    target
                        .batch_execute(&format!("ALTER LARGE OBJECT {oid} OWNER TO {}", quote_ident(&owner)))
                        .await
                        .map_err(|e| {
                            PgError::query(format!("giving large object {oid} to its owner {owner} on the target"), e)
                                .with_fix("the target user must be a superuser or a member of that role")
                        })?;
                } else if !missing_owners.contains(&owner) {
                    missing_owners.push(owner.clone());
                }
            }
            if has_acl {
                for g in src
                    .query(&grants_q, &[&oid])
                    .await
                    .map_err(|e| PgError::query(format!("reading the grants of large object {oid} on the source"), e))?
                {
                    let grantee: Option<String> = g.get(0);
                    let privilege: String = g.get(1);
                    let grantable: bool = g.get(2);
                    let to = match &grantee {
                        None => "PUBLIC".to_string(),
                        Some(r) if roles.contains(r) => quote_ident(r),
                        Some(r) => {
                            *missing_grantees.entry(r.clone()).or_default() += 1;
                            continue;
                        }
                    };
                    if !matches!(privilege.as_str(), "SELECT" | "UPDATE") {
                        continue;
                    }
                    target
                        .batch_execute(&format!(
                            "GRANT {privilege} ON LARGE OBJECT {oid} TO {to}{}",
                            if grantable { " WITH GRANT OPTION" } else { "" }
                        ))
                        .await
                        .map_err(|e| PgError::query(format!("granting {privilege} on large object {oid} to {to} on the target"), e))?;
                    report.grants += 1;
                }
            }
            if txn_objects >= COMMIT_OBJECTS || txn_bytes >= COMMIT_BYTES {
                target
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| PgError::query("committing large objects on the target", e))?;
                (in_txn, txn_objects, txn_bytes) = (false, 0, 0);
            }
        }
    }
    if in_txn {
        target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| PgError::query("committing large objects on the target", e))?;
    }
    let _ = src.batch_execute("CLOSE ferry_large_objects").await;
    report.missing_owners = missing_owners;
    report.missing_grantees = missing_grantees.into_iter().map(|(r, n)| format!("{r} ({n} objects)")).collect();
    Ok(report)
}

/// The event kind that records a finished copy in Ferry's state (a rerun skips the copy).
pub const EVENT_KIND: &str = "large_objects_copied";

/// Whether this migration's large objects were copied already.
pub async fn copied_already(c: &Client, store: &crate::state::StateStore, id: &str) -> Result<bool, PgError> {
    c.query_one(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {}.events WHERE migration_id = $1 AND kind = $2)",
            store.quoted()
        ),
        &[&id, &EVENT_KIND],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| PgError::query("reading Ferry's event log", e))
}

/// Records a finished copy in the event log (and logs what could not be kept).
pub async fn record(
    c: &Client,
    store: &crate::state::StateStore,
    id: &str,
    phase: ferry_core::Phase,
    r: &CopyReport,
) -> Result<(), PgError> {
    let mut msg = format!(
        "{} large object(s), {} bytes, copied from the load's snapshot with their OIDs ({} grant(s)); \
         change data capture does not carry later changes to them",
        r.objects, r.bytes, r.grants
    );
    if !r.missing_owners.is_empty() {
        tracing::warn!(roles = ?r.missing_owners, "large objects of roles missing on the target belong to the target user");
        msg.push_str(&format!(
            "; owners missing on the target (their objects belong to the target user): {}",
            r.missing_owners.join(", ")
        ));
    }
    if !r.missing_grantees.is_empty() {
        tracing::warn!(roles = ?r.missing_grantees, "grants on large objects to roles missing on the target were left out");
        msg.push_str(&format!(
            "; grants left out (grantee missing on the target): {}",
            r.missing_grantees.join(", ")
        ));
    }
    tracing::info!(objects = r.objects, bytes = r.bytes, grants = r.grants, "large objects copied");
    store.event(c, id, phase, EVENT_KIND, &msg).await
}

/// One object as verification sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// OID.
    pub oid: u32,
    /// Bytes.
    pub size: i64,
    /// MD5 over the MD5s of its 1 MB chunks (the server reads one chunk at a time).
    pub md5: String,
}

/// Every large object's size and digest, by OID. Each server reads the objects in 1 MB chunks
/// (`lo_get` with offsets), so no object is ever whole in memory; only 32-byte chunk digests
/// are aggregated.
pub async fn digests(c: &Client) -> Result<Vec<Digest>, PgError> {
    let sql = "SELECT m.oid, d.size, d.digest
        FROM pg_catalog.pg_largeobject_metadata m
        CROSS JOIN LATERAL (
          WITH RECURSIVE ch(off, len, h) AS (
            SELECT 0::int8, pg_catalog.length(x), pg_catalog.md5(x) FROM pg_catalog.lo_get(m.oid, 0, 1048576) AS x
            UNION ALL
            SELECT ch.off + 1048576, pg_catalog.length(x), pg_catalog.md5(x)
            FROM ch, pg_catalog.lo_get(m.oid, ch.off + 1048576, 1048576) AS x WHERE ch.len = 1048576
          )
          SELECT COALESCE(sum(len), 0)::int8 AS size, pg_catalog.md5(pg_catalog.string_agg(h, '' ORDER BY off)) AS digest FROM ch
        ) d
        ORDER BY m.oid";
    Ok(c.query(sql, &[])
        .await
        .map_err(|e| {
            PgError::query("reading large objects for verification", e)
                .with_fix("the user must own the large objects or have SELECT on them, or be a superuser")
        })?
        .iter()
        .map(|r| Digest {
            oid: r.get(0),
            size: r.get(1),
            md5: r.get::<_, Option<String>>(2).unwrap_or_default(),
        })
        .collect())
}

/// Compares the large objects of two sessions (each in its side's verification snapshot).
/// None when neither side has any (the report then has no large-object entry).
pub async fn verify(source: &Client, target: &Client, max_details: usize) -> Result<Option<TableReport>, PgError> {
    let started = std::time::Instant::now();
    let (s, t) = tokio::try_join!(digests(source), digests(target))?;
    if s.is_empty() && t.is_empty() {
        return Ok(None);
    }
    let mut r = compare(&s, &t, max_details);
    r.seconds = started.elapsed().as_secs_f64();
    Ok(Some(r))
}

/// Merges two OID-ordered digest lists into a report entry.
pub fn compare(source: &[Digest], target: &[Digest], max_details: usize) -> TableReport {
    let mut r = TableReport {
        table: REPORT_NAME.into(),
        source_rows: source.len() as u64,
        target_rows: target.len() as u64,
        ranges: 1,
        ..Default::default()
    };
    let describe = |d: &Digest| format!("{} bytes, md5 {}", d.size, d.md5);
    let note = |r: &mut TableReport, oid: u32, kind: DiffKind, s: Option<&Digest>, t: Option<&Digest>| {
        r.differences += 1;
        if r.details.len() < max_details {
            r.details.push(Difference {
                table: REPORT_NAME.into(),
                key: format!("oid={oid}"),
                kind,
                columns: vec![ColumnDiff {
                    column: "content".into(),
                    source: s.map(describe),
                    target: t.map(describe),
                }],
            });
        }
    };
    let (mut i, mut j) = (0, 0);
    while i < source.len() || j < target.len() {
        match (source.get(i), target.get(j)) {
            (Some(a), Some(b)) if a.oid == b.oid => {
                r.rows_compared += 1;
                if a != b {
                    note(&mut r, a.oid, DiffKind::ValueDiffers, Some(a), Some(b));
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.oid < b.oid => {
                note(&mut r, a.oid, DiffKind::MissingOnTarget, Some(a), None);
                i += 1;
            }
            (Some(a), None) => {
                note(&mut r, a.oid, DiffKind::MissingOnTarget, Some(a), None);
                i += 1;
            }
            (_, Some(b)) => {
                note(&mut r, b.oid, DiffKind::ExtraOnTarget, None, Some(b));
                j += 1;
            }
            (None, None) => break,
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(oid: u32, size: i64, md5: &str) -> Digest {
        Digest {
            oid,
            size,
            md5: md5.into(),
        }
    }

    #[test]
    fn compare_names_every_kind() {
        let s = [d(1, 0, "a"), d(2, 5, "b"), d(3, 9, "c")];
        let t = [d(2, 5, "x"), d(3, 9, "c"), d(4, 1, "d")];
        let r = compare(&s, &t, 10);
        assert_eq!((r.source_rows, r.target_rows, r.rows_compared, r.differences), (3, 3, 2, 3));
        let kinds: Vec<(String, DiffKind)> = r.details.iter().map(|x| (x.key.clone(), x.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("oid=1".into(), DiffKind::MissingOnTarget),
                ("oid=2".into(), DiffKind::ValueDiffers),
                ("oid=4".into(), DiffKind::ExtraOnTarget),
            ]
        );
        assert_eq!(compare(&s, &s, 10).differences, 0);
        assert_eq!(compare(&s, &[], 1).details.len(), 1);
    }
}
