#!/usr/bin/env bash
# Proves, without a container engine, that the Dockerfile's runtime stage
# (gcr.io/distroless/cc-debian12:nonroot + /rotor) holds everything the
# release binary needs:
#   1. builds target/release/rotor when missing (or takes BINARY=path);
#   2. prints its size (as built, and stripped as `strip = true` would);
#   3. lists its dynamic dependencies (ldd) and fails if any is not one that
#      distroless cc-debian12 ships (glibc, libgcc_s, libstdc++, libgomp);
#   4. builds a chroot with ONLY: the binary as /rotor, those libraries and
#      the dynamic loader, taken from this host (Debian 12 bookworm, the same
#      packages distroless cc-debian12 is made of), /etc/ssl/certs/ca-certificates.crt,
#      /etc/passwd and /etc/group with nonroot (65532), /etc/nsswitch.conf, /tmp;
#      prints the chroot's file list;
#   5. runs, as 65532:65532 in the chroot: `/rotor --version`, `/rotor crd | head`,
#      and, when the test bed is up (.testbed/env), `/rotor run` until /readyz
#      answers 200 (TLS to the API server, the AWS SDK, the metrics server).
# Needs root (chroot). Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

BINARY=${BINARY:-target/release/rotor}
if [[ ! -x $BINARY ]]; then
  echo "==> building $BINARY (cargo build --release --bin rotor)" >&2
  cargo build --release --bin rotor
fi
[[ $(id -u) -eq 0 ]] || { echo "image-check: needs root for chroot" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/rotor-image.XXXXXX")
ROTOR_PID=
cleanup() {
  if [[ -n $ROTOR_PID ]]; then kill "$ROTOR_PID" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }
size=$(stat -c %s "$BINARY")
strip -o "$DIR.stripped" "$BINARY"
stripped=$(stat -c %s "$DIR.stripped")
rm -f "$DIR.stripped"
echo "## binary: $BINARY"
echo "size: $size bytes ($(human "$size")); stripped: $stripped bytes ($(human "$stripped"))"
file -b "$BINARY" 2>/dev/null || true

echo
echo "## dynamic dependencies (ldd)"
ldd "$BINARY" | sed 's/^\s*/  /'
# What distroless cc-debian12 ships besides base: libc6, libgcc-s1, libgomp1,
# libstdc++6 (https://github.com/GoogleContainerTools/distroless/blob/main/cc/README.md).
ALLOWED='^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libutil\.so\.1|libresolv\.so\.2|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libgomp\.so\.1)$'
bad=$(ldd "$BINARY" | awk '{print $1}' | xargs -n1 basename | grep -Ev "$ALLOWED" || true)
if [[ -n $bad ]]; then
  echo "FAIL: the binary needs libraries distroless cc does not have: $bad" >&2
  exit 1
fi
echo "all of them are in distroless cc-debian12"

# The chroot: exactly what the runtime stage has that the binary can use.
mkdir -p "$DIR/etc/ssl/certs" "$DIR/tmp"
chmod 1777 "$DIR/tmp"
install -m 0755 "$BINARY" "$DIR/rotor"
ldd "$BINARY" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  # Keep the path the loader looks up (e.g. /lib64/ld-linux-x86-64.so.2 and
  # /lib/x86_64-linux-gnu/libc.so.6), with the file's contents.
  mkdir -p "$DIR$(dirname "$lib")"
  cp -L "$lib" "$DIR$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$DIR/etc/ssl/certs/ca-certificates.crt"
# distroless base's passwd/group (root, nobody, nonroot) and nsswitch.conf.
cat >"$DIR/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$DIR/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
printf 'hosts: files dns\n' >"$DIR/etc/nsswitch.conf"
mkdir -p "$DIR/home/nonroot" && chown 65532:65532 "$DIR/home/nonroot"
chmod -R a+rX "$DIR"

echo
echo "## the chroot (everything in it)"
(cd "$DIR" && find . -mindepth 1 \( -type f -o -type l \) -printf '%M %6s  /%P\n' | sort -k3)
echo "total: $(du -sb "$DIR" | cut -f1) bytes"

in_chroot() { chroot --userspec=65532:65532 "$DIR" "$@"; }
echo
echo "## chroot --userspec=65532:65532 DIR /rotor --version"
in_chroot /rotor --version
echo
echo "## chroot --userspec=65532:65532 DIR /rotor crd | head"
in_chroot /rotor crd | head
in_chroot /rotor crd | grep -q 'name: rotatedsecrets.rotor.dev'

# With the test bed up: the controller itself, in the chroot, as 65532,
# until it is ready. It watches one namespace that holds nothing and owns
# nothing in AWS (its own cluster name), so it disturbs no test.
ENV_FILE=${TESTBED_DIR:-$ROOT/.testbed}/env
if [[ -f $ENV_FILE ]]; then
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  server=$(sed -n 's/^ *server: //p' "$ROTOR_TEST_ROTOR_KUBECONFIG")
  if curl -sk --max-time 3 -o /dev/null "$server/readyz"; then
    cp "$ROTOR_TEST_ROTOR_KUBECONFIG" "$DIR/kubeconfig"
    chmod 0644 "$DIR/kubeconfig"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    echo
    echo "## chroot --userspec=65532:65532 DIR /rotor run (test bed API server and moto)"
    env -i KUBECONFIG=/kubeconfig AWS_ENDPOINT_URL="$ROTOR_TEST_AWS_ENDPOINT" AWS_REGION=us-east-1 \
      AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true AWS_MAX_ATTEMPTS=1 \
      ROTOR_LOG_FORMAT=json \
      "$(command -v chroot)" --userspec=65532:65532 "$DIR" /rotor run --cluster-name image-check \
      --namespace rotor-image-check --metrics-addr "127.0.0.1:$port" >"$DIR.log" 2>&1 &
    ROTOR_PID=$!
    ok=
    for _ in $(seq 150); do
      if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then ok=1; break; fi
      kill -0 "$ROTOR_PID" 2>/dev/null || break
      sleep 0.2
    done
    curl -sf "http://127.0.0.1:$port/metrics" | grep '^rotor_build_info' || true
    kill "$ROTOR_PID" 2>/dev/null || true
    wait "$ROTOR_PID" 2>/dev/null || true
    ROTOR_PID=
    cut -c1-200 "$DIR.log" | sed 's/^/  /'
    rm -f "$DIR.log"
    [[ -n $ok ]] || { echo "FAIL: rotor run in the chroot never became ready" >&2; exit 1; }
    echo "ready: /readyz answered 200"
  else
    echo "(test bed not reachable: skipped rotor run in the chroot)"
  fi
else
  echo "(no $ENV_FILE: skipped rotor run in the chroot)"
fi
echo
echo "image-check: OK"
