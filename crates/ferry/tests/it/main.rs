//! Ferry's integration tests, against real PostgreSQL servers started by scripts/test.sh.

mod api;
mod bad_input;
mod certs;
mod cdc;
mod cutover;
mod demo;
mod deploy;
mod durable;
mod full_load;
mod harness;
mod mysql;
mod mysql_cdc;
mod resume;
mod verify;
