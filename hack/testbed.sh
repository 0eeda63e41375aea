#!/usr/bin/env bash
# Starts (up) or stops (down) the test bed: etcd, kube-apiserver with RBAC,
# kube-controller-manager, moto, and for the rotation function (rotator/)
# PostgreSQL 15 and MariaDB with TLS from a CA made here, on free loopback ports. `up` writes
# $TESTBED_DIR/env with the variables the integration tests read.
#
#   up-control-plane   etcd and kube-apiserver only (a private control plane
#                      that a failure test may restart without disturbing others)
#   restart NAME [S]   stops one component (etcd, kube-apiserver, ...: SIGTERM,
#                      SIGKILL after 5 s), keeps it down S seconds (default
#                      0), starts it again with the same command line and
#                      waits until it answers
#
# TESTBED_AUDIT_USER=rotor makes kube-apiserver write an audit log of that
# user's requests to $TESTBED_DIR/audit.log (the benchmark counts them).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TESTBED_DIR=${TESTBED_DIR:-$ROOT/.testbed}

log() { echo "testbed: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what did not become ready in ${secs}s; its log:"
  tail -n 30 "$TESTBED_DIR/$what.log" >&2 || true
  return 1
}

# Starts a component, remembering its command line and pid for `restart`.
start() { # name, command...
  local name=$1; shift
  mkdir -p "$TESTBED_DIR/cmd"
  printf '%q ' "$@" >"$TESTBED_DIR/cmd/$name"
  [ -n "${restarting:-}" ] || : >"$TESTBED_DIR/$name.log"
  "$@" >>"$TESTBED_DIR/$name.log" 2>&1 &
  echo "$!" >>"$TESTBED_DIR/pids"
  echo "$!" >"$TESTBED_DIR/cmd/$name.pid"
}

# wait_for, keeping the check for `restart`.
ready() { # name, seconds, command...
  printf '%q ' "${@:3}" >"$TESTBED_DIR/cmd/$1.ready"
  wait_for "$@"
}

restart() { # name, seconds down
  local name=$1 down_for=${2:-0} pid cmd check
  [ -f "$TESTBED_DIR/cmd/$name" ] || { log "no component $name in $TESTBED_DIR"; exit 2; }
  cmd=$(cat "$TESTBED_DIR/cmd/$name")
  pid=$(cat "$TESTBED_DIR/cmd/$name.pid")
  # kube-apiserver 1.20 does not exit on SIGTERM while a watch is open.
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  log "$name stopped (pid $pid)"
  sleep "$down_for"
  local restarting=1
  eval "start $name $cmd"
  if [ -f "$TESTBED_DIR/cmd/$name.ready" ]; then
    check=$(cat "$TESTBED_DIR/cmd/$name.ready")
    eval "wait_for $name 90 $check"
  fi
  log "$name started again (pid $(cat "$TESTBED_DIR/cmd/$name.pid"))"
}

PG_BIN=/usr/lib/postgresql/15/bin

# A CA and a server certificate for 127.0.0.1, for both databases' TLS.
make_db_certs() {
  local d=$TESTBED_DIR/db-tls
  rm -rf "$d" && mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=rotor test bed CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 7 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
}

# PostgreSQL as the postgres user (initdb refuses root), SCRAM only, TLS on.
start_postgres() { # port, admin password
  local dir=$TESTBED_DIR/postgres
  rm -rf "$dir" && mkdir -p "$dir"
  printf '%s\n' "$2" >"$dir/pwfile"
  cp "$TESTBED_DIR/db-tls/server.crt" "$TESTBED_DIR/db-tls/server.key" "$dir/"
  chmod 600 "$dir/server.key" "$dir/pwfile"
  chown -R postgres:postgres "$dir"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 \
    --pwfile="$dir/pwfile" >"$TESTBED_DIR/postgres-initdb.log" 2>&1
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -c port=$1 -c unix_socket_directories=$dir -c fsync=off -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" \
    start >/dev/null
}

stop_postgres() {
  local dir=$TESTBED_DIR/postgres
  if [ -f "$dir/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

# MariaDB started directly (no service manager), TLS on, an admin user for TCP.
start_mariadb() { # port, admin password
  local dir=$TESTBED_DIR/mariadb tls=$TESTBED_DIR/db-tls
  rm -rf "$dir" && mkdir -p "$dir"
  mariadb-install-db --no-defaults --user=root --datadir="$dir/data" \
    --auth-root-authentication-method=normal --skip-test-db >"$TESTBED_DIR/mariadb-install.log" 2>&1
  start mariadb "$(command -v mariadbd || echo /usr/sbin/mariadbd)" --no-defaults --user=root \
    --datadir="$dir/data" --bind-address=127.0.0.1 --port="$1" --socket="$dir/s" --pid-file="$dir/pid" \
    --skip-log-bin --skip-name-resolve --innodb-flush-log-at-trx-commit=0 \
    --ssl-ca="$tls/ca.crt" --ssl-cert="$tls/server.crt" --ssl-key="$tls/server.key"
  wait_for mariadb 30 mariadb --no-defaults -uroot -S "$dir/s" -e 'SELECT 1'
  mariadb --no-defaults -uroot -S "$dir/s" -e \
    "CREATE USER 'admin'@'%' IDENTIFIED BY '$2'; GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION;"
}

down() {
  stop_postgres
  if [ -f "$TESTBED_DIR/pids" ]; then
    # Reverse order: controllers before the API server before etcd.
    tac "$TESTBED_DIR/pids" | while read -r pid; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    tac "$TESTBED_DIR/pids" | while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done
    rm -f "$TESTBED_DIR/pids"
  fi
  rm -rf "$TESTBED_DIR/etcd" "$TESTBED_DIR/certs" "$TESTBED_DIR/mariadb" "$TESTBED_DIR/db-tls" "$TESTBED_DIR/cmd"
  log "stopped"
}

# etcd and kube-apiserver with the admin and rotor kubeconfigs; sets
# `assets` and `api_port` for the caller.
control_plane() {
  [ -f "$TESTBED_DIR/pids" ] && down
  mkdir -p "$TESTBED_DIR"
  assets=$("$ROOT/hack/install-testbed.sh" | tail -n 1)
  log "assets: $assets"

  local etcd_port peer_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)

  start etcd "$assets/etcd" --data-dir "$TESTBED_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync
  ready etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  openssl genrsa -out "$TESTBED_DIR/sa.key" 2048 2>/dev/null
  openssl rsa -in "$TESTBED_DIR/sa.key" -pubout -out "$TESTBED_DIR/sa.pub" 2>/dev/null
  local admin_token rotor_token audit=()
  admin_token=$(openssl rand -hex 16); rotor_token=$(openssl rand -hex 16)
  if [ -n "${TESTBED_AUDIT_USER:-}" ]; then
    # Metadata of one user's requests only: what the benchmark counts.
    cat >"$TESTBED_DIR/audit-policy.yaml" <<POLICY
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["$TESTBED_AUDIT_USER"]
- level: None
POLICY
    rm -f "$TESTBED_DIR/audit.log"
    audit=(--audit-policy-file="$TESTBED_DIR/audit-policy.yaml" --audit-log-path="$TESTBED_DIR/audit.log")
  fi
  cat >"$TESTBED_DIR/tokens.csv" <<TOKENS
$admin_token,admin,admin-uid,"system:masters"
$rotor_token,rotor,rotor-uid
TOKENS

  start kube-apiserver "$assets/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --secure-port="$api_port" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --insecure-port=0 \
    --cert-dir="$TESTBED_DIR/certs" --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$TESTBED_DIR/sa.pub" --service-account-signing-key-file="$TESTBED_DIR/sa.key" \
    --token-auth-file="$TESTBED_DIR/tokens.csv" --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true "${audit[@]}"
  ready kube-apiserver 60 curl -skf -H "Authorization: Bearer $admin_token" "https://127.0.0.1:$api_port/readyz"

  write_kubeconfig admin "$admin_token" "$api_port"
  write_kubeconfig rotor "$rotor_token" "$api_port"
}

up_control_plane() {
  local assets api_port
  control_plane
  cat >"$TESTBED_DIR/env" <<ENV
export ROTOR_TEST_ADMIN_KUBECONFIG=$TESTBED_DIR/admin.kubeconfig
export ROTOR_TEST_ROTOR_KUBECONFIG=$TESTBED_DIR/rotor.kubeconfig
ENV
  log "up: API server https://127.0.0.1:$api_port (env in $TESTBED_DIR/env)"
}

up() {
  local assets api_port kcm_port moto_port
  control_plane
  kcm_port=$(free_port); moto_port=$(free_port)

  start kube-controller-manager "$assets/kube-controller-manager" --kubeconfig="$TESTBED_DIR/admin.kubeconfig" \
    --leader-elect=false --port=0 --secure-port="$kcm_port" --bind-address=127.0.0.1 \
    --service-account-private-key-file="$TESTBED_DIR/sa.key" --controllers='*' --use-service-account-credentials=false

  start moto "$(command -v python3)" "$ROOT/hack/moto_server.py" -H 127.0.0.1 -p "$moto_port"
  wait_for moto 30 curl -sf "http://127.0.0.1:$moto_port/moto-api/data.json"

  local db_started=$SECONDS pg_port maria_port pg_password maria_password
  pg_port=$(free_port); maria_port=$(free_port)
  pg_password=$(openssl rand -hex 16); maria_password=$(openssl rand -hex 16)
  make_db_certs
  start_postgres "$pg_port" "$pg_password"
  start_mariadb "$maria_port" "$maria_password"
  log "databases up in $((SECONDS - db_started))s: PostgreSQL 127.0.0.1:$pg_port, MariaDB 127.0.0.1:$maria_port"

  cat >"$TESTBED_DIR/env" <<ENV
export ROTOR_TEST_ADMIN_KUBECONFIG=$TESTBED_DIR/admin.kubeconfig
export ROTOR_TEST_ROTOR_KUBECONFIG=$TESTBED_DIR/rotor.kubeconfig
export ROTOR_TEST_AWS_ENDPOINT=http://127.0.0.1:$moto_port
export ROTOR_TEST_DIR=$TESTBED_DIR
export ROTOR_TEST_DB_CA=$TESTBED_DIR/db-tls/ca.crt
export ROTOR_TEST_PG_PORT=$pg_port
export ROTOR_TEST_PG_ADMIN_USER=postgres
export ROTOR_TEST_PG_ADMIN_PASSWORD=$pg_password
export ROTOR_TEST_MARIADB_PORT=$maria_port
export ROTOR_TEST_MARIADB_ADMIN_USER=admin
export ROTOR_TEST_MARIADB_ADMIN_PASSWORD=$maria_password
ENV
  log "up: API server https://127.0.0.1:$api_port, moto http://127.0.0.1:$moto_port (env in $TESTBED_DIR/env)"
}

write_kubeconfig() { # user, token, port
  cat >"$TESTBED_DIR/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$3
    insecure-skip-tls-verify: true
users:
- name: $1
  user:
    token: $2
contexts:
- name: $1
  context: {cluster: testbed, user: $1}
current-context: $1
KC
}

case "${1:-}" in
  up) up ;;
  up-control-plane) up_control_plane ;;
  restart) restart "${2:?usage: $0 restart NAME [SECONDS]}" "${3:-0}" ;;
  down) down ;;
  *) echo "usage: $0 up|up-control-plane|restart NAME [SECONDS]|down" >&2; exit 2 ;;
esac
