#!/usr/bin/env bash
# A local BuildGrid 0.4.4 (REAPI server) for cascade's remote-execution tests.
#
#   .ci/services/buildgrid.sh         install if needed, start what is not running, wait
#   .ci/services/buildgrid.sh stop    stop the BuildGrid and PostgreSQL this script started
#
# Under the state directory (${CASCADE_SERVICES_DIR:-/tmp/cascade-services}):
#   buildgrid-venv/   virtualenv with buildgrid[database]==0.4.4 (PyPI; no worker in it)
#   postgres/         PostgreSQL 15 cluster (Debian's), 127.0.0.1:${CASCADE_PG_PORT:-54329},
#                     trust auth, role bgd (CREATEDB), databases bgd and bgd_template
#   buildgrid/        the server's config.yml and its CAS on disk (cas/cas/objects/ab/cdef...)
#   buildgrid.env     CASCADE_BGD, CASCADE_BGD_PG, CASCADE_BUILDGRID_URL, ... for tests
# BuildGrid listens on 127.0.0.1:${CASCADE_BUILDGRID_PORT:-50051}, instance name "", with
# CAS, ByteStream, ActionCache, Capabilities, Execution, Operations and the Bots API; the
# config is bgd-server.sh's (beside this file), which tests also use for servers of their own.
#
# Idempotent: a PostgreSQL or BuildGrid already answering on its port is left alone, and
# `stop` only stops processes whose pids this script recorded (or, for PostgreSQL, the
# postmaster of its own data directory).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}"
pg_port="${CASCADE_PG_PORT:-54329}"
bgd_port="${CASCADE_BUILDGRID_PORT:-50051}"
python="${CASCADE_PYTHON:-python3}"
version=0.4.4
venv="$state/buildgrid-venv"
bgd="$venv/bin/bgd"
pgdata="$state/postgres"
pgsock="$state/postgres-run"
pglog="$state/postgres.log"
bgdir="$state/buildgrid"
bglog="$state/buildgrid.log"
bgpid="$state/buildgrid.pid"

say() { echo "buildgrid.sh: $*" >&2; }
die() { say "$*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else
    command -v sudo >/dev/null 2>&1 || die "need root or sudo for: $*"
    sudo "$@"
  fi
}

# PostgreSQL refuses to run as root: as root, its cluster belongs to the user postgres
# (made by the Debian package); otherwise to whoever runs this script.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The newest installed server version's programs (not the /usr/bin wrappers of
# postgresql-common, which look for clusters of their own).
pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

apt_install() {
  say "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_packages() {
  local need=()
  pg_bindir >/dev/null || need+=(postgresql)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  [ "${#need[@]}" -eq 0 ] || apt_install "${need[@]}"
}

# Whether a recorded pid is still the bgd we started with our config (a pid can be reused
# by an unrelated process after a reboot or a crash).
bgd_ours() {
  local pid
  [ -f "$bgpid" ] || return 1
  pid=$(cat "$bgpid")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "server start $bgdir/config.yml"
}

# The pid of the postmaster of our data directory, if it runs.
pg_ours() {
  local pid
  [ -f "$pgdata/postmaster.pid" ] || return 1
  pid=$(head -n 1 "$pgdata/postmaster.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-D $pgdata" || return 1
  echo "$pid"
}

# gRPC GetCapabilities by hand (an empty request is five zero bytes of framing): the
# trailer grpc-status: 0 means a REAPI server answers, in milliseconds and without
# starting Python. 000 or another status means nothing, or something else, is there.
capabilities_status() { # <port>
  local out
  out=$(printf '\0\0\0\0\0' | curl -s -m 3 --http2-prior-knowledge -o /dev/null -D - \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
    "http://127.0.0.1:$1/build.bazel.remote.execution.v2.Capabilities/GetCapabilities" 2>/dev/null) || true
  out=$(printf '%s\n' "$out" | tr -d '\r' | sed -n 's/^grpc-status: *//Ip' | tail -n 1)
  echo "${out:-none}"
}

stop_bgd() {
  local pid
  pid=$(cat "$bgpid")
  # SIGTERM to its session (setsid): bgd shuts down gracefully, with any helper process.
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 -- "-$pid" 2>/dev/null || true
  rm -f "$bgpid"
}

stop() {
  local pid
  if bgd_ours; then
    say "stopping bgd (pid $(cat "$bgpid"))"
    stop_bgd
  fi
  rm -f "$bgpid"
  if pid=$(pg_ours); then
    say "stopping PostgreSQL (pid $pid)"
    # fast: disconnects clients (tests' own bgd servers too) instead of waiting for them.
    as_pg "$(pg_bindir)/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null
  fi
}

venv_ok() {
  [ -x "$bgd" ] && [ -x "$venv/bin/python" ] &&
    [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("buildgrid"))' 2>/dev/null)" = "$version" ] &&
    "$bgd" --help >/dev/null 2>&1
}

ensure_venv() {
  venv_ok && return 0
  command -v "$python" >/dev/null 2>&1 || die "no $python (set CASCADE_PYTHON to a Python >= 3.11)"
  say "creating $venv with buildgrid[database]==$version (about 30 s)"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 has venv without ensurepip until python3-venv is installed.
    rm -rf "$venv"
    apt_install python3-venv
    "$python" -m venv "$venv" || die "$python -m venv fails even with python3-venv (set CASCADE_PYTHON)"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "buildgrid[database]==$version" ||
    { rm -rf "$venv"; die "pip install buildgrid[database]==$version failed"; }
  venv_ok || die "$bgd does not run after installing"
}

psql_pg() { # SQL as the superuser postgres, over TCP (trust on 127.0.0.1)
  "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tA -c "$1"
}

pg_started=false
ensure_postgres() {
  if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
    if pg_ours >/dev/null; then
      say "PostgreSQL already running on 127.0.0.1:$pg_port"
    else
      say "a PostgreSQL not started by this script answers on 127.0.0.1:$pg_port; using it"
    fi
  else
    mkdir -p "$pgsock"
    touch "$pglog"
    if [ "$(id -u)" = 0 ]; then
      chown postgres: "$pgsock" "$pglog"
      # The postgres user must reach its data directory through the state directory.
      runuser -u postgres -- test -x "$state" ||
        die "user postgres cannot enter $state: use a CASCADE_SERVICES_DIR outside root-only directories"
    fi
    if [ ! -f "$pgdata/PG_VERSION" ]; then
      say "initialising a PostgreSQL cluster in $pgdata"
      rm -rf "$pgdata"
      mkdir -p "$pgdata"
      chmod 700 "$pgdata"
      [ "$(id -u)" = 0 ] && chown postgres: "$pgdata"
      # --no-sync: a throwaway test database in /tmp; C locale: no locale packages needed.
      as_pg "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
      echo "include_if_exists = 'cascade.conf'" | as_pg tee -a "$pgdata/postgresql.conf" >/dev/null
    fi
    # Rewritten at each start, so that a new CASCADE_PG_PORT takes effect.
    as_pg tee "$pgdata/cascade.conf" >/dev/null <<EOF
# Written by .ci/services/buildgrid.sh at each start.
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pgsock'
# Every bgd server pools up to 15+ connections; tests run servers of their own.
max_connections = 300
# Test data in /tmp that nobody needs after a crash: durability costs time on 2 cores.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    # Trust, on loopback and our own socket only: nothing but local tests reach it, and
    # no password has to be handed around.
    as_pg tee "$pgdata/pg_hba.conf" >/dev/null <<EOF
# Written by .ci/services/buildgrid.sh.
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
    say "starting PostgreSQL on 127.0.0.1:$pg_port (log: $pglog)"
    as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$pglog" -w -t 60 start >/dev/null ||
      { tail -n 20 "$pglog" >&2; die "PostgreSQL did not start (log: $pglog)"; }
    pg_started=true
  fi
  psql_pg "SELECT 1" >/dev/null ||
    die "cannot connect as postgres to 127.0.0.1:$pg_port (not our cluster? set CASCADE_PG_PORT)"
  # CREATEDB: bgd-server.sh makes its databases as bgd, without root or the postgres user.
  if [ "$(psql_pg "SELECT 1 FROM pg_roles WHERE rolname = 'bgd'")" != 1 ]; then
    psql_pg "CREATE ROLE bgd LOGIN CREATEDB"
  fi
  local db
  for db in bgd_template bgd; do
    if [ "$(psql_pg "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
      psql_pg "CREATE DATABASE $db OWNER bgd"
    fi
  done
}

migrate() {
  # Every start: a no-op when up to date, and it follows a new BuildGrid in the venv.
  # bgd_template is what bgd-server.sh copies for the databases of tests' own servers.
  local db
  for db in bgd_template bgd; do
    "$bgd" migrate apply "$(pg_url "$db")" >>"$bglog" 2>&1 ||
      { tail -n 20 "$bglog" >&2; die "bgd migrate apply failed for database $db (log: $bglog)"; }
  done
}

# psycopg2 explicitly: see bgd-server.sh.
pg_url() { # <database>
  echo "postgresql+psycopg2://bgd@127.0.0.1:$pg_port/$1"
}

write_env() {
  cat >"$state/buildgrid.env.tmp" <<EOF
# Written by .ci/services/buildgrid.sh; source it.
CASCADE_BGD=$bgd
CASCADE_BGD_PG=$(pg_url bgd)
CASCADE_BUILDGRID_URL=grpc://127.0.0.1:$bgd_port
CASCADE_BGD_CAS=$bgdir/cas/cas/objects
CASCADE_PG_BIN=$pgbin
EOF
  mv "$state/buildgrid.env.tmp" "$state/buildgrid.env"
}

port_open() { # <port>
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_bgd() {
  local got
  got=$(capabilities_status "$bgd_port")
  if [ "$got" = 0 ]; then
    if ! $pg_started; then
      say "BuildGrid already answers on 127.0.0.1:$bgd_port"
      return 0
    fi
    # It ran on without its database; restart it rather than trust its connection pool.
    bgd_ours || die "a BuildGrid not started by this script answers on 127.0.0.1:$bgd_port"
    say "restarting bgd: PostgreSQL was restarted under it"
    stop_bgd
  else
    local old_port=
    if bgd_ours; then
      old_port=$(sed -n 's/^ *address: "127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$bgdir/config.yml")
      if [ "$old_port" = "$bgd_port" ]; then
        # Ours on this port but not answering (hung, half-started): replaced.
        say "replacing an unresponsive bgd of ours (pid $(cat "$bgpid"))"
        stop_bgd
      fi
    fi
    if [ "$got" != none ] || port_open "$bgd_port"; then
      die "127.0.0.1:$bgd_port is taken by something that is not a working REAPI server (GetCapabilities: $got); set CASCADE_BUILDGRID_PORT"
    fi
    if bgd_ours; then
      say "moving bgd from 127.0.0.1:$old_port to 127.0.0.1:$bgd_port"
      stop_bgd
    fi
  fi
  migrate
  local t0=$SECONDS
  # bgd-server.sh reads these from buildgrid.env when they are not in its environment;
  # that file is only written once the server answers.
  CASCADE_BGD=$bgd CASCADE_BGD_PG=$(pg_url bgd) CASCADE_PG_BIN=$pgbin \
    setsid "$here/bgd-server.sh" "$bgdir" "$bgd_port" bgd >>"$bglog" 2>&1 </dev/null &
  echo $! >"$bgpid"
  for _ in $(seq 300); do
    if [ "$(capabilities_status "$bgd_port")" = 0 ]; then
      say "bgd listening on 127.0.0.1:$bgd_port after $((SECONDS - t0)) s (log: $bglog)"
      return 0
    fi
    if ! kill -0 "$(cat "$bgpid")" 2>/dev/null; then
      tail -n 30 "$bglog" >&2 || true
      die "bgd exited during startup (log: $bglog)"
    fi
    sleep 0.2
  done
  tail -n 30 "$bglog" >&2 || true
  die "bgd did not answer on 127.0.0.1:$bgd_port within 60 s (log: $bglog)"
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
pgbin=$(pg_bindir) || die "no PostgreSQL server programs under /usr/lib/postgresql"
ensure_venv
ensure_postgres
start_bgd
write_env

say "ready: BuildGrid $version grpc://127.0.0.1:$bgd_port (instance \"\"), PostgreSQL 127.0.0.1:$pg_port, env: $state/buildgrid.env; stop with: $0 stop"
