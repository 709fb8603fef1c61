//! The MySQL client's option file `~/.my.cnf`: its `[client]` section, the one every MySQL
//! and MariaDB client program reads.
//!
//! Ferry takes `password`, `user` and the TLS options (`ssl-mode`, `ssl-ca`, `ssl-cert`,
//! `ssl-key`) from it; every other key belongs to other programs and is ignored, as are other
//! sections and `!include` lines. Option names follow the client's rules: case-insensitive, `-`
//! and `_` alike. Values may be quoted (`'...'` or `"..."`, with the backslash escapes `\n`,
//! `\t`, `\\`, `\s`, `\'`, `\"`); an unquoted value ends at a `#` that follows white space.
//!
//! Permissions: like the client, a world-writable file is ignored (with a warning). Stricter
//! than the client, a password is taken only from a file no other user can read (`chmod 600`),
//! the rule Ferry applies to every file holding a secret; other keys are used either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_core::Secret;

/// What Ferry uses from `[client]`.
#[derive(Clone, Default)]
pub struct MyCnf {
    /// The file read.
    pub path: PathBuf,
    /// `user`.
    pub user: Option<String>,
    /// `password`.
    pub password: Option<Secret>,
    /// Whether other users may read the file (mode & 0o077).
    pub readable_by_others: bool,
    /// The file's mode (for messages).
    pub mode: u32,
    /// `ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key` (names normalised: `sslmode`, `sslca`, ...).
    pub ssl: BTreeMap<String, String>,
}

impl std::fmt::Debug for MyCnf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MyCnf({}, user {:?}, password {}, {:?})",
            self.path.display(),
            self.user,
            if self.password.is_some() { "set" } else { "unset" },
            self.ssl
        )
    }
}

/// An option name in Ferry's normal form: lower case, without `-` and `_`.
pub fn normal_name(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    let quote = match raw.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => {
            // An unquoted value: a '#' after white space starts a comment.
            let mut end = raw.len();
            let bytes = raw.as_bytes();
            for i in 1..bytes.len() {
                if bytes[i] == b'#' && bytes[i - 1].is_ascii_whitespace() {
                    end = i;
                    break;
                }
            }
            return raw[..end].trim_end().to_string();
        }
    };
    let mut out = String::new();
    let mut chars = raw[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('b') => out.push('\u{8}'),
                Some('s') => out.push(' '),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            c if c == quote => break,
            c => out.push(c),
        }
    }
    out
}

/// Parses the text of an option file: the `[client]` keys Ferry uses.
pub fn parse(path: &Path, text: &str) -> MyCnf {
    let mut cnf = MyCnf {
        path: path.to_path_buf(),
        ..MyCnf::default()
    };
    let mut in_client = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('!') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            in_client = section.trim_end_matches(']').trim().eq_ignore_ascii_case("client");
            continue;
        }
        if !in_client {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((n, v)) => (normal_name(n.trim()), unquote(v)),
            None => (normal_name(line), String::new()),
        };
        match name.as_str() {
            "password" => cnf.password = Some(Secret::new(value)),
            "user" => cnf.user = Some(value),
            "sslmode" | "sslca" | "sslcert" | "sslkey" => {
                cnf.ssl.insert(name, value);
            }
            _ => {}
        }
    }
    cnf
}

/// Reads `$HOME/.my.cnf` if there is one. `Ok(None)` without a home or a file; an error for a
/// file that exists and cannot be read.
pub fn read(home: Option<&Path>) -> Result<Option<MyCnf>, String> {
    use std::os::unix::fs::MetadataExt;
    let Some(home) = home else { return Ok(None) };
    let path = home.join(".my.cnf");
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}; fix its permissions or remove it", path.display())),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o002 != 0 {
        tracing::warn!(
            file = %path.display(),
            "the MySQL option file is writable by every user and is ignored (as the mysql client does); run chmod 600 {}",
            path.display()
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {}: {e}; check that Ferry's user may read it, or remove it",
            path.display()
        )
    })?;
    let mut cnf = parse(&path, &text);
    cnf.mode = mode;
    cnf.readable_by_others = mode & 0o077 != 0;
    Ok(Some(cnf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_section_only_with_quotes_and_comments() {
        let text = r#"
# a comment
[mysql]
password = not-this-one
[client]
user = app
password = "p#ss w\"ord\s"
ssl_mode=VERIFY_IDENTITY
SSL-CA = /etc/ca.pem   # trailing comment
ssl-cert
host = ignored
!includedir /etc/mysql/conf.d/
[mysqldump]
password = nor-this
"#;
        let c = parse(Path::new("/home/x/.my.cnf"), text);
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "p#ss w\"ord ");
        assert_eq!(c.ssl.get("sslmode").map(String::as_str), Some("VERIFY_IDENTITY"));
        assert_eq!(c.ssl.get("sslca").map(String::as_str), Some("/etc/ca.pem"));
        assert_eq!(c.ssl.get("sslcert").map(String::as_str), Some(""));
        assert!(!format!("{c:?}").contains("p#ss"));
        let c = parse(Path::new("x"), "[client]\npassword='it''s'\npassword=a#b\n");
        assert_eq!(c.password.unwrap().expose(), "a#b");
    }
}
