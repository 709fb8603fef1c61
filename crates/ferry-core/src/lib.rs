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
pub mod state;

pub use error::{ErrorClass, Fault};
pub use filter::{FilterError, TableFilter};
pub use ident::TableName;
pub use position::{Lsn, SourcePosition};
pub use secret::{redact_url, Secret};
pub use state::{Phase, TableState};
