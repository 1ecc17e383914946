//! weir-load's command line: the workload's knobs, where the outputs go, how often to
//! measure.

use std::path::PathBuf;

use clap::Parser;
use rumqttc::QoS;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weir-load",
    about = "End-to-end load test of weir through a real MQTT broker, beside the broker's ceiling"
)]
pub struct Args {
    /// The weir binary to start.
    #[arg(long, default_value = "target/release/weir")]
    pub(crate) weir: PathBuf,
    /// Use this broker (host:port) instead of starting a Mosquitto.
    #[arg(long)]
    pub(crate) broker: Option<String>,
    /// Messages to publish in each run.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) messages: u64,
    /// Devices; each publishes to load/<device>/metrics.
    #[arg(long, default_value_t = 100)]
    pub(crate) devices: u64,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    pub(crate) publishers: u64,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 250)]
    pub(crate) payload_bytes: usize,
    /// QoS of the publishes and of weir's subscription (0 or 1).
    #[arg(long, default_value_t = 0)]
    pub(crate) qos: u8,
    /// Total publish rate in messages/s; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Rules installed, each with its own topic filter; one matches the workload. Above
    /// 1, the workload runs twice: with the one rule, then on a fresh weir with the others
    /// installed too, to report the memory per idle rule and the cost per message beside
    /// the single-rule run.
    #[arg(long, default_value_t = 1)]
    pub(crate) rules: u64,
    /// Rule-change latency samples: a new rule is submitted while a device publishes to
    /// its topic every millisecond, and the time to its first output is taken.
    #[arg(long, default_value_t = 5)]
    pub(crate) rule_changes: u32,
    /// Fraction of messages the matching rule's WHERE clause passes (0.0 to 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) selectivity: f64,
    /// Where the rule's outputs go: `mqtt` republishes them to `out/<device>` on the same
    /// broker, where the harness takes their latency (the broker then carries the outputs
    /// too, which caps the ratio below 1 / (1 + selectivity) when the broker is the
    /// bottleneck); `file` writes them as JSON lines to local files (the object_store
    /// action), so that the broker carries only the workload, as in the ceiling run: the
    /// throughput is then taken from weir's own count of matched messages and the files
    /// are counted, but latency is not measured.
    #[arg(long, value_enum, default_value_t = Sink::Mqtt)]
    pub(crate) sink: Sink,
    /// Devices publish to weir's embedded broker instead of the external one: the
    /// ceiling (a plain subscriber on Mosquitto, or `--broker`) beside weir as the broker
    /// and the rules engine at once.
    #[arg(long)]
    pub(crate) embedded: bool,
    /// Skip the plain-subscriber ceiling run.
    #[arg(long)]
    pub(crate) skip_ceiling: bool,
    /// Measure the ceiling and weir this many times, alternately, and report each pair's
    /// ratio and their median: on a shared machine one pair can be off by 15 %.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: u32,
    /// Write each of weir's republished outputs, as it arrives, to FILE: its publish time
    /// and its latency, in microseconds, one line each (the last run's outputs). Shows
    /// whether a latency tail is spread over the run or comes from a few stalls.
    #[arg(long, value_name = "FILE")]
    pub(crate) latency_trace: Option<PathBuf>,
    /// Internal: be a counting subscriber (the ceiling's, or the receiver of weir's
    /// outputs; a process of its own, as weir is) on `--broker`, print "ready" once
    /// subscribed, then the report once `--messages` arrived or nothing came for 3 s after
    /// the first.
    #[arg(long, hide = true)]
    pub(crate) ceiling_subscriber: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    Mqtt,
    File,
}

pub(crate) fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}
