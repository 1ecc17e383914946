//! Every metric weir exports, in one place. Names follow Prometheus conventions (`_total`,
//! `_seconds`); labels come from small closed sets: the rule's name, the action's label
//! (`<position>-<type>`, e.g. `0-webhook`, or `error-<type>` for the error action) and a
//! reason from a fixed list. Topics and device ids are never labels.

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The reasons of `weir_broker_messages_dropped_total`.
pub const BROKER_DROP_REASONS: &[&str] = &[
    "slow_subscriber",
    "queue_full",
    "too_large",
    "not_authorized",
    "expired",
    "retained_full",
];
/// The reasons of `weir_broker_connections_refused_total`.
pub const BROKER_REFUSAL_REASONS: &[&str] = &[
    "max_connections",
    "max_sessions",
    "anonymous",
    "bad_credentials",
    "client_id",
    "protocol",
    "tls",
    "websocket",
];
/// The reasons of `weir_kafka_records_dropped_total`.
pub const KAFKA_DROP_REASONS: &[&str] = &["too_large", "invalid_topic"];
/// The reasons of `weir_broker_subscriptions_refused_total`.
pub const BROKER_SUBSCRIBE_REFUSAL_REASONS: &[&str] =
    &["max_subscriptions", "not_authorized", "invalid"];

pub struct Metrics {
    registry: Registry,
    /// Messages the ingress received (embedded broker or external broker).
    pub ingress_messages: IntCounter,
    /// Messages that matched no enabled rule.
    pub ingress_unmatched: IntCounter,
    pub broker_connections: IntGauge,
    /// Connected clients of the embedded broker that are idle and parked (no task).
    pub broker_parked: IntGauge,
    /// Sessions the embedded broker holds, connected or not.
    pub broker_sessions: IntGauge,
    /// Retained messages the embedded broker holds.
    pub broker_retained: IntGauge,
    /// Bytes queued or in flight for the embedded broker's clients.
    pub broker_queued_bytes: IntGauge,
    /// SUBSCRIBE and UNSUBSCRIBE packets the external broker has not acknowledged yet.
    pub external_subscriptions_pending: IntGauge,
    /// Sessions of away replicas this one has adopted (see `src/fleet.rs`).
    pub fleet_adopted_sessions: IntGauge,
    /// Sessions of away replicas this one adopted, ever.
    pub fleet_adoptions: IntCounter,
    /// Sessions of replicas away for longer than --broker-retire-after that this one
    /// drained and ended.
    pub fleet_retired: IntCounter,
    pub broker_received: IntCounter,
    /// Messages the embedded broker did not pass on, by reason (see [`BROKER_DROP_REASONS`]).
    pub broker_dropped: IntCounterVec,
    pub broker_slow: IntCounter,
    pub rule_store_corrupt: IntCounter,
    /// Files of the embedded broker's saved state that could not be read at start.
    pub broker_state_corrupt: IntCounter,
    /// Connections the embedded broker refused, by reason ([`BROKER_REFUSAL_REASONS`]).
    pub broker_refused: IntCounterVec,
    /// SUBSCRIBE filters refused, by reason ([`BROKER_SUBSCRIBE_REFUSAL_REASONS`]).
    pub broker_subscriptions_refused: IntCounterVec,
    /// Records of `--source kafka://` that were not made messages, by reason.
    pub kafka_dropped: IntCounterVec,
    /// Messages whose topic matched the rule's FROM filter.
    pub rule_matched: IntCounterVec,
    /// Messages for which the rule produced an output (WHERE true).
    pub rule_passed: IntCounterVec,
    /// Messages for which WHERE was false or undefined.
    pub rule_filtered: IntCounterVec,
    /// Messages the rule could not process, by reason.
    pub rule_failed: IntCounterVec,
    /// Time from receipt of a message to its outputs being handed to the actions.
    pub rule_latency: HistogramVec,
    /// Outputs an action delivered (the sink acknowledged them).
    pub action_delivered: IntCounterVec,
    /// Time from receipt of a message to the sink acknowledging its output.
    pub action_latency: HistogramVec,
    /// Outputs an action gave up on and sent to the rule's error action, by reason.
    pub action_dead_lettered: IntCounterVec,
    pub action_buffer_corrupt: IntCounterVec,
    /// Delivery attempts that failed and were retried.
    pub action_retries: IntCounterVec,
    /// Outputs waiting in an action's queue (memory).
    pub action_queued: IntGaugeVec,
    /// Outputs being delivered right now.
    pub action_in_flight: IntGaugeVec,
    /// Bytes in an action's disk buffer, not yet delivered.
    pub action_buffered_bytes: IntGaugeVec,
    /// Outputs in an action's disk buffer, not yet delivered.
    pub action_buffered: IntGaugeVec,
    /// Device shadow requests, by operation and outcome.
    pub shadow_requests: IntCounterVec,
    /// Time from a shadow request's arrival to its answers' publication.
    pub shadow_latency: HistogramVec,
    /// Shadows held (and deleted shadows' tombstones, kept 48 hours).
    pub shadow_documents: IntGauge,
    /// Bytes the shadow store takes.
    pub shadow_bytes: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        // A counter with one label, `reason`, from a closed set: every reason is exported
        // from the start (at 0), so that dashboards and alerts see it before it happens.
        let labelled = |name: &str, help: &str, reasons: &[&str]| {
            let c = vec(name, help, &["reason"]);
            for r in reasons {
                c.with_label_values(&[*r]);
            }
            c
        };
        let gauge = |name: &str, help: &str| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), &["rule", "action"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let broker_connections = plain_gauge(
            "weir_broker_connections",
            "Clients connected to the embedded MQTT broker.",
        );
        let external_subscriptions_pending = plain_gauge(
            "weir_external_subscription_changes_pending",
            "SUBSCRIBE and UNSUBSCRIBE packets sent to the external broker and not acknowledged yet.",
        );
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Self {
            ingress_messages: counter(
                "weir_ingress_messages_total",
                "Messages received from MQTT.",
            ),
            ingress_unmatched: counter(
                "weir_ingress_unmatched_total",
                "Messages that matched no enabled rule.",
            ),
            broker_connections,
            broker_parked: plain_gauge(
                "weir_broker_connections_parked",
                "Clients of the embedded MQTT broker that are connected and idle, held without a task of their own until they send something, something is sent to them, or their keep-alive runs out.",
            ),
            broker_sessions: plain_gauge(
                "weir_broker_sessions",
                "Sessions the embedded MQTT broker holds, of connected clients and of persistent sessions whose client is away.",
            ),
            broker_retained: plain_gauge(
                "weir_broker_retained_messages",
                "Retained messages the embedded MQTT broker holds.",
            ),
            broker_queued_bytes: plain_gauge(
                "weir_broker_queued_bytes",
                "Bytes of messages queued or in flight for the embedded MQTT broker's clients.",
            ),
            external_subscriptions_pending,
            fleet_adopted_sessions: plain_gauge(
                "weir_fleet_adopted_sessions",
                "Persistent sessions of away replicas (same share group) that this replica has taken over at the external broker.",
            ),
            fleet_adoptions: counter(
                "weir_fleet_adoptions_total",
                "Persistent sessions of away replicas this replica took over.",
            ),
            fleet_retired: counter(
                "weir_fleet_sessions_retired_total",
                "Sessions of replicas away for longer than --broker-retire-after that this replica drained and ended at the external broker.",
            ),
            broker_received: counter(
                "weir_broker_messages_received_total",
                "PUBLISH packets the embedded broker received.",
            ),
            broker_dropped: labelled(
                "weir_broker_messages_dropped_total",
                "Messages the embedded broker did not pass on, by reason: slow_subscriber (a connected subscriber's queue was full), queue_full (an offline session's queue, or all queues together, was full), too_large (over the subscriber's maximum packet size), not_authorized (the ACL refused the publisher's write or the subscriber's read), expired (MQTT 5 message expiry), retained_full (passed on but not retained: the retained store was full).",
                BROKER_DROP_REASONS,
            ),
            rule_store_corrupt: counter(
                "weir_rule_store_corrupt_lines_total",
                "Lines of the store's journal that could not be read at start: changes of rules, connections or tokens lost to a damaged file.",
            ),
            broker_state_corrupt: counter(
                "weir_broker_state_corrupt_files_total",
                "Files of the embedded broker's saved state (sessions, retained messages, queues) that could not be read at start and were set aside.",
            ),
            broker_slow: counter(
                "weir_broker_slow_subscribers_disconnected_total",
                "Subscribers of the embedded broker disconnected because their queue outgrew its bounds.",
            ),
            broker_refused: labelled(
                "weir_broker_connections_refused_total",
                "Connections the embedded broker refused, by reason: max_connections, max_sessions (a new session past --mqtt-max-sessions), anonymous (no username where anonymous clients are not allowed), bad_credentials, client_id (empty where not allowed, or not the TLS certificate's name), protocol, tls (a failed TLS handshake), websocket (a failed WebSocket handshake).",
                BROKER_REFUSAL_REASONS,
            ),
            broker_subscriptions_refused: labelled(
                "weir_broker_subscriptions_refused_total",
                "SUBSCRIBE filters the embedded broker refused, by reason: max_subscriptions, not_authorized (the ACL), invalid.",
                BROKER_SUBSCRIBE_REFUSAL_REASONS,
            ),
            kafka_dropped: labelled(
                "weir_kafka_records_dropped_total",
                "Records of the Kafka source (--source) skipped, their offsets committed, by reason: too_large (over --mqtt-max-packet-size, as a device's message would be), invalid_topic (empty, with + # or NUL, or over 128 levels).",
                KAFKA_DROP_REASONS,
            ),
            rule_matched: vec(
                "weir_rule_messages_matched_total",
                "Messages whose topic matched the rule's FROM filter.",
                &["rule"],
            ),
            rule_passed: vec(
                "weir_rule_messages_passed_total",
                "Messages for which the rule produced an output.",
                &["rule"],
            ),
            rule_filtered: vec(
                "weir_rule_messages_filtered_total",
                "Messages for which the rule's WHERE clause was false or undefined.",
                &["rule"],
            ),
            rule_failed: vec(
                "weir_rule_messages_failed_total",
                "Messages the rule could not process, by reason.",
                &["rule", "reason"],
            ),
            rule_latency: histogram(
                "weir_rule_processing_seconds",
                "Time from receipt of a message to its outputs being handed to the rule's actions.",
                &["rule"],
            ),
            action_latency: histogram(
                "weir_action_delivery_seconds",
                "Time from receipt of a message to the action's sink acknowledging its output.",
                &["rule", "action"],
            ),
            action_delivered: vec(
                "weir_action_delivered_total",
                "Outputs an action delivered (the sink acknowledged them).",
                &["rule", "action"],
            ),
            action_dead_lettered: vec(
                "weir_action_dead_lettered_total",
                "Outputs an action gave up on and sent to the rule's error action, by reason.",
                &["rule", "action", "reason"],
            ),
            action_buffer_corrupt: vec(
                "weir_action_buffer_corrupt_regions_total",
                "Corrupt stretches found in an action's disk buffer at start: outputs lost to a damaged disk or file.",
                &["rule", "action"],
            ),
            action_retries: vec(
                "weir_action_retries_total",
                "Delivery attempts that failed and were retried.",
                &["rule", "action"],
            ),
            action_queued: gauge(
                "weir_action_queued",
                "Outputs waiting in an action's in-memory queue.",
            ),
            action_in_flight: gauge(
                "weir_action_in_flight",
                "Outputs an action is delivering right now.",
            ),
            action_buffered_bytes: gauge(
                "weir_action_buffered_bytes",
                "Bytes in an action's disk buffer, not yet delivered.",
            ),
            action_buffered: gauge(
                "weir_action_buffered",
                "Outputs in an action's disk buffer, not yet delivered.",
            ),
            shadow_requests: vec(
                "weir_shadow_requests_total",
                "Device shadow requests (MQTT and HTTP), by op (update, get, delete) and outcome (accepted, invalid, not_found, conflict, too_large, throttled, failed).",
                &["op", "outcome"],
            ),
            shadow_latency: histogram(
                "weir_shadow_request_seconds",
                "Time from a device shadow request's arrival to its answers being published (the change synced to disk first).",
                &["op"],
            ),
            shadow_documents: plain_gauge(
                "weir_shadow_documents",
                "Device shadows weir holds, with deleted shadows' tombstones (kept 48 hours).",
            ),
            shadow_bytes: plain_gauge(
                "weir_shadow_bytes",
                "Bytes the device shadow store takes: its file under the data directory, or in a fleet the weir_shadows table (as of its last count).",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        text.push_str(&process_metrics());
        text
    }

    /// Forgets a deleted rule's series so that they stop being exported.
    pub fn forget_rule(&self, rule: &str) {
        for v in [
            &self.rule_matched,
            &self.rule_passed,
            &self.rule_filtered,
            &self.rule_failed,
            &self.action_delivered,
            &self.action_dead_lettered,
            &self.action_buffer_corrupt,
            &self.action_retries,
        ] {
            forget(v, rule);
        }
        for v in [
            &self.action_queued,
            &self.action_in_flight,
            &self.action_buffered_bytes,
            &self.action_buffered,
        ] {
            forget(v, rule);
        }
        let _ = self.rule_latency.remove_label_values(&[rule]);
        forget(&self.action_latency, rule);
    }
}

/// Removes a rule's series from a metric family.
fn forget<P: MetricVecBuilder>(v: &MetricVec<P>, rule: &str) {
    for fam in v.collect() {
        for m in fam.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("rule") == Some(&rule) {
                // Removing a series that is already gone is not an error worth a line.
                let _ = v.remove(&labels);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's CPU time, resident memory and open files, named as Prometheus's client
/// libraries name them, read from `/proc/self` at each scrape (none elsewhere than Linux).
fn process_metrics() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks of 1/100 s
    // (USER_HZ); the fields are counted after the command name, which may hold spaces.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) / 100.0)
        });
    if let Some(cpu) = cpu {
        let _ = write!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n"
        );
    }
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        });
    if let Some(kib) = rss {
        let _ = write!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            kib * 1024
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = write!(
            out,
            "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_forgets() {
        let m = Metrics::new();
        m.rule_matched.with_label_values(&["r1"]).inc();
        m.rule_failed
            .with_label_values(&["r1", "invalid_json"])
            .inc();
        m.rule_latency.with_label_values(&["r1"]).observe(0.001);
        m.action_latency
            .with_label_values(&["r1", "republish"])
            .observe(0.002);
        let text = m.render();
        assert!(
            text.contains("weir_rule_messages_matched_total{rule=\"r1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_rule_messages_failed_total{reason=\"invalid_json\",rule=\"r1\"} 1")
        );
        assert!(
            text.contains(
                "weir_action_delivery_seconds_bucket{action=\"republish\",rule=\"r1\",le=\"0.0025\"} 1"
            ),
            "{text}"
        );
        m.forget_rule("r1");
        let text = m.render();
        assert!(!text.contains("rule=\"r1\""), "{text}");
    }
}
