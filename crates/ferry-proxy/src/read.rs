//! The read endpoint's routing: which read sessions the replica (the migration's target) serves.
//!
//! Each read session draws a bucket in 0..100 when it connects, from a low-discrepancy sequence
//! (multiples of the golden ratio), so that any N sessions spread evenly over the buckets. A
//! session is on the replica while its bucket is below the share and the replica is ready (its
//! lag under the bound); otherwise it is on the primary (where the primary endpoint's sessions
//! go). A session therefore moves only when the share crosses its bucket or the replica's
//! readiness changes, and raising the share only ever moves sessions to the replica: that is
//! the stickiness. Every change bumps a generation that sessions compare, at the start of each
//! request, with the one they last routed under: one atomic load per request.

use crate::Upstream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::Mutex;

/// Options every server connection of a read session starts with: its transactions are
/// read-only, on either server.
pub(crate) const READ_ONLY_OPTION: &str = "-c default_transaction_read_only=on";

#[derive(Debug, Default)]
pub(crate) struct ReadRouting {
    /// Percent of read sessions the replica serves (0..=100).
    share: AtomicU8,
    /// Where shifted read sessions go; None: nowhere but the primary.
    replica: Mutex<Option<Upstream>>,
    /// The replica is fit to serve reads (its lag is under the bound).
    ready: AtomicBool,
    generation: AtomicU64,
    next_bucket: AtomicU32,
    /// Read sessions moved between primary and replica since start.
    pub moves: AtomicU64,
    /// Moves that failed (the session stayed where it was).
    pub move_failures: AtomicU64,
    /// Requests (Query, Sync, FunctionCall) of read sessions: on the primary, on the replica.
    pub requests: [AtomicU64; 2],
    /// Statements refused because they would have turned read-only transactions off.
    pub refused: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReadRouting {
    /// The next session's bucket.
    pub fn bucket(&self) -> u8 {
        let k = self.next_bucket.fetch_add(1, Relaxed) as u64 + 1;
        // frac(k * 0.6180339887...) in thousandths of a percent.
        ((k * 61_803) % 100_000 / 1_000) as u8
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Release);
    }

    /// The replica a session in `bucket` should be on now, if any (None: the primary).
    pub fn replica_for(&self, bucket: u8) -> Option<Upstream> {
        if !self.ready.load(Acquire) || bucket >= self.share.load(Acquire) {
            return None;
        }
        lock(&self.replica).clone()
    }

    pub fn share(&self) -> u8 {
        self.share.load(Acquire)
    }

    /// Sets the share (capped at 100); returns the previous one.
    pub fn set_share(&self, percent: u8) -> u8 {
        let old = self.share.swap(percent.min(100), AcqRel);
        self.bump();
        old
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Acquire)
    }

    /// Returns whether it changed.
    pub fn set_ready(&self, ready: bool) -> bool {
        let changed = self.ready.swap(ready, AcqRel) != ready;
        if changed {
            self.bump();
        }
        changed
    }

    pub fn replica(&self) -> Option<Upstream> {
        lock(&self.replica).clone()
    }

    pub fn set_replica(&self, replica: Option<Upstream>) {
        *lock(&self.replica) = replica;
        self.bump();
    }

    /// Sessions whose replayed state changed place (a switch of the primary) re-route too.
    pub fn reroute(&self) {
        self.bump();
    }
}

/// The startup parameters of a read session's server connections: the client's, with its
/// transactions made read-only (appended to `options`, so it wins over an earlier `-c`).
pub(crate) fn read_only_params(mut params: Vec<(String, String)>) -> Vec<(String, String)> {
    match params.iter_mut().find(|(k, _)| k == "options") {
        Some((_, v)) if !v.trim().is_empty() => {
            v.push(' ');
            v.push_str(READ_ONLY_OPTION);
        }
        Some((_, v)) => *v = READ_ONLY_OPTION.to_owned(),
        None => params.push(("options".into(), READ_ONLY_OPTION.into())),
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_evenly_over_any_number_of_sessions() {
        let r = ReadRouting::default();
        let buckets: Vec<u8> = (0..10).map(|_| r.bucket()).collect();
        // Of the first n sessions, the share under p% is within one session of n * p / 100.
        for n in 1..=10usize {
            for p in [10u8, 25, 50, 75, 90] {
                let under = buckets[..n].iter().filter(|&&b| b < p).count() as f64;
                let want = n as f64 * p as f64 / 100.0;
                assert!((under - want).abs() <= 1.0, "n={n} p={p}: {under} vs {want} ({buckets:?})");
            }
        }
        assert!(buckets.iter().all(|&b| b < 100));
    }

    #[test]
    fn a_session_goes_to_the_replica_only_when_ready_and_inside_the_share() {
        let r = ReadRouting::default();
        let up = Upstream {
            name: "target".into(),
            host: "h".into(),
            port: 1,
            dbname: "d".into(),
            logins: Default::default(),
            tls: Default::default(),
        };
        r.set_replica(Some(up));
        let g = r.generation();
        r.set_share(50);
        assert!(r.generation() > g);
        assert!(r.replica_for(10).is_none(), "not ready");
        assert!(r.set_ready(true));
        assert!(!r.set_ready(true), "no change, no bump");
        assert_eq!(r.replica_for(10).unwrap().name, "target");
        assert!(r.replica_for(50).is_none());
        r.set_share(200);
        assert_eq!(r.share(), 100);
        assert!(r.replica_for(99).is_some());
        r.set_ready(false);
        assert!(r.replica_for(0).is_none());
    }

    #[test]
    fn read_only_is_appended_to_the_clients_options() {
        let p = read_only_params(vec![("user".into(), "u".into())]);
        assert_eq!(p[1], ("options".into(), READ_ONLY_OPTION.into()));
        let p = read_only_params(vec![("options".into(), "-c work_mem=8MB".into())]);
        assert_eq!(p[0].1, format!("-c work_mem=8MB {READ_ONLY_OPTION}"));
    }
}
