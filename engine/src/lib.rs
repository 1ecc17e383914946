//! weir's engine: everything between "a message arrived" and "these are the rule's outputs",
//! with no network code.
//!
//! ```text
//!  Message ──▶ topic::TopicTrie ──▶ Rule::process(&[Message])
//!  (topic,      (which rules'        │
//!   client id,   FROM filter         ├─ decode: JSON payload → only the fields the rule reads
//!   payload)     matches)            ├─ meta:   + topic/clientid/timestamp/... columns
//!                                    ├─ plan:   DataFusion physical exprs, cached per schema
//!                                    ├─ eval:   WHERE mask → filter → SELECT projections
//!                                    └─ encode: JSON objects (+ `${...}` template values)
//! ```
//!
//! * [`Engine`] (`engine.rs`): the planning context every rule is compiled with:
//!   DataFusion's session state with weir's settings and functions, one per process.
//! * [`message`]: the message, its MQTT 5 properties and its acknowledgement.
//! * [`topic`]: MQTT topic filters and the trie that routes a topic to rules.
//! * [`dialect`]: the AWS IoT SQL dialect: parsing `SELECT ... FROM '<filter>' WHERE ...`,
//!   validating it, and rewriting it so that DataFusion plans it; every SQL function
//!   lives in [`dialect::functions`].
//! * [`fields`]: the payload fields a rule reads; [`meta`]: the metadata columns
//!   (topic, client id, ...) a rule reads beside them.
//! * [`decode`]: JSON payloads to Arrow, decoding only the fields a rule reads.
//! * [`rule`]: a compiled rule: plans cached per input schema, evaluated per batch, its
//!   outputs encoded as JSON.
//! * [`json_text`]: values with no one Arrow type, carried as JSON text.
//! * [`template`]: `${...}` substitution templates in action parameters.
//! * [`error`]: how every library error is classified (user, external, internal).
//! * [`memory`]: a rule's memory budget, and the allocator that counts what its evaluation
//!   allocates ([`memory::Counting`]), which each program installs over the allocator it
//!   chooses (the engine installs none).
//!
//! **JSON's dynamic types on Arrow's static ones.** A batch's column types come from its
//! messages: a field that is always a number is an Int64 or Float64 column and runs
//! vectorised. Messages that disagree (an Int in one, a Decimal in another; a number in one,
//! a string in another) are split into batches that agree, down to one message at a time,
//! so each keeps its own types ([`decode`]). A value that has no Arrow type at all (an
//! array mixing element types, `decode()` of a JSON document) is carried as JSON text
//! (see [`json_text`]) and written back as JSON.
//!
//! DataFusion plans and evaluates every expression; the engine owns no expression
//! interpreter. A rule is one SELECT over one message, so it is planned as a set of
//! physical expressions (one predicate, one per output column) evaluated directly on each
//! batch, with no operator tree or scheduling in between.

pub mod decode;
pub mod dialect;
mod engine;
pub mod error;
pub mod fields;
pub mod json_text;
pub mod memory;
pub mod message;
pub mod meta;
pub mod rule;
pub mod template;
pub mod topic;

/// The Arrow version the engine (DataFusion) uses, for crates that build batches too.
pub use datafusion::arrow;
pub use dialect::functions::shadows::ShadowReader;
pub use dialect::{SqlError, SqlVersion};
pub use engine::Engine;
pub use error::{Classify, ErrorClass};
pub use message::{Ack, Message, MqttProperties, next_seq, now_ms, trace_id};
pub use rule::{Failure, FailureReason, Outcome, Output, Rule};

/// The engine's tests evaluate rules within memory budgets, which only a counting
/// allocator meters (see [`memory::Counting`]); over the system's, as the engine does not
/// choose an allocator for the programs that link it.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: memory::Counting<std::alloc::System> = memory::Counting::new(std::alloc::System);
