//! Ferry's integration tests, against real PostgreSQL servers started by scripts/test.sh.

mod api;
mod api_security;
mod bad_input;
mod cdc;
mod certs;
mod complete;
mod cutover;
mod demo;
mod deploy;
mod durable;
mod failover;
mod full_load;
mod harness;
mod hostile;
mod large_objects;
mod managed;
mod mysql;
mod mysql_api;
mod mysql_cdc;
mod mysql_tls;
mod mysql_upgrade;
mod privileges;
mod proxy_tls;
mod resume;
mod tls;
mod verify;
