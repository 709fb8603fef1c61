//! Errors of the PostgreSQL target met on the MySQL path (full load, verification) keep their
//! class, SQLSTATE and fix through `MyError::target`, against a real PostgreSQL (started by
//! scripts/test.sh): a terminated backend stays transient, a refusal stays definite.

use ferry_core::{ErrorClass, Fault};
use ferry_mysql::MyError;
use tokio_postgres::{Client, NoTls};

async fn connect() -> Client {
    let url = std::env::var("FERRY_TEST_TARGET").expect("FERRY_TEST_TARGET is not set: run the tests through scripts/test.sh");
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connecting to the test target");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[tokio::test]
async fn a_lost_target_connection_stays_transient_with_its_sqlstate() {
    let c = connect().await;
    // The server ends this backend as a restart or pg_terminate_backend would: FATAL 57P01
    // (admin_shutdown) in answer to the statement.
    let e = c
        .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .expect_err("the backend ends itself");
    let m = MyError::target("copying t", e, "check the target's log");
    assert_eq!(m.class(), ErrorClass::Transient, "{m}");
    assert_eq!(m.context, "copying t");
    assert!(m.reason.contains("(SQLSTATE 57P01)"), "{m}");
    assert_eq!(m.fix.as_deref(), Some("check the target's log"), "{m}");
    // The connection is gone: the next statement fails with no server answer, transient too.
    let e = c.batch_execute("SELECT 1").await.expect_err("the connection is closed");
    let m = MyError::target("copying t", e, "check the target's log");
    assert_eq!(m.class(), ErrorClass::Transient, "{m}");
    assert!(!m.reason.contains("SQLSTATE"), "{m}");
    assert!(m.to_string().ends_with("(fix: check the target's log)"), "{m}");
}

#[tokio::test]
async fn a_target_refusal_stays_definite_with_its_sqlstate_and_the_servers_fix() {
    let c = connect().await;
    let role = format!("ferry_err_{}", std::process::id());
    let table = format!("ferry_err_{}", std::process::id());
    // A duplicate key: definite, the caller's fix (the server gives none).
    let e = c
        .batch_execute(&format!(
            "BEGIN; CREATE TABLE public.{table} (id int PRIMARY KEY); INSERT INTO public.{table} VALUES (1), (1)"
        ))
        .await
        .expect_err("a duplicate key");
    let m = MyError::target("copying t", e, "check the target's data and rerun");
    assert_eq!(m.class(), ErrorClass::Definite, "{m}");
    assert!(m.reason.contains("(SQLSTATE 23505)"), "{m}");
    assert_eq!(m.fix.as_deref(), Some("check the target's data and rerun"), "{m}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // A missing privilege: definite, and the fix that names what to grant wins over the
    // caller's generic one. Everything is in one transaction, rolled back: nothing stays.
    let e = c
        .batch_execute(&format!(
            "BEGIN; CREATE ROLE {role} NOLOGIN; CREATE TABLE public.{table} (id int);
             SET LOCAL ROLE {role}; SELECT * FROM public.{table}"
        ))
        .await
        .expect_err("a missing privilege");
    let m = MyError::target("building an index", e, "check the target's data and rerun");
    assert_eq!(m.class(), ErrorClass::Definite, "{m}");
    assert!(m.reason.contains("(SQLSTATE 42501)"), "{m}");
    assert!(m.fix.as_deref().is_some_and(|f| f.contains("grant")), "{m}");
    c.batch_execute("ROLLBACK").await.unwrap();
}
