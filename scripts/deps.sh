#!/usr/bin/env bash
# Installs what building and testing weir needs and this machine lacks (`--build-only`:
# only what building and running weir needs, not the test servers):
# - a C toolchain, OpenSSL and zlib headers (librdkafka is built from source by rdkafka),
#   Mosquitto and openssl (the tests run their own Mosquitto on a free port), psql, and
#   promtool (Debian's prometheus package: the tests check weir's metrics with it);
# - the servers the connector tests talk to, cached under $WEIR_TOOLS
#   (default ~/.cache/weir/tools) so that they are built once per machine:
#   tansu, a Kafka-protocol broker with PostgreSQL storage (cargo install, ~7 min the
#   first time; its tests' data goes to the machine's PostgreSQL, see tests/tools/tansu/), and
#   moto, an S3 API server, with boto3, azure-storage-blob and pyarrow to read back what
#   weir wrote (PyPI), and Azurite, an Azure Blob Storage API server (npm).
set -euo pipefail

TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir/tools}"
TANSU_VERSION="${TANSU_VERSION:-}"   # empty: the newest release

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v make >/dev/null || need_apt+=(make)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
[ -f /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
if [ "${1:-}" != "--build-only" ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
  command -v mosquitto_passwd >/dev/null || need_apt+=(mosquitto)
  command -v openssl >/dev/null || need_apt+=(openssl)
  command -v psql >/dev/null || need_apt+=(postgresql-client)
  command -v promtool >/dev/null || need_apt+=(prometheus)
  command -v python3 >/dev/null || need_apt+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
  command -v npm >/dev/null || need_apt+=(nodejs npm)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi

[ "${1:-}" = "--build-only" ] && exit 0

mkdir -p "$TOOLS"

# PostgreSQL on 127.0.0.1 (port $WEIR_PG_PORT, default 5432), trust authentication for the
# user postgres: the tests' Kafka brokers keep their data there, and the replica tests
# share their rules through it. Where none answers, Debian's server is installed and a
# cluster of the tests' own is started (data in $TOOLS/pgdata-<port>, or as root in
# /var/tmp/weir-pgdata-<port>).
PG_PORT="${WEIR_PG_PORT:-5432}"
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing: postgresql"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql
  fi
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  # The server will not run as root: as root, it runs as the user postgres, with its
  # data where that user may write.
  data="$TOOLS/pgdata-$PG_PORT"; as_pg=()
  if [ "$(id -u)" -eq 0 ]; then data="/var/tmp/weir-pgdata-$PG_PORT"; as_pg=(runuser -u postgres --); fi
  if [ ! -f "$data/PG_VERSION" ]; then
    echo "starting a PostgreSQL cluster for the tests in $data on 127.0.0.1:$PG_PORT"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres "$data"
    "${as_pg[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  "${as_pg[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-h 127.0.0.1 -p $PG_PORT -k /tmp" start >/dev/null
fi
psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -qtc 'select 1' >/dev/null
# Built with PostgreSQL storage, which the tests' brokers use (they survive a restart);
# a tansu built without it is built again.
TANSU_FEATURES=dynostore,libsql,postgres
if [ ! -x "$TOOLS/bin/tansu" ] || [ "$(cat "$TOOLS/bin/tansu.features" 2>/dev/null)" != "$TANSU_FEATURES" ]; then
  echo "building tansu (a Kafka-protocol broker for the tests) into $TOOLS; once per machine"
  version_arg=()
  [ -n "$TANSU_VERSION" ] && version_arg=(--version "$TANSU_VERSION")
  # Its own target dir, so that weir's builds and this one do not invalidate each other.
  # Optimised a little, not fully: a test broker needs no more, and it builds in half the
  # time (6m50s against about 13 minutes here).
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
  CARGO_TARGET_DIR="$TOOLS/target" cargo install tansu "${version_arg[@]}" --locked \
    --features "$TANSU_FEATURES" --root "$TOOLS" --force
  echo "$TANSU_FEATURES" > "$TOOLS/bin/tansu.features"
  rm -rf "$TOOLS/target"
fi
if [ ! -x "$TOOLS/venv/bin/moto_server" ] \
   || ! "$TOOLS/venv/bin/python" -c 'import boto3, pyarrow, azure.storage.blob' 2>/dev/null; then
  echo "installing moto (an S3 API server), boto3, azure-storage-blob and pyarrow into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check \
    'moto[server]==5.2.5' 'boto3==1.44.8' 'pyarrow==26.0.1' 'azure-storage-blob==12.31.1'
fi
if [ ! -x "$TOOLS/azurite/node_modules/.bin/azurite-blob" ]; then
  echo "installing Azurite (an Azure Blob Storage API server) into $TOOLS/azurite"
  mkdir -p "$TOOLS/azurite"
  (cd "$TOOLS/azurite" && npm install --no-audit --no-fund --silent azurite@3.37.0)
fi
