//! Kafka as one more sink (and source) of Ferry's change stream, in Debezium's format.
//!
//! * [`endpoint`]: `kafka://` URLs, security and the deadlines of every client.
//! * [`types`]: column values between PostgreSQL's text forms and Debezium's encodings.
//! * [`envelope`]: Debezium's event envelope, topic names and transaction metadata.
//! * [`sink`]: the Kafka sink of a change stream (`ferry capture`): events published by an
//!   idempotent producer, the source's position moving only once the broker holds them.

pub mod apply;
pub mod capture;
pub mod endpoint;
pub mod envelope;
pub mod group;
pub mod image;
pub mod mycapture;
pub mod offsets;
pub mod sink;
pub mod types;
pub mod via;

pub use endpoint::{is_kafka_url, KafkaEndpoint};
pub use sink::{KafkaSink, KafkaSinks};
