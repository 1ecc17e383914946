//! Where messages come from besides the embedded broker: an external MQTT broker weir
//! subscribes to (and, in a fleet, when replicas take over each other's sessions there),
//! and Kafka topics.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use weir_connectors::kafka_ingress::KafkaSource;
use weir_connectors::mqtt::ExternalConfig;

use super::values::{OrOff, at_least_a_second};
use crate::fleet::FleetSettings;

#[derive(Debug, Clone, Args)]
pub struct IngressArgs {
    /// External broker to read from instead of the embedded one: mqtt://host:port or
    /// mqtts://host:port.
    #[arg(long)]
    pub broker: Option<String>,
    /// Username for the external broker.
    #[arg(long)]
    pub broker_username: Option<String>,
    /// Password for the external broker.
    #[arg(long, hide_env_values = true)]
    pub broker_password: Option<String>,
    /// MQTT client id weir uses at the external broker.
    #[arg(long, default_value = "weir")]
    pub broker_client_id: String,
    /// Start a clean session at the external broker instead of resuming a persistent one.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub broker_clean_session: bool,
    /// QoS of weir's subscriptions at the external broker: 0, 1 or 2.
    #[arg(long, default_value_t = 1)]
    pub broker_qos: u8,
    /// Subscribe as $share/<group>/<filter> so that several weir replicas split one stream.
    #[arg(long)]
    pub broker_share_group: Option<String>,
    /// PEM file of the CA of the external broker's certificate (mqtts://).
    #[arg(long)]
    pub broker_ca_file: Option<PathBuf>,
    /// PEM file of weir's client certificate, for mutual TLS.
    #[arg(long)]
    pub broker_client_cert: Option<PathBuf>,
    /// PEM file of weir's client key, for mutual TLS.
    #[arg(long)]
    pub broker_client_key: Option<PathBuf>,
    /// MQTT keep-alive with the external broker.
    #[arg(long, default_value = "30s")]
    pub broker_keep_alive: humantime::Duration,
    /// With --broker-share-group, a persistent session and a postgres:// --rule-store:
    /// how long a replica of the share group must be away before another takes over its
    /// broker session and processes its share, or `off`.
    #[arg(long, default_value = "15s")]
    pub broker_adopt_after: OrOff,
    /// How long a replica may be away before the one that took over its session drains
    /// it and ends it at the broker (its share goes to the others), or `off`.
    #[arg(long, default_value = "10m")]
    pub broker_retire_after: OrOff,
    /// Also consume Kafka topics as messages, with a consumer group:
    /// `kafka://host:9092[,host:9092]/topic[,topic][?group=NAME&instance=ID]` (group
    /// `weir`; instance: a static member id, one per replica; a topic starting with `^`
    /// is a regular expression). Offsets are committed once the rules
    /// hold a record's outputs.
    #[arg(long)]
    pub source: Option<String>,
}

/// Where messages come from.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    /// The external broker; `None`: the embedded one.
    pub broker: Option<ExternalConfig>,
    /// When replicas take over and end each other's broker sessions (see `src/fleet/`).
    pub fleet: FleetSettings,
    /// `--source`: Kafka topics consumed besides the MQTT ingress.
    pub source: Option<KafkaSource>,
}

impl IngressArgs {
    pub fn resolve(&self) -> anyhow::Result<IngressSettings> {
        let broker = match &self.broker {
            None => None,
            Some(url) => {
                let c = ExternalConfig {
                    url: url.clone(),
                    username: self.broker_username.clone(),
                    password: self.broker_password.clone(),
                    client_id: self.broker_client_id.clone(),
                    clean_session: self.broker_clean_session,
                    qos: self.broker_qos,
                    share_group: self.broker_share_group.clone(),
                    ca_file: self.broker_ca_file.clone(),
                    client_cert: self.broker_client_cert.clone(),
                    client_key: self.broker_client_key.clone(),
                    keep_alive: self.broker_keep_alive.into(),
                };
                c.validate().context("--broker")?;
                Some(c)
            }
        };
        Ok(IngressSettings {
            broker,
            fleet: FleetSettings {
                adopt_after: at_least_a_second("broker-adopt-after", self.broker_adopt_after)?,
                retire_after: at_least_a_second("broker-retire-after", self.broker_retire_after)?,
            },
            source: self
                .source
                .as_deref()
                .map(KafkaSource::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--source: {e}"))?,
        })
    }
}
