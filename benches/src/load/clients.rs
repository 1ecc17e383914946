//! The harness's own MQTT clients: the publishers of the workload, and subscribers that
//! record when each message arrived and how late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;
// Nagle's algorithm off, as on weir's own connections and the broker (`set_tcp_nodelay`):
// otherwise a small write can wait up to 40 ms for a delayed ACK.
use weir_connectors::mqtt::no_delay;

use super::args::{Args, qos};

/// A client id no other client of this run has: two MQTT clients with one id take the
/// session from each other, over and over, and the broker drops what was in flight. (Ids
/// made from `free_port()` could collide: the kernel may hand a released port out again.)
pub(crate) fn client_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// What a counting subscriber saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) count: u64,
    pub(crate) first: Option<Instant>,
    pub(crate) last: Option<Instant>,
    pub(crate) latencies_us: Vec<u64>,
    /// Publish time and latency of every output, in arrival order, when traced.
    pub(crate) trace: Option<Vec<(u64, u64)>>,
}

/// A subscription; dropping it closes its connection, so that a finished measurement
/// (the ceiling's subscriber) does not keep the broker and this process busy during the
/// next one.
pub(crate) struct Subscriber {
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The publish time in a payload that starts with `{"ts":<microseconds>` (the workload's
/// messages and the load rule's outputs both do): read without parsing the JSON, so
/// that the ceiling's subscriber does little more than count.
fn publish_time(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(br#"{"ts":"#)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Subscribes to `filter` and records every message's arrival and latency.
pub(crate) async fn subscriber(
    broker: SocketAddr,
    filter: &str,
    q: QoS,
    seen: Arc<Mutex<Seen>>,
) -> Subscriber {
    let mut o = MqttOptions::new(
        client_id("load-sub"),
        broker.ip().to_string(),
        broker.port(),
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 1000);
    el.set_network_options(no_delay());
    client.subscribe(filter, q).await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    let sent = publish_time(&p.payload);
                    let mut s = seen.lock().await;
                    if let Some(ts) = sent {
                        if ts == 0 {
                            continue; // a probe
                        }
                        let latency = now_us().saturating_sub(ts);
                        s.latencies_us.push(latency);
                        if let Some(t) = s.trace.as_mut() {
                            t.push((ts, latency));
                        }
                    }
                    s.count += 1;
                    s.first.get_or_insert(at);
                    s.last = Some(at);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    ready_rx.await.unwrap();
    Subscriber {
        _client: client,
        task,
    }
}

/// A connected MQTT client and the task driving it.
pub(crate) async fn client(
    broker: SocketAddr,
    id: &str,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut o = MqttOptions::new(client_id(id), broker.ip().to_string(), broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 100);
    el.set_network_options(no_delay());
    let driver = tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (c, driver)
}

/// Publishes the workload over `args.publishers` connections; returns when all is sent.
pub(crate) async fn publish(broker: SocketAddr, args: &Args) -> Duration {
    let started = Instant::now();
    let per = args.messages / args.publishers;
    let pad = "x".repeat(args.payload_bytes.saturating_sub(180));
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let args = args.clone();
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(client_id(&format!("load-pub-{p}")), broker.ip().to_string(), broker.port());
            o.set_keep_alive(Duration::from_secs(30));
            o.set_inflight(1000);
            let (client, mut el) = AsyncClient::new(o, 1000);
            el.set_network_options(no_delay());
            // Runs until the connection ends: after the DISCONNECT below, once the broker
            // closes it.
            let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
            let rate_per = if args.rate == 0 { 0 } else { (args.rate / args.publishers).max(1) };
            let t0 = Instant::now();
            for i in 0..per {
                let n = p * per + i;
                let device = n % args.devices;
                let v = n % 100;
                let payload = format!(
                    r#"{{"ts":{},"n":{n},"v":{v},"device":"dev-{device}","temp":{}.5,"humidity":{},"geo":{{"lat":52.1,"lon":4.3}},"status":"ok","pad":"{pad}"}}"#,
                    now_us(),
                    20 + v % 60,
                    30 + v % 50
                );
                client
                    .publish(format!("load/dev-{device}/metrics"), qos(args.qos), false, payload)
                    .await
                    .unwrap();
                if rate_per > 0 {
                    let due = t0 + Duration::from_secs_f64((i + 1) as f64 / rate_per as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            // DISCONNECT goes out after every queued publish, and the broker reads the
            // publishes before it: waiting for the broker to close the connection loses
            // nothing (aborting the event loop a moment after the last publish lost up to
            // 0.3 % of a QoS 0 workload, still queued in it, when the broker was busy).
            client.disconnect().await.unwrap();
            if tokio::time::timeout(Duration::from_secs(60), driver).await.is_err() {
                eprintln!("publisher {p}: the broker did not close the connection within 60 s");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// Waits until `expected` messages arrived, or nothing arrived for `idle` after the first
/// one (or for two minutes before it).
pub(crate) async fn drain(seen: &Arc<Mutex<Seen>>, expected: u64, idle: Duration) {
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = seen.lock().await.count;
        if c >= expected {
            return;
        }
        let waited = last_change.elapsed();
        if c != last_count {
            last_count = c;
            last_change = Instant::now();
        } else if (c > 0 && waited > idle) || waited > Duration::from_secs(120) {
            return;
        }
    }
}
