//! The contract between a rule's actions and the sinks they deliver to, and the machinery
//! every sink shares. Nothing here knows any one sink: those live in [`crate::sinks`], one
//! folder each.
//!
//! A sink comes in two parts, three with a named connection:
//!
//! * its configuration as a rule writes it (`{"webhook": {...}}`), a [`SinkConfig`]:
//!   checked once, without I/O, when the rule is submitted, which parses its `${...}`
//!   templates and gives the [`Validated`] settings the sink is built from;
//! * if it takes one, the named [`Connection`] an operator defines once (endpoints,
//!   credentials) and actions name instead of writing them inline;
//! * the running [`Sink`], built from the validated settings, which makes one attempt at
//!   each output of a batch and says what came of it: an [`Outcome`] per output.
//!
//! Everything else is the [`worker`]'s, the same for every sink: the bounded queue in
//! front, batching, the [`disk_buffer`] for what the sink did not take, retries with the
//! action's [`RetryPolicy`], metrics, and the rule's error action for what fails for good.
//!
//! * [`contract`]: the traits a sink and its named connection implement; [`output`]: a
//!   delivery and its outcome; [`error`]: why a configuration was refused.
//! * [`worker`], [`disk_buffer`], [`retry`]: what drives every sink.
//! * [`policy`], [`secrets`]: what an inline destination may reach; write-only secrets.

pub mod contract;
pub mod disk_buffer;
pub mod error;
pub mod output;
pub(crate) mod owned_files;
pub mod policy;
pub mod retry;
pub mod secrets;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker;

pub use contract::{Connection, Sink, SinkConfig, SinkContext, Validated};
pub use error::ConfigError;
pub use output::{Delivery, Failure, Outcome, Reason};
pub use policy::Policy;
pub use retry::RetryPolicy;
pub use worker::{Undeliverable, WorkerSettings, run_worker};
