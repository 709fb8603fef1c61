//! Ferry's engine-neutral model.
//!
//! Everything a migration talks about, independent of the database engine on either side:
//! table identities, source positions, per-table and per-migration states, the change-event
//! model that CDC streams, table filters, and secrets that never print. No I/O lives here.

pub mod change;
pub mod error;
pub mod filter;
pub mod ident;
pub mod position;
pub mod secret;
pub mod sink;
pub mod state;
pub mod switch;
pub mod url;

pub use error::{ErrorClass, Fault};
pub use filter::{FilterError, TableFilter};
pub use ident::TableName;
pub use position::{BinlogPosition, Lsn, SourcePosition};
pub use secret::{redact_url, Secret};
pub use state::{Phase, TableState};

/// Milliseconds since the Unix epoch (0 if the clock is before it): timestamps shared between
/// tasks through atomics.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration for people, in messages: `250 ms`, `10 s`, `1.5 s`.
pub fn human_duration(d: std::time::Duration) -> String {
    if d < std::time::Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(super::human_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(super::human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(super::human_duration(Duration::from_millis(1500)), "1.5 s");
    }
}
