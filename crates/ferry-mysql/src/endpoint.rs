//! A MySQL/MariaDB source: `mysql://user[:password]@host[:port]/database`, its password, and
//! connections. `Debug` and [`MyEndpoint::describe`] never show the password.

use ferry_core::Secret;
use mysql_async::prelude::Queryable;

use crate::error::MyError;

/// A parsed `mysql://` URL plus its password.
#[derive(Clone)]
pub struct MyEndpoint {
    host: String,
    port: u16,
    user: String,
    password: Option<Secret>,
    database: String,
}

impl std::fmt::Debug for MyEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MyEndpoint({}@{})", self.user, self.describe())
    }
}

/// Whether a URL names a MySQL/MariaDB server.
pub fn is_mysql_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("mysql://") || lower.starts_with("mariadb://")
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("a % escape is cut short")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a % escape is not hexadecimal")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a % escape is not UTF-8".to_string())
}

impl MyEndpoint {
    /// Parses a URL; `password` (from a file or the environment) wins over one in the URL.
    /// Errors never contain the password.
    pub fn parse(url: &str, password: Option<Secret>) -> Result<MyEndpoint, String> {
        let bad = |why: &str| {
            format!(
                "invalid MySQL URL {} ({why}); expected mysql://user[:password]@host[:port]/database",
                ferry_core::secret::redact_url(url)
            )
        };
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .filter(|_| is_mysql_url(url))
            .ok_or_else(|| bad("it must start with mysql://"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (auth, hostpath) = rest.rsplit_once('@').ok_or_else(|| bad("no user@"))?;
        let (user, url_password) = match auth.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (auth, None),
        };
        if user.is_empty() {
            return Err(bad("no user"));
        }
        let (hostport, database) = hostpath.split_once('/').ok_or_else(|| bad("no /database"))?;
        if database.is_empty() {
            return Err(bad("no database"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("the port is not a number"))?)
            }
            _ => (hostport, 3306),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let url_password = url_password.map(percent_decode).transpose().map_err(|e| bad(&e))?.map(Secret::new);
        Ok(MyEndpoint {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            user: percent_decode(user).map_err(|e| bad(&e))?,
            password: password.or(url_password),
            database: percent_decode(database).map_err(|e| bad(&e))?,
        })
    }

    /// `host:port/database`, for messages.
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }

    /// The database (schema) migrated.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The user Ferry connects as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Connection options: UTF-8 (utf8mb4) and UTC for every session, so values arrive in one
    /// form whatever the server's defaults.
    pub fn opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.as_ref().map(|p| p.expose().to_string()))
            .db_name(Some(self.database.clone()))
            .prefer_socket(false)
            .init(vec!["SET NAMES utf8mb4", "SET time_zone = '+00:00'"])
            .into()
    }

    /// Opens a connection, with the fix for the usual failures.
    pub async fn connect(&self) -> Result<mysql_async::Conn, MyError> {
        let what = format!("cannot connect to the MySQL/MariaDB source {}", self.describe());
        let conn = tokio::time::timeout(std::time::Duration::from_secs(15), mysql_async::Conn::new(self.opts()))
            .await
            .map_err(|_| {
                MyError::new(
                    &what,
                    "no answer within 15 s",
                    "check the host, the port and any firewall in between",
                )
            })?;
        conn.map_err(|e| {
            let reason = e.to_string();
            let fix = match &e {
                mysql_async::Error::Server(s) if s.code == 1045 => {
                    "check the user and password (FERRY_SOURCE_PASSWORD or --source-password-file), and that the user may connect from Ferry's host"
                }
                mysql_async::Error::Server(s) if s.code == 1049 => "check the database name at the end of the URL",
                mysql_async::Error::Io(_) => "check the host and port, and that the server is running and listening on TCP",
                _ => "check the URL and that the server is reachable",
            };
            MyError::new(&what, &reason, fix)
        })
    }
}

/// Runs a query that returns rows, with context for errors.
pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut mysql_async::Conn,
    context: &str,
    sql: &str,
) -> Result<Vec<T>, MyError> {
    conn.query(sql).await.map_err(|e| MyError::query(context, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let e = MyEndpoint::parse("mysql://app:p%40ss@db.example:3307/shop", None).unwrap();
        assert_eq!(e.describe(), "db.example:3307/shop");
        assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss");
        assert!(!format!("{e:?}").contains("p@ss"));
        let e = MyEndpoint::parse("mariadb://app@db/shop", Some(Secret::new("env"))).unwrap();
        assert_eq!((e.port, e.password.as_ref().unwrap().expose()), (3306, "env"));
        for bad in [
            "mysql://app:topsecret@db",
            "mysql://:topsecret@db/x",
            "mysql://app:topsecret@db:xx/x",
            "postgres://a@b/c",
        ] {
            let err = MyEndpoint::parse(bad, None).unwrap_err();
            assert!(!err.contains("topsecret"), "{err}");
            assert!(err.contains("invalid MySQL URL"), "{err}");
        }
    }
}
