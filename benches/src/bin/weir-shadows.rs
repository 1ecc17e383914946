//! weir-shadows: device shadow updates through weir's embedded broker, beside a plain
//! retained message's round trip through the same broker in the same run.
//!
//! `--clients` MQTT clients keep `--window` requests in flight each:
//! * the baseline publishes a retained QoS 1 message to `bench/rt/<run>/<thing>` and
//!   counts it done when its own subscription (`bench/rt/<run>/#`) delivers it back (a
//!   prefix per run: a SUBSCRIBE matching thousands of retained messages is another
//!   measurement);
//! * a shadow update publishes `{"state": {"reported": {"n": i}}, "clientToken": "i"}` to
//!   `$aws/things/<thing>/shadow/update` and counts it done when `/update/accepted` with
//!   that token comes back: stored and synced first.
//!
//! Each runs over one thing and over `--things` things (round robin): requests per second,
//! and the p50 and p99 of request → answer, at full speed and, for latency, paced at half
//! the full-speed rate. Memory per stored shadow: weir's resident memory and its store's
//! bytes before and after `--things` shadows were made, over their count. The shadow
//! service's own rate limit is off (`--shadow-requests-per-second-per-thing 0`): this
//! measures what weir can do, not what it allows one device.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use weir_benches::harness::{Killed, free_port, rss_kib, wait_port, weir_metric};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weir-shadows",
    about = "Shadow updates through weir's embedded broker beside a retained message's round trip"
)]
struct Args {
    /// The weir binary to start.
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// Requests in each full-speed run (each run needs fewer than 1,000,000,000: its
    /// numbers start at the run's own billion).
    #[arg(long, default_value_t = 20_000, value_parser = at_least_one(999_999_999))]
    requests: usize,
    /// Things (and so shadows) in the many-things runs.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one(999_999_999))]
    things: usize,
    /// Clients (MQTT connections) the requests are spread over.
    #[arg(long, default_value_t = 8, value_parser = at_least_one(1000))]
    clients: usize,
    /// Requests in flight at once per client (AWS, and weir, serve at most 10 of one
    /// connection's shadow requests together: more would be refused).
    #[arg(long, default_value_t = 8, value_parser = at_least_one(10))]
    window: usize,
}

/// A count from 1 to `max`.
fn at_least_one(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=max)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Retained,
    Shadow,
}

/// What a client has in flight: request number → when it was sent.
type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

/// One run's figures.
struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// How a run goes: its requests, over how many things, from how many clients with how
/// many in flight each, paced at `rate` a second in all if given.
#[derive(Clone, Copy)]
struct Plan {
    kind: Kind,
    things: usize,
    requests: usize,
    clients: usize,
    window: usize,
    rate: Option<f64>,
}

/// Runs `plan` against the broker at `broker`: the requests split over the clients
/// (client c sends requests c, c + clients, ...), each client's own answers awaited.
async fn run(broker: SocketAddr, tag: &str, plan: Plan) -> Run {
    // Numbers of their own per run: a retained message of an earlier run, delivered on
    // subscribing, answers nothing of this one.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let base = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 1_000_000_000;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(plan.requests)));
    let start = Arc::new(tokio::sync::Barrier::new(plan.clients + 1));
    let mut clients = Vec::new();
    for c in 0..plan.clients {
        let (latencies, start, tag) = (latencies.clone(), start.clone(), tag.to_owned());
        clients.push(tokio::spawn(async move {
            client(broker, &tag, c, base, plan, latencies, start).await
        }));
    }
    start.wait().await;
    let began = Instant::now();
    for c in clients {
        c.await.unwrap();
    }
    let took = began.elapsed();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)].as_secs_f64() * 1e3;
    Run {
        rate: plan.requests as f64 / took.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// One client's part of a run.
async fn client(
    broker: SocketAddr,
    tag: &str,
    c: usize,
    base: u64,
    plan: Plan,
    latencies: Arc<Mutex<Vec<Duration>>>,
    start: Arc<tokio::sync::Barrier>,
) {
    let mut opts = MqttOptions::new(
        format!("bench-{tag}-{c}-{}", std::process::id()),
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(plan.window as u16);
    let (mqtt, mut eventloop) = AsyncClient::new(opts, plan.window * 2);
    // A prefix of the run's own: the retained messages of earlier runs are not
    // delivered on subscribing.
    let prefix = format!("bench/rt/{}", base / 1_000_000_000);
    let filter = match plan.kind {
        Kind::Retained => format!("{prefix}/#"),
        // /rejected too: a refused request is an error of the bench, said at once.
        Kind::Shadow => "$aws/things/+/shadow/update/+".to_owned(),
    };
    mqtt.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
    let sent: Sent = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(0));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let kind = plan.kind;
    let poller = {
        let (sent, slots, latencies) = (sent.clone(), slots.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.ends_with("/rejected") {
                            panic!("a shadow update was refused: {:?}", p.payload);
                        }
                        if !(kind == Kind::Retained || p.topic.ends_with("/accepted")) {
                            continue;
                        }
                        let Some(n) = request_number(kind, &p.payload) else {
                            continue;
                        };
                        if let Some(at) = sent.lock().unwrap().remove(&n) {
                            latencies.lock().unwrap().push(at.elapsed());
                            slots.add_permits(1);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("the bench's MQTT connection failed: {e}"),
                }
            }
        })
    };
    subscribed.await.unwrap();
    slots.add_permits(plan.window);
    start.wait().await;
    let began = Instant::now();
    let pace = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.clients as f64 / r));
    let mine: Vec<u64> = (c..plan.requests)
        .step_by(plan.clients)
        .map(|i| i as u64)
        .collect();
    for (k, i) in mine.iter().enumerate() {
        if let Some(p) = pace {
            tokio::time::sleep_until((began + p.mul_f64(k as f64)).into()).await;
        }
        slots.acquire().await.unwrap().forget();
        let thing = *i as usize % plan.things;
        let n = base + i;
        let (topic, payload, retain) = match plan.kind {
            Kind::Retained => (
                format!("{prefix}/t{thing}"),
                format!(r#"{{"n":{n}}}"#),
                true,
            ),
            Kind::Shadow => (
                format!("$aws/things/t{thing}/shadow/update"),
                format!(r#"{{"state":{{"reported":{{"n":{n}}}}},"clientToken":"{n}"}}"#),
                false,
            ),
        };
        sent.lock().unwrap().insert(n, Instant::now());
        mqtt.publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sent.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "{tag}: client {c} has {} of {} unanswered",
            sent.lock().unwrap().len(),
            mine.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    poller.abort();
    let _ = mqtt.disconnect().await;
}

/// The request number an answer carries: the retained message's `n`, the accepted
/// shadow's `clientToken`.
fn request_number(kind: Kind, payload: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match kind {
        Kind::Retained => v["n"].as_u64(),
        Kind::Shadow => v["clientToken"].as_str()?.parse().ok(),
    }
}

fn print(name: &str, r: &Run) {
    println!(
        "{name}: {:.0} requests/s, request → answer p50 {:.2} ms, p99 {:.2} ms",
        r.rate, r.p50_ms, r.p99_ms
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("weir-shadows-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let weir = Killed(
        Command::new(&args.weir)
            .args(["serve", "--auth", "off", "--log", "warn"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--shadow-requests-per-second-per-thing", "0"])
            .args(["--data-dir", dir.join("weir").to_str().unwrap()])
            .args(["--queries-dir", dir.join("queries").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build it: cargo build --release)",
                    args.weir.display()
                )
            }),
    );
    let pid = weir.0.id();
    let broker = SocketAddr::from(([127, 0, 0, 1], mqtt));
    let http = SocketAddr::from(([127, 0, 0, 1], http));
    wait_port(broker).await;
    wait_port(http).await;
    let (n, things) = (args.requests, args.things);
    let plan = |kind, things, requests, rate| Plan {
        kind,
        things,
        requests,
        clients: args.clients,
        window: args.window,
        rate,
    };
    // Warm up both paths.
    run(broker, "warm-rt", plan(Kind::Retained, 1, 1000, None)).await;
    run(broker, "warm-sh", plan(Kind::Shadow, 1, 1000, None)).await;

    let (c, w) = (args.clients, args.window);
    println!("== one thing, {n} requests from {c} clients, {w} in flight each");
    let rt_one = run(broker, "rt-one", plan(Kind::Retained, 1, n, None)).await;
    print("retained round trip", &rt_one);
    let sh_one = run(broker, "sh-one", plan(Kind::Shadow, 1, n, None)).await;
    print("shadow update", &sh_one);
    println!(
        "ratio shadow/retained (one thing): {:.2}",
        sh_one.rate / rt_one.rate
    );

    let many = n.max(things);
    println!("== {things} things, {many} requests from {c} clients, {w} in flight each");
    let rt_many = run(broker, "rt-many", plan(Kind::Retained, things, many, None)).await;
    print("retained round trip", &rt_many);
    let store_before = weir_metric(http, "weir_shadow_bytes").unwrap_or(0.0);
    let docs_before = weir_metric(http, "weir_shadow_documents").unwrap_or(0.0);
    let kib_before = rss_kib(pid);
    let sh_many = run(broker, "sh-many", plan(Kind::Shadow, things, many, None)).await;
    print("shadow update", &sh_many);
    println!(
        "ratio shadow/retained ({things} things): {:.2}",
        sh_many.rate / rt_many.rate
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kib_after = rss_kib(pid);
    let docs = weir_metric(http, "weir_shadow_documents").unwrap_or(0.0) - docs_before;
    let store = weir_metric(http, "weir_shadow_bytes").unwrap_or(0.0) - store_before;
    println!(
        "memory per stored shadow: {:.0} bytes resident (resident {kib_before} -> {kib_after} KiB over {docs:.0} new shadows; the store's cache is bounded by --shadow-cache-bytes), {:.0} bytes of store file",
        (kib_after.saturating_sub(kib_before) * 1024) as f64 / docs.max(1.0),
        store / docs.max(1.0)
    );

    println!("== latency at half of the full-speed rate, {things} things");
    let half = rt_many.rate / 2.0;
    let rt_half = run(
        broker,
        "rt-half",
        plan(Kind::Retained, things, n, Some(half)),
    )
    .await;
    print(&format!("retained round trip at {half:.0}/s"), &rt_half);
    let half = sh_many.rate / 2.0;
    let sh_half = run(broker, "sh-half", plan(Kind::Shadow, things, n, Some(half))).await;
    print(&format!("shadow update at {half:.0}/s"), &sh_half);
    println!(
        "ratio of p99 latency shadow/retained at half rate: {:.2}",
        sh_half.p99_ms / rt_half.p99_ms
    );
    drop(weir);
    let _ = std::fs::remove_dir_all(&dir);
}
