//! Least privilege: Ferry runs as a user that holds only what a managed service grants, taken
//! from the list in docs/privileges.md (the test reads it there, so the two cannot drift).

use std::time::Duration;

use crate::cutover::{switch_done, verify_clean};
use crate::harness::*;

const DOC: &str = include_str!("../../../../docs/privileges.md");

/// The documented grants, for `ferry` = `user`, `app_owner` = `owner`, `db_owner` = `dbo`,
/// `appdb` = `db`.
fn documented_grants(user: &str, owner: &str, dbo: &str, db: &str) -> Vec<String> {
    let block = DOC
        .split("<!-- managed-grants:begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- managed-grants:end -->").next())
        .expect("docs/privileges.md has the managed-grants block");
    let stmts: Vec<String> = block
        .lines()
        .filter(|l| !l.starts_with("```") && !l.trim().is_empty())
        .map(|l| {
            l.replace("'secret'", "'ferry-test-pw'")
                .replace("TO ferry", &format!("TO {user}"))
                .replace("ROLE ferry ", &format!("ROLE {user} "))
                .replace("GRANT app_owner", &format!("GRANT {owner}"))
                .replace("GRANT db_owner", &format!("GRANT {dbo}"))
                .replace("DATABASE appdb", &format!("DATABASE {db}"))
        })
        .collect();
    assert!(stmts.len() >= 6, "the documented list looks empty: {stmts:?}");
    stmts
}

/// A pair of databases whose Ferry user is not a superuser. On each cluster: `<db>_o` owns
/// the tables (NOLOGIN), `<db>_d` the database, `<db>_f` is Ferry's user with the documented
/// rights. Returns (dbs, Ferry's source URL, Ferry's target URL, Ferry's user).
struct Managed {
    dbs: Dbs,
    source: String,
    target: String,
    user: String,
    owner: String,
    dbo: String,
}

impl Managed {
    async fn create(prefix: &str) -> Self {
        let dbs = Dbs::create(prefix).await;
        pgbench_init(&dbs.source, 1).await;
        create_marker(&dbs.source).await;
        let (user, owner, dbo) = (format!("{}_f", dbs.name), format!("{}_o", dbs.name), format!("{}_d", dbs.name));
        for url in [&dbs.source, &dbs.target] {
            let c = connect(url).await;
            c.batch_execute(&format!(
                "CREATE ROLE {owner} NOLOGIN; CREATE ROLE {dbo} NOLOGIN; ALTER DATABASE {} OWNER TO {dbo};",
                dbs.name
            ))
            .await
            .unwrap();
            for sql in documented_grants(&user, &owner, &dbo, &dbs.name) {
                c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
        // The application's tables belong to its owner role, not to Ferry's user.
        connect(&dbs.source)
            .await
            .batch_execute(&format!(
                "DO $$ DECLARE t record; BEGIN
                   FOR t IN SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' LOOP
                     EXECUTE format('ALTER TABLE public.%I OWNER TO {owner}', t.relname);
                   END LOOP;
                 END $$"
            ))
            .await
            .unwrap();
        let as_user = |url: &str| {
            let u = url.replacen("postgres:ferry-test-pw@", &format!("{user}:ferry-test-pw@"), 1);
            assert_ne!(u, url, "unexpected test URL shape");
            u
        };
        Self {
            source: as_user(&dbs.source),
            target: as_user(&dbs.target),
            dbs,
            user,
            owner,
            dbo,
        }
    }

    async fn on(&self, side: &str, sql: &str) {
        let url = if side == "source" { &self.dbs.source } else { &self.dbs.target };
        connect(url).await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn drop(self) {
        let roles = format!("{}, {}, {}", self.user, self.owner, self.dbo);
        let (s, t) = (self.dbs.source.clone(), self.dbs.target.clone());
        self.dbs.drop().await;
        for url in [s, t] {
            let c = connect(&with_db(&url, "postgres")).await;
            c.batch_execute(&format!("DROP OWNED BY {roles}; DROP ROLE {roles}")).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_least_privilege_check_migrate_verify_cutover_rollback_cutover_complete() {
    let m = Managed::create("mgd").await;
    let su: bool = connect(&m.source)
        .await
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!su, "Ferry's user must not be a superuser here");

    let run = ferry(&["check", "--source", &m.source, "--target", &m.target]);
    assert_eq!(run.code, 0, "{}", run.all());
    for want in [
        "replication_connection",
        "session_replication_role",
        "replication_origins",
        "read_only_switch",
        "Result: ready",
    ] {
        assert!(run.stdout.contains(want), "check does not mention {want}:\n{}", run.stdout);
    }

    let (api, proxy) = (free_addr(), free_addr());
    let migrator = Migrator::spawn(&[
        "migrate",
        "--source",
        &m.source,
        "--target",
        &m.target,
        "--jobs",
        "2",
        "--listen",
        &api,
        "--proxy-listen",
        &proxy,
    ]);
    wait_for_cdc(&m.dbs.target).await;
    let bench = pgbench_run_rate(&m.dbs.source, 2, 8, 100);
    tokio::task::spawn_blocking(move || pgbench_finish(bench)).await.unwrap();
    sync_point(&m.dbs.source, &m.dbs.target, 1).await;
    assert!(pgbench_invariant(&m.dbs.target).await);
    verify_clean(&api).await;

    let (run, report) = switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(report["outcome"], "done", "{}", run.all());
    // A write through the proxy lands on the target and streams back to the source.
    let (host, port) = proxy.rsplit_once(':').unwrap();
    // The proxy admits the users it was given: without --proxy-users-file, Ferry's own.
    let app = connect(&format!("postgres://{}:ferry-test-pw@{host}:{port}/{}", m.user, m.dbs.name)).await;
    app.batch_execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 424242, now())")
        .await
        .unwrap();
    wait_for_row(
        &m.dbs.source,
        "a write on the target to stream back to the source",
        Duration::from_secs(30),
        "SELECT 1 FROM pgbench_history WHERE delta = 424242",
    )
    .await;

    let (run, report) = switch_done(&api, "rollback", &["--max-pause", "2s"]);
    assert_eq!(report["outcome"], "done", "{}", run.all());
    app.batch_execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 434343, now())")
        .await
        .unwrap();
    wait_for_row(
        &m.dbs.target,
        "a write on the source after rollback to reach the target",
        Duration::from_secs(30),
        "SELECT 1 FROM pgbench_history WHERE delta = 434343",
    )
    .await;
    let (run, report) = switch_done(&api, "cutover", &["--max-pause", "2s"]);
    assert_eq!(report["outcome"], "done", "{}", run.all());
    drop(app);

    // Complete, still without superuser: nothing of Ferry's is left on either side. (The
    // reverse stream must be running: complete stops it at a known position.)
    api_wait(&api, "reverse replication to run", Duration::from_secs(60), |s| {
        !s["live"]["reverse"].is_null()
    })
    .await;
    let record = std::env::temp_dir().join(format!("ferry-mgd-{}.json", m.dbs.name));
    let run = ferry(&[
        "complete",
        "--api",
        &format!("http://{api}"),
        "--json",
        "--record-file",
        record.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("{}", run.all()));
    assert_eq!(v["outcome"], "done", "{v}");
    let _ = std::fs::remove_file(&record);
    let run = migrator.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    for url in [&m.dbs.source, &m.dbs.target] {
        assert!(slots(url).await.is_empty(), "a slot is left on {url}");
        let c = connect(url).await;
        let left: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_publication)
                      + (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'ferry%' || $1 || '%')",
                &[&m.dbs.name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "a publication or replication origin is left on {url}");
    }
    assert!(!has_state_schema(&m.dbs.target).await);
    assert_identical(&m.dbs.source, &m.dbs.target).await;
    m.drop().await;
}

/// One right removed at a time: `check` names it and the statement that grants it, and
/// `migrate` stops before it writes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_right_is_named_with_its_grant_and_migrate_writes_nothing() {
    let m = Managed::create("mgd_rights").await;
    let (u, o, d) = (m.user.clone(), m.owner.clone(), m.dbo.clone());
    let set_role = "SET ON PARAMETER session_replication_role";
    let origin_fn = "EXECUTE ON FUNCTION pg_replication_origin_create(text)";
    let cases: Vec<(&str, String, String, String)> = vec![
        (
            "source",
            format!("ALTER ROLE {u} NOREPLICATION"),
            format!("ALTER ROLE {u} REPLICATION"),
            format!("ALTER ROLE {u} REPLICATION"),
        ),
        (
            "target",
            format!("REVOKE {set_role} FROM {u}"),
            format!("GRANT {set_role} TO {u}"),
            format!("GRANT SET ON PARAMETER session_replication_role TO {u}"),
        ),
        (
            "source",
            format!("REVOKE {set_role} FROM {u}"),
            format!("GRANT {set_role} TO {u}"),
            format!("GRANT SET ON PARAMETER session_replication_role TO {u}"),
        ),
        (
            "target",
            format!("REVOKE {origin_fn} FROM {u}"),
            format!("GRANT {origin_fn} TO {u}"),
            "pg_replication_origin_create(text)".into(),
        ),
        (
            "source",
            format!("REVOKE {d} FROM {u}"),
            format!("GRANT {d} TO {u}"),
            format!("OWNER TO {u}"),
        ),
        (
            "source",
            format!("REVOKE {o} FROM {u}"),
            format!("GRANT {o} TO {u}"),
            format!("GRANT {o} TO {u}"),
        ),
    ];
    for (side, revoke, grant, fix) in &cases {
        m.on(side, revoke).await;
        let run = ferry(&["check", "--source", &m.source, "--target", &m.target]);
        assert_eq!(run.code, 1, "check passed with `{revoke}` on the {side}:\n{}", run.all());
        assert!(run.stdout.contains("BLOCKER"), "{}", run.stdout);
        assert!(
            run.stdout.contains(fix.as_str()),
            "with `{revoke}` on the {side}, check does not print the fix {fix:?}:\n{}",
            run.stdout
        );
        let run = ferry(&["migrate", "--source", &m.source, "--target", &m.target, "--jobs", "2"]);
        assert_ne!(run.code, 0, "migrate started with `{revoke}` on the {side}:\n{}", run.all());
        assert!(slots(&m.dbs.source).await.is_empty(), "a slot was made with `{revoke}`");
        let pubs: i64 = connect(&m.dbs.source)
            .await
            .query_one("SELECT count(*) FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pubs, 0, "a publication was made with `{revoke}`");
        assert!(!has_state_schema(&m.dbs.target).await, "state was written with `{revoke}`");
        m.on(side, grant).await;
    }
    let run = ferry(&["check", "--source", &m.source, "--target", &m.target]);
    assert_eq!(run.code, 0, "{}", run.all());
    m.drop().await;
}
