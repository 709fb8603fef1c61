//! PostgreSQL errors, classified in one place and explained for humans.
//!
//! Every error says what failed (`context`), why (`reason`, the server's own words where there
//! are some) and what to do (`fix`), and carries a class that decides retry.

use ferry_core::{ErrorClass, Fault};
use tokio_postgres::error::SqlState;

/// A PostgreSQL operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {reason}{}", fix.as_ref().map(|f| format!(" (fix: {f})")).unwrap_or_default())]
pub struct PgError {
    /// What Ferry was doing.
    pub context: String,
    /// Why it failed.
    pub reason: String,
    /// What the operator should do, when we know.
    pub fix: Option<String>,
    /// Retry or stop.
    pub class: ErrorClass,
    /// The SQLSTATE, when the server sent one.
    pub code: Option<String>,
}

impl Fault for PgError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

impl PgError {
    /// A configuration problem found by Ferry itself.
    pub fn config(context: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            reason: reason.into(),
            fix: Some(fix.into()),
            class: ErrorClass::Definite,
            code: None,
        }
    }

    /// A failure worth retrying (a lost connection, a server that stopped answering).
    pub fn transient(context: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            context: context.into(),
            reason: reason.to_string(),
            fix: None,
            class: ErrorClass::Transient,
            code: None,
        }
    }

    /// Wraps a driver error raised while doing `context`.
    pub fn query(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        let (reason, fix, class, code) = classify(&e);
        Self {
            context: context.into(),
            reason,
            fix,
            class,
            code,
        }
    }

    /// Adds or replaces the fix.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// Whether the server reported this SQLSTATE.
    pub fn is(&self, state: &SqlState) -> bool {
        self.code.as_deref() == Some(state.code())
    }
}

type Classified = (String, Option<String>, ErrorClass, Option<String>);

fn classify(e: &tokio_postgres::Error) -> Classified {
    let Some(db) = e.as_db_error() else {
        // No server error: I/O, protocol, closed connection. Say it plainly; retry may help.
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            let t = s.to_string();
            if !reason.contains(&t) {
                reason = format!("{reason}: {t}");
            }
            src = s.source();
        }
        return (reason, None, ErrorClass::Transient, None);
    };
    let mut reason = db.message().to_string();
    if let Some(d) = db.detail() {
        reason = format!("{reason} ({d})");
    }
    let code = db.code().clone();
    let fix: Option<String> = match &code {
        c if *c == SqlState::INVALID_PASSWORD => Some(
            "check the user and password (in the URL, FERRY_SOURCE_PASSWORD/FERRY_TARGET_PASSWORD, or --source-password-file/--target-password-file)".into(),
        ),
        c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => Some(
            "the server refused this login: check the user name and the server's pg_hba.conf for this host, user and database".into(),
        ),
        c if *c == SqlState::INVALID_CATALOG_NAME => {
            Some("check the database name in the URL, or create the database first".into())
        }
        c if *c == SqlState::TOO_MANY_CONNECTIONS => Some(
            "the server is out of connection slots: lower --jobs or raise max_connections".into(),
        ),
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => db.hint().map(str::to_string).or_else(|| {
            Some("grant the missing privilege to Ferry's user, or run as an owner or superuser".into())
        }),
        _ => db.hint().map(str::to_string),
    };
    (reason, fix, sqlstate_class(code.code()), Some(code.code().to_string()))
}

/// Whether an error with this SQLSTATE is worth retrying: the one table every PostgreSQL
/// connection of Ferry's uses (queries, the replication protocol, the stream, the appliers).
///
/// Transient: connection exceptions (08), transaction rollbacks such as serialization failures
/// and deadlocks (40), operator intervention such as a shutdown, a restart or
/// `pg_terminate_backend` (57), system errors (58), insufficient resources (53: out of memory,
/// disk full), and an object in use (55006: a replication slot another, perhaps dying,
/// consumer still holds). Definite: everything else, and `too_many_connections` (53300), which
/// waits for the operator (lower --jobs or raise max_connections / max_wal_senders).
pub fn sqlstate_class(code: &str) -> ErrorClass {
    match code.get(..2) {
        _ if code == "53300" => ErrorClass::Definite,
        _ if code == "55006" => ErrorClass::Transient,
        Some("08" | "40" | "53" | "57" | "58") => ErrorClass::Transient,
        _ => ErrorClass::Definite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_retry_table_for_every_connection() {
        for transient in [
            "08006", "08P01", "40001", "40P01", "57P01", "57014", "58030", "53100", "53200", "55006",
        ] {
            assert_eq!(sqlstate_class(transient), ErrorClass::Transient, "{transient}");
        }
        // Waiting fixes none of these: the operator must act.
        for definite in ["53300", "55000", "42704", "42501", "23505", "22P02", "28P01", "", "5"] {
            assert_eq!(sqlstate_class(definite), ErrorClass::Definite, "{definite}");
        }
    }
}
