#!/usr/bin/env bash
# The whole test suite: the shape guard, formatting, lints, unit and integration tests.
# Integration tests start weir and talk to it over real MQTT and HTTP connections,
# in embedded-broker mode and against a Mosquitto that they start on a free port, and
# talk to a real Kafka-protocol broker (tansu) and S3 API server (moto) that they start;
# scripts/deps.sh installs those once per machine.
#
# With cargo-nextest installed (`cargo install cargo-nextest`), every test runs in a
# process of its own and the test binaries side by side (.config/nextest.toml), so the
# slow suites run beside the rest; without it, `cargo test` runs them one binary after
# another.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$PATH:/usr/sbin"

echo "== shape (no import circle, no source file over 600 lines)"
python3 scripts/shape.py
echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
  # nextest runs no doc tests: the examples of docs/extending.md and the crate docs.
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked
fi
