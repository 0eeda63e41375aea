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

say "Building rotor and starting the test bed (etcd, kube-apiserver, kube-controller-manager, moto)"
cargo build --quiet --bin rotor
hack/testbed.sh up 2>&1 | tail -n 1
# shellcheck disable=SC1091
. "$TESTBED_DIR/env"
export KUBECONFIG=$ROTOR_TEST_ADMIN_KUBECONFIG
K="kubectl --warnings-as-errors=false"
AWS="python3 hack/aws.py $ROTOR_TEST_AWS_ENDPOINT"

say "Installing the CRD, and the Helm chart's RBAC for the user rotor runs as"
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

say "Starting rotor"
KUBECONFIG=$ROTOR_TEST_ROTOR_KUBECONFIG AWS_ENDPOINT_URL=$ROTOR_TEST_AWS_ENDPOINT AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
  target/debug/rotor run --cluster-name demo --metrics-addr 127.0.0.1:0 --min-refresh-interval 1s \
  >"$TESTBED_DIR/rotor.log" 2>&1 &
ROTOR_PID=$!

say "Applying examples/demo.yaml: a RotatedSecret and a Deployment that reads its Secret"
run $K apply -f examples/demo.yaml 2>/dev/null
$K -n shop wait --for=condition=Ready rotsec/db-credentials --timeout=60s >/dev/null
run $K -n shop get rotsec 2>/dev/null

say "What rotor made in AWS (no value is printed)"
$AWS describe shop/db-credentials

show_secret() {
  $K -n shop get secret db-credentials -o json | python3 -c '
import base64, json, sys
s = json.load(sys.stdin)
print("  version-id:", s["metadata"]["annotations"]["rotor.dev/version-id"])
for k, v in sorted(s["data"].items()):
    v = base64.b64decode(v).decode()
    print(f"  {k}: {v[:10]}... ({len(v)} chars)")'
}
restarted_for() {
  $K -n shop get deploy shop-api -o jsonpath='{.spec.template.metadata.annotations.rotor\.dev/db-credentials}'
}
say "The Kubernetes Secret (values cut short)"
show_secret
echo "  shop-api restarted for: '$(restarted_for)' (first sync restarts nothing)"

say "Rotate now: annotate the RotatedSecret; rotor calls RotateSecret once for this token"
start=$(date +%s%N)
run $K -n shop annotate rotsec db-credentials rotor.dev/rotate-now=demo-1 >/dev/null
V1=$($K -n shop get secret db-credentials -o jsonpath='{.metadata.annotations.rotor\.dev/version-id}')
until [ -n "$(restarted_for)" ] && [ "$(restarted_for)" != "$V1" ]; do sleep 0.2; done
echo "Rotated, Secret rewritten and shop-api restarted in $(( ($(date +%s%N) - start) / 1000000 )) ms"
show_secret
echo "  shop-api restarted for: $(restarted_for)"

say "A rotation Lambda rotates on its schedule (simulated: AWSPENDING, then AWSCURRENT moves)"
start=$(date +%s%N)
V3=$($AWS rotate shop/db-credentials)
echo "AWSCURRENT = $V3"
until [ "$(restarted_for)" = "$V3" ]; do sleep 0.2; done
echo "Noticed by the ListSecrets sweep; Secret and shop-api followed in $(( ($(date +%s%N) - start) / 1000000 )) ms (refreshInterval 5s)"
run $K -n shop get rotsec 2>/dev/null

say "Events"
$K -n shop get events.events.k8s.io --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,OBJECT:.regarding.kind,NAME:.regarding.name,NOTE:.note 2>/dev/null

say "Deleting the RotatedSecret (deletionPolicy Retain: the AWS secret stays, untagged)"
run $K -n shop delete rotsec db-credentials --timeout=30s 2>/dev/null
$AWS describe shop/db-credentials | grep tags
echo
echo "Demo done. rotor's log: $TESTBED_DIR/rotor.log"
