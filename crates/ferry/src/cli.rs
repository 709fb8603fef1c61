//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Ferry moves a live PostgreSQL database to a new home with zero downtime.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// More detail in logs (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check prerequisites on source and target and print the migration plan (exit 1 if anything blocks).
    Check(CheckArgs),
    /// Create the schema, copy every table from one consistent snapshot, then stream changes until stopped; resumable.
    Migrate(Box<MigrateArgs>),
    /// Show a migration's phase, progress, lag, retained WAL and dead letters.
    Status(StatusArgs),
    /// Prove the target equals the source, row by row; name every differing row and column.
    Verify(VerifyArgs),
    /// Pause change capture of a running `ferry migrate` at a checkpoint (the slot keeps the changes).
    Pause(ApiArgs),
    /// Resume change capture paused by `ferry pause`.
    Resume(ApiArgs),
    /// Switch the application to the target with a pause of well under a second (through the proxy).
    Cutover(SwitchArgs),
    /// Switch the application back to the source; nothing written on the target meanwhile is lost.
    Rollback(SwitchArgs),
    /// Finish a migration after cutover: verify once more, stop reverse replication, drop
    /// every slot, publication and replication origin Ferry made, record phase complete.
    Complete(CompleteArgs),
    /// Run the proxy alone in front of the target (after `ferry complete`), with the users,
    /// address and TLS of `ferry migrate --proxy-listen`, until the application connects directly.
    Proxy(ProxyArgs),
    /// Send a share of the proxy's read endpoint sessions to the target (while its lag stays
    /// under --max-read-lag); 0% sends them all back to the source.
    Shift(ShiftArgs),
    /// Run a sample of the application's read-only statements on the target too, after the
    /// source answered, and compare answers and latency (`ferry shadow report` shows them).
    Shadow(ShadowArgs),
    /// Give up a migration: drop its replication slot and publication on the source.
    Abandon(AbandonArgs),
    /// Start two throwaway PostgreSQL clusters, fill one with sample data, and migrate it.
    Demo(DemoArgs),
    /// Publish a PostgreSQL database's rows and every later change to Kafka, in Debezium's
    /// format (snapshot, then the stream); the slot moves only once the broker holds the events.
    Capture(CaptureArgs),
    /// Apply Debezium events from Kafka (written by `ferry capture` or a Debezium PostgreSQL
    /// connector with transaction metadata) to PostgreSQL: the snapshot, then whole source
    /// transactions, exactly once, resumable.
    Apply(ApplyArgs),
}

/// Where the data comes from and goes to, and which tables move.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    /// Source URL: postgres://user[:password]@host[:port]/database[?sslmode=...], or
    /// mysql://user[:password]@host[:port]/database (MySQL 8.0+ or MariaDB 10.5+).
    #[arg(long, env = "FERRY_SOURCE_URL", hide_env_values = true)]
    pub source: String,
    /// Target URL, same form as --source.
    #[arg(long, env = "FERRY_TARGET_URL", hide_env_values = true)]
    pub target: String,
    /// File holding the source password (first line); FERRY_SOURCE_PASSWORD also works.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// File holding the target password (first line); FERRY_TARGET_PASSWORD also works.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// Only move tables matching schema.table patterns (* and ? wildcards); repeatable.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave out tables matching these patterns; repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Parallel copy and index-build connections (default: number of CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Name of this migration (default: derived from the target). Names the slot and publication.
    #[arg(long)]
    pub migration_id: Option<String>,
    /// Schema on the target that holds Ferry's state.
    #[arg(long, default_value = "ferry")]
    pub state_schema: String,
    /// Directory holding pg_dump and pg_restore (default: newest /usr/lib/postgresql/N/bin, then PATH).
    #[arg(long)]
    pub pg_bin_dir: Option<PathBuf>,
    /// Drop and recreate target tables that already exist (data in them is lost).
    #[arg(long)]
    pub overwrite: bool,
    /// Tables larger than this are copied as several page ranges in parallel (e.g. 64MB, 1GB; 0: never split).
    #[arg(long, default_value = "64MB", value_parser = parse_size)]
    pub split_size: i64,
    /// MySQL/MariaDB sources: what a zero date (0000-00-00) becomes. `error` stops with the row
    /// named; `null` writes NULL (the column is created nullable). Never a different date.
    #[arg(long, value_enum, default_value = "error")]
    pub zero_dates: ZeroDatesArg,
    /// MySQL/MariaDB sources: map TINYINT(1) to boolean instead of smallint (a value other than
    /// 0 or 1 then fails the load).
    #[arg(long)]
    pub tinyint1_boolean: bool,
    /// MySQL/MariaDB sources: the PostgreSQL schema the tables land in (created if missing;
    /// default public). A migration already loaded keeps the schema it was loaded into.
    #[arg(long, value_name = "SCHEMA")]
    pub target_schema: Option<String>,
}

/// `--zero-dates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ZeroDatesArg {
    /// Stop with an error naming the row.
    Error,
    /// Write NULL.
    Null,
}

/// `--roles` and `--roles-map`: how the roles the schema refers to reach the target
/// (docs/roles.md).
#[derive(Debug, Clone, Args)]
pub struct RolesArgs {
    /// Roles the schema refers to (owners, grantees, policy roles) that the target lacks:
    /// `require` stops before anything is written, naming them and the CREATE ROLE to run;
    /// `create` creates them without passwords (LOGIN, INHERIT, CONNECTION LIMIT and VALID UNTIL
    /// as on the source; never SUPERUSER, REPLICATION, CREATEDB, CREATEROLE) with the
    /// memberships among them.
    #[arg(long, value_enum, default_value = "require")]
    pub roles: RolesArg,
    /// Rename roles on the way: a file of `source_role = target_role` lines (`#` comments,
    /// double quotes for unusual names). Owners, grants, policies and default privileges use
    /// the target names.
    #[arg(long, value_name = "FILE")]
    pub roles_map: Option<PathBuf>,
}

/// `--roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolesArg {
    /// Stop, naming the missing roles.
    Require,
    /// Create the missing roles, without passwords.
    Create,
}

impl RolesArgs {
    /// The policy, with the map file read.
    pub fn policy(&self) -> Result<ferry_postgres::roles::RolePolicy, String> {
        let map = match &self.roles_map {
            Some(path) => ferry_postgres::roles::RoleMap::load(path).map_err(|e| format!("--roles-map: {e}"))?,
            None => Default::default(),
        };
        Ok(ferry_postgres::roles::RolePolicy {
            mode: match self.roles {
                RolesArg::Require => ferry_postgres::roles::RoleMode::Require,
                RolesArg::Create => ferry_postgres::roles::RoleMode::Create,
            },
            map,
        })
    }
}

/// `ferry check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Endpoints and table selection.
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Roles.
    #[command(flatten)]
    pub roles: RolesArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where `migrate` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StopAfter {
    /// After the schema, the data, indexes, constraints and sequences.
    FullLoad,
}

/// `ferry migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Endpoints and table selection.
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Roles.
    #[command(flatten)]
    pub roles: RolesArgs,
    /// Stop after this phase instead of streaming changes until stopped (SIGTERM/SIGINT).
    #[arg(long, value_enum)]
    pub stop_after: Option<StopAfter>,
    /// Record changes the target rejects in the dead_letters table and go on, instead of stopping.
    #[arg(long)]
    pub skip_dead_letters: bool,
    /// Most row changes in one target transaction (source transactions are never split). Larger
    /// batches merge more changes to the same rows when catching up; at steady state batches
    /// commit as soon as the stream has nothing more ready.
    #[arg(long, default_value_t = 20000)]
    pub max_batch: usize,
    /// Longest a batch stays open before it commits at the next transaction boundary, in
    /// milliseconds (a batch also commits as soon as the stream has nothing more ready).
    #[arg(long, default_value_t = 100)]
    pub max_delay_ms: u64,
    /// The replication stream is declared dead (logged, reconnected with backoff) after this
    /// long without any message from the source, not even the keepalive Ferry asks for after a
    /// third of it; never shorter than half the source's wal_sender_timeout plus 5 s.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub stream_timeout: std::time::Duration,
    /// While changes stream densely, commit to the target at most this often (one target
    /// transaction per interval instead of one per source transaction: far less work for the
    /// target); a transaction after a quiet spell commits at once. 0 commits whenever the
    /// stream has nothing more ready.
    #[arg(long, value_parser = parse_duration, default_value = "2ms")]
    pub commit_interval: std::time::Duration,
    /// A call to the target (or a catalog query) waiting longer than this makes a watchdog check
    /// the apply session from a second connection: a statement still running is waited for; no
    /// answer, or the session idle while Ferry waits for it, ends the session and reconnects.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub apply_timeout: std::time::Duration,
    /// Write the final summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Stream changes through Kafka (`kafka://BROKERS/PREFIX`, the options of `ferry capture
    /// --to`; SASL password from FERRY_KAFKA_PASSWORD): the slot feeds the broker, the target is
    /// applied from it. The full load and the reverse stream after a cutover stay direct;
    /// verification, cutover and rollback work as without it (docs/kafka.md).
    #[arg(long, value_name = "KAFKA_URL")]
    pub via: Option<String>,
    /// maintenance_work_mem for index builds on the target.
    #[arg(long, default_value = "512MB")]
    pub maintenance_work_mem: String,
    /// Skip ANALYZE of the copied tables on the target.
    #[arg(long)]
    pub no_analyze: bool,
    /// Address of the HTTP API, /metrics and the dashboard (`off` to serve nothing; port 0
    /// picks a free port, logged at start).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7117", value_parser = parse_listen)]
    pub listen: Listen,
    /// File (mode 0600) holding the bearer token that control endpoints and row data require;
    /// FERRY_API_TOKEN works too. Without either, a loopback --listen writes a new token to
    /// ~/.ferry/api-PORT.token at every start (ferry commands on this host read it); another
    /// address needs one.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Serve the API and dashboard over HTTPS with this certificate chain (PEM), with --api-tls-key.
    #[arg(long, requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// Private key (PEM, mode 0600) of --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// A host name (or name:port) clients may use in the Host header besides the listener's
    /// address (and localhost on loopback), e.g. behind a reverse proxy; repeatable.
    #[arg(long, value_name = "HOST")]
    pub api_allowed_host: Vec<String>,
    /// Warn (status, dashboard) when the slot retains more WAL than this.
    #[arg(long, default_value = "10GB", value_parser = parse_size)]
    pub wal_warn: i64,
    /// Run a PostgreSQL wire-protocol proxy here (port 0 picks one, logged at start): the
    /// application connects to it instead of the source, and `ferry cutover` moves its sessions
    /// to the target without failing a transaction.
    #[arg(long, env = "FERRY_PROXY_LISTEN")]
    pub proxy_listen: Option<std::net::SocketAddr>,
    /// Users the proxy accepts (SCRAM-SHA-256), one `user:password` per line; the same
    /// credentials log in to source and target. Default: the source URL's user and password
    /// (logging in to the target with the target URL's).
    #[arg(long)]
    pub proxy_users_file: Option<PathBuf>,
    /// Accept TLS from the proxy's clients with this certificate chain (PEM), with
    /// --proxy-tls-key: SSLRequest is answered 'S' (and PostgreSQL 17's direct TLS works).
    #[arg(long, value_name = "FILE", requires = "proxy_tls_key")]
    pub proxy_tls_cert: Option<PathBuf>,
    /// Private key (PEM, mode 0600) of --proxy-tls-cert.
    #[arg(long, value_name = "FILE", requires = "proxy_tls_cert")]
    pub proxy_tls_key: Option<PathBuf>,
    /// Refuse proxy clients that do not use TLS (FATAL 28000). Needs --proxy-tls-cert.
    #[arg(long)]
    pub proxy_require_tls: bool,
    /// Client connections the proxy serves at most; more get FATAL 53300 "too many connections
    /// to the Ferry proxy". At most 64 of them may be logging in at once (10 s each at most).
    #[arg(long, value_name = "N", default_value_t = ferry_proxy::DEFAULT_MAX_CONNECTIONS)]
    pub proxy_max_connections: usize,
    /// The proxy's read endpoint (port 0 picks one, logged at start): point the application's
    /// read-only traffic here, as at a read replica. Its transactions are read-only; `ferry
    /// shift --reads N%` sends that share of its sessions to the target while the target's lag
    /// stays under --max-read-lag. Same users and TLS as --proxy-listen.
    #[arg(long, value_name = "ADDR", requires = "proxy_listen")]
    pub proxy_read_listen: Option<std::net::SocketAddr>,
    /// Reads shifted to the target return to the source while its lag (the age of the oldest
    /// source change not applied) is above this, and go back once it is under half of it.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub max_read_lag: std::time::Duration,
    /// POST a JSON document to this http:// or https:// URL after every cutover and rollback
    /// (for applications that switch their own connection strings); 10 s in all, sent in the
    /// background after the switch. A MySQL/MariaDB source: after a cutover through the API.
    #[arg(long)]
    pub webhook: Option<String>,
    /// CA file an https:// --webhook's certificate must chain to (default: the system's CAs).
    #[arg(long, requires = "webhook")]
    pub webhook_ca: Option<PathBuf>,
    /// After cutover, roll back by itself when reverse replication lags more than this
    /// (for example 30s). Off by default.
    #[arg(long, value_parser = parse_duration)]
    pub auto_rollback_lag: Option<std::time::Duration>,
    /// After cutover, roll back by itself when reverse replication reports this many apply
    /// errors (failed sessions or rejected changes). Off by default.
    #[arg(long)]
    pub auto_rollback_apply_errors: Option<u64>,
    /// MySQL/MariaDB sources: the schema change the stream stopped at has been made on the
    /// target by hand (or the write logged in STATEMENT format it stopped at has been dealt
    /// with); continue after it.
    #[arg(long)]
    pub ddl_applied: bool,
}

/// `ferry cutover` and `ferry rollback`.
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// URL of the running `ferry migrate`'s API.
    #[arg(long, default_value = "http://127.0.0.1:7117")]
    pub api: String,
    /// Longest the application may be held (for example 500ms or 2s); any step running past
    /// it aborts the switch and traffic stays where it was.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub max_pause: std::time::Duration,
    /// Refuse to start when replication lag is above this.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub max_lag: std::time::Duration,
    /// When the lag is above --max-lag (a verification just held the stream, a burst of
    /// writes), wait up to this long for it to drop instead of refusing at once; the report
    /// says what was waited for.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub catch_up_timeout: std::time::Duration,
    /// Proceed although sessions are connected to the old side directly (not through the
    /// proxy); they are listed in the report.
    #[arg(long)]
    pub allow_direct_sessions: bool,
    /// No proxy: stop writes on the old side (default_transaction_read_only, then terminate
    /// sessions still connected after --grace), reach the final position, sync sequences and
    /// signal the switch (API state, webhook); the application switches its connection strings.
    #[arg(long)]
    pub no_proxy: bool,
    /// With --no-proxy: how long sessions may finish before they are terminated.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// Cut over without a clean last verification (not recommended).
    #[arg(long)]
    pub skip_verify_check: bool,
    /// Go/NoGo: only if shadow traffic (`ferry shadow --sample N%`) has run at least this long
    /// and found no mismatch and no target-only error in it (for example 10m). Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub require_shadow_clean: Option<std::time::Duration>,
    /// MySQL/MariaDB sources, without the API (no proxy): the source URL; the gate runs from
    /// this command against the running `ferry migrate`'s state on the target (--api runs it
    /// in that process instead).
    #[arg(long)]
    pub source: Option<String>,
    /// With --source: the target URL.
    #[arg(long, requires = "source")]
    pub target: Option<String>,
    /// With --source: file holding the source password; FERRY_SOURCE_PASSWORD also works.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// With --source: file holding the target password; FERRY_TARGET_PASSWORD also works.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// With --source: Ferry's state schema on the target.
    #[arg(long, default_value = "ferry")]
    pub state_schema: String,
    /// With a MySQL/MariaDB --source: the PostgreSQL schema the tables were loaded into (the
    /// one recorded with the migration when left out; another one is refused).
    #[arg(long, value_name = "SCHEMA")]
    pub target_schema: Option<String>,
    /// With --source: POST the cutover report (JSON) to this http:// or https:// URL when the
    /// target is ready for the application.
    #[arg(long)]
    pub webhook: Option<String>,
    /// CA file an https:// --webhook's certificate must chain to (default: the system's CAs).
    #[arg(long, requires = "webhook")]
    pub webhook_ca: Option<PathBuf>,
    /// File holding the API's bearer token; FERRY_API_TOKEN works too (default: the token file
    /// `ferry migrate` wrote on this host, for a loopback --api).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// CA file an https:// --api's certificate must chain to (default: the system's CAs).
    #[arg(long, env = "FERRY_API_CA")]
    pub api_ca: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses 500ms, 2s, 1.5s, 1m (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(0.0..=86_400.0 * 30.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Where `migrate` serves HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Serve nothing.
    Off,
    /// Serve on this address.
    At(std::net::SocketAddr),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::At)
        .map_err(|_| format!("{s:?} is not an address such as 127.0.0.1:7117, [::1]:7117, 0.0.0.0:7117 or off"))
}

/// `ferry status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// URL of a running `ferry migrate`'s API (the default, when --target is not given).
    #[arg(long, default_value = "http://127.0.0.1:7117", conflicts_with = "target")]
    pub api: String,
    /// Target URL (where Ferry keeps its state): read the state from the database instead of
    /// the API, for when `ferry migrate` is not running.
    #[arg(long, env = "FERRY_TARGET_URL", hide_env_values = true)]
    pub target: Option<String>,
    /// Source URL: adds lag in bytes and the WAL the slot retains.
    #[arg(long, env = "FERRY_SOURCE_URL", hide_env_values = true)]
    pub source: Option<String>,
    /// Migration id (needed when several are recorded).
    #[arg(long)]
    pub migration_id: Option<String>,
    /// Ferry's state schema on the target.
    #[arg(long, default_value = "ferry")]
    pub state_schema: String,
    /// With a MySQL/MariaDB --source: the PostgreSQL schema the tables were loaded into (the
    /// one recorded with the migration when left out; another one is refused).
    #[arg(long, value_name = "SCHEMA")]
    pub target_schema: Option<String>,
    /// Warn when the slot retains more WAL than this.
    #[arg(long, default_value = "10GB", value_parser = parse_size)]
    pub wal_warn: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// With --api: file holding the API token, to see dead letters' keys and errors
    /// (FERRY_API_TOKEN works too; default: the token file of a `ferry migrate` on this host).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// CA file an https:// --api's certificate must chain to (default: the system's CAs).
    #[arg(long, env = "FERRY_API_CA")]
    pub api_ca: Option<PathBuf>,
}

/// `ferry pause` and `ferry resume`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// URL of the running `ferry migrate`'s API.
    #[arg(long, default_value = "http://127.0.0.1:7117")]
    pub api: String,
    /// File holding the API's bearer token; FERRY_API_TOKEN works too (default: the token file
    /// `ferry migrate` wrote on this host, for a loopback --api).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// CA file an https:// --api's certificate must chain to (default: the system's CAs).
    #[arg(long, env = "FERRY_API_CA")]
    pub api_ca: Option<PathBuf>,
    /// Print the API's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ferry shift`.
#[derive(Debug, Args)]
pub struct ShiftArgs {
    /// Share of read sessions the target serves: 0% to 100% (the % is optional).
    #[arg(long, value_parser = parse_percent)]
    pub reads: u8,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry shadow`.
#[derive(Debug, Args)]
pub struct ShadowArgs {
    /// Share of eligible statements to shadow: 0% (off) to 100%; fractions allowed (0.5%).
    #[arg(long, value_parser = parse_fraction_percent)]
    pub sample: Option<f64>,
    #[command(subcommand)]
    pub action: Option<ShadowAction>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry shadow report`.
#[derive(Debug, Subcommand)]
pub enum ShadowAction {
    /// Print what shadow traffic found: mismatching statements, statements that failed only on
    /// the target, and the slowest on the target relative to the source (--json: everything).
    Report {
        /// Fingerprints to list at most.
        #[arg(long, default_value_t = 50)]
        top: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A percentage from 0 to 100, fractions allowed, with or without its `%`.
pub fn parse_fraction_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    match n.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage from 0% to 100% (for example 10%)")),
    }
}

/// A percentage from 0 to 100, with or without its `%`.
pub fn parse_percent(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    match n.parse::<u8>() {
        Ok(v) if v <= 100 => Ok(v),
        _ => Err(format!("{s:?} is not a percentage from 0% to 100% (for example 25%)")),
    }
}

/// `ferry verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify through a running `ferry migrate` (at one consistent point while changes flow;
    /// the run is stored with the migration): its --listen address as a URL.
    #[arg(long, conflicts_with_all = ["source", "target"])]
    pub api: Option<String>,
    /// Source URL (standalone: both databases read as they are now).
    #[arg(long, env = "FERRY_SOURCE_URL", hide_env_values = true, requires = "target")]
    pub source: Option<String>,
    /// Target URL.
    #[arg(long, env = "FERRY_TARGET_URL", hide_env_values = true, requires = "source")]
    pub target: Option<String>,
    /// File holding the source password; FERRY_SOURCE_PASSWORD also works.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// File holding the target password; FERRY_TARGET_PASSWORD also works.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// Only tables matching schema.table patterns; repeatable.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave out tables matching these patterns; repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Parallel range readers (one connection per side each; default: CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Ferry's state schema on the target (not compared).
    #[arg(long, default_value = "ferry")]
    pub state_schema: String,
    /// With a MySQL/MariaDB --source: the PostgreSQL schema the tables were loaded into (the
    /// one recorded with the migration when left out; another one is refused).
    #[arg(long, value_name = "SCHEMA")]
    pub target_schema: Option<String>,
    /// Differences described per table (all are counted).
    #[arg(long, default_value_t = 100)]
    pub max_differences: usize,
    /// Rewrite the differing rows on the target from the source, then verify again.
    #[arg(long)]
    pub repair: bool,
    /// Have each server hash each key range of 100,000 rows first, and stream rows only for
    /// ranges whose hashes differ: less network traffic, more server CPU. By default every row
    /// is streamed, which is faster when the network is not the limit.
    #[arg(long)]
    pub range_hash: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// With --api: file holding the API token (FERRY_API_TOKEN works too; default: the token
    /// file `ferry migrate` wrote on this host, for a loopback --api).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// With --api: CA file an https:// API's certificate must chain to (default: the system's CAs).
    #[arg(long, env = "FERRY_API_CA")]
    pub api_ca: Option<PathBuf>,
}

/// `ferry complete`.
#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// URL of the running `ferry migrate`'s API (the default when --source/--target are not given).
    #[arg(long, conflicts_with_all = ["source", "target"])]
    pub api: Option<String>,
    /// Source URL, with --target: complete directly while `ferry migrate` is stopped.
    #[arg(long, requires = "target")]
    pub source: Option<String>,
    /// Target URL.
    #[arg(long, requires = "source")]
    pub target: Option<String>,
    /// File holding the source password; FERRY_SOURCE_PASSWORD also works.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// File holding the target password; FERRY_TARGET_PASSWORD also works.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// The tables of the migration (as given to migrate), for the last verification.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Tables left out of the migration (as given to migrate).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Parallel range readers of the verification.
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Migration id (as given to migrate).
    #[arg(long)]
    pub migration_id: Option<String>,
    /// Ferry's state schema on the target.
    #[arg(long, default_value = "ferry")]
    pub state_schema: String,
    /// Make the source database writable again (the cutover made it read-only; by default it
    /// stays read-only, so that nothing writes to the database the application left).
    #[arg(long)]
    pub source_writable: bool,
    /// Complete without the last verification. Only for when reverse replication was lost after
    /// cutover (the source is then known to be behind, and a verification could only list the
    /// writes it missed): the application stays on the target either way.
    #[arg(long)]
    pub skip_verify: bool,
    /// Keep Ferry's state schema on the target (by default the migration's record is written to
    /// --record-file and the schema dropped).
    #[arg(long)]
    pub keep_state: bool,
    /// Where to write the migration's record (phases, transitions, events, tables, positions,
    /// verifications) as JSON (default: ferry-<migration id>-record.json here).
    #[arg(long)]
    pub record_file: Option<PathBuf>,
    /// With --api: file holding the API token (FERRY_API_TOKEN works too; default: the token
    /// file `ferry migrate` wrote on this host, for a loopback --api).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// With --api: CA file an https:// API's certificate must chain to.
    #[arg(long, env = "FERRY_API_CA")]
    pub api_ca: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ferry proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The source URL given to `ferry migrate`: its user and password are the proxy's default
    /// user (never connected to). Not needed with --proxy-users-file.
    #[arg(long, env = "FERRY_SOURCE_URL", hide_env_values = true)]
    pub source: Option<String>,
    /// The target URL: where every session goes.
    #[arg(long, env = "FERRY_TARGET_URL", hide_env_values = true)]
    pub target: String,
    /// File holding the source password; FERRY_SOURCE_PASSWORD also works.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// File holding the target password; FERRY_TARGET_PASSWORD also works.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// Address to listen on (the one `ferry migrate --proxy-listen` used).
    #[arg(long, env = "FERRY_PROXY_LISTEN")]
    pub proxy_listen: std::net::SocketAddr,
    /// Users the proxy accepts, one `user:password` per line (as with ferry migrate).
    #[arg(long)]
    pub proxy_users_file: Option<PathBuf>,
    /// Accept TLS from clients with this certificate chain (PEM), with --proxy-tls-key.
    #[arg(long, value_name = "FILE", requires = "proxy_tls_key")]
    pub proxy_tls_cert: Option<PathBuf>,
    /// Private key (PEM, mode 0600) of --proxy-tls-cert.
    #[arg(long, value_name = "FILE", requires = "proxy_tls_cert")]
    pub proxy_tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS. Needs --proxy-tls-cert.
    #[arg(long)]
    pub proxy_require_tls: bool,
    /// Client connections the proxy serves at most.
    #[arg(long, value_name = "N", default_value_t = ferry_proxy::DEFAULT_MAX_CONNECTIONS)]
    pub proxy_max_connections: usize,
    /// On SIGTERM/SIGINT: how long sessions may go on before the rest are closed (new
    /// connections are refused at once; a second signal exits at once).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
}

/// `ferry abandon`.
#[derive(Debug, Args)]
pub struct AbandonArgs {
    /// Endpoints (as given to migrate).
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Really drop them (without it, abandon only says what it would drop).
    #[arg(long)]
    pub yes: bool,
}

/// `ferry demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows in the largest sample table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: i64,
    /// Directory of the PostgreSQL server binaries (initdb, pg_ctl).
    #[arg(long, env = "FERRY_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Keep the clusters running and their directory at the end (prints how to reach them).
    #[arg(long)]
    pub keep: bool,
    /// Parallel jobs.
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

/// Parses sizes such as `64MB`, `1GB`, `512kB`, `1048576`.
pub fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit (kB, MB, GB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return Err(format!("invalid size unit in {s:?}: use kB, MB, GB or TB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MB").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `ferry capture`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Source URL: postgres://user[:password]@host[:port]/database[?sslmode=...], or
    /// mysql://user[:password]@host[:port]/database[?ssl-mode=...] (MySQL/MariaDB).
    #[arg(long, env = "FERRY_SOURCE_URL", hide_env_values = true)]
    pub source: String,
    /// File holding the source password (first line); FERRY_SOURCE_PASSWORD also works.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// Where events go: kafka://[user@]host:port[,host:port]/PREFIX[?schemas=false&partitions=N&...]
    /// (topics PREFIX.<schema>.<table> and PREFIX.transaction, as Debezium names them; the SASL
    /// password in FERRY_KAFKA_PASSWORD). See docs/kafka.md.
    #[arg(long, env = "FERRY_KAFKA_URL", hide_env_values = true)]
    pub to: String,
    /// Replication slot and publication name (default: ferry_capture_<prefix>).
    #[arg(long)]
    pub slot: Option<String>,
    /// Most changes between two looks at the broker's acknowledgements.
    #[arg(long, default_value_t = 20000)]
    pub max_batch: usize,
    /// Longest a batch stays open, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub max_delay_ms: u64,
    /// The replication stream is declared dead after this long without any message.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub stream_timeout: std::time::Duration,
    /// Record values Kafka cannot carry in PREFIX.ferry.dead_letters and go on, instead of stopping.
    #[arg(long)]
    pub skip_dead_letters: bool,
    /// Drop the capture's slot and publication from the source and exit (the topics stay).
    #[arg(long)]
    pub drop: bool,
    /// MySQL/MariaDB sources: only tables matching database.table patterns; repeatable.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// MySQL/MariaDB sources: leave out tables matching these patterns; repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// MySQL/MariaDB sources: encode TINYINT(1) as boolean instead of smallint.
    #[arg(long)]
    pub tinyint1_boolean: bool,
    /// Serve GET /metrics (OpenMetrics: events published and acknowledged, transactions, the
    /// position and commit time the broker holds everything before) and GET /healthz on this
    /// address, for example 127.0.0.1:7119. Off unless given.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `ferry apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Where events come from: kafka://[user@]host:port[,host:port]/PREFIX[?schemas=...&...].
    #[arg(long, env = "FERRY_KAFKA_URL", hide_env_values = true)]
    pub from: String,
    /// Target URL: postgres://user[:password]@host[:port]/database[?sslmode=...]. Its tables
    /// must exist (same schema and table names as the source).
    #[arg(long, env = "FERRY_TARGET_URL", hide_env_values = true)]
    pub target: String,
    /// File holding the target password (first line); FERRY_TARGET_PASSWORD also works.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// Schema on the target that holds Ferry's state.
    #[arg(long, default_value = "ferry")]
    pub state_schema: String,
    /// Name of this apply in the state schema (default: kafka_<prefix>).
    #[arg(long)]
    pub id: Option<String>,
    /// Most changes in one target transaction (source transactions are never split).
    #[arg(long, default_value_t = 20000)]
    pub max_batch: usize,
    /// Step over a change the target rejects, or an event that does not fit the target's table:
    /// it is recorded in the state schema's dead_letters table and the apply goes on.
    #[arg(long)]
    pub skip_dead_letters: bool,
    /// Serve Prometheus metrics (GET /metrics: transactions applied, last commit, and per
    /// partition the next offset and the records not read yet) and GET /healthz on this
    /// address, for example 127.0.0.1:7118. Off unless given.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Share the work with every other `ferry apply --group` of the same NAME (on any host):
    /// Kafka's consumer group assigns each table partition to one member, which applies it in
    /// order and keeps its offsets in the target. Source transactions that span tables applied
    /// by different members are no longer applied atomically (docs/kafka.md).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// This member's name in the group (default: the host's name). Two members running at once
    /// need different names.
    #[arg(long, requires = "group")]
    pub member: Option<String>,
}
