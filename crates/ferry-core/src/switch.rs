//! The switch side: what one database engine does for Ferry when the application's writes move
//! from one database to another (cutover) or back (rollback).
//!
//! One switchboard (`crates/ferry/src/cutover.rs`) runs every switch, whatever the engines: it
//! holds the application (at the proxy, or with read-only and a grace period without one),
//! waits for change capture, records the phase and turns change capture around. It never
//! speaks an engine's SQL: everything it asks of a database goes through [`SwitchSide`], once
//! for the *old* side (where writes stop) and once for the *new* side (where they go next).
//! The engines implement it in their `switch` modules (`ferry_postgres::switch`,
//! `ferry_mysql::switch`).
//!
//! The contract every implementation keeps:
//! - **Ferry is exempt.** Every statement runs on Ferry's own session, which writes even where
//!   Ferry made the database read-only, and whose commits are durable when they return
//!   ([`SwitchSide::prepare_session`]). Ferry's sessions are known by the server's session id
//!   (PostgreSQL's backend pid and start time, MySQL's connection id), never by a name a client
//!   announces (`application_name`, program name), which anyone can set.
//! - **Deadlines.** The switchboard runs every call of the pause under what is left of
//!   `--max-pause` and drops the call's future when it runs out. A method must therefore leave
//!   nothing that the switchboard's undo ([`SwitchSide::set_read_only`] with the other value,
//!   [`SwitchSide::drop_reverse`]) cannot put right, from a fresh session if need be. A method
//!   that may wait on the server by design says how long, and bounds it itself.
//! - **Idempotence.** Ferry may crash at any point and run the same method again at its next
//!   start (crash recovery undoes or finishes an interrupted switch): calling a method twice
//!   has the effect of calling it once, and undoing what was never done is not an error.
//! - **Errors** carry a class ([`Fault`]): transient (the connection dropped, a lock timed out:
//!   a later switch may work) or definite (a missing privilege: the operator must act). Their
//!   text says what failed, why, and what to do; it never contains a secret.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::{Fault, SourcePosition, TableName};

/// A session on a database, as the server names it: PostgreSQL's backend pid, MySQL's
/// connection id.
pub type SessionId = u64;

/// A session connected to a side directly, not through Ferry's proxy: after the switch it
/// could still write to the side writes left (split brain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectSession {
    /// The server's id of the session.
    pub id: SessionId,
    /// For people: who, from where, doing what (never a password or a query's values).
    pub description: String,
}

impl fmt::Display for DirectSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// Of two listings of direct sessions taken a moment apart, the sessions present in both, in
/// the order of the second. A session Ferry itself is opening is listed by the server a moment
/// before Ferry knows its id; looking twice names only the sessions that stayed.
pub fn seen_twice(first: &[DirectSession], again: Vec<DirectSession>) -> Vec<DirectSession> {
    again.into_iter().filter(|s| first.iter().any(|f| f.id == s.id)).collect()
}

/// A generator of values on a side (a sequence, an auto-increment column) and the last value
/// it handed out there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// A sequence (with `column` None), or the table whose `column` is generated (MySQL's
    /// `AUTO_INCREMENT`, PostgreSQL's serial and identity columns). Named as on the new side.
    pub name: TableName,
    /// The generated column, when the generator belongs to a column rather than being a
    /// sequence of its own.
    pub column: Option<String>,
    /// The last value handed out (0 for a column that has handed out none).
    pub last_value: i64,
}

/// One generator moved forward on the new side by [`SwitchSide::advance_identities`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentitySync {
    /// The sequence, or the table of the generated column.
    pub name: TableName,
    /// The generated column, if the generator is a column's.
    pub column: Option<String>,
    /// The last value the old side handed out.
    pub from: i64,
    /// The generator's value on the new side after the sync, as the engine reports it.
    pub to: i64,
}

impl fmt::Display for IdentitySync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "{}.{c} = {}", self.name, self.to),
            None => write!(f, "{} = {}", self.name, self.to),
        }
    }
}

/// One database's part in a switch. See the module documentation for what every method
/// keeps (Ferry exempt, deadlines, idempotence, errors); each method adds its own promises.
///
/// The futures are `Send`: a switch runs in a task of the HTTP API.
pub trait SwitchSide {
    /// What went wrong, with its class.
    type Error: std::error::Error + Fault + Send + Sync + 'static;

    /// The side's role in the migration, for messages: `source` or `target`.
    fn side(&self) -> &str;

    /// Makes Ferry's session fit for the switch: its writes pass the read-only the side is
    /// given, its commits are durable (flushed) before they return. Called once, before the
    /// pre-checks; every other method may rely on it. Changes nothing for anyone else.
    fn prepare_session(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Where writes stopped on this side: a position in its change stream, flushed to disk
    /// when this returns, after every transaction that committed before the call and before
    /// any that commits after it. Change capture passes it even when no application write
    /// follows (the position is of something the stream sees). Called before the pause (to
    /// catch up) and inside it, once writes are held or the side is read-only: then no write
    /// follows it. Safe to repeat: each call marks a new position.
    fn final_position(&self) -> impl Future<Output = Result<SourcePosition, Self::Error>> + Send;

    /// Makes the side read-only for everyone but Ferry (`on`), or writable again (`!on`).
    /// On PostgreSQL this holds for sessions that start afterwards ([`SwitchSide::end_writers`]
    /// deals with the others); an engine whose switch covers every session at once says so.
    /// Idempotent; undoing it is the abort path, so it must work on a fresh session after an
    /// abandoned call. Its statement may wait for locks: the implementation bounds that wait
    /// on the server (never only on the client), so that an abandoned call cannot take effect
    /// after the switchboard gave up on it.
    fn set_read_only(&self, on: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Without a proxy, after [`SwitchSide::set_read_only`]: waits up to `grace` for the
    /// sessions that could still write (connected before the side became read-only, or inside
    /// an open transaction) to leave, then ends those still there. Returns the sessions it
    /// ended (how many: their number), described for the report. Ferry's own sessions are
    /// spared by session id. Takes `grace` plus one round trip; repeating it ends nobody new
    /// who started after the read-only.
    fn end_writers(&self, grace: Duration) -> impl Future<Output = Result<Vec<DirectSession>, Self::Error>> + Send;

    /// Sessions connected to this side's database directly: neither Ferry's own nor the
    /// proxy's (`proxied`, the server's ids of the proxy's sessions). Only client sessions
    /// count: a replication stream is not one. Reads only.
    fn direct_sessions(&self, proxied: &[SessionId]) -> impl Future<Output = Result<Vec<DirectSession>, Self::Error>> + Send;

    /// On the old side, inside the pause: every generator that has handed out values, and the
    /// last one it handed out. Reads only.
    fn identities(&self) -> impl Future<Output = Result<Vec<Identity>, Self::Error>> + Send;

    /// On the new side, inside the pause: moves each generator of `from` that exists here so
    /// that it never hands out a value the old side did; never backwards (an ascending
    /// generator keeps the greater value, a descending one the smaller). Generators missing
    /// here are skipped. Returns those it set. Idempotent: a second call with the same values
    /// sets the same ones.
    fn advance_identities(&self, from: &[Identity]) -> impl Future<Output = Result<Vec<IdentitySync>, Self::Error>> + Send;

    /// Go / NoGo for a reverse stream out of this side (the new side of a cutover: it keeps
    /// the old side current, so that a rollback loses nothing): what blocks it, one line each,
    /// naming the setting and the fix. A failure to find out is a blocker too. Reads only.
    fn reverse_blockers(&self) -> impl Future<Output = Vec<String>> + Send;

    /// Before the pause of a cutover, on its new side: creates what the reverse stream reads
    /// (PostgreSQL: a publication of `tables` and a replication slot), so that every write
    /// after the switch is captured; change capture starts streaming from it when it turns
    /// around. Drops a leftover of an earlier attempt first. Bounded by the implementation
    /// (on the server: it may wait for locks and running transactions). Nobody is held yet.
    fn prepare_reverse(&self, tables: &[TableName]) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Drops what [`SwitchSide::prepare_reverse`] created, if it exists (an aborted cutover,
    /// crash recovery, a rollback, abandon). Idempotent.
    fn drop_reverse(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: SessionId) -> DirectSession {
        DirectSession {
            id,
            description: format!("pid {id}"),
        }
    }

    #[test]
    fn only_sessions_listed_twice_count_as_direct() {
        // 7 was Ferry's own session opening (gone the second time), 9 arrived meanwhile.
        let got = seen_twice(&[s(3), s(7), s(5)], vec![s(5), s(3), s(9)]);
        assert_eq!(got, vec![s(5), s(3)]);
        assert!(seen_twice(&[], vec![s(1)]).is_empty());
        assert_eq!(got.iter().map(ToString::to_string).collect::<Vec<_>>(), ["pid 5", "pid 3"]);
    }

    #[test]
    fn identity_syncs_name_their_generator() {
        let seq = IdentitySync {
            name: TableName::new("public", "orders_id_seq"),
            column: None,
            from: 41,
            to: 42,
        };
        assert_eq!(seq.to_string(), format!("{} = 42", TableName::new("public", "orders_id_seq")));
        let col = IdentitySync {
            column: Some("id".into()),
            name: TableName::new("public", "orders"),
            ..seq
        };
        assert_eq!(col.to_string(), format!("{}.id = 42", TableName::new("public", "orders")));
    }
}
