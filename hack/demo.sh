#!/usr/bin/env bash
# `make demo`: rotor end to end on the local test bed, as a short transcript.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export TESTBED_DIR=${TESTBED_DIR:-$ROOT/.testbed-demo}

say() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

ROTOR_PID=
cleanup() {
  [ -n "$ROTOR_PID" ] && kill "$ROTOR_PID" 2>/dev/null || true
  hack/testbed.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "Building rotor and starting the test bed (etcd, kube-apiserver, moto)"
cargo build --quiet --bin rotor
hack/testbed.sh up 2>&1 | tail -n 1
# shellcheck disable=SC1091
. "$TESTBED_DIR/env"
export KUBECONFIG=$ROTOR_TEST_ADMIN_KUBECONFIG
K="kubectl --warnings-as-errors=false"
AWS="python3 hack/aws.py $ROTOR_TEST_AWS_ENDPOINT"

say "Installing the CRD and the chart's RBAC for the rotor user"
target/debug/rotor crd | $K apply -f - 2>/dev/null
$K wait --for=condition=Established crd/rotatedsecrets.rotor.dev >/dev/null
python3 - "$ROOT/charts/rotor/files/clusterrole-rules.yaml" <<'PY' | $K apply -f - 2>/dev/null
import json, sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "rotor"}, "rules": rules},
  {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "rotor"},
   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rotor"},
   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "rotor"}]}]}))
PY
$K create namespace shop >/dev/null

say "An AWS secret exists, tagged for the RotatedSecret shop/db-credentials"
V1=$($AWS create shop/db-credentials demo/shop/db-credentials \
  '{"engine":"mysql","host":"db.shop.internal","username":"admin","password":"initial-Pw-1","dbname":"myapp","port":3306}')
echo "AWSCURRENT = $V1"

say "Starting rotor (under the chart's RBAC)"
KUBECONFIG=$ROTOR_TEST_ROTOR_KUBECONFIG AWS_ENDPOINT_URL=$ROTOR_TEST_AWS_ENDPOINT AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
  target/debug/rotor run --cluster-name demo --metrics-addr 127.0.0.1:0 --min-refresh-interval 1s \
  >"$TESTBED_DIR/rotor.log" 2>&1 &
ROTOR_PID=$!

say "Applying examples/demo.yaml"
run $K apply -f examples/demo.yaml 2>/dev/null
$K -n shop wait --for=condition=Ready rotsec/db-credentials --timeout=60s >/dev/null
run $K -n shop get rotsec 2>/dev/null
show_secret() {
  $K -n shop get secret db-credentials -o json | python3 -c '
import base64, json, sys
s = json.load(sys.stdin)
print("version-id:", s["metadata"]["annotations"]["rotor.dev/version-id"])
for k, v in sorted(s["data"].items()):
    v = base64.b64decode(v).decode()
    print(f"  {k}: {v[:12]}...({len(v)} chars)")'
}
show_secret

say "A rotation Lambda moves AWSCURRENT to a new version"
start=$(date +%s%N)
V2=$($AWS rotate shop/db-credentials)
echo "AWSCURRENT = $V2"
until [ "$($K -n shop get secret db-credentials -o jsonpath='{.metadata.annotations.rotor\.dev/version-id}')" = "$V2" ]; do
  sleep 0.2
done
echo "Secret followed in $(( ($(date +%s%N) - start) / 1000000 )) ms (refreshInterval 5s)"
show_secret
run $K -n shop get rotsec 2>/dev/null

say "Events"
$K -n shop get events.events.k8s.io -o custom-columns=TYPE:.type,REASON:.reason,NOTE:.note 2>/dev/null
echo
echo "Demo done. rotor's log: $TESTBED_DIR/rotor.log"
