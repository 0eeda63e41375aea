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
cargo build --quiet -p rotator --bin bootstrap
hack/testbed.sh up 2>&1 | tail -n 1
# shellcheck disable=SC1091
. "$TESTBED_DIR/env"
export KUBECONFIG=$ROTOR_TEST_ADMIN_KUBECONFIG
K="kubectl --warnings-as-errors=false"
AWS="python3 hack/aws.py $ROTOR_TEST_AWS_ENDPOINT"

say "Installing the Helm chart's CRD and RBAC (namespaced scope: watching shop), as helm would"
HELM=$(hack/helm.sh)
export HELM_CONFIG_HOME=$TESTBED_DIR/helm/config HELM_CACHE_HOME=$TESTBED_DIR/helm/cache HELM_DATA_HOME=$TESTBED_DIR/helm/data
$K create namespace rotor-system >/dev/null
$K create namespace shop >/dev/null
HELM_ARGS=(template rotor charts/rotor -n rotor-system
  --set 'clusterName=demo,aws.region=us-east-1,rbac.scope=namespaced' --set 'watchNamespaces={shop}')
printf '$ helm %s\n' "${HELM_ARGS[*]}"
"$HELM" "${HELM_ARGS[@]}" >"$TESTBED_DIR/rendered.yaml"
# The objects a controller process needs; the Deployment and Service are for
# a cluster with nodes (this one has none: rotor runs below as a process).
python3 - "$TESTBED_DIR/rendered.yaml" <<'PY' | $K apply -f - 2>/dev/null
import json, sys, yaml
keep = {"CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] in keep]
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
PY
$K wait --for=condition=Established crd/rotatedsecrets.rotor.dev >/dev/null

say "Starting rotor under a token for the chart's ServiceAccount (TokenRequest), with the chart's flags"
TOKEN=$($K -n rotor-system create token rotor --duration=2h)
SERVER=$($K config view --minify -o jsonpath='{.clusters[0].cluster.server}')
cat >"$TESTBED_DIR/rotor-sa.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {server: "$SERVER", insecure-skip-tls-verify: true}
users:
- name: rotor
  user: {token: "$TOKEN"}
contexts:
- name: rotor
  context: {cluster: testbed, user: rotor}
current-context: rotor
KC
KUBECONFIG=$TESTBED_DIR/rotor-sa.kubeconfig AWS_ENDPOINT_URL=$ROTOR_TEST_AWS_ENDPOINT AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
  target/debug/rotor run --cluster-name demo --namespace shop \
  --leader-election --leader-election-namespace rotor-system --leader-election-lease rotor \
  --metrics-addr 127.0.0.1:0 --min-refresh-interval 1s \
  >"$TESTBED_DIR/rotor.log" 2>&1 &
ROTOR_PID=$!
echo "rotor runs as $($K -n rotor-system get sa rotor -o jsonpath='system:serviceaccount:{.metadata.namespace}:{.metadata.name}')"
for check in "update leases -n kube-system" "get secrets -n default" "get secrets -n shop"; do
  # shellcheck disable=SC2086
  printf '  can-i %-30s %s\n' "$check" "$($K auth can-i $check --as system:serviceaccount:rotor-system:rotor 2>/dev/null || true)"
done

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

say "rotor's own rotation function, for real: a PostgreSQL password rotated by the Rust Lambda"
PSQL=/usr/lib/postgresql/15/bin/psql
pg() { # user, password, sql
  PGPASSWORD=$2 PGSSLMODE=verify-full PGSSLROOTCERT=$ROTOR_TEST_DB_CA "$PSQL" -h 127.0.0.1 \
    -p "$ROTOR_TEST_PG_PORT" -U "$1" -d postgres -tAc "$3"
}
pg "$ROTOR_TEST_PG_ADMIN_USER" "$ROTOR_TEST_PG_ADMIN_PASSWORD" "CREATE ROLE orders_app LOGIN PASSWORD 'first-Pw-from-the-demo'" >/dev/null
echo "PostgreSQL 15 (TLS, SCRAM) has a user orders_app"
python3 hack/lambda_zip.py target/debug/bootstrap "$TESTBED_DIR/rotator.zip" >/dev/null
FN=$($AWS function rotor-rotator-demo "$TESTBED_DIR/rotator.zip" "$ROTOR_TEST_DB_CA")
echo "deployed the function's zip as $FN (moto runs its real bootstrap)"
$K apply -f - >/dev/null 2>&1 <<YAML
apiVersion: rotor.dev/v1alpha1
kind: RotatedSecret
metadata: {name: orders-db, namespace: shop}
spec:
  secretsManager:
    name: shop/orders-db
    initialValue:
      template: {engine: postgres, host: 127.0.0.1, port: $ROTOR_TEST_PG_PORT, username: orders_app,
                 password: first-Pw-from-the-demo, dbname: postgres}
  rotation: {lambdaArn: "$FN", schedule: rate(30 days)}
  refreshInterval: 1s
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders-api, namespace: shop}
spec:
  selector: {matchLabels: {app: orders-api}}
  template:
    metadata: {labels: {app: orders-api}}
    spec:
      containers:
      - {name: app, image: busybox, envFrom: [{secretRef: {name: orders-db}}]}
YAML
$K -n shop wait --for=condition=Ready rotsec/orders-db --timeout=60s >/dev/null
echo "orders-db Ready; the function is configured as its rotation Lambda"
orders_rolled() {
  $K -n shop get deploy orders-api -o jsonpath='{.spec.template.metadata.annotations.rotor\.dev/orders-db}'
}
secret_password() {
  $K -n shop get secret orders-db -o jsonpath='{.data.password}' | base64 -d
}
start=$(date +%s%N)
run $K -n shop annotate rotsec orders-db rotor.dev/rotate-now=demo-pg >/dev/null
until [ -n "$(orders_rolled)" ]; do sleep 0.2; done
echo "createSecret, setSecret, testSecret, finishSecret ran; Secret rewritten and orders-api restarted in $(( ($(date +%s%N) - start) / 1000000 )) ms"
$AWS versions shop/orders-db
echo "  orders-api restarted for: $(orders_rolled)"
printf '  the new password from the Secret logs in as: '
pg orders_app "$(secret_password)" "SELECT current_user"
printf '  the first password: '
if pg orders_app first-Pw-from-the-demo "SELECT 1" >/dev/null 2>&1; then echo "still works (unexpected)"; exit 1; else echo "refused"; fi

say "Events"
$K -n shop get events.events.k8s.io --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,OBJECT:.regarding.kind,NAME:.regarding.name,NOTE:.note 2>/dev/null

say "Deleting the RotatedSecret (deletionPolicy Retain: the AWS secret stays, untagged)"
run $K -n shop delete rotsec db-credentials --timeout=30s 2>/dev/null
$AWS describe shop/db-credentials | grep tags
if grep -qi forbidden "$TESTBED_DIR/rotor.log"; then
  echo "rotor was refused something under the chart's RBAC:"; grep -i forbidden "$TESTBED_DIR/rotor.log" | head -n 5
  exit 1
fi
echo
echo "Demo done, under the chart's RBAC with nothing refused. rotor's log: $TESTBED_DIR/rotor.log"
