#!/usr/bin/env bash
# A second Docker engine on this machine, for the fleet deploy tests: its own socket,
# data root, exec root (so its own managed containerd) and bridge, idempotent:
#   .ci/services/docker2.sh        start it unless it answers (docker.sh installs docker.io)
#   .ci/services/docker2.sh stop   stop the dockerd this script started (and nothing else)
#
#   socket:   /run/cascade-docker2.sock (DOCKER_HOST=unix:///run/cascade-docker2.sock)
#   bridge:   cascade-docker2 (172.31.254.1/24, made here if missing); no iptables rules of
#             its own (--iptables=false): ports are published by docker-proxy on
#             127.0.0.1, which is all the tests use, and the first engine's chains stay
#             its own.
# Its log and pid file live in ${CASCADE_SERVICES_DIR:-/tmp/cascade-services}.
set -euo pipefail

dir="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}"
log="$dir/dockerd2.log"
pidfile="$dir/dockerd2.pid"
sock=/run/cascade-docker2.sock
bridge=cascade-docker2
wait_secs=60

say() { echo "docker2.sh: $*" >&2; }

our_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq '(^|[ /])dockerd ' || return 1
  echo "$pid"
}

if [ "${1:-}" = stop ]; then
  if pid=$(our_pid); then
    say "stopping the second dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 30); do
      [ -d "/proc/$pid" ] || break
      sleep 1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" || true
  else
    say "no dockerd started by this script is running"
  fi
  rm -f "$pidfile"
  exit 0
elif [ -n "${1:-}" ]; then
  say "usage: $0 [stop]"
  exit 2
fi

command -v dockerd >/dev/null 2>&1 || bash "$(dirname "$0")/docker.sh"
command -v ip >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null

answers() { DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1; }

if answers; then
  say "the second engine answers on $sock"
  exit 0
fi
if ! ip link show "$bridge" >/dev/null 2>&1; then
  ip link add "$bridge" type bridge
  ip addr add 172.31.254.1/24 dev "$bridge"
fi
ip link set "$bridge" up
if pid=$(our_pid); then
  say "the second dockerd (pid $pid) is running but does not answer yet"
else
  mkdir -p "$dir" /var/lib/cascade-docker2 /run/cascade-docker2
  say "starting the second dockerd (log: $log)"
  setsid nohup dockerd --host "unix://$sock" \
    --data-root /var/lib/cascade-docker2 --exec-root /run/cascade-docker2 \
    --pidfile /run/cascade-docker2/dockerd.pid \
    --bridge "$bridge" --iptables=false --ip-masq=false \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
fi
for _ in $(seq 1 "$wait_secs"); do
  if answers; then
    say "the second engine answers on $sock (dockerd pid $(cat "$pidfile" 2>/dev/null || echo '?'))"
    exit 0
  fi
  our_pid >/dev/null || break
  sleep 1
done
say "the second engine did not answer on $sock within ${wait_secs} s; last lines of $log:"
tail -n 40 "$log" >&2 || true
exit 1
