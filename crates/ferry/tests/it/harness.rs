//! Shared test helpers: the test servers, per-test databases, running the binary, and an
//! independent comparison of source and target that does not use any Ferry code.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_postgres::{Client, NoTls};

/// The servers scripts/test.sh started.
pub struct Env {
    /// Superuser URL of the source cluster (database postgres).
    pub source: String,
    /// Superuser URL of the target cluster.
    pub target: String,
    /// Superuser URL of a cluster with wal_level=replica.
    pub replica: String,
    /// PostgreSQL binaries (pgbench).
    pub pg_bin: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the suite with scripts/test.sh, which installs and starts the test servers"))
}

/// Reads the test environment; panics with instructions when it is missing.
pub fn env() -> Env {
    Env {
        source: var("FERRY_TEST_SOURCE"),
        target: var("FERRY_TEST_TARGET"),
        replica: var("FERRY_TEST_REPLICA"),
        pg_bin: PathBuf::from(std::env::var("FERRY_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())),
    }
}

/// The same server URL with another database.
pub fn with_db(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{db}")
}

/// Connects with tokio-postgres.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A pair of fresh databases (same name) on the source and target clusters.
pub struct Dbs {
    /// Database name.
    pub name: String,
    /// Source URL.
    pub source: String,
    /// Target URL.
    pub target: String,
    env: Env,
}

impl Dbs {
    /// Creates `<prefix>_<pid>_<n>` on both clusters.
    pub async fn create(prefix: &str) -> Self {
        Self::create_in(prefix, env()).await
    }

    /// The same on the clusters that run with production durability (fsync,
    /// synchronous_commit and full_page_writes on; scripts/test.sh starts them).
    pub async fn create_durable(prefix: &str) -> Self {
        let mut env = env();
        env.source = var("FERRY_TEST_DURABLE_SOURCE");
        env.target = var("FERRY_TEST_DURABLE_TARGET");
        Self::create_in(prefix, env).await
    }

    async fn create_in(prefix: &str, env: Env) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}_{}_{}", std::process::id(), nanos % 100_000);
        for url in [&env.source, &env.target] {
            connect(url).await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        }
        Self {
            source: with_db(&env.source, &name),
            target: with_db(&env.target, &name),
            name,
            env,
        }
    }

    /// Drops both databases and what Ferry made for them on either cluster that outlives a
    /// database: replication slots and replication origins (cluster-wide; each origin in use
    /// takes one of max_replication_slots).
    ///
    /// A backend of a Ferry process that just exited (or was killed) needs a moment to notice
    /// and release its slot or origin; on a busy machine that moment is long enough for
    /// `DROP DATABASE` to meet "used by an active logical replication slot". So the backends
    /// still on the database are ended first and every step is retried for a while, and a
    /// failure that outlasts that says which step and why.
    pub async fn drop(self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_drop().await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("dropping test database {}: {e}; retrying", self.name);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("could not drop test database {} within 60 s: {e}", self.name),
            }
        }
    }

    async fn try_drop(&self) -> Result<(), String> {
        for url in [&self.env.source, &self.env.target] {
            let c = connect(url).await;
            let step = |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {e}");
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .map_err(step("ending the backends still on it"))?;
            c.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
                &[&self.name],
            )
            .await
            .map_err(step("dropping its replication slots"))?;
            c.execute(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE '%' || $1 || '%'",
                &[&self.name],
            )
            .await
            .map_err(step("dropping its replication origins"))?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .await
                .map_err(step("DROP DATABASE"))?;
        }
        Ok(())
    }
}

/// A finished run of the ferry binary.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Both outputs.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The ferry command, with a clean environment for its own variables.
pub fn ferry_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args)
        .env_remove("FERRY_SOURCE_URL")
        .env_remove("FERRY_TARGET_URL")
        .env_remove("FERRY_SOURCE_PASSWORD")
        .env_remove("FERRY_TARGET_PASSWORD")
        .env_remove("FERRY_API_TOKEN")
        // Ferry follows libpq's conventions: nothing of the runner's own libpq setup may leak in.
        .env_remove("PGPASSWORD")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .env_remove("PGPASSFILE")
        .env_remove("PGSSLROOTCERT")
        // Tests run in parallel: no HTTP API unless a test asks for one (--listen wins).
        .env("FERRY_LISTEN", "off")
        .env("NO_COLOR", "1");
    c
}

/// A loopback address with a port free right now, for `--listen`.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One HTTP/1.1 request to `http://{addr}{path}` (with a bearer token when given): status and body.
pub async fn http(method: &str, addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", addr);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender.send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap()).await.unwrap();
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// `GET /api/status` as JSON, once the API answers with a status.
pub async fn api_status(addr: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Ok(Ok((200, body))) = tokio::time::timeout(Duration::from_secs(5), async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Ok(http("GET", addr, "/api/status", None).await),
                Err(e) => Err(e),
            }
        })
        .await
        {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the API at {addr} gave no status within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the status API until `pred` holds (at most `timeout`); returns that status.
pub async fn api_wait(addr: &str, what: &str, timeout: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let st = api_status(addr).await;
        if pred(&st) {
            return st;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}; last status: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one sample line of a Prometheus exposition (`name{labels}` exactly as written).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs ferry to completion.
pub fn ferry(args: &[&str]) -> Run {
    ferry_cmd(args).output().expect("run ferry").into()
}

/// Loads Ferry's sample shop (every common type) with `rows` order lines.
pub async fn load_sample(url: &str, rows: i64) {
    let sql = include_str!("../../sql/sample.sql").replace("{{ROWS}}", &rows.to_string());
    connect(url).await.batch_execute(&sql).await.expect("load sample schema");
}

/// `pgbench -i -s scale` into the database, with pgbench_history given a replica identity.
pub async fn pgbench_init(url: &str, scale: u32) {
    let out = Command::new(env().pg_bin.join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), url])
        .output()
        .expect("run pgbench");
    assert!(out.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
    connect(url)
        .await
        .batch_execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .await
        .unwrap();
}

async fn copy_text(c: &Client, sql: &str) -> Vec<u8> {
    let stream = c.copy_out(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// The first column of every row, as text.
pub async fn lines(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Whether Ferry's state schema exists in the database.
pub async fn has_state_schema(url: &str) -> bool {
    connect(url)
        .await
        .query_one("SELECT to_regnamespace('ferry') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

/// Replication slots of the database.
pub async fn slots(url: &str) -> Vec<String> {
    lines(
        &connect(url).await,
        "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()",
    )
    .await
}

/// Independent proof that the target equals the source: every table's rows as text COPY,
/// ordered by the whole row, byte for byte; and the same indexes, constraints (with their
/// validity), triggers and sequence values. Returns the number of tables compared.
pub async fn assert_identical(source: &str, target: &str) -> usize {
    compare(source, target, true).await
}

/// [`assert_identical`] without sequence values: change capture does not carry them (logical
/// replication has no sequence changes; cutover sets them).
pub async fn assert_identical_except_sequences(source: &str, target: &str) -> usize {
    compare(source, target, false).await
}

async fn compare(source: &str, target: &str, sequences: bool) -> usize {
    let s = connect(source).await;
    let t = connect(target).await;
    let tables = lines(
        &s,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry') AND n.nspname NOT LIKE 'pg_toast%'
         ORDER BY 1",
    )
    .await;
    assert!(!tables.is_empty());
    for table in &tables {
        let sql = format!("COPY (SELECT * FROM {table} x ORDER BY x::text COLLATE \"C\") TO STDOUT");
        let (a, b) = (copy_text(&s, &sql).await, copy_text(&t, &sql).await);
        assert!(a == b, "table {table} differs: source {} bytes, target {} bytes", a.len(), b.len());
    }
    let catalog = [
        // Indexes (validity included).
        "SELECT format('%s %s %s', indrelid::regclass, pg_get_indexdef(indexrelid), indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        // Constraints, including foreign keys and whether they are validated.
        "SELECT format('%s %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid), convalidated) FROM pg_constraint
         WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) AND conrelid <> 0
           AND connamespace::regnamespace::text <> 'ferry' ORDER BY 1",
        // Triggers.
        "SELECT format('%s %s', tgrelid::regclass, pg_get_triggerdef(oid)) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
        // Sequence values.
        "SELECT format('%s.%s %s', schemaname, sequencename, last_value) FROM pg_sequences WHERE schemaname <> 'ferry' ORDER BY 1",
    ];
    for q in catalog.iter().take(if sequences { 4 } else { 3 }) {
        assert_eq!(lines(&s, q).await, lines(&t, q).await, "catalog differs for: {q}");
    }
    tables.len()
}

/// Waits until `cond` holds, polling; panics after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `ferry migrate` running in the background. Its output goes to files, not pipes (a pipe
/// nobody reads fills up and blocks the process); if the test panics while it runs, the tail of
/// its log is printed, so a timeout says what ferry was doing.
pub struct Migrator {
    child: std::process::Child,
    out: PathBuf,
    err: PathBuf,
}

impl Drop for Migrator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.err).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of ferry's log ({}):", self.err.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            let _ = self.child.kill();
        }
        let _ = std::fs::remove_file(&self.out);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.err);
        }
    }
}

impl Migrator {
    /// Starts `ferry` with `args`, output captured.
    pub fn spawn(args: &[&str]) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("ferry-it-{}-{n}", std::process::id()));
        let (out, err) = (base.with_extension("out"), base.with_extension("err"));
        let child = ferry_cmd(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("start ferry");
        Self { child, out, err }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, in kB (VmHWM).
    pub fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Whether it has exited by itself.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// SIGTERM, then wait (at most 60 s) and collect its output.
    pub fn terminate(self) -> Run {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        self.wait()
    }

    /// Waits for it to exit by itself (at most 60 s).
    pub fn wait(mut self) -> Run {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("ferry did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }

    /// SIGKILL.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Creates the marker table used by [`sync_point`]; call before the migration starts.
pub async fn create_marker(source: &str) {
    connect(source)
        .await
        .batch_execute("CREATE TABLE test_marker (n int PRIMARY KEY)")
        .await
        .unwrap();
}

/// Writes marker `n` on the source and waits until the target has it: everything the source
/// committed before it has then been applied.
pub async fn sync_point(source: &str, target: &str, n: i32) {
    connect(source)
        .await
        .execute("INSERT INTO test_marker VALUES ($1)", &[&n])
        .await
        .unwrap();
    let t = connect(target).await;
    wait_for("the target to catch up with the source", Duration::from_secs(120), || {
        let t = &t;
        async move {
            t.query_opt("SELECT 1 FROM public.test_marker WHERE n = $1", &[&n])
                .await
                .map(|r| r.is_some())
                .unwrap_or(false)
        }
    })
    .await;
}

/// Waits until `sql` returns a row on `url` (a query that fails, say because Ferry's state
/// schema does not exist yet, counts as no row).
pub async fn wait_for_row(url: &str, what: &str, timeout: Duration, sql: &str) {
    wait_for(what, timeout, || async move {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                c.query_opt(sql, &[]).await.map(|r| r.is_some()).unwrap_or(false)
            }
            Err(_) => false,
        }
    })
    .await;
}

/// Waits until the migration streams changes.
pub async fn wait_for_cdc(target: &str) {
    let sql = "SELECT 1 FROM ferry.migrations WHERE phase = 'cdc'";
    wait_for_row(target, "the migration to reach change capture", Duration::from_secs(180), sql).await;
}

/// `ferry migrate` arguments for the test's databases, with two jobs, plus `extra`.
pub fn migrate_args(dbs: &Dbs, extra: &[&str]) -> Vec<String> {
    let base = ["migrate", "--source", &dbs.source, "--target", &dbs.target, "--jobs", "2"];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Borrowed view of owned arguments.
pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// pgbench's TPC-B invariant on a database, in one snapshot.
pub async fn pgbench_invariant(url: &str) -> bool {
    let c = connect(url).await;
    c.query_one(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers)
            AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)
            AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT COALESCE(sum(delta), 0) FROM pgbench_history)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Starts `pgbench -c clients -T seconds` (TPC-B) against the database, limited to `rate` transactions per second (0: unlimited).
pub fn pgbench_run_rate(url: &str, clients: u32, seconds: u32, rate: u32) -> std::process::Child {
    let mut args = vec![
        "-n".to_string(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        seconds.to_string(),
    ];
    if rate > 0 {
        args.extend(["-R".to_string(), rate.to_string()]);
    }
    args.push(url.to_string());
    Command::new(env().pg_bin.join("pgbench"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgbench")
}

/// Waits for pgbench and asserts it ran without failed transactions; returns its output.
pub fn pgbench_finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench failed: {text}");
    assert!(
        !text.contains("number of failed transactions: ") || text.contains("number of failed transactions: 0 "),
        "{text}"
    );
    text
}

/// A pair of clusters of the test's own, for faults that must not hit other tests (restarts).
pub struct PrivateClusters {
    /// Names (for scripts/pg.sh).
    pub names: [String; 2],
    /// Ports.
    pub ports: [u16; 2],
}

fn pg_sh(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh");
    let out = Command::new(&script).args(args).output().expect("run scripts/pg.sh");
    assert!(out.status.success(), "pg.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl PrivateClusters {
    /// Starts two fresh logical-replication clusters on free ports.
    pub fn start(prefix: &str) -> Self {
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let names = [
            format!("{prefix}-src-{}", std::process::id()),
            format!("{prefix}-tgt-{}", std::process::id()),
        ];
        let ports = [free(), free()];
        for (n, p) in names.iter().zip(ports) {
            pg_sh(&["destroy", n]);
            pg_sh(&["start", n, &p.to_string(), "-c", "wal_level=logical"]);
        }
        Self { names, ports }
    }

    /// URL of database `db` on cluster `i` (0 source, 1 target).
    pub fn url(&self, i: usize, db: &str) -> String {
        let e = env();
        let base = with_db(&e.source, db);
        // Same password and user as the shared clusters; another port.
        let (head, rest) = base.split_once('@').unwrap();
        let db_part = rest.split_once('/').unwrap().1;
        format!("{head}@127.0.0.1:{}/{db_part}", self.ports[i])
    }

    /// Restarts cluster `i` (fast shutdown: every connection is cut).
    pub fn restart(&self, i: usize) {
        pg_sh(&["stop", &self.names[i]]);
        pg_sh(&["start", &self.names[i], &self.ports[i].to_string(), "-c", "wal_level=logical"]);
    }
}

impl Drop for PrivateClusters {
    fn drop(&mut self) {
        for n in &self.names {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh");
            let _ = Command::new(&script).args(["destroy", n]).output();
        }
    }
}

/// The text `ferry migrate` has logged so far (stderr).
impl Migrator {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

/// A TCP relay in front of a server, for network faults that hit only the test's own
/// connections: `black_hole(true)` stops forwarding in both directions without closing
/// anything (bytes wait in the relay, new connections are accepted and then never answered),
/// as when a firewall starts dropping packets; `black_hole(false)` lets everything through
/// again.
pub struct Relay {
    /// host:port of the relay.
    pub addr: String,
    hole: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Starts a relay to `upstream` (host:port) on a free loopback port.
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (hole, watch) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (upstream, watch) = (upstream.clone(), watch.clone());
                tokio::spawn(async move {
                    // A connection made during a black hole waits for the network to return.
                    let mut w = watch.clone();
                    until(&mut w, false).await;
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, watch.clone()), pump(sr, cw, watch));
                });
            }
        });
        Self { addr, hole, task }
    }

    /// Drops (true) or passes (false) all traffic.
    pub fn black_hole(&self, on: bool) {
        self.hole.send_replace(on);
    }

    /// `url` (postgres://user:pw@host:port/db) with the relay's address instead.
    pub fn url(&self, url: &str) -> String {
        let (head, rest) = url.split_once('@').unwrap();
        let db = rest.split_once('/').map(|(_, d)| d).unwrap_or("");
        format!("{head}@{}/{db}", self.addr)
    }
}

/// Copies one direction, pausing (holding what it read) while the black hole is on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hole: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !until(&mut hole, false).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => { let _ = to.shutdown().await; return } Ok(n) => n },
            // Stop reading the moment the black hole starts.
            _ = until(&mut hole, true) => continue,
        };
        if !until(&mut hole, false).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until the black hole is `on` (true) or off; false when the relay is gone.
async fn until(hole: &mut tokio::sync::watch::Receiver<bool>, on: bool) -> bool {
    hole.wait_for(|h| *h == on).await.is_ok()
}

/// Samples a value every second until stopped; returns what was sampled.
pub struct Sampler<T: Send + 'static> {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<T>>,
}

impl<T: Send + 'static> Sampler<T> {
    /// Runs `f` once a second.
    pub fn start<F, Fut>(mut f: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<T>> + Send,
    {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => if let Some(v) = f().await { out.push(v) },
                    _ = rx.changed() => return out,
                }
            }
        });
        Self { stop, task }
    }

    /// Stops and returns the samples.
    pub async fn finish(self) -> Vec<T> {
        self.stop.send_replace(true);
        self.task.await.unwrap()
    }
}

/// Nearest-rank percentile of `xs` (p in 0..=100).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
