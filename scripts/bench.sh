#!/usr/bin/env bash
# All the benchmarks, in release builds (the first build takes about 25 minutes):
# 1. the engine micro-benchmarks (criterion), each beside its serde_json baseline;
# 2. the end-to-end load harness (weir-load) through a Mosquitto it starts, QoS 0 and
#    QoS 1, each in three rounds alternating with the plain-subscriber ceiling, a QoS 0
#    run at half of the measured throughput for latency, and a run with 10,000 rules
#    (memory per idle rule, cost per message beside one rule, rule-change latency).
# Extra arguments go to every weir-load run (see `weir-load --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$PATH:/usr/sbin"

echo "== engine micro-benchmarks"
# --workspace in both commands: one feature set, so the second build reuses the first's.
cargo bench --workspace --bench engine
echo "== end-to-end"
cargo build --release --workspace --bins
load="$CARGO_TARGET_DIR/release/weir-load"
weir="$CARGO_TARGET_DIR/release/weir"
# Selectivity 1 republishes every message through the same broker (twice the ceiling's
# broker work, so at most about half its rate); 0.1 is a filtering rule.
for sel in 1 0.1; do
  echo "-- QoS 0, as fast as possible, selectivity $sel"
  out=$("$load" --weir "$weir" --qos 0 --selectivity "$sel" --rule-changes 0 --repeat 3 "$@" | tee /dev/stderr)
  echo "-- QoS 1, as fast as possible, selectivity $sel"
  "$load" --weir "$weir" --qos 1 --selectivity "$sel" --rule-changes 0 --repeat 3 "$@"
  rate=$(echo "$out" | sed -n 's/^weir (outputs): \([0-9]*\) input msg\/s.*/\1/p' | head -1)
  if [ -n "$rate" ] && [ "$rate" -gt 1 ]; then
    echo "-- QoS 0 at half of that ($((rate / 2)) msg/s), selectivity $sel, for latency"
    "$load" --weir "$weir" --qos 0 --selectivity "$sel" --rate $((rate / 2)) --skip-ceiling \
      --rule-changes 0 "$@"
  fi
done
echo "-- 10,000 rules: memory per idle rule, cost per message, rule-change latency"
"$load" --weir "$weir" --qos 0 --rules 10000 --skip-ceiling --messages 100000 "$@"
