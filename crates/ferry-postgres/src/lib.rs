//! PostgreSQL for Ferry: connections, the replication protocol, catalog introspection,
//! preflight checks, schema transfer, the parallel snapshot copy, and Ferry's state schema.
//!
//! Protocol codecs ([`copy_binary`]) take bytes and return values, with no I/O, so they can be
//! tested and fuzzed on their own.

pub mod apply;
pub mod cdc;
pub mod complete;
pub mod conninfo;
pub mod copy_binary;
pub mod endpoint;
pub mod error;
pub mod export;
pub mod finding;
pub mod introspect;
pub mod largeobject;
pub mod pgoutput;
pub mod pgtls;
pub mod preflight;
pub mod replication;
pub mod roles;
pub mod schema;
pub mod sequences;
pub mod slot;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod switch;
pub mod verify;

pub use endpoint::Endpoint;
pub use error::PgError;
