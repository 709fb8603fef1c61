//! A small client for PostgreSQL's replication protocol (`replication=database` connections).
//!
//! tokio-postgres cannot open replication connections, so this speaks the protocol directly on
//! top of `postgres-protocol`'s message codecs: startup, authentication (trust, cleartext, MD5,
//! SCRAM-SHA-256), and simple queries such as `IDENTIFY_SYSTEM` and `CREATE_REPLICATION_SLOT`.
//!
//! The connection that creates a slot with `EXPORT_SNAPSHOT` must stay open and idle while
//! other sessions import the snapshot: the snapshot lives exactly as long as the next command
//! is not sent. [`ReplicationConnection`] is therefore kept by the full load until it ends.

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use ferry_core::{ErrorClass, Lsn};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::endpoint::{Endpoint, APPLICATION_NAME};
use crate::error::PgError;

use crate::pgtls::{AuthMethod, SslMode};
pub use crate::pgtls::{BoxedIo, Io};

/// An open replication connection.
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
    server: String,
    /// A plain session's number in [`crate::endpoint::own_sessions`] (walsenders are not
    /// client backends and need none).
    own: Option<crate::endpoint::OwnSessionGuard>,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection").field("server", &self.server).finish()
    }
}

/// What `IDENTIFY_SYSTEM` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
}

/// A slot created with an exported snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Slot name.
    pub name: String,
    /// Changes committed at or after this LSN are streamed by the slot; everything before is
    /// in the snapshot.
    pub consistent_point: Lsn,
    /// Name to pass to `SET TRANSACTION SNAPSHOT` (valid while this connection stays idle).
    pub snapshot: String,
}

/// One simple-query result: rows of nullable text values.
pub type TextRows = Vec<Vec<Option<String>>>;

impl ReplicationConnection {
    /// Connects with `replication=database` and authenticates.
    pub async fn connect(ep: &Endpoint) -> Result<Self, PgError> {
        Self::open(ep, true, "replication").await
    }

    /// A plain (non-replication) session over the same protocol code: for streaming COPY
    /// output straight off the socket, without a driver's per-message machinery.
    pub async fn connect_plain(ep: &Endpoint, role: &str) -> Result<Self, PgError> {
        let mut c = Self::open(ep, false, role).await?;
        // Named by pid and start time, so that checks for other sessions can tell it is Ferry's.
        let rows = c.simple_query(&crate::endpoint::own_session_sql()).await?;
        let own = rows
            .first()
            .and_then(|r| crate::endpoint::parse_own_session(r.first()?.as_deref(), r.get(1)?.as_deref()));
        c.own = own.map(crate::endpoint::OwnSessionGuard::new);
        Ok(c)
    }

    async fn open(ep: &Endpoint, replication: bool, role: &str) -> Result<Self, PgError> {
        let server = ep.describe();
        let context = || format!("cannot open a replication connection to {server} as user {:?}", ep.user());
        let io_err = |e: std::io::Error| PgError {
            context: context(),
            reason: e.to_string(),
            fix: Some(format!(
                "check that PostgreSQL is running at {} and reachable from this machine",
                ep.host()
            )),
            class: ErrorClass::Transient,
            code: None,
        };
        // The connect timeout bounds the whole log-in (TCP, authentication, start-up), not just
        // the TCP handshake: a server that accepts and then says nothing must not hang us.
        let limit = ep.connect_timeout();
        let attempt = async {
            let want_tls = !ep.is_local_socket() && ep.tls().mode > SslMode::Allow;
            match Self::open_unbounded(ep, replication, role, &io_err, want_tls).await {
                // libpq's `allow`: plain first, TLS when the server turns plain down.
                Err(e) if ep.tls().mode == SslMode::Allow && !ep.is_local_socket() && e.code.as_deref() == Some("28000") => {
                    Self::open_unbounded(ep, replication, role, &io_err, true).await
                }
                other => other,
            }
        };
        tokio::time::timeout(limit, attempt).await.map_err(|_| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection and log-in within {} s (connect_timeout)", limit.as_secs_f64()),
            ))
        })?
    }

    async fn open_unbounded(
        ep: &Endpoint,
        replication: bool,
        role: &str,
        io_err: &impl Fn(std::io::Error) -> PgError,
        want_tls: bool,
    ) -> Result<Self, PgError> {
        let server = ep.describe();
        let context = || format!("cannot open a replication connection to {server} as user {:?}", ep.user());
        let socket: BoxedIo = Box::new(ep.open_socket().await.map_err(io_err)?);
        // TLS as the URL asks (libpq's sslmode). A Unix socket never uses TLS, as with libpq.
        let (io, encrypted) = crate::pgtls::negotiate(socket, ep.tls(), want_tls).await.map_err(|why| {
            PgError::config(
                context(),
                why,
                "fix the TLS settings (sslmode, sslrootcert, sslcert/sslkey) or the server's certificate",
            )
        })?;
        let mut conn = Self {
            io,
            read: BytesMut::with_capacity(8192),
            write: BytesMut::with_capacity(1024),
            server: server.clone(),
            own: None,
        };
        let app = format!("{APPLICATION_NAME} {role}");
        let mut params = vec![("user", ep.user()), ("database", ep.dbname()), ("application_name", app.as_str())];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.write).map_err(&io_err)?;
        conn.flush().await.map_err(&io_err)?;
        conn.authenticate(ep, encrypted).await.map_err(|mut e| {
            e.context = context();
            e
        })?;
        // Drain parameter status and key data up to ReadyForQuery.
        loop {
            match conn.next().await? {
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::ErrorResponse(b) => return Err(db_error(context(), &b)),
                _ => {}
            }
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, ep: &Endpoint, encrypted: bool) -> Result<(), PgError> {
        let password = || {
            ep.password().map(|p| p.expose().as_bytes().to_vec()).ok_or_else(|| {
                PgError::config(
                    "authentication",
                    format!(
                        "the server asks for a password and none was found (looked in: the URL, FERRY_*_PASSWORD, --*-password-file, PGPASSWORD, the service file{})",
                        ep.password_provenance().looked.iter().map(|l| format!("; {l}")).collect::<String>()
                    ),
                    "give the password in one of those places (a password file, FERRY_*_PASSWORD or ~/.pgpass with mode 0600 keep it off the command line)",
                )
            })
        };
        let local = ep.is_local_socket();
        let policy = ep.auth_policy();
        let check = |m: AuthMethod| match policy.refuse(m, encrypted, local) {
            Some(why) => Err(PgError::config("authentication", why, "see the reason")),
            None => Ok(()),
        };
        let mut scram: Option<ScramSha256> = None;
        let mut asked = false;
        loop {
            let ctx = "authentication";
            let msg = self.next().await?;
            match &msg {
                backend::Message::AuthenticationOk if !asked => check(AuthMethod::None)?,
                backend::Message::AuthenticationCleartextPassword => check(AuthMethod::Password)?,
                backend::Message::AuthenticationMd5Password(_) => check(AuthMethod::Md5)?,
                backend::Message::AuthenticationSasl(_) => check(AuthMethod::Scram)?,
                _ => {}
            }
            asked = true;
            match msg {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(&password()?, &mut self.write).map_err(|e| proto(ctx, e))?;
                }
                backend::Message::AuthenticationMd5Password(b) => {
                    let hash = postgres_protocol::authentication::md5_hash(ep.user().as_bytes(), &password()?, b.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write).map_err(|e| proto(ctx, e))?;
                }
                backend::Message::AuthenticationSasl(b) => {
                    let mut mechs = b.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechs.next().map_err(|e| proto(ctx, e))? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(PgError::config(
                            ctx,
                            "the server offers no SASL mechanism Ferry supports",
                            "enable scram-sha-256 or md5 for this user in pg_hba.conf",
                        ));
                    }
                    let s = ScramSha256::new(&password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.write).map_err(|e| proto(ctx, e))?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(b) => {
                    let s = scram.as_mut().ok_or_else(|| proto(ctx, "unexpected SASL continue"))?;
                    s.update(b.data()).map_err(|e| proto(ctx, e))?;
                    frontend::sasl_response(s.message(), &mut self.write).map_err(|e| proto(ctx, e))?;
                }
                backend::Message::AuthenticationSaslFinal(b) => {
                    let s = scram.as_mut().ok_or_else(|| proto(ctx, "unexpected SASL final"))?;
                    s.finish(b.data()).map_err(|e| proto(ctx, e))?;
                    continue;
                }
                backend::Message::ErrorResponse(b) => return Err(db_error(ctx.into(), &b)),
                _ => {
                    return Err(PgError::config(
                        ctx,
                        "the server asks for an authentication method Ferry does not support (GSS, SSPI, Kerberos)",
                        "use scram-sha-256, md5 or password authentication for Ferry's user",
                    ))
                }
            }
            self.flush().await.map_err(|e| proto(ctx, e))?;
        }
    }

    /// Runs a simple query and returns its rows as text. Fails on an error response.
    pub async fn simple_query(&mut self, sql: &str) -> Result<TextRows, PgError> {
        let server = self.server.clone();
        let ctx = || format!("replication command {:?} on {}", first_words(sql), server);
        frontend::query(sql, &mut self.write).map_err(|e| proto(ctx(), e))?;
        self.flush().await.map_err(|e| proto(ctx(), e))?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await? {
                backend::Message::DataRow(r) => {
                    let buf = r.buffer();
                    let mut ranges = r.ranges();
                    let mut row = Vec::new();
                    while let Some(range) = ranges.next().map_err(|e| proto(ctx(), e))? {
                        row.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                backend::Message::ErrorResponse(b) => error = Some(db_error(ctx(), &b)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`: proves the replication connection works and says where WAL stands.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, PgError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| proto("IDENTIFY_SYSTEM", "no row returned"))?;
        let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemIdentity {
            system_id: get(0),
            timeline: get(1).parse().unwrap_or(0),
            xlogpos: get(2).parse().map_err(|e| proto("IDENTIFY_SYSTEM", e))?,
        })
    }

    /// Creates a logical slot using pgoutput and exports its snapshot. A temporary slot is
    /// dropped by the server when this connection closes.
    pub async fn create_slot_with_snapshot(&mut self, name: &str, temporary: bool) -> Result<CreatedSlot, PgError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput EXPORT_SNAPSHOT",
            ferry_core::ident::quote_ident(name),
            if temporary { "TEMPORARY " } else { "" }
        );
        let rows = self.simple_query(&sql).await?;
        let row = rows.first().ok_or_else(|| proto("CREATE_REPLICATION_SLOT", "no row returned"))?;
        let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(CreatedSlot {
            name: get(0),
            consistent_point: get(1).parse().map_err(|e| proto("CREATE_REPLICATION_SLOT", e))?,
            snapshot: get(2),
        })
    }

    /// Starts `COPY ... TO STDOUT`: sends the query and waits for CopyOutResponse.
    pub async fn copy_out_start(&mut self, sql: &str) -> Result<(), PgError> {
        let server = self.server.clone();
        let ctx = || format!("{} on {}", first_words(sql), server);
        frontend::query(sql, &mut self.write).map_err(|e| proto(ctx(), e))?;
        self.flush().await.map_err(|e| proto(ctx(), e))?;
        loop {
            match self.next().await? {
                backend::Message::CopyOutResponse(_) => return Ok(()),
                backend::Message::ErrorResponse(b) => {
                    let err = db_error(ctx(), &b);
                    self.drain_to_ready().await?;
                    return Err(err);
                }
                _ => {}
            }
        }
    }

    /// The next CopyData payload of a COPY started by [`Self::copy_out_start`], or None once
    /// the COPY is complete (and the connection ready for the next query). Frames are cut
    /// straight out of a 64 kB read buffer.
    pub async fn copy_out_next(&mut self) -> Result<Option<Bytes>, PgError> {
        loop {
            if self.read.len() >= 5 {
                let len = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
                if len < 4 {
                    return Err(proto(format!("COPY from {}", self.server), "invalid message length"));
                }
                if self.read.len() > len {
                    let tag = self.read[0];
                    if tag == b'd' {
                        let mut frame = self.read.split_to(len + 1);
                        frame.advance(5);
                        return Ok(Some(frame.freeze()));
                    }
                    // Anything else: let the general reader handle it.
                    match self.next().await? {
                        backend::Message::CopyDone | backend::Message::CommandComplete(_) => continue,
                        backend::Message::ReadyForQuery(_) => return Ok(None),
                        backend::Message::ErrorResponse(b) => {
                            let err = db_error(format!("COPY from {}", self.server), &b);
                            self.drain_to_ready().await?;
                            return Err(err);
                        }
                        _ => continue,
                    }
                }
                self.read.reserve((len + 1).saturating_sub(self.read.len()).max(64 * 1024));
            } else {
                self.read.reserve(64 * 1024);
            }
            self.fill("COPY from").await?;
        }
    }

    /// Reads more bytes from the server into the read buffer; a closed connection is an error
    /// (transient: the server may have restarted).
    async fn fill(&mut self, what: &str) -> Result<(), PgError> {
        let context = || format!("{what} {}", self.server);
        let n = self.io.read_buf(&mut self.read).await.map_err(|e| PgError {
            context: context(),
            reason: e.to_string(),
            fix: None,
            class: ErrorClass::Transient,
            code: None,
        })?;
        if n == 0 {
            return Err(PgError {
                context: context(),
                reason: "the server closed the connection".into(),
                fix: Some("see the server log; the server may have restarted".into()),
                class: ErrorClass::Transient,
                code: None,
            });
        }
        Ok(())
    }

    /// Reads up to ReadyForQuery after an error, so the connection stays usable.
    async fn drain_to_ready(&mut self) -> Result<(), PgError> {
        loop {
            if let backend::Message::ReadyForQuery(_) = self.next().await? {
                return Ok(());
            }
        }
    }

    /// Hands over the stream, any bytes already read, and the server's description.
    pub(crate) fn into_parts(self) -> (BoxedIo, BytesMut, String) {
        (self.io, self.read, self.server)
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.write).await?;
        self.write.clear();
        self.io.flush().await
    }

    /// Reads the next backend message, skipping notices.
    async fn next(&mut self) -> Result<backend::Message, PgError> {
        loop {
            match backend::Message::parse(&mut self.read) {
                Ok(Some(backend::Message::NoticeResponse(_))) => continue,
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => {
                    // CopyBothResponse ('W') and other tags postgres-protocol does not know are
                    // not expected on this command-only connection.
                    return Err(proto(format!("reading from {}", self.server), e));
                }
            }
            self.fill("reading from").await?;
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(8192);
            }
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn proto(context: impl Into<String>, e: impl std::fmt::Display) -> PgError {
    PgError {
        context: context.into(),
        reason: format!("protocol error: {e}"),
        fix: None,
        class: ErrorClass::Transient,
        code: None,
    }
}

/// Turns an ErrorResponse into a [`PgError`] with the server's message, detail and hint.
fn db_error(context: String, body: &backend::ErrorResponseBody) -> PgError {
    let (mut message, mut detail, mut hint, mut code) = (String::new(), None, None, None);
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'H' => hint = Some(v),
            b'C' => code = Some(v),
            _ => {}
        }
    }
    let class = code.as_deref().map(crate::error::sqlstate_class).unwrap_or(ErrorClass::Definite);
    let fix = match code.as_deref() {
        Some("28P01") => Some("check the user and password (in the URL, FERRY_SOURCE_PASSWORD, or --source-password-file)".to_string()),
        Some("28000") => Some(
            "allow replication connections for this user: give it the REPLICATION attribute (ALTER ROLE ... REPLICATION) and add a 'host replication <user> <address> scram-sha-256' line to pg_hba.conf".to_string(),
        ),
        Some("42501") => Some("give Ferry's user the REPLICATION attribute: ALTER ROLE <user> REPLICATION".to_string()),
        _ => hint,
    };
    PgError {
        context,
        reason: match detail {
            Some(d) => format!("{message} ({d})"),
            None => message,
        },
        fix,
        class,
        code,
    }
}
