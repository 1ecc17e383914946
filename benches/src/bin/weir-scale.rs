//! weir-scale: throughput of a fleet of 1, 2, ... N weir replicas on one machine, sharing a
//! Mosquitto's stream through a shared subscription (`--broker-share-group`), beside the
//! ceiling: the same workload delivered by the same Mosquitto to one plain subscriber that
//! only counts, measured in the same run.
//!
//! Each replica runs the load rule with its outputs written to files (so that the broker
//! carries only the workload), and the throughput is the fleet's matched messages (summed
//! over the replicas' `weir_rule_messages_matched_total`) over the time from the first to
//! the last. What a cluster of machines would carry is arithmetic on these figures, in
//! `benches/README.md`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use weir_benches::harness::{Killed, cpu_seconds, free_port, wait_port};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weir-scale",
    about = "Throughput of 1..N weir replicas sharing a Mosquitto's stream, beside the broker's ceiling"
)]
struct Args {
    /// The weir binary to start.
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// The most replicas; every fleet size from 1 up to it is measured.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Messages per run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    publishers: u64,
}

/// One HTTP/1.0 request to weir's API (no authentication: `--auth off`); the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The fleet's matched messages of the load rule, summed over its replicas.
fn matched(fleet: &[(Killed, SocketAddr)]) -> u64 {
    fleet
        .iter()
        .map(|(_, api)| {
            let text = http(*api, "GET", "/metrics", "");
            text.lines()
                .find_map(|l| l.strip_prefix(r#"weir_rule_messages_matched_total{rule="scale"} "#))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .sum()
}

async fn publish(broker: SocketAddr, args: &Args, tag: &str) {
    let per = args.messages / args.publishers;
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(format!("scale-pub-{tag}-{p}"), broker.ip().to_string(), broker.port());
            o.set_keep_alive(Duration::from_secs(30));
            o.set_inflight(1000);
            let (client, mut el) = AsyncClient::new(o, 1000);
            let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
            for i in 0..per {
                let n = p * per + i;
                let payload = format!(
                    r#"{{"ts":{n},"n":{n},"v":{},"device":"dev-{}","temp":{}.5,"geo":{{"lat":52.1,"lon":4.3}},"status":"ok","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
                    n % 100,
                    n % 100,
                    20 + n % 60
                );
                client
                    .publish(format!("load/dev-{}/metrics", n % 100), QoS::AtMostOnce, false, payload)
                    .await
                    .unwrap();
            }
            client.disconnect().await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(60), driver).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The ceiling: a subscriber that only counts, while the workload is published.
async fn ceiling(broker: SocketAddr, args: &Args) -> f64 {
    let mut o = MqttOptions::new("scale-ceiling", broker.ip().to_string(), broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 1000);
    client.subscribe("load/#", QoS::AtMostOnce).await.unwrap();
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
            break;
        }
    }
    let expected = args.messages;
    let counter = tokio::spawn(async move {
        let (mut n, mut first, mut last) = (0u64, None, Instant::now());
        while n < expected {
            match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => {
                    n += 1;
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        n as f64
            / last
                .duration_since(first.unwrap_or(last))
                .as_secs_f64()
                .max(1e-9)
    });
    publish(broker, args, "ceiling").await;
    counter.await.unwrap()
}

fn start_weir(args: &Args, dir: &Path, broker: SocketAddr, i: usize) -> (Killed, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::create_dir_all(dir.join("no-queries")).unwrap();
    let child = Command::new(&args.weir)
        .args(["serve", "--auth", "off", "--log", "warn"])
        .args(["--broker", &format!("mqtt://{broker}")])
        .args(["--broker-client-id", &format!("weir-scale-{i}")])
        .args([
            "--broker-share-group",
            "scale",
            "--broker-clean-session",
            "true",
        ])
        .args(["--http-listen", &api.to_string()])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--queries-dir")
        .arg(dir.join("no-queries"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir starts (build it: cargo build --release)");
    (Killed(child), api)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("weir-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nset_tcp_nodelay true\n"),
    )
    .unwrap();
    let _mosquitto = Killed(
        Command::new(if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        })
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts"),
    );
    let broker: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(broker).await;
    println!(
        "workload: {} messages of ~250 B from 100 devices over {} connections, QoS 0; outputs to files",
        args.messages, args.publishers
    );
    let ceiling = ceiling(broker, &args).await;
    println!("ceiling (one plain subscriber): {ceiling:.0} msg/s");
    let mut one = None;
    for n in 1..=args.replicas {
        let mut fleet = Vec::new();
        for i in 0..n {
            let (child, api) = start_weir(&args, &dir.join(format!("fleet{n}-{i}")), broker, i);
            wait_port(api).await;
            let out = dir
                .join(format!("fleet{n}-{i}"))
                .join("data")
                .join("out")
                .join("scale");
            let rule = format!(
                r#"{{"sql": "SELECT ts, n, device, temp, (temp * 1.8 + 32) AS fahrenheit, geo.lat AS lat FROM 'load/+/metrics' WHERE v < 100", "actions": [{{"object_store": {{"url": "file://{}", "format": "jsonl", "max_age": "1s"}}}}]}}"#,
                out.display()
            );
            let answer = http(api, "PUT", "/v1/rules/scale", &rule);
            assert!(
                answer.starts_with("HTTP/1.1 201") || answer.starts_with("HTTP/1.0 201"),
                "{answer}"
            );
            fleet.push((child, api));
        }
        // Every replica subscribed: probes until each has matched one.
        let mut o = MqttOptions::new(
            format!("scale-probe-{n}"),
            broker.ip().to_string(),
            broker.port(),
        );
        o.set_keep_alive(Duration::from_secs(30));
        let (probe, mut el) = AsyncClient::new(o, 100);
        let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        let deadline = Instant::now() + Duration::from_secs(60);
        while fleet.iter().any(|f| matched(std::slice::from_ref(f)) == 0) {
            assert!(Instant::now() < deadline, "a replica never subscribed");
            probe
                .publish(
                    "load/probe/metrics",
                    QoS::AtMostOnce,
                    false,
                    r#"{"ts":0,"n":-1,"v":0}"#,
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        driver.abort();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base = matched(&fleet);
        let cpu0: Vec<f64> = fleet.iter().map(|(c, _)| cpu_seconds(c.0.id())).collect();
        let fleet_ref = &fleet;
        let timeline = async {
            let (mut first, mut last, mut count) = (None, Instant::now(), base);
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = matched(fleet_ref);
                if now > count {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    count = now;
                }
                if count >= base + args.messages || last.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            let first = first.unwrap_or(last);
            (
                (count - base) as f64 / last.duration_since(first).as_secs_f64().max(1e-9),
                count - base,
            )
        };
        let tag = format!("fleet{n}");
        let (_, (rate, got)) = tokio::join!(publish(broker, &args, &tag), timeline);
        let cpu: f64 = fleet
            .iter()
            .zip(&cpu0)
            .map(|((c, _), c0)| cpu_seconds(c.0.id()) - c0)
            .sum();
        let one_rate = *one.get_or_insert(rate);
        println!(
            "{n} replica(s): {rate:.0} msg/s ({got} of {} matched), {:.2} of the ceiling, {:.2} of one replica; weir CPU {:.1} µs per message",
            args.messages,
            rate / ceiling,
            rate / one_rate,
            cpu * 1e6 / got.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
