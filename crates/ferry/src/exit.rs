//! Exit codes (see the design): 0 success, 1 a check found a problem, 2 usage error, 3 runtime failure.

/// Success.
pub const OK: i32 = 0;
/// A check or verification found a problem.
pub const FOUND_PROBLEM: i32 = 1;
/// The command line was wrong.
pub const USAGE: i32 = 2;
/// Something failed while running.
pub const RUNTIME: i32 = 3;

/// An error in what the user asked for (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Checks found blockers (exit code 1); the report was printed already.
#[derive(Debug)]
pub struct Blocked;

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("prerequisites are not met: fix the blockers listed above and rerun")
    }
}

impl std::error::Error for Blocked {}

/// The exit code for an error.
pub fn code_for(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some() {
        USAGE
    } else if e.downcast_ref::<Blocked>().is_some() {
        FOUND_PROBLEM
    } else {
        RUNTIME
    }
}

/// Prints an error chain for humans, skipping links that repeat what was already said.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\n  caused by: ");
        }
        out.push_str(&text);
    }
    // Belt and braces: whatever a driver put in a message, no URL password leaves the process.
    ferry_core::redact_url(&out)
}
