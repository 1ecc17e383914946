//! The republish action: publish each output to an MQTT topic, on the embedded broker or
//! on the external broker weir reads from. The topic may use `${...}` templates, e.g.
//! `alerts/${topic(3)}`.

mod config;
mod connection;
mod sink;
#[cfg(test)]
mod tests;

pub use config::RepublishConfig;
pub use connection::MqttConnection;
pub use sink::{Republish, Settings};
