#!/usr/bin/env bash
# One BuildGrid server in the foreground, for tests that need one of their own (to kill it
# mid-build, or to corrupt its storage) and for buildgrid.sh's main server.
#
#   .ci/services/bgd-server.sh CONFIG_DIR PORT [DBNAME]
#
# Needs the PostgreSQL and the virtualenv of buildgrid.sh (run that first): it reads
# $state/buildgrid.env (${CASCADE_SERVICES_DIR:-/tmp/cascade-services}). It creates the
# database DBNAME (default bgd_PORT) if missing, writes CONFIG_DIR/config.yml (CAS,
# ByteStream, ActionCache, Capabilities, Execution, Operations and Bots on 127.0.0.1:PORT,
# instance name "", blobs on disk under CONFIG_DIR/cas) and then execs `bgd server start`,
# so the caller's pid is the server's: kill it with SIGTERM (graceful) or SIGKILL.
#
# A database survives the server: a server restarted on the same database finds its queued
# and running jobs again. For a clean slate, pass a new DBNAME (or drop the old one:
# `$CASCADE_PG_BIN/dropdb -h 127.0.0.1 -p 54329 -U bgd DBNAME` once no server uses it).
# A blob with digest H is the file CONFIG_DIR/cas/cas/objects/${H:0:2}/${H:2}; the
# server never checks a blob's hash when serving it, and an upload of a blob whose file
# exists leaves the file alone (delete the file, then upload, to repair it).
# CASCADE_BGD_KEEPALIVE: seconds without UpdateBotSession before a bot's session expires
# and its leases are requeued (default 60; above 4, or BuildGrid hands out no leases).
# CASCADE_BGD_VERBOSE: how many -v (default 1: warnings, e.g. expired bot sessions;
# 0 errors only, 2 info, 3 debug).
set -euo pipefail

state="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}"
keepalive="${CASCADE_BGD_KEEPALIVE:-60}"
verbose="${CASCADE_BGD_VERBOSE:-1}"

say() { echo "bgd-server.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ $# -ge 2 ] && [ $# -le 3 ] || die "usage: $0 CONFIG_DIR PORT [DBNAME]"
dir=$1
port=$2
db="${3:-bgd_$port}"
[[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
# Used unquoted in SQL and in a URL: keep it a plain identifier.
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "DBNAME must match [a-z_][a-z0-9_]*: $db"
[[ "$keepalive" =~ ^[0-9]+$ ]] && [ "$keepalive" -ge 5 ] ||
  die "CASCADE_BGD_KEEPALIVE must be a whole number of seconds >= 5: $keepalive"
[[ "$verbose" =~ ^[0-3]$ ]] || die "CASCADE_BGD_VERBOSE must be 0 to 3: $verbose"

# From the environment (buildgrid.sh starting its own server) or else from buildgrid.env.
if [ -z "${CASCADE_BGD:-}" ] || [ -z "${CASCADE_BGD_PG:-}" ] || [ -z "${CASCADE_PG_BIN:-}" ]; then
  [ -r "$state/buildgrid.env" ] || die "$state/buildgrid.env is missing: run .ci/services/buildgrid.sh first"
  # shellcheck source=/dev/null
  . "$state/buildgrid.env"
fi
[ -x "${CASCADE_BGD:-}" ] || die "CASCADE_BGD in $state/buildgrid.env is not executable: run buildgrid.sh again"

# CASCADE_BGD_PG names the main database; this server's is the same URL with DBNAME.
url="${CASCADE_BGD_PG%/*}/$db"
# psql does not read SQLAlchemy's URLs: host and port come from it, the rest is fixed.
hostport="${CASCADE_BGD_PG#*@}"
hostport="${hostport%%/*}"
pg_host="${hostport%:*}"
pg_port="${hostport##*:}"
psql=("$CASCADE_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U bgd -d postgres -tA)

db_exists() {
  [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" = 1 ]
}

"$CASCADE_PG_BIN/pg_isready" -q -h "$pg_host" -p "$pg_port" ||
  die "PostgreSQL does not answer on $pg_host:$pg_port: run .ci/services/buildgrid.sh"

if ! db_exists; then
  # A copy of the template that buildgrid.sh migrates takes 0.05 s, `bgd migrate apply`
  # on an empty database about 1 s (Python and Alembic start-up). The copy fails while
  # something is connected to the template (buildgrid.sh migrating it), or when another
  # test creates the same database at once: then that one made it, or we migrate by hand.
  if "$CASCADE_PG_BIN/createdb" -h "$pg_host" -p "$pg_port" -U bgd -O bgd -T bgd_template "$db" 2>/dev/null; then
    say "created database $db (copy of bgd_template)"
  elif ! db_exists; then
    "$CASCADE_PG_BIN/createdb" -h "$pg_host" -p "$pg_port" -U bgd -O bgd "$db"
    say "created database $db; migrating"
    "$CASCADE_BGD" migrate apply "$url" >&2
  fi
fi

mkdir -p "$dir/cas"
dir=$(cd "$dir" && pwd)
cat >"$dir/config.yml.tmp" <<EOF
# Written by .ci/services/bgd-server.sh at each start; edits are lost.
server:
  - !channel
    address: "127.0.0.1:$port"
    insecure-mode: true

# gRPC's Python server sets SO_REUSEPORT by default, so a second server on a taken port
# would start "fine" and share the port with the first. Without it, a taken port fails.
grpc-server-options:
  grpc.so_reuseport: 0

authorization:
  method: none

# Each long-polling bot and each open Execute/WaitExecution stream holds one thread
# (the default is 5 per core, 10 here).
thread-pool-size: 64

connections:
  # psycopg2 explicitly: with SQLAlchemy 2.1 a bare postgresql:// picks psycopg 3, and
  # BuildGrid 0.4.4's operation notifier then never sees job updates.
  - !sql-connection &sql
    connection-string: "$url"

storages:
  # On disk, so that tests can corrupt or delete a blob:
  # $dir/cas/cas/objects/<hash[0:2]>/<hash[2:]> (SHA-256, lowercase hex).
  - !disk-storage &cas
    path: "$dir/cas"

caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false

schedulers:
  - !sql-scheduler &sched
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: $keepalive
    # How often expired bot sessions are looked for (default 10 s): a lease of a vanished
    # bot is requeued within keepalive + this.
    session-expiry-timer-interval: 2
    # OSFamily and ISA are always match keys: a bot gets a job only if the job's values
    # of them are among the bot's (worker.devices[0].properties). container-image and
    # cascade-tools are wildcards: jobs may carry them with any value, bots need not
    # advertise them. Any other key in a job's platform is refused (FAILED_PRECONDITION).
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily, ISA]
      wildcard-property-keys: [container-image, cascade-tools]
    assigners:
      # Idle, an assigner waits interval + up to jitter-factor seconds before it looks
      # for work again (the defaults, 1.0 + 1.0, add a second to every action of a
      # chain); busy, it loops at once.
      - !priority-age-assigner
        count: 1
        interval: 0.05
        jitter-factor: 0.05

instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
      # Execution, Operations and the Bots API (its default endpoints).
      - !execution
        scheduler: *sched
        operation-stream-keepalive-timeout: 60
EOF
mv "$dir/config.yml.tmp" "$dir/config.yml"

say "bgd server on 127.0.0.1:$port, database $db, blobs under $dir/cas/cas/objects"
vflags=()
for _ in $(seq "$verbose"); do vflags+=(-v); done
# Options after CONFIG: buildgrid.sh recognises its server by "server start CONFIG".
exec "$CASCADE_BGD" server start "$dir/config.yml" "${vflags[@]}"
