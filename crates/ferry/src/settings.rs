//! Turning command-line arguments into resolved settings: passwords read, ids derived.

use anyhow::Context;
use ferry_core::{Secret, TableFilter};
use ferry_postgres::preflight::CheckRequest;
use ferry_postgres::Endpoint;

use crate::cli::Endpoints;
use crate::exit::UsageError;

/// Reads a password from `--*-password-file` or the named environment variable, with where it
/// came from. A password file others may read is refused (libpq's rule for ~/.pgpass).
pub fn password_labelled(file: Option<&std::path::Path>, env: &str) -> anyhow::Result<Option<(Secret, String)>> {
    if let Some(f) = file {
        if let Err(e) = ferry_tls::check_private_file(f) {
            return Err(UsageError(format!(
                "password file {}: {}",
                f.display(),
                e.to_string().replace("private key file", "the file")
            ))
            .into());
        }
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read password file {}", f.display()))?;
        return Ok(Some((
            Secret::new(text.lines().next().unwrap_or_default().to_string()),
            format!("the password file {}", f.display()),
        )));
    }
    Ok(std::env::var(env)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| (Secret::new(v), env.to_string())))
}

/// [`password_labelled`] without the label (MySQL endpoints).
fn password(file: Option<&std::path::Path>, env: &str) -> anyhow::Result<Option<Secret>> {
    Ok(password_labelled(file, env)?.map(|(s, _)| s))
}

/// Resolves a MySQL/MariaDB endpoint given as `--{flag}`: its password from the password file
/// or `env`, else the URL.
pub fn my_endpoint(url: &str, file: Option<&std::path::Path>, env: &str, flag: &str) -> anyhow::Result<ferry_mysql::MyEndpoint> {
    ferry_mysql::MyEndpoint::parse(url, password(file, env)?).map_err(|err| UsageError(format!("--{flag}: {err}")).into())
}

/// Resolves a PostgreSQL endpoint given as `--{flag}`: its password from the password file or
/// `env` (strongest), then the URL, PGPASSWORD, a service, ~/.pgpass. Warns when the password
/// is written in a URL given on the command line, where every user of the host can read it.
pub fn pg_endpoint(url: &str, file: Option<&std::path::Path>, env: &str, flag: &str) -> anyhow::Result<Endpoint> {
    let ep = Endpoint::parse_labelled(url, password_labelled(file, env)?).map_err(|err| UsageError(format!("--{flag}: {err}")))?;
    if ep.password_provenance().password_from.as_deref() == Some("the connection URL") && url_from_command_line(flag) {
        tracing::warn!(
            "the --{flag} URL holds a password: other users of this host can read it (ps, /proc); put it in {env}, a password file (--{flag}-password-file, mode 0600) or ~/.pgpass instead"
        );
    }
    Ok(ep)
}

/// Whether `--flag` was given as an argument (rather than through FERRY_*_URL).
fn url_from_command_line(flag: &str) -> bool {
    let long = format!("--{flag}");
    std::env::args().any(|a| a == long || a.starts_with(&format!("{long}=")))
}

/// A migration id usable in slot names: lowercase letters, digits, underscores, at most 40 chars.
fn sanitize(id: &str) -> String {
    let mut s: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    s.truncate(40);
    s
}

/// FNV-1a, to derive a stable id from the target's address.
fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `--migration-id`, sanitized (None: not given).
pub fn given_migration_id(given: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(id) = given else { return Ok(None) };
    let s = sanitize(id);
    if s.is_empty() {
        return Err(UsageError("--migration-id must contain letters or digits".into()).into());
    }
    Ok(Some(s))
}

/// The migration id when none is given: the target's database and a hash of its address (one
/// migration per target database, whatever the source's engine).
pub fn default_migration_id(target: &Endpoint) -> String {
    format!("{}_{:08x}", sanitize(target.dbname()), fnv(&target.describe()))
}

/// Resolves endpoints and derived names into a check request.
pub fn resolve(e: &Endpoints) -> anyhow::Result<CheckRequest> {
    if ferry_mysql::is_mysql_url(&e.source) {
        return Err(UsageError(
            "--source: MySQL/MariaDB sources work with `ferry check`, `ferry migrate` (and its API), `ferry status`, \
             `ferry verify` and `ferry cutover` (docs/mysql-cdc.md); abandon, rollback and complete are \
             for PostgreSQL sources only so far"
                .into(),
        )
        .into());
    }
    if e.target_schema.is_some() {
        return Err(
            UsageError("--target-schema is for MySQL/MariaDB sources: a PostgreSQL source's tables keep their schemas".into()).into(),
        );
    }
    let source = pg_endpoint(&e.source, e.source_password_file.as_deref(), "FERRY_SOURCE_PASSWORD", "source")?;
    let target = pg_endpoint(&e.target, e.target_password_file.as_deref(), "FERRY_TARGET_PASSWORD", "target")?;
    let filter = TableFilter::new(&e.include, &e.exclude).map_err(|err| UsageError(err.to_string()))?;
    let id = match given_migration_id(e.migration_id.as_deref())? {
        Some(id) => id,
        None => default_migration_id(&target),
    };
    let jobs = e
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    if jobs == 0 || jobs > 64 {
        return Err(UsageError("--jobs must be between 1 and 64".into()).into());
    }
    Ok(CheckRequest {
        source,
        target,
        filter,
        jobs,
        slot: format!("ferry_{id}"),
        publication: format!("ferry_{id}"),
        migration_id: id,
        state_schema: e.state_schema.clone(),
        overwrite: e.overwrite,
        pg_bin_dir: e.pg_bin_dir.clone(),
        split_bytes: e.split_size,
        roles: Default::default(),
    })
}

/// Resolves endpoints for a MySQL/MariaDB source.
pub fn resolve_mysql(e: &Endpoints) -> anyhow::Result<ferry_mysql::preflight::MyCheckRequest> {
    let source = ferry_mysql::MyEndpoint::parse(&e.source, password(e.source_password_file.as_deref(), "FERRY_SOURCE_PASSWORD")?)
        .map_err(|err| UsageError(format!("--source: {err}")))?;
    let target = pg_endpoint(&e.target, e.target_password_file.as_deref(), "FERRY_TARGET_PASSWORD", "target")?;
    let filter = TableFilter::new(&e.include, &e.exclude).map_err(|err| UsageError(err.to_string()))?;
    Ok(ferry_mysql::preflight::MyCheckRequest {
        source,
        target,
        filter,
        map: ferry_mysql::types::MapOptions {
            zero_dates: match e.zero_dates {
                crate::cli::ZeroDatesArg::Error => ferry_mysql::types::ZeroDates::Error,
                crate::cli::ZeroDatesArg::Null => ferry_mysql::types::ZeroDates::Null,
            },
            tinyint1_boolean: e.tinyint1_boolean,
        },
        overwrite: e.overwrite,
        target_schema: target_schema(e.target_schema.as_deref(), &e.state_schema)?
            .unwrap_or(ferry_mysql::state::DEFAULT_TARGET_SCHEMA)
            .to_string(),
    })
}

/// `--target-schema` where it does not apply: a PostgreSQL source, or a command through the API.
pub const TARGET_SCHEMA_NEEDS_SOURCE: &str = "--target-schema is for a MySQL/MariaDB migration named with --source and --target \
     (a running ferry migrate, reached with --api, and a PostgreSQL source know where their tables are)";

/// `--target-schema` checked: a PostgreSQL name (1 to 63 bytes, not `pg_`-reserved) other
/// than Ferry's state schema.
pub fn target_schema<'a>(given: Option<&'a str>, state_schema: &str) -> anyhow::Result<Option<&'a str>> {
    let Some(s) = given else { return Ok(None) };
    let why = if s.is_empty() || s.len() > 63 {
        "a PostgreSQL schema name has 1 to 63 bytes"
    } else if s.starts_with("pg_") {
        "names starting with pg_ are reserved by PostgreSQL"
    } else if s == state_schema {
        "it is Ferry's state schema (--state-schema)"
    } else if s.contains('\0') {
        "a name cannot hold a NUL character"
    } else {
        return Ok(Some(s));
    };
    Err(UsageError(format!("--target-schema {s}: {why}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_slot_safe() {
        assert_eq!(sanitize("My-Migration 2"), "my_migration_2");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
        assert_ne!(fnv("a:1/db"), fnv("b:1/db"));
    }
}
