//! One client session: startup and authentication, then forwarding in both directions while
//! tracking the protocol state that decides where the session may be held or switched.

mod startup;
mod tracker;

use startup::{setup, write_error, Entry};
use tracker::Tracker;

use crate::codec::{Scanner, Severity};
use crate::proxy::{lock, Admission, Command, SessionHandle, Shared};
use crate::upstream::{reserve, Backend, Stream};
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a read session's statement that would allow writes is replaced with.
const REFUSAL_SQL: &str = "DO $ferry$BEGIN RAISE EXCEPTION USING ERRCODE = '25006', \
     MESSAGE = 'cannot make transactions read-write on the Ferry proxy''s read endpoint', \
     HINT = 'The read endpoint serves read-only transactions; connect to the primary endpoint to write.'; END$ferry$";

/// The ALPN protocol of PostgreSQL's TLS (required by PostgreSQL 17's direct TLS).
pub(crate) const ALPN: &[u8] = b"postgresql";

pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, admission: Admission, read: bool) {
    let _ = tcp.set_nodelay(true);
    // A client that vanishes (host down, network cut) is noticed by the kernel, which ends
    // the session and frees its server connection.
    shared.timeouts.tune(&tcp);
    let mut shutdown = shared.shutdown_tx.subscribe();
    // The client's slot is held until the session ends; the unauthenticated one until login.
    let (_slot, entry) = match admission {
        Admission::Session { client, unauthenticated } => (client, Entry::Login(unauthenticated)),
        Admission::Refuse { slot, message, hint } => (slot, Entry::Refuse(message, hint)),
    };
    let forwarder = tokio::select! {
        r = setup(shared.clone(), tcp, peer, entry, read) => r,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    match forwarder {
        Ok(Some(f)) => f.run().await,
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "session ended during startup"),
    }
}

/// Why forwarding stopped.
/// What woke the session up.
#[derive(Debug)]
enum Event {
    ClientRead(io::Result<usize>),
    BackendRead(io::Result<usize>),
    BackendWrote(io::Result<usize>),
    ClientWrote(io::Result<usize>),
    Command(Option<Command>),
    Released,
}

#[derive(Debug)]
enum End {
    Client(Option<io::Error>),
    ClientProtocol(io::Error),
    Terminated,
    Backend(Option<io::Error>),
    Shutdown,
}

/// Forwards one session's traffic. No read deadline applies to either side here: a client may
/// sit idle for hours and a query may run for minutes, both legitimately. A dead server or
/// client is found by the kernel (keepalives and TCP_USER_TIMEOUT on both sockets, see
/// `timeouts.rs`), which fails the read or write; the session then ends, logging which side
/// and which upstream, and the client gets FATAL 08006 if it is the server that died.
struct Forwarder {
    shared: Arc<Shared>,
    h: Arc<SessionHandle>,
    client: Stream,
    backend: Backend,
    /// Client bytes; the first `c_out` are scanned and due to the server.
    cbuf: BytesMut,
    c_out: usize,
    cscan: Scanner,
    /// Server bytes; the first `b_out` are scanned and due to the client.
    bbuf: BytesMut,
    b_out: usize,
    bscan: Scanner,
    commands: mpsc::UnboundedReceiver<Command>,
    t: Tracker,
    /// Last safe-point state published to `h.safe`.
    safe: bool,
    pending_client: BytesMut,
    /// Read sessions: the routing generation last routed under, whether the server is the
    /// replica, and requests counted so far.
    routed_gen: u64,
    on_replica: bool,
    counted: u64,
    /// A request sampled for shadow traffic, being copied and answered.
    sampling: Option<Sampling>,
}

/// A request sampled for shadow traffic: its messages as sent, and the source's answer so far.
#[derive(Debug)]
struct Sampling {
    capture: BytesMut,
    started: std::time::Instant,
    /// Requests the session had sent before this one.
    sent_before: u64,
    /// The whole request has been copied (its Query, or its batch up to Sync).
    complete: bool,
    answer: crate::shadow::Summary,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Forwarder {
    async fn run(mut self) {
        let id = self.h.id;
        let end = if self.pending_client.is_empty() {
            self.forward().await
        } else {
            let pending = std::mem::take(&mut self.pending_client);
            self.cbuf.extend_from_slice(&pending);
            match self.on_client_data().await {
                Some(end) => end,
                None => self.forward().await,
            }
        };
        self.shared.unregister(id);
        match end {
            End::Terminated => tracing::debug!(session = id, "client terminated the session"),
            End::Client(e) => {
                tracing::debug!(session = id, error = ?e, "client closed the connection");
                self.backend.terminate().await;
            }
            End::ClientProtocol(e) => {
                tracing::debug!(session = id, error = %e, "protocol error from the client");
                write_error(
                    &mut self.client,
                    Severity::Fatal,
                    "08P01",
                    &format!("invalid frontend message: {e}"),
                    None,
                )
                .await;
                self.backend.terminate().await;
            }
            End::Shutdown => {
                write_error(
                    &mut self.client,
                    Severity::Fatal,
                    "57P01",
                    "terminating connection because the Ferry proxy is shutting down",
                    None,
                )
                .await;
                self.backend.terminate().await;
            }
            End::Backend(e) => {
                let (upstream, addr) = (&self.backend.upstream, self.backend.addr());
                let msg = match &e {
                    // A reset, or the kernel giving up on a dead peer (keepalives, TCP_USER_TIMEOUT).
                    Some(err) => {
                        tracing::warn!(session = id, upstream = %upstream, %addr, error = %err, "server connection lost; the session ends");
                        format!("lost the connection to the database server (upstream {upstream} at {addr}): {err}")
                    }
                    None => {
                        tracing::info!(session = id, upstream = %upstream, %addr, "server closed the connection; the session ends");
                        format!("server closed the connection unexpectedly (upstream {upstream})")
                    }
                };
                let pending = self.bbuf.split_to(self.b_out);
                let _ = tokio::time::timeout(Duration::from_secs(1), self.client.write_all(&pending)).await;
                write_error(&mut self.client, Severity::Fatal, "08006", &msg, None).await;
            }
        }
    }

    async fn forward(&mut self) -> End {
        loop {
            let event = std::future::poll_fn(|cx| self.poll_event(cx, true)).await;
            let end = match event {
                Event::ClientRead(Ok(0)) => Some(End::Client(None)),
                Event::ClientRead(Ok(_)) => self.on_client_data().await,
                Event::ClientRead(Err(e)) => Some(End::Client(Some(e))),
                other => self.on_event(other),
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Polls everything the session waits for, in one task: commands, reads from both sides
    /// (only when the previous batch has been passed on, which is the flow control) and the
    /// rest of partial writes. AsyncRead is used rather than try_read because tokio then
    /// clears the readiness after a short read, saving an EAGAIN read per batch.
    fn poll_event(&mut self, cx: &mut Context<'_>, read_client: bool) -> Poll<Event> {
        if let Poll::Ready(cmd) = self.commands.poll_recv(cx) {
            return Poll::Ready(Event::Command(cmd));
        }
        if read_client && self.c_out == 0 {
            reserve(&mut self.cbuf);
            if let Poll::Ready(r) = std::pin::pin!(self.client.read_buf(&mut self.cbuf)).poll(cx) {
                return Poll::Ready(Event::ClientRead(r));
            }
        }
        if self.b_out == 0 {
            reserve(&mut self.bbuf);
            if let Poll::Ready(r) = std::pin::pin!(self.backend.stream.read_buf(&mut self.bbuf)).poll(cx) {
                return Poll::Ready(Event::BackendRead(r));
            }
        }
        if self.c_out > 0 {
            if let Poll::Ready(r) = Pin::new(&mut self.backend.stream).poll_write(cx, &self.cbuf[..self.c_out]) {
                return Poll::Ready(Event::BackendWrote(r));
            }
        }
        if self.b_out > 0 {
            if let Poll::Ready(r) = Pin::new(&mut self.client).poll_write(cx, &self.bbuf[..self.b_out]) {
                return Poll::Ready(Event::ClientWrote(r));
            }
        }
        // TLS: encrypted bytes rustls could not hand to a full socket yet.
        if self.client.wants_flush() {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.client).poll_flush(cx) {
                return Poll::Ready(Event::ClientWrote(Err(e)));
            }
        }
        if self.backend.stream.wants_flush() {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.backend.stream).poll_flush(cx) {
                return Poll::Ready(Event::BackendWrote(Err(e)));
            }
        }
        Poll::Pending
    }

    /// Handles every event but a client read.
    fn on_event(&mut self, event: Event) -> Option<End> {
        match event {
            Event::ClientRead(_) | Event::Released => None,
            Event::BackendRead(Ok(0)) => Some(End::Backend(None)),
            Event::BackendRead(Ok(_)) => self.on_backend_data(),
            Event::BackendRead(Err(e)) => Some(End::Backend(Some(e))),
            Event::BackendWrote(Ok(n)) => {
                self.cbuf.advance(n);
                self.c_out -= n;
                None
            }
            Event::BackendWrote(Err(e)) => Some(End::Backend(Some(e))),
            Event::ClientWrote(Ok(n)) => {
                self.bbuf.advance(n);
                self.b_out -= n;
                None
            }
            Event::ClientWrote(Err(e)) => Some(End::Client(Some(e))),
            Event::Command(cmd) => self.on_command(cmd),
        }
    }

    async fn on_client_data(&mut self) -> Option<End> {
        if self.safe && self.cbuf.first() != Some(&b'X') {
            // Leaving the safe point. Publish first, then look at the hold flag: `hold()` sets
            // the flag first, then looks at the sessions, so one of the two sees the other.
            self.h.busy_since.store(self.shared.now_nanos(), Relaxed);
            self.h.safe.store(false, SeqCst);
            while self.shared.holding.load(SeqCst) {
                self.h.safe.store(true, SeqCst);
                self.shared.notify_safe();
                if let Some(end) = self.held_wait().await {
                    return Some(end);
                }
                self.h.busy_since.store(self.shared.now_nanos(), Relaxed);
                self.h.safe.store(false, SeqCst);
            }
            if let Some(bucket) = self.h.read_bucket {
                if self.shared.read.generation() != self.routed_gen {
                    self.route(bucket).await;
                }
            } else if self.shared.shadow.roll()
                && self.shared.shadow.shadows(&self.backend.upstream)
                && self.shared.shadow.target_fit(&self.shared.read)
            {
                self.sampling = Some(Sampling {
                    capture: BytesMut::new(),
                    started: std::time::Instant::now(),
                    sent_before: self.t.sent,
                    complete: false,
                    answer: Default::default(),
                });
            }
            self.safe = false;
        }
        let t = &mut self.t;
        let scanned = self.cscan.scan(
            &self.cbuf,
            |tag| matches!(tag, b'Q' | b'P' | b'C'),
            |f| {
                t.on_client(f);
                Ok(())
            },
        );
        match scanned {
            Ok(n) => self.c_out = n,
            Err(e) => return Some(End::ClientProtocol(e)),
        }
        if let Some(sm) = self.sampling.as_mut().filter(|sm| !sm.complete) {
            sm.capture.extend_from_slice(&self.cbuf[..self.c_out]);
            let sent = self.t.sent - sm.sent_before;
            if sm.capture.len() > crate::shadow::MAX_CAPTURE || sent > 1 {
                // Too large, or pipelined with the next request: not sampled.
                self.sampling = None;
            } else if sent == 1 && !self.t.unsynced {
                sm.complete = true;
            }
        }
        if self.h.read_bucket.is_some() {
            if !self.t.refuse.is_empty() {
                self.refuse_unlocking();
            }
            let r = &self.shared.read;
            r.requests[self.on_replica as usize].fetch_add(self.t.sent - self.counted, Relaxed);
            self.counted = self.t.sent;
        }
        self.publish();
        if self.t.terminate {
            let last = self.backend.stream.write_all(&self.cbuf[..self.c_out]);
            let _ = tokio::time::timeout(crate::timeouts::TERMINATE_TIMEOUT, last).await;
            return Some(End::Terminated);
        }
        if let Err(e) = self.flush_backend() {
            return Some(End::Backend(Some(e)));
        }
        None
    }

    fn on_backend_data(&mut self) -> Option<End> {
        let t = &mut self.t;
        let h = &self.h;
        let mut answer = self.sampling.as_mut().map(|sm| &mut sm.answer);
        let summarise = answer.is_some();
        let scanned = self.bscan.scan(
            &self.bbuf,
            |tag| matches!(tag, b'Z' | b'C') || (summarise && matches!(tag, b'T' | b'D' | b'E')),
            |f| {
                if let (Some(a), Some(body)) = (answer.as_deref_mut(), f.body) {
                    a.on_frame(f.tag, body);
                }
                t.on_backend(f, h);
                Ok(())
            },
        );
        match scanned {
            Ok(n) => self.b_out = n,
            Err(e) => return Some(End::Backend(Some(e))),
        }
        if self.sampling.as_ref().is_some_and(|sm| sm.answer.ready.is_some()) {
            self.finish_sample();
        }
        self.publish();
        if let Err(e) = self.flush_client() {
            return Some(End::Client(Some(e)));
        }
        None
    }

    fn flush_backend(&mut self) -> io::Result<()> {
        while self.c_out > 0 {
            match self.backend.stream.try_write(&self.cbuf[..self.c_out]) {
                Ok(n) => {
                    self.cbuf.advance(n);
                    self.c_out -= n;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn flush_client(&mut self) -> io::Result<()> {
        while self.b_out > 0 {
            match self.client.try_write(&self.bbuf[..self.b_out]) {
                Ok(n) => {
                    self.bbuf.advance(n);
                    self.b_out -= n;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Publishes the protocol state for the controller; notifies a hold when the session
    /// reaches its safe point.
    fn publish(&mut self) {
        let t = &self.t;
        let h = &self.h;
        h.tx_status.store(t.tx, Relaxed);
        h.in_flight.store(t.in_flight, Relaxed);
        h.unsynced.store(t.unsynced, Relaxed);
        let safe = t.tx == b'I' && t.in_flight == 0 && !t.unsynced;
        if safe != self.safe {
            self.safe = safe;
            if !safe {
                h.busy_since.store(self.shared.now_nanos(), Relaxed);
            }
            h.safe.store(safe, SeqCst);
            if safe {
                self.shared.notify_safe();
            }
        }
    }

    /// Waits while the hold is in place, still serving commands (a switch) and server messages.
    async fn held_wait(&mut self) -> Option<End> {
        self.shared.begin_wait();
        tracing::debug!(session = self.h.id, "request held");
        let mut release = self.shared.release_rx();
        let end = 'held: loop {
            if !self.shared.holding.load(SeqCst) {
                break None;
            }
            // One `changed()` future for the whole wait: dropping it would drop its wake-up.
            let mut changed = std::pin::pin!(release.changed());
            loop {
                let event = std::future::poll_fn(|cx| {
                    if changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Released);
                    }
                    self.poll_event(cx, false)
                })
                .await;
                if matches!(event, Event::Released) {
                    continue 'held;
                }
                if let Some(end) = self.on_event(event) {
                    break 'held Some(end);
                }
            }
        };
        self.shared.end_wait();
        end
    }

    fn on_command(&mut self, cmd: Option<Command>) -> Option<End> {
        match cmd {
            Some(Command::Adopt(backend, ack)) => {
                self.adopt(backend);
                let _ = ack.send(());
                None
            }
            Some(Command::Shutdown) | None => Some(End::Shutdown),
        }
    }

    /// The source answered a sampled request: queue it for the target if it can be run again
    /// there (one statement that only reads, outside a transaction).
    fn finish_sample(&mut self) {
        let Some(sm) = self.sampling.take() else {
            return;
        };
        if !sm.complete || sm.answer.ready != Some(b'I') {
            return;
        }
        let source_latency = sm.started.elapsed();
        let replay = lock(&self.h.replay).clone();
        let Some(sql) = crate::shadow::request_sql(&sm.capture, &replay) else {
            return;
        };
        if !crate::sql::looks_read_only(&sql) {
            return;
        }
        self.shared.shadow.submit(crate::shadow::Job {
            user: self.h.user.clone(),
            params: self.h.params.clone(),
            replay,
            request: sm.capture.freeze(),
            sql,
            source: sm.answer,
            source_latency,
        });
    }

    /// Moves a read session to the server the routing wants for it now, at its safe point,
    /// replaying its state there; a failure leaves it where it is (logged and counted).
    async fn route(&mut self, bucket: u8) {
        let r = &self.shared.read;
        self.routed_gen = r.generation();
        let want = r.replica_for(bucket).unwrap_or_else(|| lock(&self.shared.upstream).clone());
        if want.name == self.backend.upstream {
            return;
        }
        let timeouts = self.shared.timeouts;
        let log = lock(&self.h.replay).clone();
        let moved = async {
            let mut backend = crate::upstream::connect(&want, &self.h.user, &self.h.params, &timeouts).await?;
            if let Err(e) = crate::upstream::replay(&mut backend, &log, timeouts.replay).await {
                backend.terminate().await;
                return Err(e);
            }
            Ok(backend)
        }
        .await;
        match moved {
            Ok(backend) => {
                r.moves.fetch_add(1, Relaxed);
                self.adopt(backend);
            }
            Err(e) => {
                r.move_failures.fetch_add(1, Relaxed);
                tracing::warn!(session = self.h.id, from = %self.backend.upstream, to = %want.name, error = %e, "read session could not move; it stays");
            }
        }
    }

    /// Replaces each statement the tracker found that would make a read session's
    /// transactions writable by one that fails with SQLSTATE 25006 saying why. The server
    /// answers it in order, so the protocol's state stays what the client expects.
    fn refuse_unlocking(&mut self) {
        let refuse = std::mem::take(&mut self.t.refuse);
        let base = self.cbuf.as_ptr() as usize;
        let mut out = BytesMut::with_capacity(self.cbuf.len() + 256 * refuse.len());
        let mut at = 0;
        for (ptr, len, tag, name) in refuse {
            // The message starts 5 bytes (type and length) before its body.
            let start = ptr - base - 5;
            out.extend_from_slice(&self.cbuf[at..start]);
            crate::codec::refusing_message(&mut out, tag, &name, REFUSAL_SQL);
            at = start + 5 + len;
            self.shared.read.refused.fetch_add(1, Relaxed);
            tracing::info!(session = self.h.id, "read endpoint: refused a statement that would allow writes");
        }
        // Every refused message lies in the scanned part: it shifts by the change in size.
        self.c_out = (self.c_out + out.len()) - at;
        out.extend_from_slice(&self.cbuf[at..]);
        self.cbuf = out;
    }

    /// Continues on `new`, dropping the old server connection. Called only at a safe point.
    fn adopt(&mut self, new: Backend) {
        if !self.safe || self.c_out > 0 {
            tracing::warn!(session = self.h.id, "switching a session that is not at a safe point");
        }
        // A partial asynchronous message from the old server cannot be completed: drop it.
        self.bbuf.truncate(self.b_out);
        self.bscan = Scanner::default();
        let old = std::mem::replace(&mut self.backend, new);
        *lock(&self.h.upstream) = self.backend.upstream.clone();
        if self.h.read_bucket.is_some() {
            self.on_replica = self.shared.read.replica().is_some_and(|r| r.name == self.backend.upstream)
                && lock(&self.shared.upstream).name != self.backend.upstream;
        }
        *lock(&self.h.cancel_key) = self.backend.key.clone();
        self.h.backend_pid.store(self.backend.key.process_id, SeqCst);
        tracing::debug!(
            session = self.h.id,
            from = %old.upstream,
            to = %self.backend.upstream,
            backend_pid = self.backend.key.process_id,
            "session switched"
        );
        tokio::spawn(old.terminate());
    }
}
