#!/usr/bin/env bash
# Fails when BINARY needs a GLIBC symbol version above MAX (default 2.34, the
# glibc of Lambda's provided.al2023), so the rotation function's bootstrap
# runs there. Usage: hack/check-glibc.sh BINARY [MAX]
set -euo pipefail
bin=${1:?usage: $0 BINARY [MAX]}
max=${2:-2.34}
command -v objdump >/dev/null || { echo "check-glibc: objdump (binutils) is needed" >&2; exit 2; }
highest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n 1)
if [ -z "$highest" ]; then
  echo "check-glibc: $bin needs no versioned GLIBC symbol (static or not glibc)"
  exit 0
fi
if [ "$(printf '%s\n%s\n' "$highest" "$max" | sort -V | tail -n 1)" != "$max" ]; then
  echo "check-glibc: $bin needs GLIBC_$highest > $max:" >&2
  objdump -T "$bin" | grep -E "GLIBC_$highest( |\))" >&2 || true
  exit 1
fi
echo "check-glibc: $bin needs at most GLIBC_$highest (<= $max)"
