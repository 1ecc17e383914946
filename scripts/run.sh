#!/usr/bin/env bash
# Installs what is needed and runs weir on its embedded defaults: MQTT broker on
# 127.0.0.1:1883, HTTP API on 127.0.0.1:8080, data in ./weir-data, rules from ./queries.
# Extra arguments go to `weir serve` (see `weir serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh --build-only
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
exec cargo run --locked --bin weir -- serve "$@"
