#!/usr/bin/env bash
# All the benchmarks, in release builds (the first build takes about 25 minutes):
# 1. the engine micro-benchmarks (criterion), each beside its serde_json baseline;
# 2. the end-to-end load harness (weir-load) through a Mosquitto it starts, QoS 0 and
#    QoS 1, each beside the plain-subscriber ceiling measured in the same run, a QoS 0
#    run at half of the measured throughput for latency, and a run with 10,000 rules
#    (memory per idle rule, cost per message beside one rule, rule-change latency).
# Extra arguments go to every weir-load run (see `weir-load --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$PATH:/usr/sbin"

echo "== engine micro-benchmarks"
cargo bench -p weir-benches --bench engine
echo "== end-to-end"
cargo build --release -p weir -p weir-benches --bin weir --bin weir-load
load="$CARGO_TARGET_DIR/release/weir-load"
weir="$CARGO_TARGET_DIR/release/weir"
echo "-- QoS 0, as fast as possible"
out=$("$load" --weir "$weir" --qos 0 "$@" | tee /dev/stderr)
echo "-- QoS 1, as fast as possible"
"$load" --weir "$weir" --qos 1 "$@"
rate=$(echo "$out" | sed -n 's/^weir: \([0-9]*\) input msg\/s.*/\1/p')
if [ -n "$rate" ] && [ "$rate" -gt 1 ]; then
  echo "-- QoS 0 at half of that ($((rate / 2)) msg/s), for latency"
  "$load" --weir "$weir" --qos 0 --rate $((rate / 2)) --skip-ceiling "$@"
fi
echo "-- 10,000 rules: memory per idle rule, cost per message, rule-change latency"
"$load" --weir "$weir" --qos 0 --rules 10000 --skip-ceiling --messages 100000 "$@"
