//! Streaming logical replication: `START_REPLICATION ... LOGICAL` on a replication connection,
//! XLogData and keepalives in, standby status updates out.
//!
//! The connection is split: a reader task turns CopyData frames into [`StreamEvent`]s and sends
//! them in batches (every complete frame of one socket read, up to [`BATCH`]) on a bounded
//! channel (backpressure: the server waits when the applier is behind), and a
//! [`FeedbackSender`] writes status updates. Only positions whose changes are durably committed
//! on the target are ever reported as flushed, so the server keeps every WAL byte Ferry might
//! still need.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_core::{ErrorClass, Lsn};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::error::PgError;
use crate::replication::{BoxedIo, ReplicationConnection};

/// Most events in one batch on the channel. Handing events over one by one cost a thread
/// wake-up each; a batch costs one per socket read.
pub const BATCH: usize = 256;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// A batch of stream events, in order; an error is always the last one.
pub type EventBatch = Vec<Result<StreamEvent, PgError>>;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What arrives on the stream.
#[derive(Debug)]
pub enum StreamEvent {
    /// A pgoutput message at `wal_start`.
    Data {
        /// Start of the WAL record this message comes from (0 for some messages).
        wal_start: Lsn,
        /// Server's WAL end when sent.
        wal_end: Lsn,
        /// The pgoutput payload.
        data: Bytes,
    },
    /// The server is alive; `reply` asks for a status update now.
    Keepalive {
        /// Server's WAL end.
        wal_end: Lsn,
        /// Reply requested.
        reply: bool,
    },
}

/// Longest a status update may take to leave: its socket's send buffer only fills when the
/// server stopped reading (a dead network), so waiting longer would hide that.
const FEEDBACK_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends standby status updates. Dropping it stops the stream's reader task.
pub struct FeedbackSender {
    io: WriteHalf<BoxedIo>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for FeedbackSender {
    fn drop(&mut self) {
        // The reader may be blocked on a socket that will never answer (a black hole): end it
        // with the stream instead of leaving it and its connection behind.
        self.reader.abort();
    }
}

impl std::fmt::Debug for FeedbackSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedbackSender")
    }
}

impl FeedbackSender {
    /// Reports `applied` as written and applied (committed on the target, visible) and
    /// `flushed` as flushed (durable on the target: the slot may discard WAL before it).
    /// `reply` asks the server to answer at once with a keepalive (a liveness probe).
    pub async fn send(&mut self, applied: Lsn, flushed: Lsn, reply: bool) -> Result<(), PgError> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - PG_EPOCH_OFFSET_US;
        let mut buf = BytesMut::with_capacity(40);
        buf.put_u8(b'd');
        buf.put_i32(4 + 1 + 8 * 4 + 1);
        buf.put_u8(b'r');
        buf.put_u64(applied.0);
        buf.put_u64(flushed.min(applied).0);
        buf.put_u64(applied.0);
        buf.put_i64(now_us);
        buf.put_u8(u8::from(reply));
        let write = async {
            self.io.write_all(&buf).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(FEEDBACK_WRITE_TIMEOUT, write).await {
            Ok(r) => r.map_err(|e| io_error("sending replication feedback", e)),
            Err(_) => Err(io_error(
                "sending replication feedback",
                format!(
                    "the status update could not be sent within {} s: the source is not reading from this connection (network down?)",
                    FEEDBACK_WRITE_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

fn io_error(ctx: &str, e: impl std::fmt::Display) -> PgError {
    PgError::transient(ctx, e)
}

/// Parses an ErrorResponse body into a PgError.
fn error_body(context: &str, body: &[u8]) -> PgError {
    let (mut message, mut code, mut detail) = (String::new(), None, None);
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let v = String::from_utf8_lossy(&tail[..end]).into_owned();
        match t {
            b'M' => message = v,
            b'C' => code = Some(v),
            b'D' => detail = Some(v),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    // 55006 "replication slot is active for PID" is transient (another consumer, perhaps a
    // dying one, holds it); 55000, an invalidated slot, is definite: waiting never brings it back.
    let class = code.as_deref().map(crate::error::sqlstate_class).unwrap_or(ErrorClass::Definite);
    let fix = match code.as_deref() {
        // The slot is gone: dropped by hand, or the source failed over to a standby that had no
        // copy of it (PostgreSQL before 17 does not synchronise logical slots to standbys).
        Some("42704") => Some(
            "the replication slot is gone from the source (dropped, or the source failed over to a standby without it: \
             PostgreSQL before 17 does not copy logical slots to standbys). Changes committed since Ferry's last applied \
             position cannot be streamed any more: run `ferry verify` to see what differs, then restart the migration \
             (`ferry abandon --yes`, empty the target, `ferry migrate`); see docs/runbook.md, \"The source fails over\""
                .to_string(),
        ),
        Some("55000") => Some(
            "the replication slot was invalidated (it retained more WAL than max_slot_wal_keep_size allows, or its WAL \
             was removed): the changes it held are gone. Restart the migration (`ferry abandon --yes`, empty the target, \
             `ferry migrate`) and keep Ferry running, or raise max_slot_wal_keep_size; see docs/runbook.md"
                .to_string(),
        ),
        _ => None,
    };
    PgError {
        context: context.to_string(),
        reason: match detail {
            Some(d) => format!("{message} ({d})"),
            None => message,
        },
        fix,
        class,
        code,
    }
}

impl ReplicationConnection {
    /// Starts streaming `slot` from `start` with pgoutput for `publication`; returns the event
    /// channel (fed by a reader task, `batches` batches of at most [`BATCH`] events deep) and the
    /// feedback sender.
    pub async fn start_logical(
        self,
        slot: &str,
        start: Lsn,
        publication: &str,
        batches: usize,
    ) -> Result<(mpsc::Receiver<EventBatch>, FeedbackSender), PgError> {
        let (io, mut read, server) = self.into_parts();
        let (mut rd, mut wr) = tokio::io::split(io);
        let pubs = format!("\"{}\"", publication.replace('"', "\"\""));
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names '{}')",
            ferry_core::ident::quote_ident(slot),
            pubs.replace('\'', "''")
        );
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(&sql, &mut out).map_err(|e| io_error("START_REPLICATION", e))?;
        wr.write_all(&out).await.map_err(|e| io_error("START_REPLICATION", e))?;
        wr.flush().await.map_err(|e| io_error("START_REPLICATION", e))?;
        let ctx = format!("starting replication from slot {slot} on {server}");
        // Wait for CopyBothResponse, or an error.
        loop {
            let (tag, body) = read_frame(&mut rd, &mut read).await.map_err(|e| io_error(&ctx, e))?;
            match tag {
                b'W' => break,
                b'E' => return Err(error_body(&ctx, &body)),
                _ => continue,
            }
        }
        let (tx, rx) = mpsc::channel(batches.max(1));
        let reader = tokio::spawn(async move {
            let ctx = format!("replication stream from {server}");
            loop {
                // Wait for one frame, then take every complete frame already read.
                let mut batch = EventBatch::with_capacity(16);
                let mut frame = read_frame(&mut rd, &mut read).await;
                let mut failed = false;
                loop {
                    match frame {
                        Err(e) => {
                            batch.push(Err(io_error(&ctx, e)));
                            failed = true;
                        }
                        Ok((tag, body)) => {
                            if let Some(event) = event(&ctx, tag, body) {
                                failed = event.is_err();
                                batch.push(event);
                            }
                        }
                    }
                    if failed || batch.len() >= BATCH {
                        break;
                    }
                    match next_frame(&mut read) {
                        Some(f) => frame = f,
                        None => break,
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok((rx, FeedbackSender { io: wr, reader }))
    }
}

/// One backend message as a stream event (None for messages to ignore).
fn event(ctx: &str, tag: u8, mut body: Bytes) -> Option<Result<StreamEvent, PgError>> {
    Some(match tag {
        b'd' => match body.first() {
            Some(b'w') if body.len() >= 25 => {
                body.advance(1);
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let _time = body.get_i64();
                Ok(StreamEvent::Data {
                    wal_start,
                    wal_end,
                    data: body,
                })
            }
            Some(b'k') if body.len() >= 18 => {
                body.advance(1);
                let wal_end = Lsn(body.get_u64());
                let _time = body.get_i64();
                Ok(StreamEvent::Keepalive {
                    wal_end,
                    reply: body.get_u8() == 1,
                })
            }
            _ => Err(io_error(ctx, "unexpected CopyData payload")),
        },
        b'E' => Err(error_body(ctx, &body)),
        b'c' => Err(io_error(ctx, "the server ended the stream (CopyDone)")),
        _ => return None,
    })
}

/// A complete backend message already in `buf`, if there is one.
fn next_frame(buf: &mut BytesMut) -> Option<std::io::Result<(u8, Bytes)>> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid message length")));
    }
    if buf.len() <= len {
        return None;
    }
    let tag = buf[0];
    let mut frame = buf.split_to(len + 1);
    frame.advance(5);
    Some(Ok((tag, frame.freeze())))
}

/// Reads one backend message: tag and body.
async fn read_frame(rd: &mut ReadHalf<BoxedIo>, buf: &mut BytesMut) -> std::io::Result<(u8, Bytes)> {
    loop {
        if let Some(frame) = next_frame(buf) {
            return frame;
        }
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            buf.reserve((len + 1).saturating_sub(buf.len()).max(READ_CHUNK));
        } else {
            buf.reserve(READ_CHUNK);
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the replication connection",
            ));
        }
    }
}
