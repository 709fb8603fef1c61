//! MySQL and MariaDB sources for Ferry: the `mysql://` endpoint, `ferry check`'s prerequisite
//! checks, and the type map to PostgreSQL (`docs/mysql-types.md`). The target side (schema,
//! sink, state) is PostgreSQL's, from `ferry-postgres`.

pub mod apply;
pub mod binlog;
pub mod capture;
pub mod cdc;
pub mod charset;
pub mod cutover;
pub mod endpoint;
pub mod error;
pub mod flavor;
pub mod gtid;
pub mod mycnf;
pub mod preflight;
pub mod rows;
pub mod schema;
pub mod snapshot;
pub mod state;
pub mod statement;
pub mod switch;
pub mod tls;
pub mod types;
pub mod value;
pub mod verify;

pub use endpoint::{is_mysql_url, MyEndpoint};
pub use error::MyError;
