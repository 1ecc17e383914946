//! What weir-load measures through weir: a workload run (throughput, latency, CPU and
//! memory, from the outputs that arrive or the files written) and rule changes (from a
//! PUT's answer to the new rule's first output).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::sync::Mutex;

use super::args::{Args, Sink};
use super::clients::{Seen, client, publish, subscriber};
use super::counter::{Counter, print};
use super::weir::{
    WeirProcess, delete_rule, peak_rss_kib, print_weir_share, put_rule, unsubscribed,
    weir_processed,
};
use crate::harness::cpu_seconds;

/// What one workload run through weir measured.
pub(crate) struct WeirRun {
    pub(crate) input_rate: f64,
    /// weir's CPU seconds per input message.
    pub(crate) cpu_per_msg: f64,
    /// Every expected output arrived.
    pub(crate) complete: bool,
}

/// Installs the load rule, waits until it processes, publishes the workload and reports.
pub(crate) async fn run_weir(args: &Args, weir: &WeirProcess, label: &str) -> WeirRun {
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

/// Rule changes: from the answer to a PUT of a new rule to its first output, while a
/// device publishes to the rule's topic every millisecond. Returns the times in ms.
pub(crate) async fn rule_change_latency(
    broker: SocketAddr,
    http: SocketAddr,
    times: u32,
) -> Vec<f64> {
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
