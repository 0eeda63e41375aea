#!/usr/bin/env bash
# `make test`: installs what is missing, starts the test bed, runs unit and
# integration tests, and stops the test bed whatever the outcome.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

export TESTBED_DIR=${TESTBED_DIR:-$ROOT/.testbed}
trap 'hack/testbed.sh down' EXIT

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >&2
fi

# The Helm chart: lint, render with ci/ values, validate against Kubernetes
# schemas, refuse misspelled values (installs pinned helm on first use).
hack/chart-check.sh

# Build first so that compile time does not count against the test bed.
cargo nextest run --no-run --lib --bins --tests
# The rotation function (rotator/, a workspace member the root run above
# does not include): unit tests, and its step tests against the test bed's
# PostgreSQL, MariaDB and moto.
cargo nextest run --no-run -p rotator --lib --bins --tests
# The function runs on provided.al2023 (glibc 2.34): no newer symbol versions.
hack/check-glibc.sh target/debug/bootstrap 2.34
hack/testbed.sh up
# The test bed's own helpers: moto patched to AWS's RotateSecret behaviour,
# and the fault-injecting proxy.
python3 hack/test_moto_server.py
python3 hack/test_aws_proxy.py
# The sample IAM policy's structure and decisions (moto does not enforce IAM).
python3 hack/test_iam_policy.py
# shellcheck disable=SC1091
. "$TESTBED_DIR/env"
cargo nextest run -p rotator --lib --bins --tests --no-fail-fast
cargo nextest run --lib --bins --tests --no-fail-fast "$@"
