#!/usr/bin/env bash
# Installs what the test bed needs, idempotently: etcd, kube-apiserver and
# kube-controller-manager (built once from Debian's kubernetes source package
# and cached), moto's server, PostgreSQL 15 and MariaDB. Prints the asset folder on its last line.
#
# KUBEBUILDER_ASSETS, if set, names a folder that already holds etcd and
# kube-apiserver (the envtest convention) and the Kubernetes build is skipped.
set -euo pipefail

CACHE=${ROTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rotor}
ASSETS=$CACHE/k8s-1.20.2
REQUIREMENTS=$(cd "$(dirname "$0")" && pwd)/requirements-testbed.txt
MOTO_VERSION=$(sed -n 's/^moto==//p' "$REQUIREMENTS")

log() { echo "install-testbed: $*" >&2; }

need_apt=()
command -v jq >/dev/null || need_apt+=(jq)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)

# Databases for the rotation function's tests (rotator/): PostgreSQL 15 (TLS,
# SCRAM) and MariaDB, started directly by hack/testbed.sh, no service manager.
# mariadb-server-core + mariadb-client-core are enough: the full mariadb-server
# pulls galera and perl and its install script tries to start a service.
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server-core mariadb-client-core)

have_assets() {
  [ -x "$1/etcd" ] && [ -x "$1/kube-apiserver" ]
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  have_assets "$KUBEBUILDER_ASSETS" || { log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks etcd or kube-apiserver"; exit 1; }
  ASSETS=$KUBEBUILDER_ASSETS
else
  [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
  if ! [ -x "$ASSETS/kube-apiserver" ] || ! [ -x "$ASSETS/kube-controller-manager" ]; then
    need_apt+=(golang-1.19-go golang-github-modern-go-reflect2-dev rsync dpkg-dev)
    build_k8s=1
  fi
fi

apt_updated=0
apt_update() {
  [ $apt_updated = 1 ] && return
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  apt_updated=1
}

if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

if [ "${build_k8s:-0}" = 1 ]; then
  # deb-src for Debian's kubernetes source, same mirrors as the binary lists.
  src=/etc/apt/sources.list.d/rotor-deb-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding deb-src entry"
    cat >"$src" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
  fi
  apt_update
  work=$(mktemp -d "${TMPDIR:-/tmp}/rotor-k8s-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "downloading kubernetes source into $work"
  (cd "$work" && apt-get source --download-only -qq kubernetes >&2)
  orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
  mkdir "$work/src"
  tar -xf "$orig" -C "$work/src" --strip-components=1
  cd "$work/src"
  # Kubernetes 1.20 vendors reflect2 1.0.1, which crashes kube-apiserver
  # (SIGSEGV in mapiterinit) on the first custom-resource write with Go >= 1.18.
  r2=vendor/github.com/modern-go/reflect2
  rm -f "$r2"/*.go "$r2"/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r2"/
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r2"/ 2>/dev/null || true
  rm -f "$r2"/*_test.go
  mkdir -p .go/src/k8s.io && ln -s ../../.. .go/src/k8s.io/kubernetes
  log "building kube-apiserver and kube-controller-manager (a few minutes)"
  GOPATH=$PWD/.go PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 GOFLAGS=-mod=vendor \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" GOLDFLAGS="-s -w" >&2
  mkdir -p "$ASSETS.tmp"
  cp _output/local/bin/linux/amd64/kube-apiserver _output/local/bin/linux/amd64/kube-controller-manager "$ASSETS.tmp/"
  ln -sf /usr/bin/etcd "$ASSETS.tmp/etcd"
  rm -rf "$ASSETS" && mv "$ASSETS.tmp" "$ASSETS"
  cd / 
fi

if [ -z "${KUBEBUILDER_ASSETS:-}" ] && ! [ -e "$ASSETS/etcd" ]; then
  ln -sf /usr/bin/etcd "$ASSETS/etcd"
fi

if ! python3 -c "import moto, flask, flask_cors, yaml, boto3, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  log "pip install -r $REQUIREMENTS (moto $MOTO_VERSION)"
  python3 -m pip install -q -r "$REQUIREMENTS" >&2
fi

echo "$ASSETS"
