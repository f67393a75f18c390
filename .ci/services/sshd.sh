#!/usr/bin/env bash
# An OpenSSH server on 127.0.0.1:2222 for the fleet deploy tests (a Docker engine
# reached over ssh, as `DOCKER_HOST=ssh://root@127.0.0.1:2222`), idempotent:
#   .ci/services/sshd.sh        install openssh-server if missing, make keys, start sshd
#   .ci/services/sshd.sh stop   stop the sshd this script started (and nothing else)
#
# Under ${CASCADE_SERVICES_DIR:-/tmp/cascade-services}/sshd:
#   host_ed25519[.pub]   the server's host key (made once)
#   id_ed25519[.pub]     the client key the tests log in with (root; key only)
#   known_hosts          `[127.0.0.1]:2222 <host key>`: the server, and nothing else
#   ssh_config           for `ssh -F` (CASCADE_SSH_CONFIG): that key, that known_hosts
#   sshd_config, sshd.pid, sshd.log
set -euo pipefail

dir="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}/sshd"
port=2222
say() { echo "sshd.sh: $*" >&2; }

our_pid() {
  [ -f "$dir/sshd.pid" ] || return 1
  local pid
  pid=$(cat "$dir/sshd.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'sshd' || return 1
  echo "$pid"
}

if [ "${1:-}" = stop ]; then
  if pid=$(our_pid); then
    say "stopping sshd (pid $pid)"
    kill -TERM "$pid" || true
  else
    say "no sshd started by this script is running"
  fi
  rm -f "$dir/sshd.pid"
  exit 0
elif [ -n "${1:-}" ]; then
  say "usage: $0 [stop]"
  exit 2
fi

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1; then
  say "installing openssh-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
fi
mkdir -p "$dir" /run/sshd
chmod 700 "$dir"
[ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cascade-test-host -f "$dir/host_ed25519"
[ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cascade-test-client -f "$dir/id_ed25519"
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
chmod 600 "$dir/authorized_keys"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" >"$dir/known_hosts"
cat >"$dir/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
CONF
cat >"$dir/ssh_config" <<CONF
Host 127.0.0.1
  IdentityFile $dir/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
CONF

answers() {
  ssh -F "$dir/ssh_config" -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
    -p "$port" root@127.0.0.1 true >/dev/null 2>&1
}
if answers; then
  say "sshd answers on 127.0.0.1:$port"
  exit 0
fi
if ! our_pid >/dev/null; then
  say "starting sshd on 127.0.0.1:$port"
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
fi
for _ in $(seq 1 30); do
  if answers; then
    say "sshd answers on 127.0.0.1:$port"
    exit 0
  fi
  sleep 1
done
say "sshd did not answer on 127.0.0.1:$port; last lines of $dir/sshd.log:"
tail -n 20 "$dir/sshd.log" >&2 || true
exit 1
