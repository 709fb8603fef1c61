//! Migration phases and per-table states, as persisted in the target's state schema.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The phase of a migration (see docs/ARCHITECTURE.md). Persisted as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checking prerequisites; nothing written yet.
    Assess,
    /// Slot and publication exist on the source; the target schema (pre-data) is being created.
    Schema,
    /// Copying table data inside the snapshot.
    FullLoad,
    /// Building indexes, constraints, foreign keys, triggers; syncing sequences.
    PostLoad,
    /// Streaming changes.
    Cdc,
    /// Comparing source and target.
    Verify,
    /// Switching traffic.
    Cutover,
    /// Traffic is on the target.
    CutOver,
    /// Finished and cleaned up.
    Complete,
    /// Switching traffic back.
    Rollback,
    /// Traffic is back on the source.
    RolledBack,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 11] = [
        Phase::Assess,
        Phase::Schema,
        Phase::FullLoad,
        Phase::PostLoad,
        Phase::Cdc,
        Phase::Verify,
        Phase::Cutover,
        Phase::CutOver,
        Phase::Complete,
        Phase::Rollback,
        Phase::RolledBack,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Assess => "assess",
            Phase::Schema => "schema",
            Phase::FullLoad => "full_load",
            Phase::PostLoad => "post_load",
            Phase::Cdc => "cdc",
            Phase::Verify => "verify",
            Phase::Cutover => "cutover",
            Phase::CutOver => "cut_over",
            Phase::Complete => "complete",
            Phase::Rollback => "rollback",
            Phase::RolledBack => "rolled_back",
        }
    }
}

impl Phase {
    /// The phases a migration may move to from this one (staying in the same phase, as a
    /// restarted process does, is always allowed). The graph of `../shared/design.md` section 2,
    /// with `post_load` after `full_load`:
    ///
    /// ```text
    /// assess -> schema -> full_load -> post_load -> cdc <-> verify
    /// cdc | verify -> cutover -> cut_over -> complete
    ///                 cutover -> cdc                  (aborted: traffic stays on the source)
    /// cut_over -> rollback -> rolled_back -> cdc      (forward replication resumes)
    ///             rollback -> cut_over                (aborted: traffic stays on the target)
    /// cdc | rolled_back -> complete                   (finished without cutover)
    /// ```
    pub fn next(self) -> &'static [Phase] {
        use Phase::*;
        match self {
            Assess => &[Schema],
            Schema => &[FullLoad],
            FullLoad => &[PostLoad],
            PostLoad => &[Cdc],
            Cdc => &[Verify, Cutover, Complete],
            Verify => &[Cdc, Cutover],
            Cutover => &[CutOver, Cdc],
            CutOver => &[Complete, Rollback],
            Rollback => &[RolledBack, CutOver],
            RolledBack => &[Cdc, Complete],
            Complete => &[],
        }
    }

    /// Whether moving from this phase to `to` is allowed.
    pub fn can_go_to(self, to: Phase) -> bool {
        self == to || self.next().contains(&to)
    }

    /// Checks a transition, with an error that says what is allowed instead.
    pub fn check_transition(self, to: Phase) -> Result<(), IllegalTransition> {
        if self.can_go_to(to) {
            Ok(())
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

/// A phase change the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_illegal(*.from, *.to))]
pub struct IllegalTransition {
    /// Current phase.
    pub from: Phase,
    /// Requested phase.
    pub to: Phase,
}

fn describe_illegal(from: Phase, to: Phase) -> String {
    let next = from.next();
    if next.is_empty() {
        format!("the migration is in phase {from}, which is final: it cannot move to {to}")
    } else {
        format!(
            "the migration is in phase {from} and cannot move to {to}; from {from} it can only move to {}",
            next.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown phase or state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for Phase {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// The state of one table's data in the full load. All states are durable (stored in
/// `ferry.tables`); each is set by the full-load orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// Planned; no data copied. Set when the migration's table list is recorded.
    Pending,
    /// A copy is under way from the snapshot recorded with the table. Set when the copy starts; a
    /// table found in this state after a crash is truncated and copied again from a new snapshot.
    Copying,
    /// All rows of the table's snapshot are on the target: set in the same target transaction
    /// that committed its last rows, so it is never set for data that is not there.
    Copied,
}

impl TableState {
    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Copying => "copying",
            TableState::Copied => "copied",
        }
    }
}

impl fmt::Display for TableState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TableState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [TableState::Pending, TableState::Copying, TableState::Copied]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.as_str()));
        }
        for s in [TableState::Pending, TableState::Copying, TableState::Copied] {
            assert_eq!(s.as_str().parse::<TableState>().unwrap(), s);
        }
        assert!("nope".parse::<Phase>().is_err());
    }

    #[test]
    fn transitions_follow_the_design_graph() {
        use Phase::*;
        // The happy path, step by step.
        let path = [
            Assess, Schema, FullLoad, PostLoad, Cdc, Verify, Cdc, Cutover, CutOver, Rollback, RolledBack, Cdc, Complete,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_go_to(w[1]), "{} -> {}", w[0], w[1]);
        }
        // Restarting in any phase is allowed.
        for p in Phase::ALL {
            assert!(p.can_go_to(p));
        }
        // Skipping ahead, going back to the load, and leaving a final phase are not.
        for (from, to) in [
            (Assess, FullLoad),
            (Schema, Cdc),
            (Cdc, FullLoad),
            (Cdc, CutOver),
            (CutOver, Cdc),
            (Complete, Cdc),
            (FullLoad, Cutover),
        ] {
            let e = from.check_transition(to).unwrap_err();
            assert_eq!((e.from, e.to), (from, to));
            assert!(e.to_string().contains(from.as_str()) && e.to_string().contains(to.as_str()), "{e}");
        }
        assert!(CutOver
            .check_transition(Cdc)
            .unwrap_err()
            .to_string()
            .contains("complete, rollback"));
        assert!(Complete.check_transition(Cdc).unwrap_err().to_string().contains("final"));
        // Every phase is reachable from assess.
        let mut seen = vec![Assess];
        let mut i = 0;
        while i < seen.len() {
            for n in seen[i].next() {
                if !seen.contains(n) {
                    seen.push(*n);
                }
            }
            i += 1;
        }
        assert_eq!(seen.len(), Phase::ALL.len());
    }
}
