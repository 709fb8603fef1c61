//! Bad input: each case gives a clear message naming the fix, the documented exit code, and
//! never a password.

use crate::harness::{connect, env, ferry, load_sample, with_db, Dbs, Run};

const WRONG: &str = "Wrong-Pass-9f8e7d";

fn url_with_password(url: &str, password: &str) -> String {
    // postgres://postgres:PW@host:port/db -> same with another password.
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, hostpart) = rest.split_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    format!("{scheme}://{user}:{password}@{hostpart}")
}

fn password_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest.split_once('@').unwrap().0.split_once(':').unwrap().1.to_string()
}

fn assert_clean(run: &Run, secrets: &[&str]) {
    for s in secrets {
        assert!(!run.all().contains(s), "output reveals a password:\n{}", run.all());
    }
}

#[tokio::test]
async fn wrong_password() {
    let dbs = Dbs::create("bad_pw").await;
    let bad = url_with_password(&dbs.source, WRONG);
    for cmd in ["check", "migrate"] {
        let run = ferry(&[cmd, "--source", &bad, "--target", &dbs.target]);
        assert_eq!(run.code, 1, "{cmd}: {}", run.all());
        assert!(run.all().contains("password authentication failed"), "{}", run.all());
        assert!(run.all().contains("check the user name and that password"), "{}", run.all());
        assert_clean(&run, &[WRONG, &password_of(&dbs.target)]);
    }
    dbs.drop().await;
}

#[tokio::test]
async fn unreachable_host() {
    let dbs = Dbs::create("bad_host").await;
    let run = ferry(&[
        "check",
        "--source",
        "postgres://postgres:Sekrit-1@127.0.0.1:1/db",
        "--target",
        &dbs.target,
    ]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.all().contains("cannot connect to 127.0.0.1:1/db"), "{}", run.all());
    assert!(
        run.all().contains("check that PostgreSQL is running at 127.0.0.1:1"),
        "{}",
        run.all()
    );
    assert_clean(&run, &["Sekrit-1", &password_of(&dbs.target)]);
    let run = ferry(&[
        "migrate",
        "--source",
        "postgres://postgres:Sekrit-1@127.0.0.1:1/db",
        "--target",
        &dbs.target,
    ]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_clean(&run, &["Sekrit-1"]);
    dbs.drop().await;
}

#[tokio::test]
async fn unknown_database() {
    let dbs = Dbs::create("bad_db").await;
    let url = with_db(&dbs.source, "no_such_database_here");
    let run = ferry(&["check", "--source", &url, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.all().contains("database \"no_such_database_here\" does not exist"),
        "{}",
        run.all()
    );
    assert!(run.all().contains("fix: check the database name"), "{}", run.all());
    assert_clean(&run, &[&password_of(&dbs.source)]);
    dbs.drop().await;
}

#[tokio::test]
async fn wal_level_replica() {
    let e = env();
    let dbs = Dbs::create("bad_wal").await;
    let name = format!("{}_r", dbs.name);
    connect(&e.replica)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let src = with_db(&e.replica, &name);
    load_sample(&src, 10).await;
    let run = ferry(&["check", "--source", &src, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.all().contains("wal_level is replica on source"), "{}", run.all());
    assert!(run.all().contains("set wal_level=logical"), "{}", run.all());
    assert!(run.all().contains("restart PostgreSQL"), "{}", run.all());
    assert_clean(&run, &[&password_of(&src)]);
    // migrate refuses too, before writing anything anywhere.
    let run = ferry(&["migrate", "--source", &src, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    let state = crate::harness::has_state_schema(&dbs.target).await;
    assert!(!state, "a blocked migrate must not write to the target");
    connect(&e.replica)
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    dbs.drop().await;
}

#[tokio::test]
async fn user_without_replication_rights() {
    let dbs = Dbs::create("bad_role").await;
    load_sample(&dbs.source, 10).await;
    let role = format!("norepl_{}", std::process::id());
    let pw = "NoRepl-Secret-77";
    let admin = connect(&dbs.source).await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{pw}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
        ))
        .await
        .unwrap();
    let (scheme, rest) = dbs.source.split_once("://").unwrap();
    let host = rest.split_once('@').unwrap().1;
    let url = format!("{scheme}://{role}:{pw}@{host}");
    let run = ferry(&["check", "--source", &url, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.all().contains(&format!("user {role} may not open a replication connection")),
        "{}",
        run.all()
    );
    assert!(run.all().contains(&format!("ALTER ROLE {role} REPLICATION")), "{}", run.all());
    assert_clean(&run, &[pw, &password_of(&dbs.target)]);
    // The same user given a password through the environment instead of the URL.
    let run: Run = crate::harness::ferry_cmd(&["check", "--source", &format!("{scheme}://{role}@{host}"), "--target", &dbs.target])
        .env("FERRY_SOURCE_PASSWORD", pw)
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.all().contains("may not open a replication connection"), "{}", run.all());
    assert_clean(&run, &[pw]);
    dbs.drop().await;
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await.ok();
}

#[tokio::test]
async fn non_empty_target_table() {
    let dbs = Dbs::create("bad_target").await;
    load_sample(&dbs.source, 10).await;
    let tgt = connect(&dbs.target).await;
    tgt.batch_execute("CREATE TABLE public.products (id int); INSERT INTO public.products VALUES (42)")
        .await
        .unwrap();
    let run = ferry(&["check", "--source", &dbs.source, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.all().contains("\"public\".\"products\" already hold rows"), "{}", run.all());
    assert!(run.all().contains("refuses to overwrite a non-empty target table"), "{}", run.all());
    assert!(run.all().contains("--overwrite"), "{}", run.all());
    let run = ferry(&["migrate", "--source", &dbs.source, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    let kept: i32 = tgt.query_one("SELECT id FROM public.products", &[]).await.unwrap().get(0);
    assert_eq!(kept, 42, "the target's data must be untouched");
    // Told to, Ferry replaces it.
    let run = ferry(&[
        "migrate",
        "--source",
        &dbs.source,
        "--target",
        &dbs.target,
        "--overwrite",
        "--stop-after",
        "full-load",
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    crate::harness::assert_identical(&dbs.source, &dbs.target).await;
    dbs.drop().await;
}

#[test]
fn malformed_urls_are_usage_errors() {
    for (url, secret) in [
        ("postgres://bob:UrlSecret-1@localhost:notaport/db", "UrlSecret-1"),
        ("postgres://bob:UrlSecret-2@localhost:99999/db", "UrlSecret-2"),
        ("postgres://bob:UrlSecret-3@/db?sslmode=bogus", "UrlSecret-3"),
    ] {
        let run = ferry(&["check", "--source", url, "--target", "postgres://x@localhost/y"]);
        assert_eq!(run.code, 2, "{url}: {}", run.all());
        assert!(run.all().contains("--source: invalid PostgreSQL URL"), "{}", run.all());
        assert!(run.all().contains("expected postgres://user"), "{}", run.all());
        assert_clean(&run, &[secret]);
    }
    // A MySQL source: commands built for PostgreSQL sources only say so without the password.
    let run = ferry(&[
        "abandon",
        "--source",
        "mysql://bob:UrlSecret-4@localhost/db",
        "--target",
        "postgres://x@localhost/y",
    ]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.all().contains("MySQL/MariaDB sources work with `ferry check`, `ferry migrate`"),
        "{}",
        run.all()
    );
    assert_clean(&run, &["UrlSecret-4"]);
    let run = ferry(&[
        "migrate",
        "--source",
        "mysql://bob:UrlSecret-6@localhost/db",
        "--target",
        "postgres://x@localhost/y",
    ]);
    // Nothing listens there: a connection error naming the target, without the source's password.
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.all().contains("cannot connect to localhost:5432/y"), "{}", run.all());
    assert_clean(&run, &["UrlSecret-6"]);
    let run = ferry(&[
        "check",
        "--source",
        "mysql://bob:UrlSecret-5@localhost:notaport/db",
        "--target",
        "postgres://x@localhost/y",
    ]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.all().contains("--source: invalid MySQL URL"), "{}", run.all());
    assert_clean(&run, &["UrlSecret-5"]);
    let run = ferry(&["migrate", "--source", "postgres://a@h/d"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.all().contains("--target"), "{}", run.all());
}

#[tokio::test]
async fn non_utf8_source_database_is_refused() {
    let e = env();
    let dbs = Dbs::create("bad_enc").await;
    let name = format!("{}_latin1", dbs.name);
    connect(&e.source)
        .await
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let src = with_db(&e.source, &name);
    connect(&src)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let run = ferry(&["check", "--source", &src, "--target", &dbs.target]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.all().contains("encoding is LATIN1"), "{}", run.all());
    connect(&e.source)
        .await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    dbs.drop().await;
}

/// Flags only the PostgreSQL path uses are a usage error with a MySQL source, naming them:
/// never silently ignored (a --proxy-listen that serves nothing, a --webhook never sent).
#[test]
fn postgres_only_flags_with_a_mysql_source_are_named() {
    let run = ferry(&[
        "migrate",
        "--source",
        "mysql://app:secret-77@127.0.0.1:1/shop",
        "--target",
        "postgres://postgres@127.0.0.1:1/shop",
        "--proxy-listen",
        "127.0.0.1:6432",
        "--auto-rollback-lag",
        "30s",
        "--no-analyze",
    ]);
    assert_eq!(run.code, 2, "{}", run.all());
    for flag in ["--proxy-listen", "--auto-rollback-lag", "--no-analyze", "MySQL"] {
        assert!(run.stderr.contains(flag), "{flag} not named: {}", run.all());
    }
    assert!(!run.all().contains("secret-77"), "{}", run.all());
    // `--listen off` asks for what a MySQL migration does (no API): not refused, the run goes
    // on to connect (and fails there: nothing listens on port 1).
    let run = ferry(&[
        "migrate",
        "--source",
        "mysql://app:secret-77@127.0.0.1:1/shop",
        "--target",
        "postgres://postgres@127.0.0.1:1/shop",
        "--listen",
        "off",
    ]);
    assert_ne!(run.code, 2, "{}", run.all());
    assert!(!run.stderr.contains("--listen"), "{}", run.all());
    // A real address serves the API for a MySQL source too (mysql_api.rs): not refused, the run
    // goes on to connect. A flag with no MySQL meaning given beside it still is, by name.
    let run = ferry(&[
        "migrate",
        "--source",
        "mysql://app:secret-77@127.0.0.1:1/shop",
        "--target",
        "postgres://postgres@127.0.0.1:1/shop",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.all().contains("cannot connect to 127.0.0.1:1/shop"), "{}", run.all());
    let run = ferry(&[
        "migrate",
        "--source",
        "mysql://app:secret-77@127.0.0.1:1/shop",
        "--target",
        "postgres://postgres@127.0.0.1:1/shop",
        "--listen",
        "127.0.0.1:0",
        "--wal-warn",
        "1GB",
    ]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("--wal-warn") && !run.stderr.contains("--listen"),
        "{}",
        run.all()
    );
    // --webhook is for a cutover through the API (mysql_api.rs): accepted beside --listen (the
    // run goes on to connect), refused by name without an API to cut over through.
    let webhook = |listen: &str| {
        ferry(&[
            "migrate",
            "--source",
            "mysql://app:secret-77@127.0.0.1:1/shop",
            "--target",
            "postgres://postgres@127.0.0.1:1/shop",
            "--listen",
            listen,
            "--webhook",
            "https://hooks.example/ferry",
        ])
    };
    let run = webhook("127.0.0.1:0");
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.all().contains("cannot connect to 127.0.0.1:1/shop"), "{}", run.all());
    let run = webhook("off");
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("--webhook") && run.stderr.contains("--listen"), "{}", run.all());
    assert!(!run.all().contains("secret-77"), "{}", run.all());
    // check too. (Defaults and environment values do not count: every MySQL test runs with
    // FERRY_LISTEN=off in its environment.)
    let run: Run = crate::harness::ferry_cmd(&[
        "check",
        "--source",
        "mysql://app:secret-77@127.0.0.1:1/shop",
        "--target",
        "postgres://postgres@127.0.0.1:1/shop",
        "--roles-map",
        "/nonexistent",
    ])
    .output()
    .unwrap()
    .into();
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("--roles-map"), "{}", run.all());
}
