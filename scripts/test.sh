#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Integration tests start weir and talk to it over real MQTT and HTTP connections,
# in embedded-broker mode and against a Mosquitto that they start on a free port, and
# talk to a real Kafka-protocol broker (tansu) and S3 API server (moto) that they start;
# scripts/deps.sh installs those once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$PATH:/usr/sbin"

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
