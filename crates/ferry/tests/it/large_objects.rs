//! Large objects: copied by the full load from its snapshot (same OIDs, same bytes, owner and
//! grants), compared by `ferry verify`, and named in `ferry check`'s plan as not carried by
//! change data capture.

use serde_json::Value;

use crate::harness::*;

/// (oid, size, md5 of the whole content, owner, acl) of every large object, by OID.
async fn large_objects(url: &str) -> Vec<(u32, i32, String, String, Option<String>)> {
    connect(url)
        .await
        .query(
            "SELECT m.oid, length(lo_get(m.oid)), md5(lo_get(m.oid)), pg_get_userbyid(m.lomowner)::text, m.lomacl::text
             FROM pg_largeobject_metadata m ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test]
async fn full_load_copies_large_objects_with_their_oids_bytes_owners_and_grants() {
    let dbs = Dbs::create("lobj").await;
    let (owner, reader) = (format!("{}_owner", dbs.name), format!("{}_reader", dbs.name));
    for url in [&env().source, &env().target] {
        connect(url)
            .await
            .batch_execute(&format!("CREATE ROLE {owner}; CREATE ROLE {reader}"))
            .await
            .unwrap();
    }
    // Empty, a few bytes, over 1 MB (several chunks, varied bytes), one with a chosen OID, an
    // owner and grants; a table references them by OID.
    connect(&dbs.source)
        .await
        .batch_execute(&format!(
            "CREATE TABLE docs (id int PRIMARY KEY, content oid);
             INSERT INTO docs VALUES
               (1, lo_from_bytea(0, '')),
               (2, lo_from_bytea(0, 'hello')),
               (3, lo_from_bytea(0, (SELECT decode(string_agg(md5(i::text), ''), 'hex') FROM generate_series(1, 90000) i))),
               (4, lo_from_bytea(4242421, convert_to(repeat('x', 300000), 'UTF8')));
             ALTER LARGE OBJECT 4242421 OWNER TO {owner};
             GRANT SELECT ON LARGE OBJECT 4242421 TO {reader};
             GRANT UPDATE ON LARGE OBJECT 4242421 TO PUBLIC;"
        ))
        .await
        .unwrap();
    let source = large_objects(&dbs.source).await;
    assert_eq!(source.len(), 4);
    assert!(source.iter().any(|l| l.1 > 1 << 20), "{source:?}");
    assert!(source.iter().any(|l| l.1 == 0), "{source:?}");

    // check says what is and is not carried.
    let run = ferry(&["check", "--source", &dbs.source, "--target", &dbs.target]);
    let text = run.all();
    assert!(text.contains("Not carried by change data capture"), "{text}");
    assert!(text.contains("large objects: 4 copied at the full load"), "{text}");
    assert!(text.contains("schema changes (DDL)") && text.contains("sequence values"), "{text}");

    let run = ferry(&refs(&migrate_args(&dbs, &["--stop-after", "full-load"])));
    assert_eq!(run.code, 0, "{}", run.all());
    // Same OIDs, same bytes, same owner and grants; the table's references resolve.
    assert_eq!(large_objects(&dbs.target).await, source);
    let n: i64 = connect(&dbs.target)
        .await
        .query_one(
            "SELECT count(*) FROM docs d JOIN pg_largeobject_metadata m ON m.oid = d.content",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    let events = lines(
        &connect(&dbs.target).await,
        "SELECT message FROM ferry.events WHERE kind = 'large_objects_copied'",
    )
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].starts_with("4 large object(s)"), "{events:?}");

    // verify compares them: identical now; a change on the source is named by OID.
    let both = ["verify", "--source", &dbs.source, "--target", &dbs.target, "--json"];
    let run = ferry(&both);
    let report: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    assert_eq!(run.code, 0, "{report}");
    let lo = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "large objects (pg_largeobject)")
        .cloned()
        .unwrap_or_else(|| panic!("no large object entry: {report}"));
    assert_eq!((lo["source_rows"].as_u64(), lo["differences"].as_u64()), (Some(4), Some(0)), "{lo}");
    connect(&dbs.source)
        .await
        .batch_execute("SELECT lo_put(4242421, 1000, 'changed'); SELECT lo_from_bytea(0, 'new one')")
        .await
        .unwrap();
    let run = ferry(&both);
    let report: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    assert_eq!(run.code, 1, "{report}");
    let text = report.to_string();
    assert!(text.contains("oid=4242421") && text.contains("value_differs"), "{text}");
    assert!(text.contains("missing_on_target"), "{text}");

    dbs.drop().await;
    for url in [&env().source, &env().target] {
        connect(url)
            .await
            .batch_execute(&format!("DROP ROLE {owner}; DROP ROLE {reader}"))
            .await
            .unwrap();
    }
}
