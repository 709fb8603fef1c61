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
}
