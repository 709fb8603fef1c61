//! What `ferry check` reports: findings, each with its severity and fix. Its own module so
//! that every part of the check (prerequisites, privileges, roles) reports the same way without
//! importing one another.

use serde::Serialize;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Fine; shown for the record.
    Ok,
    /// Worth knowing.
    Info,
    /// Works, with a consequence the operator should accept knowingly.
    Warning,
    /// The migration cannot start until this is fixed.
    Blocker,
}

/// One result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Blocker, warning, info or ok.
    pub severity: Severity,
    /// "source", "target" or "tools".
    pub side: &'static str,
    /// Short name of the check.
    pub check: &'static str,
    /// What was found.
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}
