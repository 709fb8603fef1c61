//! Upgrading a MySQL/MariaDB migration in flight: earlier versions kept its state in
//! `ferry.mysql_loads` (keyed by the source, string phases); this version records it in the
//! shared state store (`ferry.migrations` and friends, `ferry.mysql_state`) and converts the old
//! row when it starts. A migration streaming changes survives the upgrade exactly.

use std::time::Duration;

use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql};
use crate::mysql_cdc::{applied_position, my_query, wait_caught_up, wait_streaming};

/// `ferry.mysql_loads` exactly as earlier versions created it: `load::mark_started`, then
/// `apply::ensure_state`.
const OLD_LAYOUT: &str = "CREATE SCHEMA IF NOT EXISTS ferry;
     CREATE TABLE IF NOT EXISTS ferry.mysql_loads (
         source      text PRIMARY KEY,
         started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
         finished_at timestamptz,
         summary     jsonb);
     ALTER TABLE ferry.mysql_loads
         ADD COLUMN IF NOT EXISTS cdc_file text,
         ADD COLUMN IF NOT EXISTS cdc_pos bigint,
         ADD COLUMN IF NOT EXISTS cdc_gtid text,
         ADD COLUMN IF NOT EXISTS cdc_transactions bigint NOT NULL DEFAULT 0,
         ADD COLUMN IF NOT EXISTS cdc_applied_at timestamptz,
         ADD COLUMN IF NOT EXISTS cdc_blocked jsonb,
         ADD COLUMN IF NOT EXISTS cdc_tables jsonb,
         ADD COLUMN IF NOT EXISTS hold jsonb,
         ADD COLUMN IF NOT EXISTS held_at text,
         ADD COLUMN IF NOT EXISTS verified_at timestamptz,
         ADD COLUMN IF NOT EXISTS verify_differences bigint,
         ADD COLUMN IF NOT EXISTS cutover jsonb,
         ADD COLUMN IF NOT EXISTS phase text NOT NULL DEFAULT 'full_load'";

/// Every row of a table on both sides, as `id|...` text, sorted byte-wise.
async fn both_sides(db: &str, target: &str, my_sql_expr: &str, pg_sql_expr: &str, table: &str) -> (Vec<String>, Vec<String>) {
    let mine = my_query("FERRY_TEST_MYSQL", &format!("SELECT {my_sql_expr} FROM {db}.{table}"));
    let mut mine: Vec<String> = mine.lines().map(str::to_string).collect();
    let mut theirs = lines(&connect(target).await, &format!("SELECT {pg_sql_expr} FROM public.{table}")).await;
    mine.sort();
    theirs.sort();
    (mine, theirs)
}

#[tokio::test]
async fn mysql_migration_in_cdc_survives_the_upgrade_from_mysql_loads() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myupg").await;
    let db = dbs.name.clone();
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             CREATE TABLE items (id int PRIMARY KEY, v varchar(40) NOT NULL, n int NOT NULL);
             CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
             CREATE TABLE nokey (a int, b varchar(10));
             INSERT INTO items SELECT seq, CONCAT('item ', seq), 0 FROM seq_1_to_2000;
             INSERT INTO counter VALUES (1, 0);
             INSERT INTO nokey VALUES (1, 'x');"
        ),
    );
    let args = ["migrate", "--source", &source, "--target", &target];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             BEGIN; UPDATE items SET n = n + 1 WHERE id <= 100; UPDATE counter SET n = n + 1; COMMIT;
             INSERT INTO nokey VALUES (1, 'x');
             DELETE FROM items WHERE id > 1990;
             UPDATE counter SET n = n + 1;"
        ),
    );
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(120)).await;
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let stopped = m.terminate();
    assert_eq!(stopped.code, 0, "{}", stopped.all());

    // The state as this version left it.
    let t = connect(&target).await;
    let r = t
        .query_one(
            "SELECT m.id, m.phase, m.snapshot_position, m.applied_position, m.applied_txns, s.verify_differences
             FROM ferry.migrations m JOIN ferry.mysql_state s ON s.migration_id = m.id WHERE m.source_engine = 'mysql'",
            &[],
        )
        .await
        .unwrap();
    let (id, phase, snapshot, applied, txns, differences): (String, String, String, String, i64, Option<i64>) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    assert_eq!(phase, "cdc");
    assert_eq!(differences, Some(0));
    assert!(txns >= 4, "{txns} transactions applied");
    // Recorded through the shared store: every phase by the state machine, every table's copy.
    let phases = {
        let rows = t
            .query(
                "SELECT coalesce(from_phase, '-') || '>' || to_phase FROM ferry.transitions WHERE migration_id = $1 ORDER BY id",
                &[&id],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
    };
    assert_eq!(
        phases,
        [
            "->assess",
            "assess>schema",
            "schema>full_load",
            "full_load>post_load",
            "post_load>cdc"
        ],
        "{phases:?}"
    );
    let copied = lines(
        &t,
        "SELECT t.table_name || ':' || t.state || ':' || t.rows_copied || ':' || (t.snapshot_position = m.snapshot_position)
         FROM ferry.tables t JOIN ferry.migrations m ON m.id = t.migration_id ORDER BY t.table_name",
    )
    .await;
    assert_eq!(copied, ["counter:copied:1:true", "items:copied:2000:true", "nokey:copied:1:true"]);
    let applied_pos: ferry_core::SourcePosition = applied.parse().unwrap();
    let old = applied_pos.as_mysql().unwrap().clone();
    let snap: ferry_core::SourcePosition = snapshot.parse().unwrap();
    assert!(snap < applied_pos, "snapshot {snap} not before applied {applied_pos}");

    // Back to the layout of earlier versions: ferry.mysql_loads filled from the new-layout row
    // as the old code would have, the new-layout row deleted, and every table of the new layout
    // dropped (a target only ever migrated from MySQL had none).
    t.batch_execute(OLD_LAYOUT).await.unwrap();
    let n = t
        .execute(
            "INSERT INTO ferry.mysql_loads (source, started_at, finished_at, summary, cdc_file, cdc_pos, cdc_gtid, cdc_transactions,
                                            cdc_applied_at, cdc_tables, verified_at, verify_differences, phase)
             SELECT m.source, s.load_started_at, s.load_finished_at, s.load_summary, $2, $3, $4, m.applied_txns, m.applied_at,
                    s.cdc_tables, s.verified_at, s.verify_differences, 'cdc'
             FROM ferry.migrations m JOIN ferry.mysql_state s ON s.migration_id = m.id WHERE m.id = $1",
            &[&id, &old.file(), &(old.pos() as i64), &old.gtid()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(t.execute("DELETE FROM ferry.migrations WHERE id = $1", &[&id]).await.unwrap(), 1);
    t.batch_execute(
        "DROP TABLE ferry.mysql_xa_prepared, ferry.mysql_state, ferry.verify_differences, ferry.verify_runs, ferry.transitions, ferry.dead_letters,
                    ferry.events, ferry.tables, ferry.migrations",
    )
    .await
    .unwrap();

    // The source goes on while Ferry is stopped, across a binlog rotation.
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             BEGIN; UPDATE items SET n = n + 10, v = CONCAT(v, ' upgraded') WHERE id BETWEEN 50 AND 150; UPDATE counter SET n = n + 1; COMMIT;
             INSERT INTO items SELECT seq, CONCAT('new ', seq), seq FROM seq_3000_to_3500;
             FLUSH BINARY LOGS;
             DELETE FROM items WHERE id % 7 = 0;
             INSERT INTO nokey VALUES (1, 'x'), (2, NULL);
             DELETE FROM nokey WHERE a = 1 LIMIT 1;
             UPDATE counter SET n = n + 1;
             BEGIN; UPDATE counter SET n = n + 1; INSERT INTO items VALUES (5000, 'last', 1); COMMIT;"
        ),
    );

    // The same command as before: it converts the old state, then resumes where the old
    // version's last commit stood.
    let m = Migrator::spawn(&args);
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(120)).await;
    let gone: bool = t
        .query_one("SELECT to_regclass('ferry.mysql_loads') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "ferry.mysql_loads is still there");
    let r = t
        .query_one(
            "SELECT m.id, m.phase, m.source_engine, m.snapshot_position, m.applied_txns >= $1, s.verify_differences, s.cdc_tables IS NOT NULL
             FROM ferry.migrations m JOIN ferry.mysql_state s ON s.migration_id = m.id",
            &[&txns],
        )
        .await
        .unwrap();
    let (id2, phase, engine, snapshot2, counted, differences, tables): (String, String, String, String, bool, Option<i64>, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
    assert_eq!(
        (id2.as_str(), phase.as_str(), engine.as_str(), snapshot2.as_str()),
        (id.as_str(), "cdc", "mysql", snapshot.as_str())
    );
    assert!(counted, "the transactions applied before the upgrade were not carried");
    assert_eq!(differences, Some(0), "the last verification was not carried");
    assert!(tables, "the stream's tables were not carried");
    // Converted at the recorded position, in one recorded transition, then streamed past it.
    let converted = lines(
        &t,
        "SELECT coalesce(from_phase, '-') || ' -> ' || to_phase || ' by ' || actor FROM ferry.transitions
         WHERE reason = 'converted from ferry.mysql_loads'",
    )
    .await;
    assert_eq!(converted, ["- -> cdc by ferry migrate"]);
    let message: String = t
        .query_one("SELECT message FROM ferry.events WHERE kind = 'converted'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(message.contains(&format!("applied {applied_pos}")), "{message}");
    let now = applied_position(&t).await.unwrap();
    assert!(now > applied_pos, "the stream did not move past {applied_pos}: {now}");
    let copied = lines(
        &t,
        "SELECT table_name || ':' || state || ':' || rows_copied FROM ferry.tables ORDER BY table_name",
    )
    .await;
    assert_eq!(copied, ["counter:copied:1", "items:copied:2000", "nokey:copied:1"]);

    // Nothing lost, nothing twice: the verification and every row agree.
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    let (mine, theirs) = both_sides(&db, &target, "CONCAT(id, '|', v, '|', n)", "id || '|' || v || '|' || n", "items").await;
    assert_eq!(mine.len(), theirs.len(), "items: row counts differ");
    assert_eq!(mine, theirs);
    let (mine, theirs) = both_sides(
        &db,
        &target,
        "CONCAT(a, '|', COALESCE(b, 'NULL'))",
        "a || '|' || coalesce(b, 'NULL')",
        "nokey",
    )
    .await;
    assert_eq!(mine, theirs);
    assert_eq!(theirs, ["1|x", "1|x", "2|NULL"]);
    let n: i64 = t.query_one("SELECT n FROM public.counter", &[]).await.unwrap().get(0);
    assert_eq!(n, 5, "an increment was lost or applied twice");

    // Status reads the new layout; the stream stops cleanly.
    let status = ferry(&["status", "--source", &source, "--target", &target]);
    assert_eq!(status.code, 0, "{}", status.all());
    assert!(status.stdout.contains("phase          cdc"), "{}", status.stdout);
    assert!(status.stdout.contains(&format!("migration id   {id}")), "{}", status.stdout);
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    assert!(
        end.stderr.contains(&format!("(binlog {}", old.file_pos())),
        "did not resume from {}: {}",
        old.file_pos(),
        end.all()
    );
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

/// An unfinished load in the old layout converts to phase `full_load`, and `ferry migrate`
/// loads it again; a `cut_over` one converts to `cut_over`, which `ferry migrate` refuses to
/// stream. Both conversions are one transaction each, and a second run finds nothing to convert.
#[tokio::test]
async fn mysql_unfinished_and_cut_over_states_convert_to_their_phases() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myupg2").await;
    let db = dbs.name.clone();
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("USE {db}; CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT seq, seq FROM seq_1_to_100;"),
    );
    let t = connect(&target).await;
    t.batch_execute(OLD_LAYOUT).await.unwrap();
    // An interrupted load: a row, no finish, and a half-copied table of its own on the target.
    let source_id = source.rsplit_once('@').unwrap().1.to_string();
    t.execute("INSERT INTO ferry.mysql_loads (source) VALUES ($1)", &[&source_id])
        .await
        .unwrap();
    t.batch_execute("CREATE TABLE public.t (id int, v int); INSERT INTO public.t VALUES (1, 1)")
        .await
        .unwrap();
    let status = ferry(&["status", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["phase"], "full_load", "{st}");
    assert!(st["load_finished_at"].is_null(), "{st}");
    let gone: bool = t
        .query_one("SELECT to_regclass('ferry.mysql_loads') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone);
    let again = ferry(&["status", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(
        lines(
            &t,
            "SELECT count(*)::text FROM ferry.transitions WHERE reason = 'converted from ferry.mysql_loads'"
        )
        .await,
        ["1"]
    );
    let load = ferry(&["migrate", "--source", &source, "--target", &target, "--stop-after", "full-load"]);
    assert_eq!(load.code, 0, "{}", load.all());
    assert!(load.stderr.contains("did not finish"), "{}", load.all());
    assert_eq!(lines(&t, "SELECT count(*)::text FROM public.t").await, ["100"]);
    let phases = lines(
        &t,
        "SELECT coalesce(from_phase, '-') || '>' || to_phase FROM ferry.transitions ORDER BY id",
    )
    .await;
    assert_eq!(
        phases,
        ["->full_load", "full_load>full_load", "full_load>post_load", "post_load>cdc"],
        "{phases:?}"
    );

    // A migration that was cut over: converted to cut_over, with its cutover report.
    t.batch_execute(
        "DROP TABLE ferry.mysql_xa_prepared, ferry.mysql_state, ferry.verify_differences, ferry.verify_runs, ferry.transitions, ferry.dead_letters,
                    ferry.events, ferry.tables, ferry.migrations",
    )
    .await
    .unwrap();
    t.batch_execute(OLD_LAYOUT).await.unwrap();
    t.execute(
        r#"INSERT INTO ferry.mysql_loads (source, finished_at, summary, cdc_file, cdc_pos, cdc_gtid, phase, cutover)
           VALUES ($1, clock_timestamp(), '{"binlog_file": "mysql-bin.000009", "binlog_pos": 4, "gtid": "0-1-5", "tables": [["t", 100]]}',
                   'mysql-bin.000010', 1234, '0-1-9', 'cut_over', '{"final_position": "mysql-bin.000010:1234"}')"#,
        &[&source_id],
    )
    .await
    .unwrap();
    let refused = ferry(&["migrate", "--source", &source, "--target", &target]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(refused.all().contains("was cut over"), "{}", refused.all());
    let r = t
        .query_one(
            "SELECT m.phase, m.snapshot_position, m.applied_position, s.cutover->>'final_position'
             FROM ferry.migrations m JOIN ferry.mysql_state s ON s.migration_id = m.id",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(
        got,
        (
            "cut_over".to_string(),
            "mysql:mysql-bin.000009:4/0-1-5".to_string(),
            "mysql:mysql-bin.000010:1234/0-1-9".to_string(),
            "mysql-bin.000010:1234".to_string()
        )
    );
    dispose("FERRY_TEST_MYSQL", dbs).await;
}
