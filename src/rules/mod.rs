//! The rule service: the one place rules and named connections are checked, stored and
//! started, for the HTTP API, for startup, and for the changes other replicas make.
//!
//! A rule is checked once per change (`check.rs`): its SQL version, its actions (each
//! validated by its sink, which also parses its `${...}` templates) and its SQL, compiled
//! with the actions' template expressions; its golden tests run (`test_run.rs`). Then, if
//! it is enabled, its sinks are built; it is written through the store over the version it
//! replaces (`service.rs`); and the pipeline starts it (or stops it, when disabled).
//! Changes are serialised by the lock of the rules.
//!
//! * [`spec`]: a rule as users write it and as weir stores it.
//! * [`state`]: the service, and its copies of the rules and connections.
//! * `service.rs`: rule changes: put, enable, disable, delete.
//! * [`connections`]: named connections, and changes checked against the rules naming them.
//! * `check.rs`: a rule checked without building anything.
//! * [`test_run`]: a rule tried on sample messages without deploying it.
//! * `load.rs`: the rule files of the queries directory, and the stored rules, at start.
//! * `follow.rs`: what another replica changed, brought in step here (the store's feed).
//! * [`error`]: why a change was refused.

mod check;
pub mod connections;
pub mod error;
mod follow;
mod load;
mod service;
pub mod spec;
pub mod state;
pub mod test_run;

pub use check::MAX_ACTIONS;
pub use error::RuleError;
pub use state::{MAX_CONNECTIONS, RuleService, StoredConnection};
