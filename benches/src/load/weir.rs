//! The processes the harness starts (weir, and Mosquitto unless `--broker` names one) and
//! what it asks weir over HTTP: rules put and deleted, metrics read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::args::Args;
use super::clients::client_id;
use crate::harness::{Killed, free_port, weir_metric};

pub(crate) fn start_mosquitto(port: u16, dir: &std::path::Path) -> Killed {
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

/// A weir process reading from the broker.
pub(crate) struct WeirProcess {
    _child: Killed,
    pub(crate) pid: u32,
    pub(crate) http: SocketAddr,
    /// Where devices publish: the external broker, or with `--embedded` weir's own.
    pub(crate) broker: SocketAddr,
    pub(crate) embedded: bool,
    pub(crate) dir: PathBuf,
}

pub(crate) fn start_weir(args: &Args, broker: SocketAddr, dir: &std::path::Path) -> WeirProcess {
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

/// The admin token of the weir the harness starts (a file given with
/// `--admin-token-file`): every API call carries it.
const ADMIN_TOKEN: &str = "weir-load-admin-token-on-loopback";

/// PUT a rule over plain HTTP/1.1; panics unless weir answers 2xx.
pub(crate) fn put_rule(http: SocketAddr, name: &str, body: &serde_json::Value) {
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

pub(crate) fn delete_rule(http: SocketAddr, name: &str) {
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

/// Installs `n` idle rules (distinct filters no message matches) from a few threads;
/// returns how long it took.
pub(crate) fn install_idle_rules(http: SocketAddr, n: u64, qos: u8) -> Duration {
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

/// weir_rule_messages_matched_total of `rule`, over HTTP.
pub(crate) fn weir_processed(http: SocketAddr, rule: &str) -> u64 {
    weir_metric(
        http,
        &format!("weir_rule_messages_matched_total{{rule=\"{rule}\"}}"),
    )
    .map_or(0, |v| v as u64)
}

/// weir's own part of the outputs' latency, from its `weir_action_delivery_seconds`:
/// receipt of a message to its output written to the broker (QoS 0) or acknowledged by
/// it (QoS 1). What the harness saw beyond that was spent in the broker and the harness.
pub(crate) fn print_weir_share(http: SocketAddr, rule: &str) {
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

/// Peak resident memory of a process in KiB (VmHWM).
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the broker acknowledged weir's last subscription change (a deleted rule's
/// UNSUBSCRIBE), so that the next ceiling run does not share the broker with weir; returns
/// how long that took. Under QoS 1 load Mosquitto can take seconds: it reads one packet
/// per connection per turn of its loop, and weir's UNSUBSCRIBE waits behind its PUBACKs.
pub(crate) async fn unsubscribed(http: SocketAddr) -> Duration {
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
