//! Throwaway PostgreSQL clusters for `ferry demo`, started from the local server binaries.
//!
//! PostgreSQL refuses to run as root; as root the clusters run as the `postgres` system user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A running cluster; stopped (and its directory removed) by [`Cluster::stop`].
#[derive(Debug)]
pub struct Cluster {
    /// Data directory.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

/// Finds the server binaries: the given directory, or the newest /usr/lib/postgresql/N/bin.
pub fn find_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = given {
        if d.join("initdb").is_file() {
            return Ok(d.to_path_buf());
        }
        bail!(
            "no initdb in {}: pass the directory holding the PostgreSQL server binaries",
            d.display()
        );
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
                .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).context(
        "no PostgreSQL server binaries found in /usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) or pass --pg-bin",
    )
}

/// The uid/gid to run PostgreSQL as: none when not root, else the `postgres` user.
pub fn owner() -> anyhow::Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok());
    if uid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return Ok(Some((f[2].parse()?, f[3].parse()?)));
        }
    }
    bail!("running as root, but PostgreSQL refuses to run as root and there is no 'postgres' user: run the demo as a normal user, or create the user (useradd postgres)")
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// initdb and start a cluster in `dir` with superuser `postgres` / `password`.
    pub fn start(bin: &Path, dir: &Path, owner: Option<(u32, u32)>, password: &str, settings: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::chown(dir, Some(u), Some(g))?;
            std::os::unix::fs::chown(&pwfile, Some(u), Some(g))?;
        }
        let data = dir.join("data");
        let port = free_port()?;
        let c = Self {
            dir: dir.to_path_buf(),
            port,
            bin: bin.to_path_buf(),
            owner,
        };
        c.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                &format!("--pwfile={}", pwfile.display()),
                "-A",
                "scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c max_connections=100 -c shared_buffers=256MB",
            dir.display()
        );
        for s in settings {
            opts.push_str(&format!(" -c {s}"));
        }
        c.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &dir.join("server.log").to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(c)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args).current_dir(&self.dir);
        if let Some((u, g)) = self.owner {
            cmd.uid(u).gid(g);
        }
        let out = cmd.output().with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}\nsee {}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout),
                self.dir.join("server.log").display()
            );
        }
        Ok(())
    }

    /// URL of a database on this cluster.
    pub fn url(&self, password: &str, db: &str) -> String {
        format!("postgres://postgres:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server; returns an error naming what could not be cleaned up.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.dir.join("data").to_string_lossy(), "-m", "fast", "-w", "stop"],
        )
    }
}
