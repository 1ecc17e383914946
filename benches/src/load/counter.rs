//! Counting subscribers in processes of their own (this binary with the hidden
//! `--ceiling-subscriber`): the ceiling, and the receiver of weir's republished outputs;
//! what they report, and how it is printed.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::args::{Args, qos};
use super::clients::{Seen, drain, publish, subscriber};
use crate::harness::Killed;

pub(crate) struct Report {
    pub(crate) count: u64,
    pub(crate) rate: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
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

pub(crate) fn print(name: &str, r: &Report) {
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

/// A counting subscriber in a process of its own (this binary with the hidden
/// `--ceiling-subscriber`), so that it shares threads with neither the publishers nor
/// weir: the ceiling, and the receiver of weir's republished outputs.
pub(crate) struct Counter {
    _child: Killed,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Counter {
    /// Starts one on `filter` that reports once `expected` messages arrived, or nothing
    /// came for 3 s after the first; returns once it is subscribed.
    /// With `trace`, it writes its outputs' latencies there (`--latency-trace`).
    pub(crate) async fn start(
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
    pub(crate) async fn report(mut self) -> Report {
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
pub(crate) async fn measure_ceiling(args: &Args, broker: SocketAddr) -> Report {
    let counter = Counter::start(broker, "load/#", args.qos, args.messages, None).await;
    publish(broker, args).await;
    counter.report().await
}

/// The ceiling's subscriber process (`--ceiling-subscriber <filter>`).
pub(crate) async fn ceiling_subscriber(args: &Args, filter: &str) {
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
