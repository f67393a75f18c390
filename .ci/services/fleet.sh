#!/usr/bin/env bash
# A second machine for the fleet deploy tests, made of a network namespace on this one:
# `cascade-node2`, reached from here at 10.251.2.2 over a veth pair, running its own
# Docker engine (own socket, data root, exec root, managed containerd and bridge) and an
# OpenSSH server. Its loopback is its own, like a real host's: what its containers
# publish on 127.0.0.1 is reachable only through ssh (`ssh -W`), as cascade's health
# checks reach it. Idempotent:
#   .ci/services/fleet.sh        make what is missing, start what is not running
#   .ci/services/fleet.sh stop   stop what this script started, remove the namespace
#
# Under ${CASCADE_SERVICES_DIR:-/tmp/cascade-services}/fleet:
#   host_ed25519[.pub]  node2's ssh host key         id_ed25519[.pub]  the client key (root)
#   known_hosts         `[10.251.2.2]:2222 <key>`    ssh_config        for CASCADE_SSH_CONFIG
#   dockerd.log, dockerd.pid, sshd.log, sshd.pid, sshd_config
# The engine's socket is /run/cascade-node2/docker.sock (a file: usable from here too, for
# tests that look at what runs there). Everything stays on this machine: the namespace
# has no route anywhere but to this host.
set -euo pipefail

state="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}/fleet"
ns=cascade-node2
host_if=cn2-host
ns_if=cn2-ns
host_ip=10.251.2.1
node_ip=10.251.2.2
port=2222
sock=/run/cascade-node2/docker.sock
say() { echo "fleet.sh: $*" >&2; }

alive() { # pidfile name
  local pid
  [ -f "$1" ] && pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$2" && echo "$pid"
}

if [ "${1:-}" = stop ]; then
  for p in "sshd.pid sshd" "dockerd.pid dockerd"; do
    set -- $p
    if pid=$(alive "$state/$1" "$2"); then
      say "stopping $2 (pid $pid)"
      kill -TERM "$pid" || true
      for _ in $(seq 1 30); do [ -d "/proc/$pid" ] || break; sleep 1; done
      [ -d "/proc/$pid" ] && kill -KILL "$pid" || true
    fi
    rm -f "$state/$1"
  done
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  exit 0
elif [ -n "${1:-}" ]; then
  say "usage: $0 [stop]"
  exit 2
fi

# 1. Packages: docker.io (docker.sh installs it), OpenSSH, iproute2.
command -v dockerd >/dev/null 2>&1 || bash "$(dirname "$0")/docker.sh"
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. The namespace and its link to this host.
if ! ip netns list | grep -qw "$ns"; then
  ip netns add "$ns"
fi
if ! ip link show "$host_if" >/dev/null 2>&1; then
  ip link add "$host_if" type veth peer name "$ns_if"
  ip link set "$ns_if" netns "$ns"
  ip addr add "$host_ip/30" dev "$host_if"
  ip netns exec "$ns" ip addr add "$node_ip/30" dev "$ns_if"
fi
ip link set "$host_if" up
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip link set "$ns_if" up

# 3. Keys and configuration (made once).
mkdir -p "$state" /run/sshd /run/cascade-node2 /var/lib/cascade-node2
chmod 700 "$state"
[ -f "$state/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cascade-node2 -f "$state/host_ed25519"
[ -f "$state/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cascade-tests -f "$state/id_ed25519"
cp "$state/id_ed25519.pub" "$state/authorized_keys"
chmod 600 "$state/authorized_keys"
echo "[$node_ip]:$port $(cut -d' ' -f1,2 "$state/host_ed25519.pub")" >"$state/known_hosts"
cat >"$state/sshd_config" <<CONF
ListenAddress $node_ip
Port $port
HostKey $state/host_ed25519
PidFile $state/sshd.pid
AuthorizedKeysFile $state/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
# A login's docker is node2's engine, as on a real host.
SetEnv DOCKER_HOST=unix://$sock
CONF
cat >"$state/ssh_config" <<CONF
Host $node_ip
  IdentityFile $state/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $state/known_hosts
  GlobalKnownHostsFile /dev/null
CONF

# 4. node2's engine, inside the namespace.
engine_answers() { DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1; }
if ! engine_answers && ! alive "$state/dockerd.pid" dockerd >/dev/null; then
  say "starting node2's dockerd (log: $state/dockerd.log)"
  # nsenter, not `ip netns exec`: that mounts a /sys of its own, without the cgroups
  # dockerd needs.
  nsenter --net="/run/netns/$ns" setsid nohup dockerd --host "unix://$sock" \
    --data-root /var/lib/cascade-node2 --exec-root /run/cascade-node2/exec \
    --pidfile /run/cascade-node2/dockerd.pid --bip 172.31.252.1/24 \
    >>"$state/dockerd.log" 2>&1 </dev/null &
  echo $! >"$state/dockerd.pid"
fi

# 5. node2's sshd, inside the namespace.
ssh_answers() {
  ssh -F "$state/ssh_config" -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
    -p "$port" "root@$node_ip" true >/dev/null 2>&1
}
if ! ssh_answers && ! alive "$state/sshd.pid" sshd >/dev/null; then
  say "starting node2's sshd on $node_ip:$port"
  nsenter --net="/run/netns/$ns" /usr/sbin/sshd -f "$state/sshd_config" -E "$state/sshd.log"
fi

for _ in $(seq 1 60); do
  if engine_answers && ssh_answers; then
    say "node2 answers: ssh://root@$node_ip:$port (its engine at $sock)"
    exit 0
  fi
  sleep 1
done
say "node2 did not come up; last lines of its logs:"
tail -n 20 "$state/dockerd.log" "$state/sshd.log" >&2 || true
exit 1
