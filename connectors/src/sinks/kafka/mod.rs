//! The Kafka action: each output becomes one record, produced with librdkafka (rdkafka).
//!
//! Defaults are the safe ones: `enable.idempotence=true` and `acks=all`, so a record the
//! broker acknowledged is on every in-sync replica and a retry inside librdkafka never
//! duplicates it. `message.timeout.ms` defaults to 30 s (librdkafka's own default is 5
//! minutes): a record the broker has not taken by then fails back to the worker, which
//! moves it to the action's disk buffer and retries from there. Every other setting
//! (compression, batching, SASL, TLS, ...) is passed through from `properties` as it is.
//!
//! A batch of outputs is handed to the producer at once and the worker awaits every
//! delivery report together, so librdkafka batches them on the wire.
mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{KafkaConfig, KafkaConnection};
pub use sink::{Kafka, Settings};
