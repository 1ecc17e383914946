//! The fleet: replicas of weir that share one store (`--rule-store postgres://...`) and
//! split one external broker's stream through a shared subscription.
//!
//! * [`pg`]: connections to the fleet's PostgreSQL, from URLs as libpq users write them,
//!   with TLS as libpq does it (`sslmode`, `sslrootcert`); passwords kept out of logs.
//! * [`members`]: the fleet's roll of replicas (`weir_members`), and the adoption of an
//!   away replica's broker session by another, until it returns or is retired.
//!
//! The objects the replicas share (rules, connections, tokens) and the feed of their
//! changes are the store's: [`crate::store::postgres`].

pub mod members;
pub mod pg;

pub use members::{Fleet, FleetSettings, start};
