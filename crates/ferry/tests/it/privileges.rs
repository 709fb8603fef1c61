//! Owners, grants, row-level security and SECURITY DEFINER functions arrive on the target as on
//! the source: the application's own role gets the same answers, and the same refusals, on both
//! sides of a cutover (docs/roles.md).

use std::time::Duration;

use crate::cutover::{switch_done, verify_clean};
use crate::harness::*;

/// What one statement did: its rows as text, or the SQLSTATE it failed with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Rows(Vec<String>),
    Denied(String),
}

/// Runs each statement in its own transaction, rolled back, so the answers do not depend on
/// the order or on which side ran first.
async fn outcomes(url: &str, statements: &[&str]) -> Vec<Outcome> {
    let c = connect(url).await;
    let mut out = Vec::new();
    for sql in statements {
        c.batch_execute("BEGIN").await.unwrap();
        let o = match c.simple_query(sql).await {
            Ok(msgs) => Outcome::Rows(
                msgs.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                            (0..r.len())
                                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                                .collect::<Vec<_>>()
                                .join("|"),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => Outcome::Denied(e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("{e}"))),
        };
        c.batch_execute("ROLLBACK").await.unwrap();
        out.push(o);
    }
    out
}

/// The URL of `role` (password `pw`) on the same server and database as `url`.
fn as_role(url: &str, role: &str, pw: &str) -> String {
    let u = url.replacen("postgres:ferry-test-pw@", &format!("{role}:{pw}@"), 1);
    assert_ne!(u, url, "unexpected test URL shape");
    u
}

async fn drop_roles(dbs: Dbs, roles: &[String]) {
    let (s, t) = (dbs.source.clone(), dbs.target.clone());
    dbs.drop().await;
    for url in [s, t] {
        let c = connect(&with_db(&url, "postgres")).await;
        for r in roles {
            c.batch_execute(&format!("DROP ROLE IF EXISTS {r}")).await.unwrap();
        }
    }
}

async fn scalar(url: &str, sql: &str) -> String {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_gets_the_same_answers_and_refusals_after_cutover() {
    let dbs = Dbs::create("privs").await;
    let (owner, app) = (format!("{}_own", dbs.name), format!("{}_app", dbs.name));
    create_marker(&dbs.source).await;
    connect(&dbs.source)
        .await
        .batch_execute(&format!(
            "CREATE ROLE {owner} NOLOGIN;
             CREATE ROLE {app} LOGIN PASSWORD 'app-pw' CONNECTION LIMIT 7;
             CREATE SCHEMA shop AUTHORIZATION {owner};
             GRANT USAGE ON SCHEMA shop TO {app};
             CREATE TABLE shop.accounts (id serial PRIMARY KEY, owner_name text NOT NULL, balance int NOT NULL, secret text);
             CREATE TABLE shop.audit (id int PRIMARY KEY, note text);
             ALTER TABLE shop.accounts OWNER TO {owner};
             ALTER TABLE shop.audit OWNER TO {owner};
             INSERT INTO shop.accounts (owner_name, balance, secret) VALUES
               ('{app}', 10, 's1'), ('other', 20, 's2'), ('{app}', 0, 's3'), ('other', 5, 's4');
             INSERT INTO shop.audit VALUES (1, 'x');
             GRANT SELECT (id, owner_name, balance), INSERT ON shop.accounts TO {app};
             GRANT USAGE ON SEQUENCE shop.accounts_id_seq TO {app};
             ALTER TABLE shop.accounts ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON shop.accounts FOR SELECT TO {app} USING (owner_name = current_user);
             CREATE POLICY mine_ins ON shop.accounts FOR INSERT TO {app} WITH CHECK (owner_name = current_user);
             ALTER TABLE shop.audit ENABLE ROW LEVEL SECURITY;
             ALTER TABLE shop.audit FORCE ROW LEVEL SECURITY;
             CREATE VIEW shop.positive WITH (security_barrier) AS SELECT id, owner_name FROM shop.accounts WHERE balance > 0;
             ALTER VIEW shop.positive OWNER TO {owner};
             GRANT SELECT ON shop.positive TO {app};
             CREATE FUNCTION shop.total() RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = shop
               AS $$ SELECT sum(balance) FROM shop.accounts $$;
             ALTER FUNCTION shop.total() OWNER TO {owner};
             REVOKE ALL ON FUNCTION shop.total() FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION shop.total() TO {app};
             CREATE FUNCTION shop.secrets() RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = shop
               AS $$ SELECT count(secret) FROM shop.accounts $$;
             ALTER FUNCTION shop.secrets() OWNER TO {owner};
             REVOKE ALL ON FUNCTION shop.secrets() FROM PUBLIC;
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA shop GRANT SELECT ON TABLES TO {app};"
        ))
        .await
        .unwrap();

    // check lists the roles, what they are used for, and that the target lacks them.
    let run = ferry(&["check", "--source", &dbs.source, "--target", &dbs.target, "--roles", "create"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for want in [
        format!("{owner:<28} {owner:<28} owns"),
        format!("{app:<28} {app:<28} granted"),
        "missing: created, no password".to_string(),
        format!("SECURITY DEFINER: shop.total() runs as {owner}; EXECUTE: {app}"),
        "SECURITY DEFINER: shop.secrets()".to_string(),
        "row-level security: shop.accounts: ENABLE, 2 policies".to_string(),
        "row-level security: shop.audit: ENABLE + FORCE, 0 policies".to_string(),
    ] {
        assert!(run.stdout.contains(&want), "check does not show {want:?}:\n{}", run.stdout);
    }

    let api = free_addr();
    let m = Migrator::spawn(&refs(&migrate_args(&dbs, &["--roles", "create", "--listen", &api])));
    wait_for_cdc(&dbs.target).await;
    sync_point(&dbs.source, &dbs.target, 1).await;

    let statements = [
        "SELECT id, owner_name, balance FROM shop.accounts ORDER BY id",
        "SELECT secret FROM shop.accounts",
        "SELECT * FROM shop.accounts",
        "INSERT INTO shop.accounts (owner_name, balance) VALUES (current_user, 5) RETURNING owner_name, balance",
        "INSERT INTO shop.accounts (owner_name, balance) VALUES ('other', 5)",
        "UPDATE shop.accounts SET balance = 0",
        "SELECT id, owner_name FROM shop.positive ORDER BY id",
        "SELECT shop.total()",
        "SELECT shop.secrets()",
        "SELECT nextval('shop.accounts_id_seq') > 0",
        "SELECT count(*) FROM shop.audit",
        "CREATE TABLE shop.mine (i int)",
        "SELECT count(*) FROM public.test_marker",
    ];
    let on_source = outcomes(&as_role(&dbs.source, &app, "app-pw"), &statements).await;
    let denied = |s: &str| Outcome::Denied(s.to_string());
    let rows = |v: &[&str]| Outcome::Rows(v.iter().map(|s| s.to_string()).collect());
    // The expectations themselves: what is allowed answers, what is not fails with 42501.
    assert_eq!(on_source[0], rows(&[&format!("1|{app}|10"), &format!("3|{app}|0")]));
    assert_eq!(on_source[1], denied("42501"));
    assert_eq!(on_source[2], denied("42501"));
    assert_eq!(on_source[3], rows(&[&format!("{app}|5")]));
    assert_eq!(on_source[4], denied("42501"), "the INSERT policy's WITH CHECK");
    assert_eq!(on_source[5], denied("42501"));
    assert_eq!(on_source[6], rows(&[&format!("1|{app}"), "2|other", "4|other"]));
    assert_eq!(on_source[7], rows(&["35"]));
    assert_eq!(on_source[8], denied("42501"));
    assert_eq!(on_source[9], rows(&["t"]));
    assert_eq!(on_source[10], denied("42501"));
    assert_eq!(on_source[11], denied("42501"));
    assert_eq!(on_source[12], denied("42501"));

    // Verified identical (as Ferry's user, which bypasses row-level security), cut over without
    // the proxy, then log in to the target as the application would: the role
    // was created without a password, so the operator sets one.
    api_wait(&api, "phase cdc in the API", Duration::from_secs(30), |s| s["phase"] == "cdc").await;
    verify_clean(&api).await;
    let (run, report) = switch_done(&api, "cutover", &["--no-proxy", "--grace", "1s", "--max-pause", "10s"]);
    assert_eq!(report["outcome"], "done", "{}", run.all());
    connect(&dbs.target)
        .await
        .batch_execute(&format!("ALTER ROLE {app} PASSWORD 'app-pw'"))
        .await
        .unwrap();
    let on_target = outcomes(&as_role(&dbs.target, &app, "app-pw"), &statements).await;
    for (i, sql) in statements.iter().enumerate() {
        assert_eq!(on_target[i], on_source[i], "{sql}: the target answers differently from the source");
    }

    // The catalog says the same: owners, ACLs (the SECURITY DEFINER functions are not executable
    // by PUBLIC), policies, ENABLE/FORCE, default privileges, the role's attributes.
    let facts = "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
          SELECT format('%s %s %s %s %s', c.oid::regclass, pg_get_userbyid(c.relowner), c.relacl, c.relrowsecurity, c.relforcerowsecurity) x
            FROM pg_class c WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind IN ('r', 'v', 'S')
          UNION ALL SELECT format('%s %s %s', a.attrelid::regclass, a.attname, a.attacl) FROM pg_attribute a
            WHERE a.attrelid = 'shop.accounts'::regclass AND a.attacl IS NOT NULL
          UNION ALL SELECT format('%s %s %s %s', p.oid::regprocedure, pg_get_userbyid(p.proowner), p.proacl, p.prosecdef) FROM pg_proc p
            WHERE p.pronamespace = 'shop'::regnamespace
          UNION ALL SELECT format('%s %s %s %s', polname, polcmd, polroles::regrole[], pg_get_expr(polqual, polrelid)) FROM pg_policy
          UNION ALL SELECT format('%s %s %s', defaclrole::regrole, defaclobjtype, defaclacl) FROM pg_default_acl
          UNION ALL SELECT format('%s %s %s', nspname, pg_get_userbyid(nspowner), nspacl) FROM pg_namespace WHERE nspname = 'shop'
          UNION ALL SELECT format('%s %s %s %s', rolname, rolcanlogin, rolconnlimit, rolsuper) FROM pg_roles WHERE rolname IN ($1, $2)) f";
    let (s, t) = (connect(&dbs.source).await, connect(&dbs.target).await);
    let src: String = s.query_one(facts, &[&owner, &app]).await.unwrap().get(0);
    let tgt: String = t.query_one(facts, &[&owner, &app]).await.unwrap().get(0);
    assert_eq!(tgt, src);
    assert!(
        src.contains(&format!("shop.total() {owner} {{{owner}=X/{owner},{app}=X/{owner}}} t")),
        "{src}"
    );
    assert!(src.contains(&format!("{app} t 7 f")), "{src}");

    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    drop_roles(dbs, &[app, owner]).await;
}

#[tokio::test]
async fn missing_roles_stop_before_anything_is_written_and_a_map_renames_them() {
    let dbs = Dbs::create("rolemap").await;
    let (owner, app) = (format!("{}_own", dbs.name), format!("{}_app", dbs.name));
    let (t_owner, t_app) = (format!("{}_town", dbs.name), format!("{}_tapp", dbs.name));
    connect(&dbs.source)
        .await
        .batch_execute(&format!(
            "CREATE ROLE {owner} NOLOGIN; CREATE ROLE {app} NOLOGIN;
             CREATE TABLE items (id int PRIMARY KEY, label text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;
             ALTER TABLE items OWNER TO {owner};
             GRANT SELECT, UPDATE (label) ON items TO {app};
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;
             CREATE POLICY low ON items TO {app} USING (id < 10);"
        ))
        .await
        .unwrap();

    // --roles require (the default): blocked by check, nothing on the target.
    let run = ferry(&refs(&migrate_args(&dbs, &["--stop-after", "full-load"])));
    assert_ne!(run.code, 0, "{}", run.all());
    let all = run.all();
    assert!(
        all.contains(&format!(
            "role(s) {app}, {owner} own objects of, or are granted privileges in, the migrated schema but do not exist on the target"
        )),
        "{all}"
    );
    assert!(all.contains(&format!("CREATE ROLE \"{owner}\" NOLOGIN INHERIT;")), "{all}");
    assert!(!has_state_schema(&dbs.target).await, "something was written on the target");
    assert_eq!(
        scalar(&dbs.target, "SELECT (to_regclass('public.items') IS NULL)::text").await,
        "true"
    );

    // A map to roles the target has: owners, grants and the policy use the target names.
    connect(&dbs.target)
        .await
        .batch_execute(&format!("CREATE ROLE {t_owner} NOLOGIN; CREATE ROLE {t_app} NOLOGIN;"))
        .await
        .unwrap();
    let map = std::env::temp_dir().join(format!("{}-roles.map", dbs.name));
    std::fs::write(&map, format!("# source = target\n{owner} = {t_owner}\n\"{app}\" = {t_app}\n")).unwrap();
    let map_arg = map.display().to_string();
    let run = ferry(&refs(&migrate_args(&dbs, &["--stop-after", "full-load", "--roles-map", &map_arg])));
    assert_eq!(run.code, 0, "{}", run.all());
    let got = scalar(
        &dbs.target,
        "SELECT format('%s %s %s %s', pg_get_userbyid(c.relowner), c.relacl,
                (SELECT attacl FROM pg_attribute WHERE attrelid = c.oid AND attname = 'label'),
                (SELECT polroles::regrole[] FROM pg_policy WHERE polrelid = c.oid))
         FROM pg_class c WHERE c.oid = 'public.items'::regclass",
    )
    .await;
    assert_eq!(
        got,
        format!("{t_owner} {{{t_owner}=arwdDxt/{t_owner},{t_app}=r/{t_owner}}} {{{t_app}=w/{t_owner}}} {{{t_app}}}")
    );
    assert_eq!(scalar(&dbs.target, "SELECT count(*)::text FROM items").await, "50");
    let _ = std::fs::remove_file(&map);

    // A map file that does not parse is a usage error naming the line.
    std::fs::write(&map, "only_one_name\n").unwrap();
    let run = ferry(&["check", "--source", &dbs.source, "--target", &dbs.target, "--roles-map", &map_arg]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.all().contains("line 1: expected `=`"), "{}", run.all());
    let _ = std::fs::remove_file(&map);
    drop_roles(dbs, &[app, owner, t_app, t_owner]).await;
}
