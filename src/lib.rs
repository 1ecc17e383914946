//! The weir service: loads settings, wires ingress → pipeline → actions, serves the HTTP
//! API, keeps its objects in a store.
//!
//! * [`config`]: flags, environment and config file, one section a file.
//! * [`serve`]: the start-up and shutdown order; [`run`] binds the listeners its settings
//!   name and serves, [`serve()`] takes listeners the caller bound (tests bind port 0 and
//!   run weir in their own process).
//! * [`store`]: every object weir keeps (rules, connections, tokens), in files or in a
//!   fleet's PostgreSQL, and the feed of their changes.
//! * [`rules`]: the rule service, where every rule and connection change is checked,
//!   stored and started.
//! * [`pipeline`]: router, rule workers, action workers.
//! * [`api`]: the HTTP API; [`auth`]: who may use it (tokens and roles).
//! * [`fleet`]: replicas sharing a store and a broker's stream: PostgreSQL connections,
//!   membership, session takeover.
//! * [`cli`]: `weir rules ...`, the API client for scripts and CI.
//! * [`tls`]: TLS configurations from PEM files; [`private_file`]: files only weir's user
//!   may read.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod pipeline;
pub mod private_file;
pub mod rules;
pub mod serve;
pub mod shadow;
pub mod store;
pub mod tls;

pub use serve::{BindError, Listeners, run, serve};

/// The unit tests evaluate rules within memory budgets (`pipeline::evaluate`), which the
/// engine's counting allocator meters; over the allocator the binary runs on (main.rs).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: weir_engine::memory::Counting<mimalloc::MiMalloc> =
    weir_engine::memory::Counting::new(mimalloc::MiMalloc);
