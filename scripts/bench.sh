#!/usr/bin/env bash
# All the benchmarks, in release builds (the first build takes about 25 minutes):
# 1. the engine micro-benchmarks (criterion), each beside its serde_json baseline;
# 2. the end-to-end load harness (weir-load) through a Mosquitto it starts, QoS 0 and
#    QoS 1, selectivity 1 and 0.1, outputs to files and republished, each in three rounds
#    alternating with the plain-subscriber ceiling; a QoS 0 run at half of the
#    republishing throughput for latency; and a run with 10,000 rules (memory per idle
#    rule, cost per message beside one rule, rule-change latency);
# 3. the same workload published to weir's embedded broker (weir-load --embedded) beside
#    Mosquitto delivering it to one plain subscriber;
# 4. 1, 2 and 3 replicas sharing a Mosquitto's stream (weir-scale);
# 5. 20,000 idle device connections (or as many as the open-file limit allows) against weir's embedded broker and against Mosquitto
#    (weir-conns): memory per connection and connect rate;
# 6. device shadow updates through the embedded broker, one thing and 10,000, beside a
#    retained message's round trip through the same broker (weir-shadows): requests/s,
#    p50/p99 request → /accepted, memory per stored shadow.
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
# Two sinks for the outputs. `--sink file` writes them to local files, so that the broker
# carries the workload alone, as in the ceiling run: weir's own throughput. `--sink mqtt`
# republishes them through the same broker, where the harness takes their latency; the
# broker then carries the outputs too, so at selectivity 1 (every message out again) its
# ratio cannot pass about 0.5 when the broker is the bottleneck.
for sel in 1 0.1; do
  for qos in 0 1; do
    for sink in file mqtt; do
      echo "-- QoS $qos, as fast as possible, selectivity $sel, outputs to $sink"
      out=$("$load" --weir "$weir" --qos "$qos" --selectivity "$sel" --sink "$sink" \
        --rule-changes 0 --repeat 3 "$@" | tee /dev/stderr)
      [ "$qos$sink" = 0mqtt ] && republished="$out"
    done
  done
  # Latency at half of what the QoS 0 republishing run sustained (its first round).
  rate=$(echo "$republished" | sed -n 's/^weir (outputs): \([0-9]*\) input msg\/s.*/\1/p' | head -1)
  if [ -n "$rate" ] && [ "$rate" -gt 1 ]; then
    echo "-- QoS 0 at half of that ($((rate / 2)) msg/s), selectivity $sel, for latency"
    "$load" --weir "$weir" --qos 0 --selectivity "$sel" --rate $((rate / 2)) --skip-ceiling \
      --rule-changes 0 "$@"
  fi
done
echo "-- 10,000 rules: memory per idle rule, cost per message, rule-change latency"
"$load" --weir "$weir" --qos 0 --rules 10000 --skip-ceiling --messages 100000 "$@"
echo "== the embedded broker: devices publish to weir itself, beside Mosquitto's plain subscriber"
for qos in 0 1; do
  echo "-- QoS $qos, as fast as possible, outputs to files"
  "$load" --weir "$weir" --embedded --qos "$qos" --sink file --rule-changes 0 --repeat 3 "$@"
done
echo "== scale-out: 1, 2 and 3 replicas sharing a Mosquitto's stream, beside its ceiling"
"$CARGO_TARGET_DIR/release/weir-scale" --weir "$weir" --replicas 3
echo "== idle connections: weir's embedded broker beside Mosquitto"
# Each connection is an open file in the server and in the harness: as many connections as
# the open-file limit allows, less some for the rest, 20,000 where the limit permits.
# (The machine this was measured on has a hard limit of 20,000 that root cannot raise.)
( ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  limit=$(ulimit -n)
  n=20000
  if [ "$limit" != unlimited ] && [ "$limit" -lt 20100 ]; then n=$((limit - 100)); fi
  "$CARGO_TARGET_DIR/release/weir-conns" --weir "$weir" --connections "$n" )
echo "== device shadows: updates through the embedded broker, beside a retained message's round trip"
"$CARGO_TARGET_DIR/release/weir-shadows" --weir "$weir"
