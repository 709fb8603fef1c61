//! Error classes shared by every engine.
//!
//! Every error Ferry raises carries a class that decides what happens next: a transient fault is
//! retried with backoff (a dropped connection, a restarting server), a definite one stops and
//! tells the operator what to do (bad password, missing privilege, a change the target rejects).
//! When we cannot tell, the fault is transient: retrying is safe because apply is idempotent.

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff: connection loss, server restart, serialization failure, timeouts.
    Transient,
    /// Stop and tell the operator: configuration, authentication, privileges, bad data.
    Definite,
}

/// Implemented by errors that know their class.
pub trait Fault {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}
