#!/usr/bin/env bash
# Local AWS stand-ins on 127.0.0.1 for tests and local runs:
#   S3       -> bootstrap/local/s3server (gofakes3 with its bolt backend, Go, pinned by
#               its go.sum and built on first use), objects in one file on disk.
#   DynamoDB -> dynalite (npm, pinned in bootstrap/local/dynalite/), LevelDB data on disk.
# Both keep their data across `down`/`up`, a restart and a kill -9. MinIO is not used
# because its server is licensed AGPL-3.0.
#
# Usage: bootstrap/local/services.sh up|down|status|env
#   up      start both (idempotent: a service already healthy on its port is left alone)
#   down    stop what the pid files name (TERM, then KILL after 10 s); keeps the data
#   status  one line per service
#   env     export lines for a shell: eval "$(bootstrap/local/services.sh env)"
#
# Environment:
#   AWS_LOCAL_HOME            state root (default <repo>/.cache/aws-local):
#                             dynamodb/ (dynalite LevelDB data, persists across restarts),
#                             s3/objects.db (the S3 server's bolt file, persists too),
#                             run/ (pid files), logs/
#   AWS_LOCAL_S3_PORT         default 9000
#   AWS_LOCAL_DYNAMODB_PORT   default 8000
#   AWS_LOCAL_WAIT_SECONDS    health-check timeout on `up` (default 30)
#
# Only ever talks to 127.0.0.1. The dummy credentials for the local servers are
# passed through the environment only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HOME_DIR=${AWS_LOCAL_HOME:-$REPO/.cache/aws-local}
S3_PORT=${AWS_LOCAL_S3_PORT:-9000}
DDB_PORT=${AWS_LOCAL_DYNAMODB_PORT:-8000}
WAIT_SECONDS=${AWS_LOCAL_WAIT_SECONDS:-30}
HOST=127.0.0.1

VENV=$REPO/.venv
PYTHON=$VENV/bin/python
S3_SERVER_SRC=$REPO/bootstrap/local/s3server
S3_SERVER_DIR=$REPO/.cache/s3server
S3_SERVER_BIN=$S3_SERVER_DIR/s3server
DYNALITE_SRC=$REPO/bootstrap/local/dynalite
DYNALITE_DIR=$REPO/.cache/dynalite
DYNALITE_BIN=$DYNALITE_DIR/node_modules/.bin/dynalite

SERVICES=(s3 dynamodb)

for port in "$S3_PORT" "$DDB_PORT"; do
  [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) ||
    { echo "error: bad port '$port' (AWS_LOCAL_S3_PORT / AWS_LOCAL_DYNAMODB_PORT)" >&2; exit 2; }
done

die() {
  echo "error: $*" >&2
  exit 1
}

port_of() { if [[ $1 == s3 ]]; then echo "$S3_PORT"; else echo "$DDB_PORT"; fi; }
pid_file() { echo "$HOME_DIR/run/$1.pid"; }
log_file() { echo "$HOME_DIR/logs/$1.log"; }
# A word the process command line must contain, so a reused pid is never signalled.
cmd_marker() { if [[ $1 == s3 ]]; then echo "s3server"; else echo "dynalite"; fi; }

# Everything below talks to 127.0.0.1 directly: no proxies, no AWS profile or config files.
local_env() {
  env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN \
    AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1 \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
    NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost "$@"
}

# The pid from the pid file if that process is alive and is ours, else nothing.
live_pid() {
  local file pid
  file=$(pid_file "$1")
  [[ -f $file ]] || return 0
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(cmd_marker "$1")"; then
    echo "$pid"
  fi
}

# Does anything accept TCP connections on the port?
port_open() {
  local rc=0
  curl -s --noproxy '*' -o /dev/null --max-time 2 "http://$HOST:$1/" || rc=$?
  [[ $rc -ne 7 && $rc -ne 28 ]]
}

healthy_s3() {
  # The server answers an unsigned ListBuckets (GET /) with the bucket list.
  curl -sf --noproxy '*' --max-time 3 "http://$HOST:$S3_PORT/" 2>/dev/null | grep -q 'ListAllMyBucketsResult'
}

healthy_dynamodb() {
  # dynalite wants a signed request: a boto3 ListTables, once the port is open.
  port_open "$DDB_PORT" || return 1
  [[ -x $PYTHON ]] || return 1
  local_env "$PYTHON" -c '
import sys, boto3
from botocore.config import Config
boto3.client("dynamodb", endpoint_url=sys.argv[1],
             config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)).list_tables()
' "http://$HOST:$DDB_PORT" >/dev/null 2>&1
}

healthy() { "healthy_$1"; }

require_python() {
  [[ -x $PYTHON ]] || die "$PYTHON not found: run make setup first"
}

require_go() {
  command -v go >/dev/null 2>&1 || die "go not found: install Go (1.24+) to build the local S3 server"
}

# The sources the S3 server is built from; a change to any of them rebuilds it.
s3server_fingerprint() {
  cat "$S3_SERVER_SRC"/go.mod "$S3_SERVER_SRC"/go.sum "$S3_SERVER_SRC"/*.go | sha256sum | cut -d' ' -f1
}

# Is the binary there, built from sources with this fingerprint?
s3server_built() {
  [[ -x $S3_SERVER_BIN && "$(cat "$S3_SERVER_DIR/.fingerprint" 2>/dev/null)" == "$1" ]]
}

# Build the S3 server into .cache/s3server when missing or when its sources changed.
# Modules come from the Go module proxy and are checked against the committed go.sum.
install_s3server() {
  local stamp=$S3_SERVER_DIR/.fingerprint fingerprint log
  fingerprint=$(s3server_fingerprint)
  s3server_built "$fingerprint" && return 0
  require_go
  mkdir -p "$S3_SERVER_DIR"
  # Several state roots share this build: one at a time.
  if command -v flock >/dev/null 2>&1; then
    exec 7>"$REPO/.cache/.s3server-build.lock"
    flock 7
  fi
  if ! s3server_built "$fingerprint"; then  # another `up` may have built it meanwhile
    log=$(log_file go-build)
    echo "building the local S3 server into $S3_SERVER_DIR (log: $log)"
    rm -f "$stamp"
    if ! (cd "$S3_SERVER_SRC" && go build -mod=readonly -trimpath -o "$S3_SERVER_BIN.tmp" .) >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      die "go build of bootstrap/local/s3server failed (log: $log)"
    fi
    mv -f "$S3_SERVER_BIN.tmp" "$S3_SERVER_BIN"
    echo "$fingerprint" >"$stamp"
  fi
  exec 7>&-
}

require_node() {
  command -v node >/dev/null 2>&1 || die "node not found: install Node.js (20+) and npm for dynalite"
  command -v npm >/dev/null 2>&1 || die "npm not found: install npm (with Node.js 20+) for dynalite"
}

# Install dynalite into .cache/dynalite when missing or when the committed lock changed.
install_dynalite() {
  local stamp=$DYNALITE_DIR/.installed-package-lock.json
  if [[ -x $DYNALITE_BIN ]] && cmp -s "$DYNALITE_SRC/package-lock.json" "$stamp"; then
    return 0
  fi
  # Several state roots share this install: one npm at a time.
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$REPO/.cache/.dynalite-install.lock"
    flock 8
    if [[ -x $DYNALITE_BIN ]] && cmp -s "$DYNALITE_SRC/package-lock.json" "$stamp"; then
      exec 8>&-
      return 0
    fi
  fi
  local log
  log=$(log_file npm-install)
  echo "installing dynalite into $DYNALITE_DIR (log: $log)"
  mkdir -p "$DYNALITE_DIR"
  cp "$DYNALITE_SRC/package.json" "$DYNALITE_SRC/package-lock.json" "$DYNALITE_DIR/"
  rm -f "$stamp"
  if ! (cd "$DYNALITE_DIR" && npm ci --no-audit --no-fund) >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "npm ci for dynalite failed in $DYNALITE_DIR (log: $log)"
  fi
  [[ -x $DYNALITE_BIN ]] || die "npm ci did not produce $DYNALITE_BIN (log: $log)"
  cp "$DYNALITE_SRC/package-lock.json" "$stamp"
  exec 8>&-
}

# Alive and not a zombie (an exited server waits for init to reap it, which can be slow).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 25; i++)); do
    alive "$pid" || return 0
    sleep 0.2
  done
}

start_service() {
  local name=$1 port pid log workdir deadline
  port=$(port_of "$name")
  log=$(log_file "$name")

  if healthy "$name"; then
    pid=$(live_pid "$name")
    echo "$name: already healthy on $HOST:$port (pid ${pid:-unknown, not started from $HOME_DIR})"
    return 0
  fi
  pid=$(live_pid "$name")
  if [[ -n $pid ]]; then
    echo "$name: pid $pid is not healthy on $HOST:$port; restarting it"
    stop_pid "$pid"
  fi
  rm -f "$(pid_file "$name")"
  if port_open "$port"; then
    die "$name: port $HOST:$port is taken by something else (set AWS_LOCAL_$([[ $name == s3 ]] && echo S3 || echo DYNAMODB)_PORT)"
  fi

  workdir=$HOME_DIR/$name
  local -a cmd
  if [[ $name == s3 ]]; then
    cmd=("$S3_SERVER_BIN" -addr "$HOST:$port" -db "$HOME_DIR/s3/objects.db")
  else
    cmd=("$DYNALITE_BIN" --host "$HOST" --port "$port" --path "$HOME_DIR/dynamodb")
  fi
  echo "--- $(date -u +%Y-%m-%dT%H:%M:%SZ) starting: ${cmd[*]}" >>"$log"
  # setsid: own session, so the server outlives this shell and a Ctrl-C in it; the
  # lock fds are closed so the server does not hold the locks.
  (cd "$workdir" && exec nohup setsid "${cmd[@]}" >>"$log" 2>&1 </dev/null 7>&- 8>&- 9>&-) &
  pid=$!
  echo "$pid" >"$(pid_file "$name")"

  deadline=$((SECONDS + WAIT_SECONDS))
  while ((SECONDS < deadline)); do
    if healthy "$name"; then
      echo "$name: started on $HOST:$port (pid $pid, log: $log)"
      return 0
    fi
    alive "$pid" || break
    sleep 0.5
  done
  stop_pid "$pid"
  rm -f "$(pid_file "$name")"
  tail -n 20 "$log" >&2
  die "$name did not become healthy on $HOST:$port (log: $log)"
}

cmd_up() {
  require_python
  require_node
  mkdir -p "$HOME_DIR"/{dynamodb,s3,run,logs}
  install_dynalite
  install_s3server
  local name
  for name in "${SERVICES[@]}"; do start_service "$name"; done
}

cmd_down() {
  local name pid
  for name in "${SERVICES[@]}"; do
    pid=$(live_pid "$name")
    if [[ -n $pid ]]; then
      stop_pid "$pid"
      echo "$name: stopped (pid $pid)"
    else
      echo "$name: not running"
    fi
    rm -f "$(pid_file "$name")"
  done
}

cmd_status() {
  local name pid port state
  for name in "${SERVICES[@]}"; do
    port=$(port_of "$name")
    pid=$(live_pid "$name")
    if healthy "$name"; then
      state="running/healthy"
    elif [[ -n $pid ]]; then
      state="running/unhealthy"
    else
      state="stopped"
    fi
    printf '%-9s %-16s port %-5s pid %s\n' "$name" "$state" "$port" "${pid:--}"
  done
}

cmd_env() {
  cat <<EOF
export AWS_ACCESS_KEY_ID=local
export AWS_SECRET_ACCESS_KEY=local
export AWS_DEFAULT_REGION=us-east-1
export AWS_LOCAL_S3_ENDPOINT=http://$HOST:$S3_PORT
export AWS_LOCAL_DYNAMODB_ENDPOINT=http://$HOST:$DDB_PORT
EOF
}

# One `up`/`down` at a time per state root.
with_lock() {
  mkdir -p "$HOME_DIR/run" "$HOME_DIR/logs" "$REPO/.cache"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$HOME_DIR/run/.lock"
    flock 9
  fi
  "$@"
}

case "${1:-}" in
  up) with_lock cmd_up ;;
  down) with_lock cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
