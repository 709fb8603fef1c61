//! Errors from the MySQL/MariaDB side, for humans: what failed, why, and what to do.

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
}

impl MyError {
    /// An error with its fix.
    pub fn new(context: &str, reason: &str, fix: &str) -> MyError {
        MyError {
            context: context.to_string(),
            reason: reason.to_string(),
            fix: Some(fix.to_string()),
        }
    }

    /// A failed query; privileges errors get their fix.
    pub fn query(context: &str, e: mysql_async::Error) -> MyError {
        let fix = match &e {
            mysql_async::Error::Server(s) if matches!(s.code, 1142 | 1143 | 1227 | 1044) => Some(
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
        }
    }
}
