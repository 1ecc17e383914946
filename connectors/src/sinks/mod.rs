//! The sinks a rule's actions deliver to, one folder each with the same anatomy: `mod.rs`
//! (what the sink does, and its re-exports), `config.rs` (the [`SinkConfig`] a rule writes,
//! checked once, and the [`Connection`] an operator may name for it), `sink.rs` (the
//! running [`Sink`], built from the checked settings) and `tests.rs`. The contract they
//! implement and the worker that drives them are in [`crate::delivery`].
//!
//! This file is the registry: the list below is what makes `{"<kind>": {...}}` a valid
//! action in a rule, and `{"<connection kind>": {...}}` a valid named connection
//! (`/v1/connections`). Adding a sink is its folder, its `mod` line here and one line in
//! the list, its connection included (see `docs/extending.md`); the `registry!` macro
//! (`registry.rs`) makes [`ActionConfig`] and [`ConnectionConfig`] of the list.
//!
//! [`SinkConfig`]: crate::delivery::SinkConfig
//! [`Connection`]: crate::delivery::Connection
//! [`Sink`]: crate::delivery::Sink

mod action;
pub mod kafka;
pub mod object_store;
mod registry;
pub mod republish;
#[cfg(test)]
mod tests;
pub mod webhook;

pub use action::{Action, ActionWorker, WorkerInputs};
use registry::registry;

registry! {
    // The action (its kind and configuration) => its named connection, if it takes one.
    Republish(republish::RepublishConfig) => Mqtt(republish::MqttConnection),
    Webhook(webhook::WebhookConfig) => Webhook(webhook::WebhookConnection),
    ObjectStore(object_store::ObjectStoreConfig)
        => ObjectStore(object_store::ObjectStoreConnection),
    Kafka(kafka::KafkaConfig) => Kafka(kafka::KafkaConnection),
}
