//! Kafka ingress (`--source kafka://...`): weir consumes Kafka topics with a consumer
//! group, for users whose broker already bridges MQTT into Kafka. One record is one
//! message:
//!
//! | message | from the record |
//! |---|---|
//! | `topic()` | the header `mqtt_topic` if there is one (bridges carry the MQTT topic there), else the Kafka topic |
//! | `clientid()` | the header `mqtt_clientid` if there is one, else the record's key (UTF-8) |
//! | `get_user_properties()` | the other headers whose values are UTF-8, in order |
//! | `get_mqtt_property('content_type')` | the header `content_type` |
//!
//! Offsets are committed only up to the first record whose outputs are not all delivered
//! or in a disk buffer: a record's acknowledgement (the last rule and action letting go of
//! it) marks its offset done, and the offset stored for the group's next commit (every
//! second) is the lowest offset of each partition still in the rules' hands. A replica
//! that crashes, or loses a partition to another, replays from there: at least once.
//! Partitions keep a device's records in order across replicas (Kafka's key
//! partitioning).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_engine::topic::validate_topic;
use weir_engine::{Ack, Classify, ErrorClass, Message, MqttProperties};

use crate::metrics::Metrics;

/// A `--source kafka://brokers/topics?group=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSource {
    pub bootstrap_servers: String,
    /// Topic names, or regular expressions (starting with `^`).
    pub topics: Vec<String>,
    pub group: String,
    /// Kafka's static membership (`group.instance.id`): a replica that comes back under
    /// the same id takes its partitions again at once, without waiting for the group to
    /// notice that it died.
    pub instance: Option<String>,
}

impl KafkaSource {
    /// Parses `kafka://host:port[,host:port...]/topic[,topic...][?group=NAME]` (group
    /// `weir` by default; a topic starting with `^` is a regular expression).
    pub fn parse(url: &str) -> Result<Self, SourceError> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| SourceError::NotKafka(url.to_owned()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, topics) = rest
            .split_once('/')
            .ok_or_else(|| SourceError::NoTopicPath(url.to_owned()))?;
        if brokers.is_empty() {
            return Err(SourceError::NoBrokers(url.to_owned()));
        }
        let topics: Vec<String> = topics
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if topics.is_empty() {
            return Err(SourceError::NoTopic(url.to_owned()));
        }
        let mut group = "weir".to_owned();
        let mut instance = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("group", g)) if !g.is_empty() => group = g.to_owned(),
                Some(("instance", i)) if !i.is_empty() => instance = Some(i.to_owned()),
                _ => {
                    return Err(SourceError::UnknownParameter {
                        url: url.to_owned(),
                        pair: pair.to_owned(),
                    });
                }
            }
        }
        Ok(Self {
            bootstrap_servers: brokers.to_owned(),
            topics,
            group,
            instance,
        })
    }
}

/// Why `--source` was refused, or its consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--source must be kafka://brokers/topics, got '{0}'")]
    NotKafka(String),
    #[error("--source {0}: no topic after the brokers (kafka://host:9092/topic)")]
    NoTopicPath(String),
    #[error("--source {0}: no brokers")]
    NoBrokers(String),
    #[error("--source {0}: no topic")]
    NoTopic(String),
    #[error("--source {url}: unknown parameter '{pair}' (group=NAME, instance=ID)")]
    UnknownParameter { url: String, pair: String },
    #[error("--source: cannot create the Kafka consumer: {0}")]
    Consumer(KafkaError),
    #[error("--source: cannot subscribe to {topics:?}: {error}")]
    Subscribe {
        topics: Vec<String>,
        error: KafkaError,
    },
}

/// A source is the operator's to fix: librdkafka refuses a consumer or a subscription for
/// its settings (a topic's regular expression), not for a broker that is away.
impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// A partition's records in the rules' hands, and the offset after the last one read.
#[derive(Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    next: i64,
}

impl Partition {
    /// The offset to commit: the first one not done.
    fn committable(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// Starts consuming; the records go to `ingress` until `cancel`. A record larger than
/// `max_bytes` (the bound on a device's message), or whose topic is not a valid MQTT
/// topic name, is skipped, logged and counted, and its offset committed like the others.
pub fn start(
    source: &KafkaSource,
    ingress: mpsc::Sender<Message>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let mut config = ClientConfig::new();
    if let Some(i) = &source.instance {
        config.set("group.instance.id", i);
    }
    let consumer: StreamConsumer = config
        .set("bootstrap.servers", &source.bootstrap_servers)
        .set("group.id", &source.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by hand, once the rules hold a record's outputs.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A replica that died gives up its partitions after 10 s, not the default 45.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        .create()
        .map_err(SourceError::Consumer)?;
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|error| SourceError::Subscribe {
            topics: source.topics.clone(),
            error,
        })?;
    tracing::info!(brokers = %source.bootstrap_servers, topics = ?source.topics, group = %source.group, "consuming from Kafka");
    tokio::spawn(run(consumer, ingress, max_bytes, metrics, cancel));
    Ok(())
}

async fn run(
    consumer: StreamConsumer,
    ingress: mpsc::Sender<Message>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Arc<str>, i32, i64)>();
    let mut partitions: HashMap<(Arc<str>, i32), Partition> = HashMap::new();
    let mut topic_names: HashMap<String, Arc<str>> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some((topic, partition, offset)) = done_rx.recv() => {
                if let Some(p) = partitions.get_mut(&(topic.clone(), partition)) {
                    p.in_flight.remove(&offset);
                    let commit = p.committable();
                    // librdkafka stores the offset given plus one.
                    if commit > 0
                        && let Err(e) = consumer.store_offset(&topic, partition, commit - 1)
                    {
                        tracing::debug!(%topic, partition, error = %e, "offset not stored (partition revoked?)");
                    }
                }
            }
            received = consumer.recv() => {
                let record = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka source");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let topic = topic_names
                    .entry(record.topic().to_owned())
                    .or_insert_with(|| Arc::from(record.topic()))
                    .clone();
                let (partition, offset) = (record.partition(), record.offset());
                let p = partitions.entry((topic.clone(), partition)).or_default();
                p.in_flight.insert(offset);
                p.next = p.next.max(offset + 1);
                let done = done_tx.clone();
                let ack_topic = topic.clone();
                let dropped = if record.payload_len() > max_bytes {
                    Some("too_large")
                } else {
                    None
                };
                let message = match dropped {
                    Some(reason) => Err(reason),
                    None => Some(to_message(&record))
                        .filter(|m| validate_topic(&m.topic).is_ok())
                        .ok_or("invalid_topic"),
                };
                let mut message = match message {
                    Ok(m) => m,
                    Err(reason) => {
                        metrics.kafka_dropped.with_label_values(&[reason]).inc();
                        tracing::warn!(%topic, partition, offset, reason, "Kafka record skipped");
                        let _ = done.send((ack_topic, partition, offset));
                        continue;
                    }
                };
                message.ack = Ack::on_drop(move || {
                    let _ = done.send((ack_topic, partition, offset));
                });
                drop(record);
                if ingress.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
    // What is done is committed now; the rest is read again by the next consumer.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "Kafka source: final commit");
    }
}

/// A record as a message, by the mapping in the module's documentation.
fn to_message(record: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    let mut mqtt_topic = None;
    let mut client_id = None;
    let mut properties = MqttProperties::default();
    let mut has_headers = false;
    if let Some(headers) = record.headers() {
        for h in headers.iter() {
            has_headers = true;
            let Some(value) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            match h.key {
                "mqtt_topic" => mqtt_topic = Some(value.to_owned()),
                "mqtt_clientid" => client_id = Some(value.to_owned()),
                "content_type" => properties.content_type = Some(value.to_owned()),
                key => properties
                    .user_properties
                    .push((key.to_owned(), value.to_owned())),
            }
        }
    }
    let topic = mqtt_topic.unwrap_or_else(|| record.topic().to_owned());
    let mut message = Message::new(topic, record.payload().unwrap_or_default().to_vec());
    message.client_id = client_id.or_else(|| {
        record
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
    });
    if has_headers {
        message.properties = Some(Arc::new(properties));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            KafkaSource::parse("kafka://k1:9092,k2:9092/devices,^plant\\..*?group=fleet").unwrap(),
            KafkaSource {
                bootstrap_servers: "k1:9092,k2:9092".to_owned(),
                topics: vec!["devices".to_owned(), "^plant\\..*".to_owned()],
                group: "fleet".to_owned(),
                instance: None,
            }
        );
        assert_eq!(
            KafkaSource::parse("kafka://k:9092/t").unwrap().group,
            "weir"
        );
        for bad in [
            "mqtt://k/t",
            "kafka://k:9092",
            "kafka:///t",
            "kafka://k/t?partition=1",
        ] {
            assert!(KafkaSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_offset_committed_is_the_first_not_done() {
        let mut p = Partition::default();
        for o in 10..15 {
            p.in_flight.insert(o);
            p.next = o + 1;
        }
        p.in_flight.remove(&11);
        assert_eq!(p.committable(), 10);
        p.in_flight.remove(&10);
        assert_eq!(p.committable(), 12);
        for o in 12..15 {
            p.in_flight.remove(&o);
        }
        assert_eq!(p.committable(), 15);
    }
}
