//! weir's connectors: how messages get in (MQTT, from the embedded broker or an external
//! one) and how rule outputs get out (the sinks of the rules' actions), plus the metrics
//! both report.
//!
//! * [`mqtt`]: the embedded broker and the external-broker client.
//! * [`delivery`]: how an action's outputs are delivered, whatever the sink: the contract
//!   every sink implements, and the worker, disk buffer and retry policy they share.
//! * [`sinks`]: one folder per sink (republish, webhook, kafka, object_store) and the
//!   registry that lists them.
//! * [`metrics`]: every metric weir exports.

pub mod delivery;
pub mod kafka_ingress;
pub mod metrics;
pub mod mqtt;
pub mod sinks;

/// `docs/extending.md`: its examples are compiled and run as doc tests, so that what it
/// shows builds against the code as it is.
#[cfg(doctest)]
#[doc = include_str!("../../docs/extending.md")]
pub struct ExtendingMd;
