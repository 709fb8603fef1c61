//! TLS to MySQL/MariaDB and the MySQL client conventions, against a MariaDB of the test's own
//! that accepts encrypted connections only (`require_secure_transport=ON`, certificates from
//! `certs.rs`): `ferry check` and a `ferry migrate` load plus binlog stream with
//! `ssl-mode=VERIFY_IDENTITY`; a wrong CA, a wrong host name, `DISABLED`, a server without TLS,
//! unknown URL options and unreadable files each refused with what failed and the fix; a
//! client certificate login; `MYSQL_PWD` and `~/.my.cnf` supplying the password. No output
//! ever holds the password.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::certs;
use crate::harness::*;

/// The test user's password: every character that breaks naive URL handling or quoting.
const PW: &str = "p/w@x:'q\" %z?#&";
/// The same inside an SQL string literal.
const PW_SQL: &str = "p/w@x:''q\" %z?#&";
/// The same percent-encoded for a URL.
const PW_URL: &str = "p%2Fw%40x%3A%27q%22%20%25z%3F%23%26";
const USER: &str = "ferry_tls";

fn cluster_dir() -> PathBuf {
    std::env::var("FERRY_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ferry-test/clusters"))
}

fn mysql_sh(args: &[&str]) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mysql.sh");
    Command::new(&script).args(args).output().expect("run scripts/mysql.sh")
}

/// A MariaDB of this test's own with TLS required and the binlog on; destroyed on drop.
struct TlsMaria {
    name: String,
    port: u16,
    files: PathBuf,
}

impl TlsMaria {
    fn start() -> Self {
        let c = certs::get();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let name = format!("ferry-my-tls-{}", std::process::id());
        // The server reads its certificate and key as its own user ("mysql" when the tests run
        // as root): copies it owns.
        let files = c.dir.join("mariadb");
        std::fs::create_dir_all(&files).unwrap();
        for (from, to) in [(&c.ca, "ca.crt"), (&c.server_cert, "server.crt"), (&c.server_key, "server.key")] {
            std::fs::copy(from, files.join(to)).unwrap();
        }
        if nix_is_root() {
            let out = Command::new("chown").args(["-R", "mysql:"]).arg(&files).output().unwrap();
            assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
        }
        let f = |n: &str| files.join(n).display().to_string();
        let _ = mysql_sh(&["destroy", &name]);
        let out = mysql_sh(&[
            "start",
            &name,
            &port.to_string(),
            &format!("--ssl-ca={}", f("ca.crt")),
            &format!("--ssl-cert={}", f("server.crt")),
            &format!("--ssl-key={}", f("server.key")),
            "--require-secure-transport=ON",
            "--log-bin=binlog",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--server-id=7",
        ]);
        assert!(out.status.success(), "mysql.sh start: {}", String::from_utf8_lossy(&out.stderr));
        TlsMaria { name, port, files }
    }

    /// Runs SQL as root over the server's socket (secure transport by definition).
    fn sql(&self, sql: &str) {
        let sock = cluster_dir().join(&self.name).join("mysqld.sock");
        let out = Command::new("mariadb")
            .args(["--no-defaults", "--default-character-set=utf8mb4", "-uroot"])
            .arg(format!("--socket={}", sock.display()))
            .args(["-e", sql])
            .output()
            .expect("the mariadb client");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for TlsMaria {
    fn drop(&mut self) {
        let _ = mysql_sh(&["destroy", &self.name]);
        let _ = std::fs::remove_dir_all(&self.files);
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A TCP relay on 127.0.0.2 to the server: the same server under an address its certificate
/// does not name. Threads, so that it runs while the test blocks on the ferry binary.
fn relay_on_other_address(port: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2 (Linux routes 127/8 to lo)");
    let relay_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let pump = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            };
            pump(client.try_clone().unwrap(), server.try_clone().unwrap());
            pump(server, client);
        }
    });
    relay_port
}

/// Neither the password nor its URL form is in the run's output.
fn assert_no_secret(run: &Run) {
    let all = run.all();
    for s in [PW, PW_URL, "p/w@x"] {
        assert!(!all.contains(s), "the password ({s}) leaked into ferry's output:\n{all}");
    }
}

/// `ferry check` with extra environment.
fn check(source: &str, target: &str, env: &[(&str, &str)]) -> Run {
    let mut c = ferry_cmd(&["check", "--source", source, "--target", target]);
    c.env_remove("MYSQL_PWD");
    for (k, v) in env {
        c.env(k, v);
    }
    let run: Run = c.output().expect("run ferry").into();
    assert_no_secret(&run);
    run
}

fn empty_home(name: &str) -> PathBuf {
    let home = certs::get().dir.join(name);
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    home
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_tls_verify_identity_load_and_stream_and_clear_refusals() {
    let c = certs::get();
    let my = TlsMaria::start();
    let dbs = Dbs::create("mytls").await;
    let (db, target) = (dbs.name.clone(), dbs.target.clone());
    my.sql(&format!(
        "CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PW_SQL}';
         GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1';
         CREATE DATABASE {db};
         CREATE TABLE {db}.items (id int PRIMARY KEY, name varchar(40) NOT NULL);
         INSERT INTO {db}.items VALUES (1, 'one'), (2, 'two');"
    ));
    let (ca, other_ca) = (c.ca.display().to_string(), c.other_ca.display().to_string());
    let port = my.port;
    let base = format!("mysql://{USER}:{PW_URL}@127.0.0.1:{port}/{db}");
    let verified = format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
    let home = empty_home("home-empty");
    let home_env = [("HOME", home.to_str().unwrap())];

    // ferry check over TLS, the certificate and the host name verified.
    let run = check(&verified, &target, &home_env);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .contains("encrypted with TLS (ssl-mode=VERIFY_IDENTITY: certificate chain and host name verified)"),
        "{}",
        run.stdout
    );

    // Load and binlog stream over TLS (the server refuses anything else).
    let m = Migrator::spawn(&["migrate", "--source", &verified, "--target", &target]);
    wait_for_row(
        &target,
        "the binlog stream to start",
        Duration::from_secs(120),
        "SELECT 1 FROM ferry.mysql_state WHERE cdc_tables IS NOT NULL",
    )
    .await;
    my.sql(&format!(
        "INSERT INTO {db}.items VALUES (3, 'three'); UPDATE {db}.items SET name = 'uno' WHERE id = 1; DELETE FROM {db}.items WHERE id = 2;"
    ));
    wait_for_row(
        &target,
        "the streamed changes",
        Duration::from_secs(60),
        "SELECT 1 WHERE (SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM public.items) = '1:uno,3:three'",
    )
    .await;
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    assert_no_secret(&end);

    // The checks below need an empty target: the database of the same name on the other cluster.
    let empty = dbs.source.clone();

    // A CA that did not sign the server's certificate.
    let run = check(&format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={other_ca}"), &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    for needle in [
        "not signed by the CA in",
        "other-ca.crt",
        "ssl-mode=VERIFY_IDENTITY",
        "give the CA that signed",
    ] {
        assert!(run.all().contains(needle), "{needle} not in:\n{}", run.all());
    }

    // The same server under a name its certificate does not list: VERIFY_IDENTITY refuses,
    // VERIFY_CA (chain only) connects.
    let relay = relay_on_other_address(port);
    let renamed = format!("mysql://{USER}:{PW_URL}@127.0.0.2:{relay}/{db}");
    let run = check(&format!("{renamed}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"), &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    for needle in ["not valid for the host name \"127.0.0.2\"", "VERIFY_CA"] {
        assert!(run.all().contains(needle), "{needle} not in:\n{}", run.all());
    }
    let run = check(&format!("{renamed}?ssl-mode=VERIFY_CA&ssl-ca={ca}"), &empty, &home_env);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("certificate chain verified, not the host name"),
        "{}",
        run.stdout
    );
    // ...but not with a CA that did not sign it.
    let run = check(&format!("{renamed}?ssl-mode=VERIFY_CA&ssl-ca={other_ca}"), &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("not signed by the CA in"), "{}", run.all());

    // A client certificate login (REQUIRE X509): ssl-cert and ssl-key are presented; without
    // them the server refuses.
    my.sql("CREATE USER 'ferry_x509'@'127.0.0.1' REQUIRE X509; GRANT ALL PRIVILEGES ON *.* TO 'ferry_x509'@'127.0.0.1';");
    let x509 = format!("mysql://ferry_x509@127.0.0.1:{port}/{db}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
    let with_cert = format!("{x509}&ssl-cert={}&ssl-key={}", c.client_cert.display(), c.client_key.display());
    let run = check(&with_cert, &empty, &home_env);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = check(&x509, &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("Access denied"), "{}", run.all());
    // A key that is not the certificate's: refused before connecting, naming both files.
    let mismatched = format!("{x509}&ssl-cert={}&ssl-key={}", c.client_cert.display(), c.wrongname_key.display());
    let run = check(&mismatched, &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("does not match the key") && run.stderr.contains("wrongname.key"),
        "{}",
        run.all()
    );
    // A common mistake: ssl-ca pointing at a server certificate instead of the CA.
    let run = check(
        &format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}", c.wrongname_cert.display()),
        &empty,
        &home_env,
    );
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.all().contains("not signed by the CA in") && run.all().contains("wrongname.crt"),
        "{}",
        run.all()
    );

    // REQUIRED encrypts without a CA; DISABLED is refused by the server, with the fix.
    let run = check(&format!("{base}?ssl_mode=required"), &empty, &home_env);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = check(&format!("{base}?ssl-mode=DISABLED"), &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    for needle in [
        "unencrypted connection (ssl-mode=DISABLED)",
        "require_secure_transport=ON",
        "ssl-mode=VERIFY_IDENTITY with ssl-ca",
    ] {
        assert!(run.all().contains(needle), "{needle} not in:\n{}", run.all());
    }
    // The default (PREFERRED) takes TLS when offered.
    let run = check(&base, &empty, &home_env);
    assert_eq!(run.code, 0, "{}", run.all());

    // Unknown options, a bad mode and an unreadable CA file: usage errors naming them.
    for (url, needles) in [
        (format!("{base}?sslmod=REQUIRED"), vec!["unknown option \"sslmod\"", "ssl-mode"]),
        (format!("{base}?ssl-mode=ON"), vec!["ssl-mode \"ON\" is not one of"]),
        (
            format!("{base}?ssl-mode=VERIFY_CA&ssl-ca=/nonexistent/ca.pem"),
            vec!["/nonexistent/ca.pem", "CA file"],
        ),
    ] {
        let run = check(&url, &empty, &home_env);
        assert_ne!(run.code, 0, "{}", run.all());
        for needle in needles {
            assert!(run.stderr.contains(needle), "{needle} not in:\n{}", run.all());
        }
    }
    let unreadable = c.dir.join("unreadable-ca.crt");
    write_mode(&unreadable, &std::fs::read_to_string(&c.ca).unwrap(), 0o000);
    if !nix_is_root() {
        // root reads anything; the check is for everyone else.
        let run = check(
            &format!("{base}?ssl-mode=VERIFY_CA&ssl-ca={}", unreadable.display()),
            &empty,
            &home_env,
        );
        assert!(run.stderr.contains("cannot read CA file (ssl-ca)"), "{}", run.all());
    }

    // A server without TLS and ssl-mode=REQUIRED: refused, with the fix.
    if let Ok(plain) = std::env::var("FERRY_TEST_MYSQL") {
        let run = check(&format!("{plain}?ssl-mode=REQUIRED"), &empty, &home_env);
        assert_ne!(run.code, 0, "{}", run.all());
        for needle in ["does not offer TLS", "ssl-mode=REQUIRED", "enable TLS on the server"] {
            assert!(run.all().contains(needle), "{needle} not in:\n{}", run.all());
        }
    }

    // MYSQL_PWD supplies the password when neither the URL nor Ferry's own options do.
    let nopw = format!("mysql://{USER}@127.0.0.1:{port}/{db}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
    let run = check(&nopw, &empty, &[("HOME", home.to_str().unwrap()), ("MYSQL_PWD", PW)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = check(&nopw, &empty, &[("HOME", home.to_str().unwrap()), ("MYSQL_PWD", "wrong-pw")]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("Ferry tried the password from MYSQL_PWD"), "{}", run.all());
    assert!(!run.all().contains("wrong-pw"), "{}", run.all());
    let run = check(&nopw, &empty, &home_env);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("Ferry tried no password"), "{}", run.all());

    // ~/.my.cnf [client]: the password and the TLS options, when the file is private.
    let cnf_home = empty_home("home-cnf");
    let cnf = cnf_home.join(".my.cnf");
    let text = format!(
        "[mysqld]\nport = 1\n[client]\nuser = {USER}\npassword = \"{}\"\nssl-mode = VERIFY_IDENTITY\nssl-ca = {ca}\n",
        PW.replace('\\', "\\\\").replace('"', "\\\"")
    );
    write_mode(&cnf, &text, 0o600);
    let bare = format!("mysql://{USER}@127.0.0.1:{port}/{db}");
    let cnf_env = [("HOME", cnf_home.to_str().unwrap())];
    let run = check(&bare, &empty, &cnf_env);
    assert_eq!(run.code, 0, "{}", run.all());
    write_mode(&cnf, &text, 0o644);
    let run = check(&bare, &empty, &cnf_env);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("chmod 600") && run.stderr.contains(".my.cnf"), "{}", run.all());

    std::fs::remove_dir_all(&home).unwrap();
    std::fs::remove_dir_all(&cnf_home).unwrap();
    let _ = std::fs::remove_file(&unreadable);
    dbs.drop().await;
}
