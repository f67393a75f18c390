#!/usr/bin/env bash
# Local OCI registries for cascade-registry's tests (and for trying `push` by hand).
#
#   .ci/services/registry.sh         install if needed, start what is not running, wait
#   .ci/services/registry.sh stop    stop the registries this script started
#
# Two instances of Debian's docker-registry (the CNCF distribution registry), each with a
# config written here, its storage and its log under the state directory
# (${CASCADE_SERVICES_DIR:-/tmp/cascade-services}):
#   127.0.0.1:5000  no auth
#   127.0.0.1:5001  htpasswd auth, user `cascade`, password `cascade-test-password`
# Ports: CASCADE_REGISTRY_PORT and CASCADE_REGISTRY_AUTH_PORT.
#
# Idempotent: an instance already answering on its port is left alone, and `stop` only
# kills processes whose pids this script recorded. The packaged systemd service and its
# /etc config are not used (that one wants an htpasswd file we would have to manage).
set -euo pipefail

state="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}"
port_open="${CASCADE_REGISTRY_PORT:-5000}"
port_auth="${CASCADE_REGISTRY_AUTH_PORT:-5001}"
user=cascade
password=cascade-test-password
bin=/usr/bin/docker-registry

say() { echo "registry.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# The HTTP status of GET /v2/ on a port, or 000 when nothing answers.
status_of() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/v2/" 2>/dev/null || true
}

# Whether a recorded pid is still the registry we started with that config (a pid can be
# reused by an unrelated process after a reboot or a crash).
ours() { # <name>
  local pidfile="$state/$1.pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "serve $state/$1/config.yml"
}

stop() {
  local name pid
  for name in "registry-$port_open" "registry-$port_auth"; do
    if ours "$name"; then
      pid=$(cat "$state/$name.pid")
      say "stopping $name (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    rm -f "$state/$name.pid"
  done
}

install_packages() {
  local need=()
  [ -x "$bin" ] || need+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  [ "${#need[@]}" -eq 0 ] && return 0
  say "installing ${need[*]}"
  local sudo=
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install ${need[*]}"
    sudo=sudo
  fi
  # On a systemd machine the package would start its own service on :5000 (with auth);
  # masking it first keeps that port for the unauthenticated test registry.
  if [[ " ${need[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
    say "masking the packaged docker-registry.service (this script runs its own)"
    $sudo systemctl mask docker-registry.service >/dev/null 2>&1 || true
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
}

# Writes the config of one instance; $3 is the auth block (empty for none).
write_config() { # <name> <port> <auth yaml>
  local dir="$state/$1"
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
  # Signs upload state only; a fixed value is fine for a local test registry.
  secret: cascade-local-test-registry
$3
EOF
}

start() { # <name> <port> <expected /v2/ status>
  local name=$1 port=$2 want=$3 got log="$state/$1.log"
  got=$(status_of "$port")
  if [ "$got" = "$want" ]; then
    say "$name already answers on 127.0.0.1:$port"
    return 0
  fi
  if [ "$got" != "000" ]; then
    die "127.0.0.1:$port answers /v2/ with HTTP $got, not $want: another service has the port (the packaged docker-registry? \`systemctl disable --now docker-registry\`), or set CASCADE_REGISTRY_PORT/CASCADE_REGISTRY_AUTH_PORT"
  fi
  # Not answering: a stale process of ours (hung, half-started) is replaced.
  if ours "$name"; then
    kill "$(cat "$state/$name.pid")" 2>/dev/null || true
    sleep 0.5
  fi
  # Our config wins over any REGISTRY_* overrides in the caller's environment.
  local unset_env=()
  while IFS= read -r v; do unset_env+=(-u "$v"); done < <(env | sed -n 's/^\(REGISTRY_[A-Za-z0-9_]*\)=.*/\1/p')
  setsid env "${unset_env[@]}" "$bin" serve "$state/$name/config.yml" >>"$log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
  for _ in $(seq 150); do
    [ "$(status_of "$port")" = "$want" ] && { say "$name listening on 127.0.0.1:$port (log: $log)"; return 0; }
    if ! kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "$name exited during startup (log: $log)"
    fi
    sleep 0.2
  done
  tail -n 20 "$log" >&2 || true
  die "$name did not answer on 127.0.0.1:$port within 30s (log: $log)"
}

mkdir -p "$state"

case "${1:-start}" in
  stop)
    stop
    exit 0
    ;;
  start) ;;
  *) die "usage: $0 [start|stop]" ;;
esac

install_packages

write_config "registry-$port_open" "$port_open" ""
# bcrypt (-B): the only hash the distribution registry accepts. Rewritten only when it
# does not hold this password already (each hash has a new salt).
htfile="$state/registry-$port_auth.htpasswd"
if ! htpasswd -vb "$htfile" "$user" "$password" >/dev/null 2>&1; then
  htpasswd -Bbn "$user" "$password" >"$htfile"
fi
write_config "registry-$port_auth" "$port_auth" "auth:
  htpasswd:
    realm: cascade-test-registry
    path: $htfile"

start "registry-$port_open" "$port_open" 200
start "registry-$port_auth" "$port_auth" 401

say "ready: http://127.0.0.1:$port_open (no auth), http://127.0.0.1:$port_auth (user $user)"
say "logs: $state/registry-$port_open.log, $state/registry-$port_auth.log; stop with: $0 stop"
