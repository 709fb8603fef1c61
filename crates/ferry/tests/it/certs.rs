//! Throwaway certificate authorities and certificates for the TLS tests, made once per test
//! process with the `openssl` command line (present on every machine the suite runs on).
//!
//! * `ca.crt`: the CA that signs everything below.
//! * `server.crt`/`server.key`: for `localhost` and `127.0.0.1` (what the test servers listen on).
//! * `client.crt`/`client.key`: a client certificate whose common name is `ferry_cert_user`
//!   (PostgreSQL's `cert` authentication maps the CN to the user name).
//! * `other-ca.crt`: an unrelated CA, for "wrong CA" tests.
//! * `wrongname.crt`/`wrongname.key`: signed by `ca.crt` for `db.example.invalid` only, for
//!   "wrong host name" tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Files of the test PKI (all PEM).
#[derive(Debug)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub wrongname_cert: PathBuf,
    pub wrongname_key: PathBuf,
}

/// The client certificate's user (its CN).
pub const CERT_USER: &str = "ferry_cert_user";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (the TLS tests need the openssl command)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_leaf(dir: &Path, name: &str, cn: &str, san: Option<&str>, client: bool) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let mut ext = String::from("basicConstraints=CA:FALSE\n");
    if client {
        ext.push_str("extendedKeyUsage=clientAuth\n");
    } else {
        ext.push_str("extendedKeyUsage=serverAuth\n");
    }
    if let Some(san) = san {
        ext.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The test PKI, created on first use under the suite's scratch directory.
pub fn get() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let root = std::env::var("FERRY_TEST_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let dir = root.join(format!("ferry-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca", "Ferry Test CA");
        make_ca(&dir, "other-ca", "Some Other CA");
        make_leaf(&dir, "server", "localhost", Some("DNS:localhost,IP:127.0.0.1"), false);
        make_leaf(&dir, "client", CERT_USER, None, true);
        make_leaf(&dir, "wrongname", "db.example.invalid", Some("DNS:db.example.invalid"), false);
        // Keys readable by their owner only: PostgreSQL and Ferry both refuse looser keys.
        for k in ["server.key", "client.key", "wrongname.key", "ca.key", "other-ca.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(k), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Certs {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            wrongname_cert: dir.join("wrongname.crt"),
            wrongname_key: dir.join("wrongname.key"),
            dir,
        }
    })
}
