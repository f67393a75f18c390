#!/usr/bin/env bash
# A Docker engine for cascade-docker's tests (CI and developers), idempotent:
#   .ci/services/docker.sh        install docker.io and busybox-static if missing, start
#                                 dockerd unless an engine already answers, wait for it
#   .ci/services/docker.sh stop   stop the dockerd this script started (and nothing else)
#
# dockerd's log and pid file live in ${CASCADE_SERVICES_DIR:-/tmp/cascade-services}.
# No image is ever pulled: the tests build theirs with cascade-image from Debian's
# statically linked busybox (/bin/busybox, from busybox-static).
set -euo pipefail

dir="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}"
log="$dir/dockerd.log"
pidfile="$dir/dockerd.pid"
sock=/var/run/docker.sock
wait_secs=60

if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi

say() { echo "docker.sh: $*" >&2; }

# Our dockerd's pid, if the pid file names a live dockerd (a stale file or a reused pid
# that is now another program does not count).
our_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # Just after the start the process may still be `setsid nohup dockerd …` (before its
  # execs), so the name may come after those: a check that wanted it first raced them.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq '(^|[ /])dockerd ' || return 1
  echo "$pid"
}

if [ "${1:-}" = stop ]; then
  if pid=$(our_pid); then
    say "stopping dockerd (pid $pid)"
    "${SUDO[@]}" kill -TERM "$pid"
    # dockerd stops its containers and its managed containerd first; give it time.
    for _ in $(seq 1 30); do
      [ -d "/proc/$pid" ] || break
      sleep 1
    done
    if [ -d "/proc/$pid" ]; then
      say "dockerd (pid $pid) did not stop in 30 s; killing it"
      "${SUDO[@]}" kill -KILL "$pid" || true
    fi
  else
    say "no dockerd started by this script is running"
  fi
  rm -f "$pidfile"
  exit 0
elif [ -n "${1:-}" ]; then
  say "usage: $0 [stop]"
  exit 2
fi

# 1. Packages. docker.io brings dockerd, containerd and runc (Debian 12: 20.10, API
# 1.41); iptables is what dockerd's bridge networks and port publishing are made of.
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# The dynamically linked `busybox` package also provides /bin/busybox, so ask dpkg.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  "${SUDO[@]}" apt-get update -qq
  # Without an init system the packages' service start fails harmlessly; we start
  # dockerd ourselves below.
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The engine answers when the CLI (docker.io's, or any newer one on PATH: it negotiates
# the API version) gets both its client and server versions.
answers() {
  "${SUDO[@]}" env DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1
}

# 2. The engine. Anything already answering on the socket (systemd's docker, a
# developer's own dockerd, ours from an earlier run) is used as it is.
if answers; then
  say "the Docker engine answers on $sock"
  exit 0
fi
if pid=$(our_pid); then
  say "dockerd (pid $pid) is running but does not answer yet"
else
  mkdir -p "$dir"
  say "starting dockerd (log: $log)"
  # setsid + nohup: dockerd outlives this script and the CI step that ran it.
  # --host: exactly the default socket, so bollard and the CLI find it without DOCKER_HOST.
  "${SUDO[@]}" setsid nohup dockerd --host "unix://$sock" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  # With sudo, $! is sudo's pid; the pid file must name dockerd itself.
  if [ "${#SUDO[@]}" -gt 0 ]; then
    sleep 1
    pgrep -P "$(cat "$pidfile")" -x dockerd >"$pidfile.new" && mv "$pidfile.new" "$pidfile" || rm -f "$pidfile.new"
  fi
fi

for _ in $(seq 1 "$wait_secs"); do
  if answers; then
    say "the Docker engine answers on $sock (dockerd pid $(cat "$pidfile" 2>/dev/null || echo '?'))"
    exit 0
  fi
  if ! our_pid >/dev/null; then
    break
  fi
  sleep 1
done

say "the Docker engine did not answer on $sock within ${wait_secs} s; last lines of $log:"
tail -n 40 "$log" >&2 || true
exit 1
