//! Secrets that never print, and URLs printed without them.

use std::fmt;

/// A secret string (a password). `Debug` and `Display` print `****`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for handing to a driver. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Masks the password of a connection URL (`scheme://user:pass@host/db` becomes
/// `scheme://user:****@host/db`), and of a `password=...` query parameter or key/value pair.
/// Text that is not a URL is returned with any `password=` value masked.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            // The authority ends at the first '/', '?' or '#'; the user info ends at its last '@'.
            let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..auth_end];
            match authority.rfind('@') {
                Some(at) => {
                    let userinfo = &authority[..at];
                    let masked = match userinfo.find(':') {
                        Some(colon) => format!("{}:****", &userinfo[..colon]),
                        None => userinfo.to_string(),
                    };
                    format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
                }
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    // password=... in a query string or a key/value connection string.
    let mut search_from = 0;
    while let Some(pos) = out[search_from..].to_ascii_lowercase().find("password=") {
        let start = search_from + pos + "password=".len();
        let end = out[start..].find(['&', ' ', '#']).map(|e| start + e).unwrap_or(out.len());
        out.replace_range(start..end, "****");
        search_from = start + 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "**** Secret(****)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://bob:s3cr@t:x@db.example:5432/app?sslmode=require"),
            "postgres://bob:****@db.example:5432/app?sslmode=require"
        );
        assert_eq!(redact_url("postgres://bob@h/db"), "postgres://bob@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=a&password=zz&x=1"),
            "postgres://h/db?user=a&password=****&x=1"
        );
        assert_eq!(redact_url("host=h password=zz user=u"), "host=h password=**** user=u");
        assert_eq!(redact_url("mysql://root:pw@127.0.0.1/x"), "mysql://root:****@127.0.0.1/x");
    }
}
