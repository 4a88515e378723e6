#!/usr/bin/env bash
# rapport's two entry points on a fresh machine:
#   ./dev.sh demo   build and run the demo on the embedded default (no broker needed)
#   ./dev.sh test   run the whole test suite
# Also: ./dev.sh build | bench | rapport ARGS...  (runs the release binary)
#
# Installs what the build needs (libclang for RocksDB's bindings) when it is missing, and keeps
# Cargo's target directory outside the clone (CARGO_TARGET_DIR, default ~/.cache/rapport/target)
# so that RocksDB's C++ is compiled once per machine, not once per clone.
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rapport/target}"

need_system_packages() {
  # libclang itself (libclang.so / libclang-N.so), not libclang-cpp, which some images ship alone.
  if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
    && ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so'; then
    echo "Installing libclang-dev (needed to build RocksDB's bindings)…" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq libclang-dev >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq libclang-dev >/dev/null
    fi
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first." >&2; exit 1; }
}

# What the tests use besides Rust: a real Prometheus and promtool (Debian's prometheus), and
# Python's jsonschema and PyYAML for the Kubernetes schema check.
need_test_tools() {
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "Installing prometheus (the operations tests run a real server and promtool)…" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null
  fi
  if ! python3 -c 'import jsonschema, referencing, yaml' 2>/dev/null; then
    echo "Installing jsonschema and PyYAML (the Kubernetes manifest check)…" >&2
    python3 -m pip install --quiet --disable-pip-version-check jsonschema pyyaml
  fi
}

# One profile (release) for the binary, the tests and the benchmarks: RocksDB is built once.
build() { need_system_packages; cargo build --release --locked --bins; }

case "${1:-}" in
  demo)
    build
    shift
    exec "$CARGO_TARGET_DIR/release/rapport" demo "$@"
    ;;
  test)
    need_system_packages
    need_test_tools
    shift
    cargo build --release --locked --bins
    # The Kafka tests run against a real broker on loopback, started here (and stopped again
    # if this run started it). A test that cannot reach it fails; none skips.
    started_broker=0
    if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
      deploy/local/kafka.sh start --sasl
      started_broker=1
    fi
    stop_broker() { if [ "$started_broker" = 1 ]; then deploy/local/kafka.sh stop || true; fi; }
    trap stop_broker EXIT
    export RAPPORT_TEST_KAFKA="${RAPPORT_TEST_KAFKA:-127.0.0.1:${RAPPORT_KAFKA_PORT:-9092}}"
    cargo test --release --locked "$@"
    ;;
  build) build ;;
  bench)
    need_system_packages
    shift
    cargo bench --locked --bench throughput "$@"
    ;;
  rapport)
    build
    shift
    exec "$CARGO_TARGET_DIR/release/rapport" "$@"
    ;;
  *)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
