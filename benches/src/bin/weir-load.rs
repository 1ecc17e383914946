//! weir-load: the end-to-end load harness. Starts Mosquitto (or uses `--broker`) and weir,
//! publishes a workload, collects the rules' outputs and reports throughput, latency, and
//! weir's CPU and peak memory, beside the ceiling: a plain subscriber on the same broker
//! and topics that only counts, in a process of its own (as weir is), measured in the
//! same run; with `--repeat N`, N ceiling and weir runs alternate and the median ratio
//! is reported.
//!
//! Every message carries its publish time; the rule republishes what passes its WHERE
//! clause to `out/<device>`, where a subscriber takes the time of arrival, or, with
//! `--sink file`, writes it to JSON-lines files, so that the broker carries only the
//! workload.
//!
//! It also measures rule changes (from a PUT's answer to the new rule's first output) and,
//! with `--rules N`, runs the workload again on a fresh weir holding N-1 idle rules with
//! distinct filters: memory per idle rule, and cost per message beside the one-rule run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;
use weir_benches::harness::{Killed, cpu_seconds, free_port, rss_kib, wait_port, weir_metric};
// Nagle's algorithm off, as on weir's own connections and the broker (`set_tcp_nodelay`):
// otherwise a small write can wait up to 40 ms for a delayed ACK.
use weir_connectors::mqtt::no_delay;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weir-load",
    about = "End-to-end load test of weir through a real MQTT broker, beside the broker's ceiling"
)]
struct Args {
    /// The weir binary to start.
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// Use this broker (host:port) instead of starting a Mosquitto.
    #[arg(long)]
    broker: Option<String>,
    /// Messages to publish in each run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Devices; each publishes to load/<device>/metrics.
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    publishers: u64,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 250)]
    payload_bytes: usize,
    /// QoS of the publishes and of weir's subscription (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Total publish rate in messages/s; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Rules installed, each with its own topic filter; one matches the workload. Above
    /// 1, the workload runs twice: with the one rule, then on a fresh weir with the others
    /// installed too, to report the memory per idle rule and the cost per message beside
    /// the single-rule run.
    #[arg(long, default_value_t = 1)]
    rules: u64,
    /// Rule-change latency samples: a new rule is submitted while a device publishes to
    /// its topic every millisecond, and the time to its first output is taken.
    #[arg(long, default_value_t = 5)]
    rule_changes: u32,
    /// Fraction of messages the matching rule's WHERE clause passes (0.0 to 1.0).
    #[arg(long, default_value_t = 1.0)]
    selectivity: f64,
    /// Where the rule's outputs go: `mqtt` republishes them to `out/<device>` on the same
    /// broker, where the harness takes their latency (the broker then carries the outputs
    /// too, which caps the ratio below 1 / (1 + selectivity) when the broker is the
    /// bottleneck); `file` writes them as JSON lines to local files (the object_store
    /// action), so that the broker carries only the workload, as in the ceiling run: the
    /// throughput is then taken from weir's own count of matched messages and the files
    /// are counted, but latency is not measured.
    #[arg(long, value_enum, default_value_t = Sink::Mqtt)]
    sink: Sink,
    /// Devices publish to weir's embedded broker instead of the external one: the
    /// ceiling (a plain subscriber on Mosquitto, or `--broker`) beside weir as the broker
    /// and the rules engine at once.
    #[arg(long)]
    embedded: bool,
    /// Skip the plain-subscriber ceiling run.
    #[arg(long)]
    skip_ceiling: bool,
    /// Measure the ceiling and weir this many times, alternately, and report each pair's
    /// ratio and their median: on a shared machine one pair can be off by 15 %.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Write each of weir's republished outputs, as it arrives, to FILE: its publish time
    /// and its latency, in microseconds, one line each (the last run's outputs). Shows
    /// whether a latency tail is spread over the run or comes from a few stalls.
    #[arg(long, value_name = "FILE")]
    latency_trace: Option<PathBuf>,
    /// Internal: be a counting subscriber (the ceiling's, or the receiver of weir's
    /// outputs; a process of its own, as weir is) on `--broker`, print "ready" once
    /// subscribed, then the report once `--messages` arrived or nothing came for 3 s after
    /// the first.
    #[arg(long, hide = true)]
    ceiling_subscriber: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Mqtt,
    File,
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// A client id no other client of this run has: two MQTT clients with one id take the
/// session from each other, over and over, and the broker drops what was in flight. (Ids
/// made from `free_port()` could collide: the kernel may hand a released port out again.)
fn client_id(prefix: &str) -> String {
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

fn start_mosquitto(port: u16, dir: &std::path::Path) -> Killed {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 1000\nmax_queued_messages 1000000\nset_tcp_nodelay true\n"
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists() || *b == "mosquitto")
        .unwrap();
    Killed(
        Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (scripts/deps.sh installs it)"),
    )
}

/// What a counting subscriber saw.
#[derive(Default)]
struct Seen {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    latencies_us: Vec<u64>,
    /// Publish time and latency of every output, in arrival order, when traced.
    trace: Option<Vec<(u64, u64)>>,
}

/// A subscription; dropping it closes its connection, so that a finished measurement
/// (the ceiling's subscriber) does not keep the broker and this process busy during the
/// next one.
struct Subscriber {
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
async fn subscriber(
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

/// Publishes the workload over `args.publishers` connections; returns when all is sent.
async fn publish(broker: SocketAddr, args: &Args) -> Duration {
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
async fn drain(seen: &Arc<Mutex<Seen>>, expected: u64, idle: Duration) {
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

struct Report {
    count: u64,
    rate: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

async fn report(seen: &Arc<Mutex<Seen>>) -> Report {
    let mut s = seen.lock().await;
    let secs = match (s.first, s.last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => f64::NAN,
    };
    s.latencies_us.sort_unstable();
    let pct = |p: f64| -> u64 {
        if s.latencies_us.is_empty() {
            return 0;
        }
        let i = ((s.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        s.latencies_us[i]
    };
    Report {
        count: s.count,
        rate: s.count as f64 / secs,
        p50: pct(0.5),
        p90: pct(0.9),
        p99: pct(0.99),
        max: s.latencies_us.last().copied().unwrap_or(0),
    }
}

fn print(name: &str, r: &Report) {
    println!(
        "{name:<22} {:>9} msgs {:>12.0} msg/s   latency p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        r.count,
        r.rate,
        r.p50 as f64 / 1000.0,
        r.p90 as f64 / 1000.0,
        r.p99 as f64 / 1000.0,
        r.max as f64 / 1000.0
    );
}

/// Peak resident memory of a process in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The admin token of the weir the harness starts (a file given with
/// `--admin-token-file`): every API call carries it.
const ADMIN_TOKEN: &str = "weir-load-admin-token-on-loopback";

/// PUT a rule over plain HTTP/1.1; panics unless weir answers 2xx.
fn put_rule(http: SocketAddr, name: &str, body: &serde_json::Value) {
    let body = body.to_string();
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "PUT /v1/rules/{name} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 20"), "PUT {name}: {answer}");
}

fn delete_rule(http: SocketAddr, name: &str) {
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "DELETE /v1/rules/{name} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 204"),
        "DELETE {name}: {answer}"
    );
}

/// A weir process reading from the broker.
struct WeirProcess {
    _child: Killed,
    pid: u32,
    http: SocketAddr,
    /// Where devices publish: the external broker, or with `--embedded` weir's own.
    broker: SocketAddr,
    embedded: bool,
    dir: PathBuf,
}

fn start_weir(args: &Args, broker: SocketAddr, dir: &std::path::Path) -> WeirProcess {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(&args.weir);
    command.arg("serve");
    if !args.embedded {
        command
            .arg("--broker")
            .arg(format!("mqtt://{broker}"))
            .args([
                "--broker-client-id",
                &client_id("weir-load"),
                "--broker-clean-session",
                "true",
            ])
            .args(["--broker-qos", &args.qos.to_string()]);
    }
    let child = Killed(
        command
            .args(["--http-listen", &http.to_string()])
            .args(["--mqtt-listen", &mqtt.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--queries-dir")
            .arg(dir.join("no-queries"))
            .arg("--admin-token-file")
            .arg({
                std::fs::create_dir_all(dir).unwrap();
                let file = dir.join("admin-token");
                std::fs::write(&file, ADMIN_TOKEN).unwrap();
                file
            })
            .args(["--log", "warn"])
            .stdout({
                std::fs::create_dir_all(dir).unwrap();
                std::fs::File::create(dir.join("weir.log")).unwrap()
            })
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build it: cargo build --release)",
                    args.weir.display()
                )
            }),
    );
    WeirProcess {
        pid: child.0.id(),
        _child: child,
        http,
        broker: if args.embedded { mqtt } else { broker },
        embedded: args.embedded,
        dir: dir.to_owned(),
    }
}

/// Installs `n` idle rules (distinct filters no message matches) from a few threads;
/// returns how long it took.
fn install_idle_rules(http: SocketAddr, n: u64, qos: u8) -> Duration {
    let t0 = Instant::now();
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in (t..n).step_by(threads as usize) {
                    put_rule(
                        http,
                        &format!("idle_{i}"),
                        &serde_json::json!({
                            "sql": format!("SELECT * FROM 'other/{i}/metrics' WHERE v < 50"),
                            "actions": [{"republish": {"topic": "out/idle", "qos": qos}}]
                        }),
                    );
                }
            });
        }
    });
    t0.elapsed()
}

/// What one workload run through weir measured.
struct WeirRun {
    input_rate: f64,
    /// weir's CPU seconds per input message.
    cpu_per_msg: f64,
    /// Every expected output arrived.
    complete: bool,
}

/// Installs the load rule, waits until it processes, publishes the workload and reports.
async fn run_weir(args: &Args, weir: &WeirProcess, label: &str) -> WeirRun {
    let (http, broker) = (weir.http, weir.broker);
    let threshold = (args.selectivity * 100.0).round() as u64;
    // A new name per run: its metric series starts at 0, and deleting it afterwards
    // unsubscribes weir, so that the next ceiling run has the broker to itself.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let rule = format!(
        "load{}",
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    // Below weir's output directory: the one place a rule's file:// URL may name unless
    // the operator allows more (see docs/security.md).
    let out_dir = weir
        .dir
        .join("data")
        .join("out")
        .join(format!("out-{rule}"));
    let action = match args.sink {
        Sink::Mqtt => {
            serde_json::json!({"republish": {"topic": "out/${topic(2)}", "qos": args.qos}})
        }
        // Rolled a second after the last output, so that the run's files are complete soon.
        Sink::File => serde_json::json!({"object_store": {
            "url": format!("file://{}", out_dir.display()), "format": "jsonl", "max_age": "1s"
        }}),
    };
    put_rule(
        http,
        &rule,
        &serde_json::json!({
            "sql": format!("SELECT ts, n, device, temp, (temp * 1.8 + 32) AS fahrenheit, geo.lat AS lat FROM 'load/+/metrics' WHERE v < {threshold}"),
            "actions": [action]
        }),
    );
    let expected = (args.messages as f64 * threshold as f64 / 100.0).round() as u64;
    // The outputs' receiver, in a process of its own as the ceiling's subscriber is.
    let outputs = match args.sink {
        Sink::Mqtt => {
            Some(Counter::start(broker, "out/#", 0, expected, args.latency_trace.as_deref()).await)
        }
        Sink::File => None,
    };
    // Wait until weir's subscription routes: probes (ts 0, not counted) reach the rule.
    {
        let (c, driver) = client(broker, "load-probe").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while weir_processed(http, &rule) == 0 {
            assert!(Instant::now() < deadline, "weir did not start processing");
            c.publish(
                "load/probe/metrics",
                QoS::AtLeastOnce,
                false,
                r#"{"ts":0,"n":-1,"v":0}"#,
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        driver.abort();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The probes the rule matched (all pass its WHERE clause).
    let probes = weir_processed(http, &rule);
    let pid = weir.pid;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    // Outputs that arrived, and the throughput in input messages.
    let (count, input_rate) = match outputs {
        Some(outputs) => {
            publish(broker, args).await;
            let r = outputs.report().await;
            // Throughput in input messages: outputs divided by the share that passes.
            let input_rate = r.rate * 100.0 / threshold.max(1) as f64;
            print(label, &r);
            print_weir_share(http, &rule);
            (r.count, input_rate)
        }
        None => {
            let matched = tokio::spawn(matched_timeline(http, rule.clone(), probes, args.messages));
            publish(broker, args).await;
            let (input_rate, matched) = matched.await.unwrap();
            let count = written_lines(&out_dir, expected + probes).await - probes;
            println!(
                "{label:<22} {count:>9} msgs written to files, {matched} matched; latency not measured with --sink file"
            );
            (count, input_rate)
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    println!(
        "{label}: {:.0} input msg/s, CPU {:.2} cores ({:.1} s over {:.1} s, {:.2} µs per message), peak RSS {} MiB, {} of {} expected outputs",
        input_rate,
        cpu / wall,
        cpu,
        wall,
        cpu * 1e6 / args.messages as f64,
        peak_rss_kib(pid) / 1024,
        count,
        expected
    );
    if count < expected {
        // weir logs its warnings (a lost connection, a failed delivery) to the run's
        // directory; show them beside the shortfall.
        let log = std::fs::read_to_string(weir.dir.join("weir.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        println!("{label}: outputs missing; the last lines of weir's log:");
        for l in &lines[lines.len().saturating_sub(20)..] {
            println!("  {l}");
        }
    }
    delete_rule(http, &rule);
    if !weir.embedded {
        let took = unsubscribed(http).await;
        println!(
            "{label}: the broker acknowledged weir's UNSUBSCRIBE within {:.0} ms of the rule's DELETE",
            took.as_secs_f64() * 1000.0
        );
    }
    WeirRun {
        complete: count >= expected,
        input_rate,
        cpu_per_msg: cpu / args.messages as f64,
    }
}

/// A connected MQTT client and the task driving it.
async fn client(broker: SocketAddr, id: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
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

/// Rule changes: from the answer to a PUT of a new rule to its first output, while a
/// device publishes to the rule's topic every millisecond. Returns the times in ms.
async fn rule_change_latency(broker: SocketAddr, http: SocketAddr, times: u32) -> Vec<f64> {
    let mut out = Vec::new();
    for k in 0..times {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let _sub = subscriber(
            broker,
            &format!("late-out/{k}"),
            QoS::AtMostOnce,
            seen.clone(),
        )
        .await;
        let (device, driver) = client(broker, "load-late").await;
        let publishing = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                let _ = device
                    .publish(format!("late/{k}/m"), QoS::AtMostOnce, false, r#"{"v":1}"#)
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rule = serde_json::json!({
            "sql": format!("SELECT v FROM 'late/{k}/m'"),
            "actions": [{"republish": {"topic": format!("late-out/{k}")}}]
        });
        tokio::task::spawn_blocking(move || put_rule(http, &format!("late_{k}"), &rule))
            .await
            .unwrap();
        let submitted = Instant::now();
        let deadline = submitted + Duration::from_secs(10);
        let first = loop {
            if let Some(first) = seen.lock().await.first {
                break first;
            }
            assert!(
                Instant::now() < deadline,
                "rule late_{k} produced nothing within 10 s"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        publishing.abort();
        driver.abort();
        out.push(first.saturating_duration_since(submitted).as_secs_f64() * 1000.0);
    }
    out
}

/// A counting subscriber in a process of its own (this binary with the hidden
/// `--ceiling-subscriber`), so that it shares threads with neither the publishers nor
/// weir: the ceiling, and the receiver of weir's republished outputs.
struct Counter {
    _child: Killed,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Counter {
    /// Starts one on `filter` that reports once `expected` messages arrived, or nothing
    /// came for 3 s after the first; returns once it is subscribed.
    /// With `trace`, it writes its outputs' latencies there (`--latency-trace`).
    async fn start(
        broker: SocketAddr,
        filter: &str,
        q: u8,
        expected: u64,
        trace: Option<&std::path::Path>,
    ) -> Self {
        use std::io::BufRead;
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--broker",
                &broker.to_string(),
                "--ceiling-subscriber",
                filter,
            ])
            .args(["--qos", &q.to_string()])
            .args(["--messages", &expected.to_string()])
            .stdout(Stdio::piped());
        if let Some(t) = trace {
            command.arg("--latency-trace").arg(t);
        }
        let mut child = Killed(command.spawn().unwrap());
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stdout = child.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        assert_eq!(lines.recv().await.as_deref(), Some("ready"));
        Self {
            _child: child,
            lines,
        }
    }

    /// What it counted, once it is done.
    async fn report(mut self) -> Report {
        let line = self.lines.recv().await.expect("the subscriber's report");
        let v: Vec<f64> = line
            .split(' ')
            .map(|x| x.parse().expect("a number"))
            .collect();
        Report {
            count: v[0] as u64,
            rate: v[1],
            p50: v[2] as u64,
            p90: v[3] as u64,
            p99: v[4] as u64,
            max: v[5] as u64,
        }
    }
}

/// The ceiling: a plain subscriber to the workload's topics, in a process of its own (as
/// weir is), while the workload is published.
async fn measure_ceiling(args: &Args, broker: SocketAddr) -> Report {
    let counter = Counter::start(broker, "load/#", args.qos, args.messages, None).await;
    publish(broker, args).await;
    counter.report().await
}

/// The ceiling's subscriber process (`--ceiling-subscriber <filter>`).
async fn ceiling_subscriber(args: &Args, filter: &str) {
    let broker: SocketAddr = args
        .broker
        .as_deref()
        .expect("--broker")
        .parse()
        .expect("--broker is host:port");
    let seen = Arc::new(Mutex::new(Seen {
        trace: args.latency_trace.as_ref().map(|_| Vec::new()),
        ..Seen::default()
    }));
    let sub = subscriber(broker, filter, qos(args.qos), seen.clone()).await;
    println!("ready");
    drain(&seen, args.messages, Duration::from_secs(3)).await;
    drop(sub);
    if let (Some(path), Some(trace)) = (&args.latency_trace, &seen.lock().await.trace) {
        let mut out = String::with_capacity(trace.len() * 24);
        for (sent, latency) in trace {
            out.push_str(&format!("{sent} {latency}\n"));
        }
        std::fs::write(path, out).expect("the latency trace is written");
    }
    let r = report(&seen).await;
    println!(
        "{} {} {} {} {} {}",
        r.count, r.rate, r.p50, r.p90, r.p99, r.max
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(filter) = &args.ceiling_subscriber {
        ceiling_subscriber(&args, filter).await;
        return;
    }
    assert!(args.qos <= 1, "--qos must be 0 or 1");
    let dir = std::env::temp_dir().join(format!("weir-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut _mosquitto = None;
    let broker: SocketAddr = match &args.broker {
        Some(b) => b.parse().expect("--broker is host:port"),
        None => {
            let port = free_port();
            _mosquitto = Some(start_mosquitto(port, &dir));
            format!("127.0.0.1:{port}").parse().unwrap()
        }
    };
    wait_port(broker).await;
    println!(
        "workload: {} messages, {} devices, {} publishers, ~{} B payloads, QoS {}, rate {}, {} rules, selectivity {}, outputs to {:?}",
        args.messages,
        args.devices,
        args.publishers,
        args.payload_bytes,
        args.qos,
        if args.rate == 0 {
            "max".to_owned()
        } else {
            format!("{}/s", args.rate)
        },
        args.rules,
        args.selectivity,
        args.sink
    );

    // weir, reading from the broker and republishing what passes to out/<device>; the
    // ceiling's subscriber is connected only while the ceiling is measured.
    let one = start_weir(&args, broker, &dir.join("one"));
    wait_port(one.http).await;
    wait_port(one.broker).await;
    let mut ratios = Vec::new();
    let mut single = None;
    for round in 1..=args.repeat.max(1) {
        if args.repeat > 1 {
            println!("-- round {round} of {}", args.repeat);
        }
        let mut ceiling = None;
        if !args.skip_ceiling {
            let r = measure_ceiling(&args, broker).await;
            print("ceiling (subscriber)", &r);
            ceiling = Some(r);
        }
        let label = if args.embedded {
            "weir (embedded broker)"
        } else {
            "weir (outputs)"
        };
        let run = run_weir(&args, &one, label).await;
        if let Some(c) = &ceiling {
            let ratio = run.input_rate / c.rate;
            if run.complete && c.count >= args.messages {
                println!("ratio weir / ceiling: {ratio:.2}");
                ratios.push(ratio);
            } else {
                // A rate taken over part of the workload says little; leave it out.
                println!("ratio weir / ceiling: {ratio:.2} (messages missing: not counted)");
            }
        }
        single.get_or_insert(run);
    }
    let single = single.expect("at least one round");
    if args.repeat > 1 && !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!(
            "ratio weir / ceiling over {} complete rounds of {}: median {:.2}, min {:.2}, max {:.2}",
            ratios.len(),
            args.repeat,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    if args.rule_changes > 0 {
        let mut ms = rule_change_latency(one.broker, one.http, args.rule_changes).await;
        ms.sort_by(f64::total_cmp);
        println!(
            "rule changes: from PUT answered to first output, over {} rules: median {:.1} ms, max {:.1} ms",
            ms.len(),
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
    let _ = std::fs::remove_dir_all(&one.dir);
    drop(one);

    // The same workload with many idle rules installed beside the load rule.
    if args.rules > 1 {
        let idle = args.rules - 1;
        let many = start_weir(&args, broker, &dir.join("many"));
        wait_port(many.http).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(many.pid);
        let took = tokio::task::spawn_blocking({
            let (http, qos) = (many.http, args.qos);
            move || install_idle_rules(http, idle, qos)
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(many.pid);
        println!(
            "idle rules: {idle} installed in {:.1} s ({:.0} rules/s); weir's RSS {} MiB -> {} MiB, {:.1} KB per idle rule",
            took.as_secs_f64(),
            idle as f64 / took.as_secs_f64(),
            before / 1024,
            after / 1024,
            after.saturating_sub(before) as f64 * 1.024 / idle as f64
        );
        wait_port(many.broker).await;
        let crowded = run_weir(&args, &many, &format!("weir, {} rules", args.rules)).await;
        println!(
            "cost per message with {} rules / with 1 rule: {:.2} (CPU per message), throughput ratio {:.2}",
            args.rules,
            crowded.cpu_per_msg / single.cpu_per_msg,
            crowded.input_rate / single.input_rate
        );
        let _ = std::fs::remove_dir_all(&many.dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// weir's own part of the outputs' latency, from its `weir_action_delivery_seconds`:
/// receipt of a message to its output written to the broker (QoS 0) or acknowledged by
/// it (QoS 1). What the harness saw beyond that was spent in the broker and the harness.
fn print_weir_share(http: SocketAddr, rule: &str) {
    let labels = format!(r#"action="0-republish",rule="{rule}""#);
    let Some(count) = weir_metric(
        http,
        &format!("weir_action_delivery_seconds_count{{{labels}}}"),
    )
    .filter(|c| *c > 0.0) else {
        return;
    };
    let shares: Vec<String> = ["0.001", "0.0025", "0.005", "0.01", "0.025"]
        .iter()
        .map(|le| {
            let within = weir_metric(
                http,
                &format!(r#"weir_action_delivery_seconds_bucket{{{labels},le="{le}"}}"#),
            )
            .unwrap_or(f64::NAN);
            let ms: f64 = le.parse::<f64>().unwrap_or(f64::NAN) * 1000.0;
            format!("{ms} ms {:.2} %", within * 100.0 / count)
        })
        .collect();
    println!(
        "  weir's part (receipt to the broker taking the output), share within: {}",
        shares.join(", ")
    );
}

/// Follows weir's count of messages `rule` matched (polled every 10 ms) until `messages`
/// more than `base` were matched, or the count stood still for 5 s; returns the rate from
/// the first to the last change, and how many were matched.
async fn matched_timeline(http: SocketAddr, rule: String, base: u64, messages: u64) -> (f64, u64) {
    let (mut first, mut last, mut count) = (None, Instant::now(), base);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = {
            let rule = rule.clone();
            tokio::task::spawn_blocking(move || weir_processed(http, &rule))
                .await
                .unwrap()
        };
        if now > count {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            count = now;
        }
        if count >= base + messages || last.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let Some(first) = first else {
        return (0.0, 0);
    };
    let matched = count - base;
    (
        matched as f64 / last.duration_since(first).as_secs_f64(),
        matched,
    )
}

/// Waits until the JSON-lines files under `dir` hold `expected` lines, or 30 s passed;
/// returns the lines there are.
async fn written_lines(dir: &std::path::Path, expected: u64) -> u64 {
    fn count(dir: &std::path::Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() {
                    count(&path)
                } else if path.extension().is_some_and(|x| x == "jsonl") {
                    let text = std::fs::read(&path).unwrap_or_default();
                    text.iter().filter(|&&b| b == b'\n').count() as u64
                } else {
                    0
                }
            })
            .sum()
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(dir);
        if n >= expected || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// weir_rule_messages_matched_total of `rule`, over HTTP.
fn weir_processed(http: SocketAddr, rule: &str) -> u64 {
    weir_metric(
        http,
        &format!("weir_rule_messages_matched_total{{rule=\"{rule}\"}}"),
    )
    .map_or(0, |v| v as u64)
}

/// Waits until the broker acknowledged weir's last subscription change (a deleted rule's
/// UNSUBSCRIBE), so that the next ceiling run does not share the broker with weir; returns
/// how long that took. Under QoS 1 load Mosquitto can take seconds: it reads one packet
/// per connection per turn of its loop, and weir's UNSUBSCRIBE waits behind its PUBACKs.
async fn unsubscribed(http: SocketAddr) -> Duration {
    let pending = || async move {
        tokio::task::spawn_blocking(move || {
            weir_metric(http, "weir_external_subscription_changes_pending")
        })
        .await
        .unwrap()
    };
    let t0 = Instant::now();
    // weir answers the DELETE before its connection sends the UNSUBSCRIBE: first wait a
    // little for the change to show (an idle broker may acknowledge it at once).
    while pending().await == Some(0.0) && t0.elapsed() < Duration::from_millis(100) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while pending().await != Some(0.0) && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}
