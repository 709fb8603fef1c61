//! Moving the schema: what exists before the data (pre-data) and what is built after it.
//!
//! Pre-data (schemas, types, domains, tables, sequences, functions, defaults, identity and
//! generated columns, partitions) comes from `pg_dump --section=pre-data` run inside the
//! migration's exported snapshot: pg_dump is the one tool that renders every PostgreSQL object
//! faithfully, and using it keeps Ferry from re-implementing catalog-to-DDL for every type of
//! object. Post-data is split:
//!
//! * indexes, primary/unique/exclusion constraints and foreign keys are planned by Ferry from the
//!   catalog ([`post_data`]) so they can be built in parallel after the data, primary keys as
//!   unique indexes first then attached with `ADD CONSTRAINT ... USING INDEX`, foreign keys added
//!   `NOT VALID` then validated;
//! * everything else (triggers, rules, policies, statistics, comments on indexes, materialized
//!   view refreshes) is restored from pg_dump's post-data archive after those, in one transaction.
//!
//! Owners and privileges come with pg_dump's output (no `--no-owner --no-privileges`): owners
//! and GRANT/REVOKE (tables, columns, sequences, schemas, functions, types) with pre-data, so
//! they are in place before the data; row-level security (ENABLE), policies and default
//! privileges with the rest of post-data. Role names are rewritten by position
//! ([`role_names`]) through `--roles-map`; docs/roles.md.

mod build;
mod dump;
mod post_data;
mod role_names;

pub use build::{earlier_builds, restore_in_one_transaction, run_steps, StepOutcome};
pub use dump::{dump_pre_data, dump_remaining_post_data, dump_table, strip_restrict, PgTools, RoleRewrite, SchemaError, Script, WorkDir};
pub use post_data::{plan_post_data, PostDataPlan, Step, StepKind};
pub use role_names::{map_roles, map_roles_with, OwnerSchemaGrants};
