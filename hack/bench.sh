#!/usr/bin/env bash
# `make bench`: the fleet benchmark of issue 4 (benches/fleet/) on a test
# bed of its own, stopped whatever the outcome. Arguments go to the benchmark:
#   hack/bench.sh --objects 50 --minutes 1
# Results: stdout, $TESTBED_DIR/results.md and $TESTBED_DIR/results.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export TESTBED_DIR=${TESTBED_DIR:-$ROOT/.testbed-bench}

cleanup() {
  # rotor processes the benchmark started (it records each pid); the proxies
  # exit on their own when the benchmark's pipes close.
  if [ -f "$TESTBED_DIR/bench.pids" ]; then
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$TESTBED_DIR/bench.pids"
    rm -f "$TESTBED_DIR/bench.pids"
  fi
  hack/testbed.sh down || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# rotor's requests to the API server are counted from its audit log.
export TESTBED_AUDIT_USER=rotor
# The binary is named by the last commit that changed what it is built from,
# so commits of docs or benchmarks do not force a release rebuild of rotor.
if [ -z "${ROTOR_GIT_SHA:-}" ]; then
  sources=(src Cargo.toml Cargo.lock build.rs)
  ROTOR_GIT_SHA=$(git log -1 --format=%h --abbrev=12 -- "${sources[@]}")
  git diff --quiet HEAD -- "${sources[@]}" || ROTOR_GIT_SHA+=-dirty
  export ROTOR_GIT_SHA
fi

# Build first, so that compile time does not count against the test bed.
# `cargo bench` builds the rotor binary it runs (with the features the
# benchmark's dev-dependencies unify); a separate `cargo build --release`
# would build another and evict this one.
cargo bench --bench fleet --no-run
mkdir -p "$TESTBED_DIR"
rm -f "$TESTBED_DIR/bench.pids"
hack/testbed.sh up
# shellcheck disable=SC1091
. "$TESTBED_DIR/env"
cargo bench --bench fleet -- --json "$TESTBED_DIR/results.json" "$@" | tee "$TESTBED_DIR/results.md"
