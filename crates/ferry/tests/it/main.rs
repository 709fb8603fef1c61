//! Ferry's integration tests, against real PostgreSQL servers started by scripts/test.sh.

mod bad_input;
mod cdc;
mod demo;
mod full_load;
mod harness;
mod resume;
