//! libpq's connection conventions: `postgres://` URLs and `key=value` strings, the `PG*`
//! environment variables, service files (`PGSERVICE`, `pg_service.conf`) and password files
//! (`PGPASSFILE`, `~/.pgpass`), with libpq's precedence:
//!
//! 1. options written in the connection string,
//! 2. options of the service it names (`service=` or `PGSERVICE`),
//! 3. the `PG*` environment variables,
//! 4. libpq's defaults (the local socket directory, port 5432, the operating-system user).
//!
//! The password, when still missing, comes from the password file (only when the file is
//! readable by its owner alone, as libpq requires). Every option is checked against the list of
//! options libpq knows: an option Ferry cannot honour is an error that names it, never silently
//! dropped; a typo is an error too.
//!
//! Nothing here prints the raw connection string: errors and [`ConnInfo::display`] are built
//! from the parsed parts, with the password masked, so a password holding `/`, `@`, quotes or
//! spaces cannot leak through a parse that went wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the settings came from and what was looked at, for error messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Where the password came from ("the URL", "PGPASSWORD", "~/.pgpass line 3"...), if any.
    pub password_from: Option<String>,
    /// Password sources looked at and why each gave nothing ("~/.pgpass: ignored, mode 0644").
    pub looked: Vec<String>,
}

/// A connection string resolved with libpq's rules.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// Options by libpq name (`host`, `port`, `sslmode`...), password included.
    pub opts: BTreeMap<String, String>,
    /// Where things came from.
    pub provenance: Provenance,
}

/// What the process environment offers (a trait object so tests can supply their own).
pub trait Environment {
    /// An environment variable.
    fn var(&self, name: &str) -> Option<String>;
    /// The user's home directory.
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Options Ferry honours.
const SUPPORTED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "service",
    "connect_timeout",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslcompression",
    "require_auth",
    "channel_binding",
    "target_session_attrs",
    "load_balance_hosts",
    "client_encoding",
    "gssencmode",
];

/// libpq options Ferry knows but cannot honour, with why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "sslpassword",
        "encrypted client keys are not supported: decrypt the key (openssl pkey -in KEY -out KEY.plain, mode 0600)",
    ),
    ("sslcrl", "certificate revocation lists are not supported"),
    ("sslcrldir", "certificate revocation lists are not supported"),
    ("sslcertmode", "client certificates are sent whenever sslcert/sslkey are given"),
    ("requirepeer", "peer credential checks over Unix sockets are not supported"),
    ("krbsrvname", "Kerberos/GSSAPI authentication is not supported"),
    ("gsslib", "Kerberos/GSSAPI authentication is not supported"),
    ("gssdelegation", "Kerberos/GSSAPI authentication is not supported"),
    ("replication", "Ferry opens replication connections itself: remove the option"),
    ("sslkeylogfile", "TLS key logging is not supported"),
];

/// Environment variables and the option each provides (libpq's table).
const ENV: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGSERVICE", "service"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGREQUIREAUTH", "require_auth"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGGSSENCMODE", "gssencmode"),
];

fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    ferry_core::url::percent_decode(s).map_err(|e| match e {
        ferry_core::url::PercentError::BadEscape => {
            format!("the {what} has a % that is not followed by two hexadecimal digits")
        }
        ferry_core::url::PercentError::NotUtf8 => format!("the {what} is not UTF-8 once %-decoded"),
    })
}

/// Splits `postgres://user:password@host:port,host2/db?k=v&k2=v2` into options.
///
/// The user part ends at the *last* `@` before the query string, so an unescaped `@` or `/` in
/// a password still parses (libpq would stop at the first `/`).
fn parse_url(url: &str) -> Result<Vec<(String, String)>, String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or("the scheme must be postgres:// or postgresql://")?;
    let mut out = Vec::new();
    // The query string starts at the first '?' after the last '@' (a password may hold '?').
    let at = rest.rfind('@');
    let after_at = at.map(|a| a + 1).unwrap_or(0);
    let (main, query) = match rest[after_at..].find('?') {
        Some(q) => (&rest[..after_at + q], Some(&rest[after_at + q + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostpath) = match main.rfind('@') {
        Some(a) => (Some(&main[..a]), &main[a + 1..]),
        None => (None, main),
    };
    if let Some(ui) = userinfo {
        let (u, p) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        if !u.is_empty() {
            out.push(("user".into(), percent_decode(u, "user name")?));
        }
        if let Some(p) = p {
            out.push(("password".into(), percent_decode(p, "password")?));
        }
    }
    let (hosts, db) = match hostpath.split_once('/') {
        Some((h, d)) => (h, Some(d)),
        None => (hostpath, None),
    };
    if !hosts.is_empty() {
        let mut hs = Vec::new();
        let mut ps = Vec::new();
        for spec in hosts.split(',') {
            let (h, p) = if let Some(v6) = spec.strip_prefix('[') {
                let (h, rest) = v6.split_once(']').ok_or("an IPv6 address in [ ] is not closed")?;
                (h.to_string(), rest.strip_prefix(':').map(str::to_string))
            } else {
                match spec.rsplit_once(':') {
                    Some((h, p)) => (percent_decode(h, "host")?, Some(p.to_string())),
                    None => (percent_decode(spec, "host")?, None),
                }
            };
            hs.push(h);
            ps.push(p.unwrap_or_default());
        }
        out.push(("host".into(), hs.join(",")));
        if ps.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ps.join(",")));
        }
    }
    if let Some(db) = db.filter(|d| !d.is_empty()) {
        out.push(("dbname".into(), percent_decode(db, "database name")?));
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "the URL option {:?} has no =value",
                    percent_decode(pair, "option").unwrap_or_default()
                )
            })?;
            let k = percent_decode(k, "option name")?;
            let v = percent_decode(v, &format!("value of {k}"))?;
            // libpq's URL alias.
            let k = if k == "ssl" && v == "true" {
                out.push(("sslmode".into(), "require".into()));
                continue;
            } else {
                k
            };
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Splits `host=db port=5432 password='it''s'` (libpq's key/value syntax: values in single
/// quotes, `\'` and `\\` escapes).
fn parse_keyvalue(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("the option {key:?} has no =value"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or(format!("the value of {key} ends in a lone backslash"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the quoted value of {key} is not closed")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or(format!("the value of {key} ends in a lone backslash"))?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn check_option(key: &str) -> Result<(), String> {
    if SUPPORTED.contains(&key) {
        return Ok(());
    }
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
        return Err(format!("the option {key} is not supported by Ferry: {why}"));
    }
    Err(format!(
        "unknown option {key:?} (Ferry accepts libpq's options: {}; check the spelling)",
        SUPPORTED.join(", ")
    ))
}

/// Reads `[name]` from a service file; `Ok(None)` when the file lacks it.
fn service_section(path: &Path, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let mut found: Option<Vec<(String, String)>> = None;
    let mut in_section = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() && in_section {
                break;
            }
            in_section = sec.trim() == name;
            if in_section {
                found = Some(Vec::new());
            }
            continue;
        }
        if in_section {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("service file {} line {}: expected key=value", path.display(), n + 1))?;
            let k = k.trim().to_string();
            if k == "service" {
                return Err(format!(
                    "service file {} line {}: a service cannot name another service",
                    path.display(),
                    n + 1
                ));
            }
            check_option(&k).map_err(|e| format!("service file {} line {}: {e}", path.display(), n + 1))?;
            found.as_mut().expect("in section").push((k, v.trim().to_string()));
        }
    }
    Ok(found)
}

/// The local socket directory libpq uses when no host is given.
pub fn default_socket_dir() -> String {
    ["/var/run/postgresql", "/tmp"]
        .iter()
        .find(|d| Path::new(d).is_dir())
        .unwrap_or(&"/tmp")
        .to_string()
}

/// One `.pgpass` field: `*` matches anything; `\:` and `\\` are escapes.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("one field").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// Looks `host:port:db:user` up in a password file, with libpq's permission rule. Returns the
/// password and the line, or records why the file gave nothing.
fn pgpass_lookup(path: &Path, host: &str, port: &str, db: &str, user: &str, looked: &mut Vec<String>) -> Option<(String, usize)> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => {
            looked.push(format!("{shown} (not found)"));
            return None;
        }
    };
    if !meta.is_file() {
        looked.push(format!("{shown} (not a plain file)"));
        return None;
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(file = %shown, mode = format!("{mode:o}"), "password file has group or world access and is ignored; run chmod 600 on it");
        looked.push(format!(
            "{shown} (ignored: mode {mode:o} lets others read it; run chmod 600 {shown})"
        ));
        return None;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        looked.push(format!("{shown} (unreadable)"));
        return None;
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f = pgpass_fields(line);
        if f.len() < 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&f[0], host) && m(&f[1], port) && m(&f[2], db) && m(&f[3], user) {
            return Some((f[4].clone(), n + 1));
        }
    }
    looked.push(format!("{shown} (no line for {host}:{port}:{db}:{user})"));
    None
}

fn home_path(env: &dyn Environment, rel: &str) -> Option<PathBuf> {
    env.home().map(|h| h.join(rel))
}

/// Shows a path under the home directory as `~/...`.
fn tilde(env: &dyn Environment, p: &Path) -> String {
    if let Some(h) = env.home() {
        if let Ok(rest) = p.strip_prefix(&h) {
            return format!("~/{}", rest.display());
        }
    }
    p.display().to_string()
}

impl ConnInfo {
    /// Resolves `text` (a URL or a key/value string) with libpq's rules against `env`.
    /// `explicit_password` (Ferry's own `FERRY_*_PASSWORD` or password file, labelled by where
    /// it came from) wins over everything. Errors never contain the password.
    pub fn resolve(text: &str, explicit_password: Option<(&str, &str)>, env: &dyn Environment) -> Result<ConnInfo, String> {
        let text = text.trim();
        let given = if text.contains("://") {
            parse_url(text)?
        } else {
            parse_keyvalue(text)?
        };
        let mut opts: BTreeMap<String, String> = BTreeMap::new();
        let mut provenance = Provenance::default();
        for (k, v) in given {
            check_option(&k)?;
            if k == "password" {
                provenance.password_from = Some("the connection URL".into());
            }
            opts.insert(k, v);
        }
        // The service: named in the string, else by PGSERVICE.
        let service = opts.get("service").cloned().or_else(|| env.var("PGSERVICE"));
        if let Some(name) = service {
            let user_file = env
                .var("PGSERVICEFILE")
                .map(PathBuf::from)
                .or_else(|| home_path(env, ".pg_service.conf"));
            let sys_file =
                PathBuf::from(env.var("PGSYSCONFDIR").unwrap_or_else(|| "/etc/postgresql-common".into())).join("pg_service.conf");
            let mut section = None;
            let mut tried = Vec::new();
            for f in user_file.iter().chain(std::iter::once(&sys_file)) {
                tried.push(tilde(env, f));
                if let Some(s) = service_section(f, &name)? {
                    section = Some((s, tilde(env, f)));
                    break;
                }
            }
            let (section, file) = section.ok_or_else(|| {
                format!(
                    "service {name:?} is not defined in {}; define [{name}] in one of them (or set PGSERVICEFILE)",
                    tried.join(" or ")
                )
            })?;
            for (k, v) in section {
                if k == "password" && !opts.contains_key("password") {
                    provenance.password_from = Some(format!("service {name:?} in {file}"));
                }
                opts.entry(k).or_insert(v);
            }
        }
        for (var, key) in ENV {
            if *key == "service" {
                continue;
            }
            if let Some(v) = env.var(var) {
                if !opts.contains_key(*key) {
                    if *key == "password" {
                        provenance.password_from = Some("PGPASSWORD".into());
                    }
                    opts.insert((*key).to_string(), v);
                }
            }
        }
        if let Some((secret, from)) = explicit_password {
            opts.insert("password".into(), secret.to_string());
            provenance.password_from = Some(from.to_string());
        }
        // Defaults.
        if !opts.contains_key("host") && !opts.contains_key("hostaddr") {
            opts.insert("host".into(), default_socket_dir());
        }
        if !opts.contains_key("user") {
            let user = env
                .var("USER")
                .or_else(|| env.var("LOGNAME"))
                .ok_or("no user given (in the URL, PGUSER, or a service) and the operating-system user is unknown")?;
            opts.insert("user".into(), user);
        }
        if !opts.contains_key("dbname") {
            let user = opts["user"].clone();
            opts.insert("dbname".into(), user);
        }
        for multi in ["host", "hostaddr", "port"] {
            if opts.get(multi).is_some_and(|v| v.contains(',')) {
                return Err(format!(
                    "several servers are listed ({multi}={}); every connection Ferry makes (queries, replication, pg_dump, the proxy) must reach the same server, so give exactly one: the primary's address",
                    opts[multi]
                ));
            }
        }
        if !opts.contains_key("password") {
            let file = opts.get("passfile").map(PathBuf::from).or_else(|| home_path(env, ".pgpass"));
            match file {
                Some(file) => {
                    let host = opts.get("host").or_else(|| opts.get("hostaddr")).cloned().unwrap_or_default();
                    // libpq matches a socket directory as "localhost".
                    let host = if host.starts_with('/') { "localhost".to_string() } else { host };
                    let port = opts.get("port").cloned().filter(|p| !p.is_empty()).unwrap_or_else(|| "5432".into());
                    let (db, user) = (opts["dbname"].clone(), opts["user"].clone());
                    let mut looked = Vec::new();
                    match pgpass_lookup(&file, &host, &port, &db, &user, &mut looked) {
                        Some((pw, line)) => {
                            provenance.password_from = Some(format!("{} line {line}", tilde(env, &file)));
                            opts.insert("password".into(), pw);
                        }
                        None => provenance.looked.extend(
                            looked
                                .into_iter()
                                .map(|l| l.replace(&file.display().to_string(), &tilde(env, &file))),
                        ),
                    }
                }
                None => provenance.looked.push("~/.pgpass (HOME is not set)".into()),
            }
        }
        Ok(ConnInfo { opts, provenance })
    }

    /// The option's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.opts.get(key).map(String::as_str)
    }

    /// `postgres://user[:****]@host:port/db`, built from the parsed parts: safe to print.
    pub fn display(&self) -> String {
        let user = self.get("user").unwrap_or_default();
        let pw = if self.opts.contains_key("password") { ":****" } else { "" };
        let host = self.get("host").or(self.get("hostaddr")).unwrap_or_default();
        let host = if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let port = self.get("port").filter(|p| !p.is_empty()).unwrap_or("5432");
        let db = self.get("dbname").unwrap_or_default();
        let mut s = format!("postgres://{}{pw}@{host}:{port}/{db}", enc(user));
        if let Some(m) = self.get("sslmode") {
            s.push_str(&format!("?sslmode={m}"));
        }
        s
    }
}

fn enc(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                c.to_string()
            } else {
                let mut b = [0; 4];
                c.encode_utf8(&mut b).bytes().map(|x| format!("%{x:02X}")).collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, String>);
    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }
    fn env(pairs: &[(&'static str, &str)]) -> FakeEnv {
        let mut m: HashMap<&'static str, String> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        m.entry("HOME").or_insert_with(|| "/nonexistent-home".into());
        FakeEnv(m)
    }

    #[test]
    fn urls_with_hostile_passwords() {
        for pw in ["p/w", "p@w", "p?w", "p w", "p'w\"", "p:w"] {
            let url = format!("postgres://bob:{pw}@db.example:6432/app?sslmode=verify-full");
            let c = ConnInfo::resolve(&url, None, &env(&[])).unwrap();
            assert_eq!(c.get("password"), Some(pw), "{url}");
            assert_eq!(c.get("host"), Some("db.example"));
            assert_eq!(c.get("port"), Some("6432"));
            assert_eq!(c.get("dbname"), Some("app"));
            assert_eq!(c.get("sslmode"), Some("verify-full"));
            assert!(!c.display().contains(pw), "{}", c.display());
        }
        let c = ConnInfo::resolve("postgresql://bob:s%2Fc%40r@%2Fvar%2Frun%2Fpostgresql/x", None, &env(&[])).unwrap();
        assert_eq!(c.get("password"), Some("s/c@r"));
        assert_eq!(c.get("host"), Some("/var/run/postgresql"));
    }

    #[test]
    fn keyvalue_strings() {
        let c = ConnInfo::resolve(r"host=h port=1 user=u password='a b\'c' dbname=d sslmode=require", None, &env(&[])).unwrap();
        assert_eq!(c.get("password"), Some("a b'c"));
        assert_eq!(c.get("sslmode"), Some("require"));
        assert!(ConnInfo::resolve("host='h", None, &env(&[])).unwrap_err().contains("not closed"));
    }

    #[test]
    fn unknown_and_unsupported_options_are_named() {
        let e = ConnInfo::resolve("postgres://u@h/d?sslmod=require", None, &env(&[])).unwrap_err();
        assert!(e.contains("\"sslmod\""), "{e}");
        let e = ConnInfo::resolve("postgres://u@h/d?sslpassword=x", None, &env(&[])).unwrap_err();
        assert!(e.contains("sslpassword") && e.contains("decrypt"), "{e}");
        let e = ConnInfo::resolve("postgres://u@h1,h2/d", None, &env(&[])).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn environment_fills_what_the_url_lacks() {
        let e = env(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "verify-ca"),
        ]);
        let c = ConnInfo::resolve("postgres:///appdb", None, &e).unwrap();
        assert_eq!(
            (c.get("host"), c.get("port"), c.get("user")),
            (Some("envhost"), Some("7000"), Some("envuser"))
        );
        assert_eq!(c.get("dbname"), Some("appdb"));
        assert_eq!(c.get("password"), Some("envpw"));
        assert_eq!(c.provenance.password_from.as_deref(), Some("PGPASSWORD"));
        assert_eq!(c.get("sslmode"), Some("verify-ca"));
        // The URL wins over the environment; Ferry's own password over both.
        let c = ConnInfo::resolve("postgres://u:urlpw@h/d", Some(("ferrypw", "FERRY_SOURCE_PASSWORD")), &e).unwrap();
        assert_eq!(c.get("user"), Some("u"));
        assert_eq!(c.get("password"), Some("ferrypw"));
        assert_eq!(c.provenance.password_from.as_deref(), Some("FERRY_SOURCE_PASSWORD"));
    }

    #[test]
    fn pgpass_and_service_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ferry-conninfo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pgpass = dir.join(".pgpass");
        std::fs::write(&pgpass, "# comment\nother:*:*:*:no\nh:5432:d:u:pa\\:ss\n*:*:*:svcuser:svcpw\n").unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.join(".pg_service.conf"), "[prod]\nhost=h\nport=5432\nuser=svcuser\ndbname=d\n").unwrap();
        let home = dir.display().to_string();
        let e = env(&[("HOME", &home)]);
        let c = ConnInfo::resolve("postgres://u@h/d", None, &e).unwrap();
        assert_eq!(c.get("password"), Some("pa:ss"));
        assert_eq!(c.provenance.password_from.as_deref(), Some("~/.pgpass line 3"));
        let c = ConnInfo::resolve("service=prod", None, &e).unwrap();
        assert_eq!(c.get("password"), Some("svcpw"));
        let e2 = env(&[("HOME", &home), ("PGSERVICE", "prod")]);
        let c = ConnInfo::resolve("", None, &e2).unwrap();
        assert_eq!(c.get("user"), Some("svcuser"));
        assert!(ConnInfo::resolve("service=nope", None, &e).unwrap_err().contains("not defined"));
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = ConnInfo::resolve("postgres://u@h/d", None, &e).unwrap();
        assert_eq!(c.get("password"), None);
        assert!(c.provenance.looked[0].contains("chmod 600"), "{:?}", c.provenance.looked);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
