//! Running pg_dump and pg_restore.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use ferry_core::TableName;
use tokio::process::Command;

use super::role_names::{map_roles_with, OwnerSchemaGrants};
use crate::endpoint::Endpoint;

/// How owners and privileges travel: pg_dump keeps them, and role names are rewritten.
#[derive(Debug, Clone, Default)]
pub struct RoleRewrite {
    /// Source role name to target role name.
    pub map: BTreeMap<String, String>,
    /// For a target user that is not a superuser: temporary CREATE grants on schemas.
    pub owner_grants: Option<OwnerSchemaGrants>,
}

/// A script for the target with the role names it uses.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// SQL.
    pub sql: String,
    /// Roles it names as owners, grantees, grantors, policy or session roles.
    pub roles: BTreeSet<String>,
}

impl RoleRewrite {
    fn apply(&self, sql: &str) -> Script {
        let (sql, roles) = map_roles_with(sql, &self.map, self.owner_grants.as_ref());
        Script { sql, roles }
    }
}

/// pg_dump or pg_restore failed, or could not be found.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No suitable pg_dump.
    #[error("no pg_dump of version {need} or newer found (looked in {looked}); install the PostgreSQL {need} client (Debian: postgresql-client-{need}) or pass --pg-bin-dir")]
    ToolsMissing {
        /// Minimum major version.
        need: i32,
        /// Where we looked.
        looked: String,
    },
    /// The tool ran and failed.
    #[error("{tool} failed: {stderr}")]
    Failed {
        /// Which tool.
        tool: &'static str,
        /// Its error output (never contains the password: it is passed in the environment).
        stderr: String,
    },
    /// The tool could not be started.
    #[error("could not run {tool}: {source}")]
    Spawn {
        /// Which tool.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The PostgreSQL client tools Ferry uses for schema transfer.
#[derive(Debug, Clone)]
pub struct PgTools {
    /// pg_dump.
    pub pg_dump: PathBuf,
    /// pg_restore beside it.
    pub pg_restore: PathBuf,
    /// Their major version.
    pub major: i32,
}

impl PgTools {
    /// Finds pg_dump/pg_restore at least `need` (the source's major version): in `bin_dir` if
    /// given, else the newest `/usr/lib/postgresql/N/bin`, else `PATH`.
    pub async fn find(need: i32, bin_dir: Option<&Path>) -> Result<Self, SchemaError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(d) = bin_dir {
            candidates.push(d.to_path_buf());
        } else {
            if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
                let mut versions: Vec<(i32, PathBuf)> = entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok().map(|v| (v, e.path().join("bin"))))
                    .collect();
                versions.sort_by_key(|v| std::cmp::Reverse(v.0));
                candidates.extend(versions.into_iter().map(|(_, p)| p));
            }
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path));
            }
        }
        let looked = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        for dir in candidates {
            let pg_dump = dir.join("pg_dump");
            let pg_restore = dir.join("pg_restore");
            if !pg_dump.is_file() || !pg_restore.is_file() {
                continue;
            }
            let Ok(out) = Command::new(&pg_dump).arg("--version").output().await else {
                continue;
            };
            // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
            let text = String::from_utf8_lossy(&out.stdout);
            let major = text
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse::<i32>().ok());
            if let Some(major) = major {
                if major >= need {
                    return Ok(Self {
                        pg_dump,
                        pg_restore,
                        major,
                    });
                }
            }
        }
        Err(SchemaError::ToolsMissing { need, looked })
    }

    fn command(&self, tool: &Path, ep: &Endpoint) -> Command {
        let mut c = Command::new(tool);
        // Nothing of the operator's libpq environment may redirect the child elsewhere: the
        // connection (host, user, TLS settings, password) is exactly Ferry's, and travels in the
        // environment so that no password is on a command line.
        for var in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGHOSTADDR",
            "PGSSLROOTCERT",
            "PGSSLCERT",
            "PGSSLKEY",
            "PGSSLNEGOTIATION",
            "PGREQUIREAUTH",
            "PGPASSWORD",
            "PGTARGETSESSIONATTRS",
            "PGCHANNELBINDING",
        ] {
            c.env_remove(var);
        }
        for (k, v) in ep.libpq_env() {
            c.env(k, v);
        }
        c.env("PGAPPNAME", "ferry pg_dump");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}

/// A work directory only Ferry's user can enter (mode 0700), with a random name, created fresh:
/// an existing path is refused rather than reused, so nobody can plant files or links where
/// pg_dump writes the schema. Removed when dropped.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates `<tmp>/ferry-work-<label>-<random>`.
    pub fn create(label: &str) -> std::io::Result<Self> {
        use std::io::Read;
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 8];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("ferry-work-{label}-{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(mut cmd: Command, tool: &'static str) -> Result<Vec<u8>, SchemaError> {
    let out = cmd.output().await.map_err(|source| SchemaError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(SchemaError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// `privileges`: keep owners and ACLs (the migration's schema); without, objects belong to
/// Ferry's user and carry no grants (a table created on the source mid-stream).
fn common_args(cmd: &mut Command, snapshot: Option<&str>, excluded: &[TableName], privileges: bool) {
    cmd.args(["--schema-only", "--no-publications", "--no-subscriptions"]);
    if !privileges {
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    if let Some(s) = snapshot {
        cmd.arg(format!("--snapshot={s}"));
    }
    for t in excluded {
        // pg_dump patterns: inside double quotes every character is literal.
        cmd.arg(format!("--exclude-table={}", t.quoted()));
    }
}

/// The pre-data DDL as SQL text, from inside `snapshot` when given, owners and grants included
/// with role names rewritten by `roles`. With `clean`, the script first drops every object it
/// creates (`--clean --if-exists`): used only with `--overwrite`.
pub async fn dump_pre_data(
    tools: &PgTools,
    ep: &Endpoint,
    snapshot: Option<&str>,
    excluded: &[TableName],
    clean: bool,
    roles: &RoleRewrite,
) -> Result<Script, SchemaError> {
    let mut cmd = tools.command(&tools.pg_dump, ep);
    common_args(&mut cmd, snapshot, excluded, true);
    cmd.arg("--section=pre-data");
    if clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    let out = run(cmd, "pg_dump (pre-data)").await?;
    Ok(roles.apply(&strip_restrict(&String::from_utf8_lossy(&out))))
}

/// One table's full definition (table, sequences it owns, indexes, constraints, triggers) as
/// SQL, from the source's current catalog: for tables created on the source mid-stream.
pub async fn dump_table(tools: &PgTools, ep: &Endpoint, table: &TableName) -> Result<String, SchemaError> {
    let mut cmd = tools.command(&tools.pg_dump, ep);
    common_args(&mut cmd, None, &[], false);
    cmd.arg(format!("--table={}", table.quoted()));
    let out = run(cmd, "pg_dump (new table)").await?;
    Ok(strip_restrict(&String::from_utf8_lossy(&out)))
}

/// The post-data DDL that Ferry does not build itself, as SQL text: pg_dump's post-data archive
/// minus the INDEX, CONSTRAINT and FK CONSTRAINT entries whose catalog OIDs are in `handled`,
/// and minus every INDEX ATTACH entry (Ferry attaches partition indexes itself). Row-level
/// security (ENABLE), policies and default privileges are in it, with role names rewritten.
pub async fn dump_remaining_post_data(
    tools: &PgTools,
    ep: &Endpoint,
    snapshot: Option<&str>,
    excluded: &[TableName],
    handled: &HashSet<u32>,
    workdir: &Path,
    roles: &RoleRewrite,
) -> Result<Script, SchemaError> {
    let archive = workdir.join("post-data.dump");
    let list = workdir.join("post-data.list");
    let mut cmd = tools.command(&tools.pg_dump, ep);
    common_args(&mut cmd, snapshot, excluded, true);
    cmd.arg("--section=post-data")
        .arg("--format=custom")
        .arg(format!("--file={}", archive.display()));
    run(cmd, "pg_dump (post-data)").await?;

    let mut cmd = tools.command(&tools.pg_restore, ep);
    cmd.env_remove("PGDATABASE").arg("--list").arg(&archive);
    let toc = String::from_utf8_lossy(&run(cmd, "pg_restore --list").await?).into_owned();
    let kept = filter_toc(&toc, handled);
    tokio::fs::write(&list, kept).await.map_err(|source| SchemaError::Spawn {
        tool: format!("writing {}", list.display()),
        source,
    })?;

    let mut cmd = tools.command(&tools.pg_restore, ep);
    cmd.env_remove("PGDATABASE")
        .arg(format!("--use-list={}", list.display()))
        .arg("--file=-")
        .arg(&archive);
    let sql = run(cmd, "pg_restore (post-data)").await?;
    let _ = tokio::fs::remove_file(&archive).await;
    let _ = tokio::fs::remove_file(&list).await;
    Ok(roles.apply(&strip_restrict(&String::from_utf8_lossy(&sql))))
}

/// Keeps the TOC lines that Ferry does not handle itself. A TOC line reads
/// `dumpId; catalogOid objectOid TYPE schema name owner`; comments start with `;`.
fn filter_toc(toc: &str, handled: &HashSet<u32>) -> String {
    let mut out = String::new();
    for line in toc.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(';') || trimmed.is_empty() {
            continue;
        }
        let rest = trimmed.split_once(';').map(|(_, r)| r.trim_start()).unwrap_or("");
        let mut words = rest.split_whitespace();
        let _catalog = words.next();
        let oid: Option<u32> = words.next().and_then(|o| o.parse().ok());
        let kind: Vec<&str> = words.take(2).collect();
        let skip = match (kind.first().copied(), kind.get(1).copied()) {
            (Some("INDEX"), Some("ATTACH")) => true,
            (Some("INDEX"), _) | (Some("CONSTRAINT"), _) => oid.is_some_and(|o| handled.contains(&o)),
            (Some("FK"), Some("CONSTRAINT")) => oid.is_some_and(|o| handled.contains(&o)),
            _ => false,
        };
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Removes the `\restrict KEY` / `\unrestrict KEY` psql meta-commands that current pg_dump
/// releases wrap plain scripts in: Ferry runs the script itself, not through psql.
pub fn strip_restrict(sql: &str) -> String {
    sql.lines()
        .filter(|l| !(l.starts_with("\\restrict ") || l.starts_with("\\unrestrict ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_filter_drops_only_what_ferry_builds() {
        let toc = ";\n; Archive created at ...\n;\n\
3261; 2606 16420 CONSTRAINT public pgbench_accounts pgbench_accounts_pkey postgres\n\
3262; 1259 16430 INDEX public idx_a postgres\n\
3263; 1259 16431 INDEX public idx_mv postgres\n\
3264; 0 0 INDEX ATTACH public p_1_idx postgres\n\
3265; 2620 16440 TRIGGER public t trg postgres\n\
3266; 2606 16450 FK CONSTRAINT public orders orders_fk postgres\n";
        let handled: HashSet<u32> = [16420, 16430, 16450].into_iter().collect();
        let kept = filter_toc(toc, &handled);
        assert_eq!(
            kept,
            "3263; 1259 16431 INDEX public idx_mv postgres\n3265; 2620 16440 TRIGGER public t trg postgres\n"
        );
    }

    #[test]
    fn restrict_lines_are_removed() {
        let s = "\\restrict abc\nSET x = 1;\nCREATE TABLE t ();\n\\unrestrict abc";
        assert_eq!(strip_restrict(s), "SET x = 1;\nCREATE TABLE t ();");
    }
}
