//! The end-to-end load harness behind `weir-load` (`src/bin/weir-load.rs`). Starts
//! Mosquitto (or uses `--broker`) and weir, publishes a workload, collects the rules'
//! outputs and reports throughput, latency, and weir's CPU and peak memory, beside the
//! ceiling: a plain subscriber on the same broker and topics that only counts, in a
//! process of its own (as weir is), measured in the same run; with `--repeat N`, N
//! ceiling and weir runs alternate and the median ratio is reported.
//!
//! Every message carries its publish time; the rule republishes what passes its WHERE
//! clause to `out/<device>`, where a subscriber takes the time of arrival, or, with
//! `--sink file`, writes it to JSON-lines files, so that the broker carries only the
//! workload.
//!
//! It also measures rule changes (from a PUT's answer to the new rule's first output) and,
//! with `--rules N`, runs the workload again on a fresh weir holding N-1 idle rules with
//! distinct filters: memory per idle rule, and cost per message beside the one-rule run.

//!
//! * [`args`]: the command line; [`clients`]: the workload's publishers and the recording
//!   subscribers; [`counter`]: counting subscribers in processes of their own, and their
//!   reports; [`weir`]: the processes started and weir's API; [`measure`]: a workload run
//!   through weir, and rule changes.

mod args;
mod clients;
mod counter;
mod measure;
mod weir;

use std::net::SocketAddr;
use std::time::Duration;

pub use args::Args;
use counter::{ceiling_subscriber, measure_ceiling, print};
use measure::{rule_change_latency, run_weir};
use weir::{install_idle_rules, start_mosquitto, start_weir};

use crate::harness::{free_port, rss_kib, wait_port};

/// Runs weir-load as `args` say (or, with the hidden `--ceiling-subscriber`, one of its
/// counting subscribers).
pub async fn main(args: Args) {
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
