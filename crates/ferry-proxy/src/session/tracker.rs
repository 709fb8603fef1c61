//! The protocol state of one session, read from message headers: in a transaction or not,
//! requests in flight, statements prepared: what decides where a session may be held or
//! switched, and what is replayed after a switch.

use crate::codec::{self, Frame};
use crate::proxy::{lock, SessionHandle};
use crate::replay::{classify, SqlAction};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;

/// What is pending in the extended protocol, matched in order against ParseComplete and
/// CloseComplete.
#[derive(Debug)]
enum Ext {
    Parse(Option<(String, Bytes)>),
    CloseStatement(String),
    ClosePortal,
}

/// Protocol state of one session, updated from message headers.
#[derive(Debug)]
pub(super) struct Tracker {
    pub(super) tx: u8,
    pub(super) in_flight: u32,
    pub(super) unsynced: bool,
    /// Requests sent / completed (a request ends with its ReadyForQuery).
    pub(super) sent: u64,
    done: u64,
    /// The request being answered got an ErrorResponse.
    error: bool,
    ext: VecDeque<(u64, Ext)>,
    actions: VecDeque<(u64, SqlAction, String)>,
    /// SET statements run inside the open transaction: kept only if it commits.
    tentative: Vec<(SqlAction, String)>,
    rollback: bool,
    pub(super) terminate: bool,
    /// A read-endpoint session: statements that would make its transactions writable are
    /// refused.
    read_only: bool,
    /// Messages to refuse, found by the last scan: (address of the body, body length, type,
    /// statement name).
    pub(super) refuse: Vec<(usize, usize, u8, String)>,
}

impl Tracker {
    pub(super) fn new(read_only: bool) -> Tracker {
        Tracker {
            tx: b'I',
            in_flight: 0,
            unsynced: false,
            sent: 0,
            done: 0,
            error: false,
            ext: VecDeque::new(),
            actions: VecDeque::new(),
            tentative: Vec::new(),
            rollback: false,
            terminate: false,
            read_only,
            refuse: Vec::new(),
        }
    }

    pub(super) fn on_client(&mut self, f: Frame<'_>) {
        match f.tag {
            b'Q' => {
                self.sent += 1;
                self.in_flight += 1;
                if let Some(sql) = f.body.and_then(codec::query_text) {
                    if self.read_only && crate::sql::unlocks_writes(sql) {
                        let body = f.body.expect("has text");
                        self.refuse.push((body.as_ptr() as usize, body.len(), b'Q', String::new()));
                        return;
                    }
                    if let Some(action) = classify(sql) {
                        self.actions
                            .push_back((self.sent, action, sql.trim().trim_end_matches(';').to_owned()));
                    }
                }
            }
            b'S' => {
                self.sent += 1;
                self.in_flight += 1;
                self.unsynced = false;
            }
            b'F' => {
                self.sent += 1;
                self.in_flight += 1;
            }
            b'P' => {
                self.unsynced = true;
                if let Some(body) = f.body.filter(|_| self.read_only) {
                    let text = codec::read_cstr(body).ok().and_then(|(_, rest)| codec::read_cstr(rest).ok());
                    if let (Some(name), Some((sql, _))) = (codec::parse_name(body), text) {
                        if crate::sql::unlocks_writes(sql) {
                            self.refuse.push((body.as_ptr() as usize, body.len(), b'P', name.to_owned()));
                            // Not remembered for a replay: the original would come back.
                            self.ext.push_back((self.sent + 1, Ext::Parse(None)));
                            return;
                        }
                    }
                }
                let named = f.body.and_then(|body| {
                    let name = codec::parse_name(body).filter(|n| !n.is_empty())?;
                    let mut raw = BytesMut::with_capacity(body.len() + 5);
                    raw.put_u8(b'P');
                    raw.put_i32(body.len() as i32 + 4);
                    raw.put_slice(body);
                    Some((name.to_owned(), raw.freeze()))
                });
                self.ext.push_back((self.sent + 1, Ext::Parse(named)));
            }
            b'C' => {
                self.unsynced = true;
                let ext = match f.body.and_then(codec::close_target) {
                    Some((b'S', name)) => Ext::CloseStatement(name.to_owned()),
                    _ => Ext::ClosePortal,
                };
                self.ext.push_back((self.sent + 1, ext));
            }
            b'B' | b'D' | b'E' | b'H' => self.unsynced = true,
            b'X' => self.terminate = true,
            _ => {}
        }
    }

    pub(super) fn on_backend(&mut self, f: Frame<'_>, h: &SessionHandle) {
        match f.tag {
            b'Z' => {
                let status = f.body.and_then(|b| b.first().copied()).unwrap_or(b'I');
                self.ready(status, h);
            }
            b'E' if self.in_flight > 0 => self.error = true,
            b'C' if !self.tentative.is_empty() => self.rollback = f.body.is_some_and(|b| b.starts_with(b"ROLLBACK")),
            b'1' => {
                if let Some((_, Ext::Parse(Some((name, raw))))) = self.ext.pop_front() {
                    lock(&h.replay).add_parse(name, raw);
                }
            }
            b'3' => {
                if let Some((_, Ext::CloseStatement(name))) = self.ext.pop_front() {
                    lock(&h.replay).remove_statement(&name);
                }
            }
            _ => {}
        }
    }

    pub(super) fn ready(&mut self, status: u8, h: &SessionHandle) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.done += 1;
        let prev = std::mem::replace(&mut self.tx, status);
        while self.actions.front().is_some_and(|(seq, ..)| *seq <= self.done) {
            let Some((seq, action, sql)) = self.actions.pop_front() else {
                break;
            };
            if seq != self.done || self.error {
                continue;
            }
            let transactional = matches!(action, SqlAction::Set { .. } | SqlAction::ResetAll);
            if status == b'I' || !transactional {
                apply(h, &action, &sql);
            } else {
                if self.tentative.is_empty() {
                    self.rollback = false;
                }
                self.tentative.push((action, sql));
            }
        }
        while self.ext.front().is_some_and(|(group, _)| *group <= self.done) {
            self.ext.pop_front();
        }
        if status == b'I' && prev != b'I' && !self.tentative.is_empty() {
            if !self.rollback {
                for (action, sql) in std::mem::take(&mut self.tentative) {
                    apply(h, &action, &sql);
                }
            }
            self.tentative.clear();
        }
        self.error = false;
    }
}

fn apply(h: &SessionHandle, action: &SqlAction, sql: &str) {
    lock(&h.replay).apply(action, sql);
    if matches!(action, SqlAction::Set { key } if key == "application_name") {
        *lock(&h.application_name) = set_value(sql);
    }
}

/// The value of `SET name {TO|=} value` as written, without quotes (for display only).
fn set_value(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    let at = lower
        .find('=')
        .map(|i| i + 1)
        .or_else(|| lower.find(" to ").map(|i| i + 4))
        .unwrap_or(sql.len());
    sql[at..].trim().trim_matches('\'').to_owned()
}
