//! Errors from the MySQL/MariaDB side, for humans: what failed, why, and what to do, with the
//! class that decides retry and the server's error number when it sent one.
//!
//! Retry is decided in one place, [`error_class`], by the server's error number, never by
//! matching its text; driver errors (a socket, a closed connection) are transient.

use ferry_core::{ErrorClass, Fault};

/// What failed, why, and the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{context}: {reason}{}", fix.as_ref().map(|f| format!(" (fix: {f})")).unwrap_or_default())]
pub struct MyError {
    /// What Ferry was doing.
    pub context: String,
    /// What the server or the network said.
    pub reason: String,
    /// What to do about it.
    pub fix: Option<String>,
    /// Retry or stop.
    pub class: ErrorClass,
    /// The server's error number (`ER_*`), when the server sent one.
    pub code: Option<u16>,
}

impl Fault for MyError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// MySQL/MariaDB server error numbers that waiting and retrying can fix; every other server
/// error is definite (the operator must act).
pub fn error_class(code: u16) -> ErrorClass {
    match code {
        // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, ER_NORMAL_SHUTDOWN, ER_SHUTDOWN_COMPLETE
        1040 | 1053 | 1077 | 1079
        // ER_NET_READ_ERROR_FROM_PIPE .. ER_NET_WRITE_INTERRUPTED (network read/write errors and timeouts)
        | 1154..=1161
        // ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_QUERY_INTERRUPTED
        | 1205 | 1213 | 1317
        // ER_TOO_MANY_USER_CONNECTIONS, ER_OUT_OF_RESOURCES, ER_CON_COUNT (host), ER_LOCK_TABLE_FULL
        | 1203 | 1041 | 1135 | 1206
        // ER_CONNECTION_KILLED (MariaDB), ER_QUERY_TIMEOUT / max_statement_time (MariaDB 1969),
        // ER_QUERY_EXECUTION_INTERRUPTED (MySQL max_execution_time)
        | 1927 | 1969 | 3024
        // Client-side numbers some drivers report as server errors: server gone away, lost
        // connection, can't connect.
        | 2002 | 2003 | 2006 | 2013 => ErrorClass::Transient,
        _ => ErrorClass::Definite,
    }
}

/// ER_MASTER_FATAL_ERROR_READING_BINLOG: the binlog asked for cannot be read (purged, or a
/// position past its end).
pub const BINLOG_UNREADABLE: u16 = 1236;

impl MyError {
    /// A definite error with its fix: configuration, privileges, data, a state Ferry will not
    /// guess about.
    pub fn new(context: &str, reason: &str, fix: &str) -> MyError {
        MyError {
            context: context.to_string(),
            reason: reason.to_string(),
            fix: Some(fix.to_string()),
            class: ErrorClass::Definite,
            code: None,
        }
    }

    /// A failure worth retrying (a lost connection, a server that stopped answering).
    pub fn transient(context: &str, reason: &str, fix: &str) -> MyError {
        MyError {
            class: ErrorClass::Transient,
            ..MyError::new(context, reason, fix)
        }
    }

    /// A driver error raised while doing `context`, classified by [`error_class`]; privilege
    /// errors get their fix.
    pub fn query(context: &str, e: mysql_async::Error) -> MyError {
        let (class, code) = classify(&e);
        let fix = match code {
            Some(1142 | 1143 | 1227 | 1044) => Some(
                "grant the user what Ferry needs: GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'user'@'host' \
                 (MariaDB 10.5+: BINLOG MONITOR instead of REPLICATION CLIENT)"
                    .to_string(),
            ),
            _ => None,
        };
        MyError {
            context: context.to_string(),
            reason: e.to_string(),
            fix,
            class,
            code,
        }
    }

    /// A driver error with the fix the caller knows; class and code from the driver error.
    pub fn driver(context: &str, e: mysql_async::Error, fix: &str) -> MyError {
        MyError {
            fix: Some(fix.to_string()),
            ..MyError::query(context, e)
        }
    }

    /// An error from the PostgreSQL target's driver raised while doing `context`: class and
    /// SQLSTATE as [`ferry_postgres::PgError::query`] reads them (a lost connection or a
    /// terminated backend is transient), and the fix the server's answer implies (a privilege, a
    /// hint) or else the caller's `fix`.
    pub fn target(context: &str, e: tokio_postgres::Error, fix: &str) -> MyError {
        let mut m = MyError::from(ferry_postgres::PgError::query(context, e));
        m.fix.get_or_insert_with(|| fix.to_string());
        m
    }

    /// The same error with another class (the caller knows better, for example a deadline).
    pub fn with_class(self, class: ErrorClass) -> MyError {
        MyError { class, ..self }
    }
}

impl From<ferry_postgres::PgError> for MyError {
    /// A PostgreSQL error met on the MySQL path (the target, Ferry's state): its context, reason,
    /// fix and class are kept as they are, not flattened into another error's text.
    fn from(e: ferry_postgres::PgError) -> MyError {
        MyError {
            context: e.context,
            reason: match e.code {
                Some(code) => format!("{} (SQLSTATE {code})", e.reason),
                None => e.reason,
            },
            fix: e.fix,
            class: e.class,
            code: None,
        }
    }
}

/// Class and server error number of a driver error.
pub fn classify(e: &mysql_async::Error) -> (ErrorClass, Option<u16>) {
    match e {
        mysql_async::Error::Server(s) => (error_class(s.code), Some(s.code)),
        // A socket, a TLS stream or a connection the driver saw close: reconnect. `Other` is
        // what the driver could not name; retrying it is safe (apply is idempotent).
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) | mysql_async::Error::Other(_) => (ErrorClass::Transient, None),
        // A bad URL or option: retrying repeats it.
        mysql_async::Error::Url(_) => (ErrorClass::Definite, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_retry_table_by_error_number() {
        for transient in [1040, 1053, 1205, 1213, 1317, 1927, 1969, 3024, 1158, 1161, 2013] {
            assert_eq!(error_class(transient), ErrorClass::Transient, "{transient}");
        }
        // Waiting fixes none of these: a purged binlog, a bad password, a missing privilege,
        // a missing table, a duplicate key, a read-only server.
        for definite in [BINLOG_UNREADABLE, 1045, 1142, 1227, 1146, 1062, 1290, 1836, 0] {
            assert_eq!(error_class(definite), ErrorClass::Definite, "{definite}");
        }
    }

    #[test]
    fn errors_carry_class_and_code() {
        let server = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1213,
            message: "Deadlock found when trying to get lock".into(),
            state: "40001".into(),
        });
        let e = MyError::query("applying", server);
        assert_eq!((e.class, e.code), (ErrorClass::Transient, Some(1213)));
        assert_eq!(e.class(), ErrorClass::Transient);
        let e = MyError::driver(
            "reading the binlog",
            mysql_async::Error::Server(mysql_async::ServerError {
                code: BINLOG_UNREADABLE,
                message: "Could not find first log file name in binary log index file".into(),
                state: "HY000".into(),
            }),
            "keep binlogs longer",
        );
        assert_eq!((e.class, e.code), (ErrorClass::Definite, Some(BINLOG_UNREADABLE)));
        assert!(e.to_string().contains("(fix: keep binlogs longer)"), "{e}");
        assert_eq!(MyError::new("a", "b", "c").class, ErrorClass::Definite);
        // A PostgreSQL error keeps its context, fix, class and SQLSTATE across the crates.
        let pg = ferry_postgres::PgError::transient("cannot connect to db:5432/shop", "connection refused")
            .with_fix("check that PostgreSQL is running");
        let e = MyError::from(pg);
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(
            e.to_string(),
            "cannot connect to db:5432/shop: connection refused (fix: check that PostgreSQL is running)"
        );
        assert_eq!(MyError::transient("a", "b", "c").class, ErrorClass::Transient);
    }
}
