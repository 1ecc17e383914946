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
//!
//! The harness is in the benches crate's `load` module (`benches/src/load/`).

use clap::Parser;
use weir_benches::load::{self, Args};

#[tokio::main]
async fn main() {
    load::main(Args::parse()).await;
}
