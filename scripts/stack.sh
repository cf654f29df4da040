#!/usr/bin/env bash
# The local stack for tests and the demo, no container engine: a single-node Apache Kafka
# (KRaft) from the broker jars, a VersityGW S3 server (posix backend: one file per object) and a
# PostgreSQL server from Debian's package (the gateway's job state), all on loopback.
#   stack.sh up      start what is not running, wait until healthy, create topics + bucket
#   stack.sh down    stop exactly what `up` started (by pid file)
#   stack.sh status  print what runs
#   stack.sh stop-s3 | start-s3 | stop-kafka | start-kafka | stop-postgres | start-postgres   (fault tests)
# State lives in .stack/ (git-ignored). Endpoints are written to .stack/env for scripts and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

STACK="$PWD/.stack"
KAFKA_DIR="$STACK/kafka"
S3_DIR="$STACK/versitygw"
KAFKA_PORT="${T2V_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${T2V_KAFKA_CONTROLLER_PORT:-9093}"
S3_PORT="${T2V_S3_PORT:-3900}"
PG_DIR="$STACK/postgres"
PG_PORT="${T2V_PG_PORT:-5433}"
BUCKET=t2v
S3_REGION=us-east-1
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
# Fixed, loopback-only credentials for the local stack.
S3_KEY_ID=GK0123456789abcdef01234567
S3_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
PG_USER=t2v
PG_PASSWORD=t2v-local-only
PG_DATABASE=t2v

log() { printf 'stack: %s\n' "$*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then log "FAILED: $what not ready after ${deadline}s — see the logs in $STACK"; return 1; fi
    sleep 0.5
  done
}

kafka_java() { java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" -cp "$KAFKA_LIB/*" "$@"; }

start_kafka() {
  if alive "$KAFKA_DIR/pid"; then log "kafka already running (pid $(cat "$KAFKA_DIR/pid"))"; return; fi
  if port_open "$KAFKA_PORT"; then log "FAILED: port $KAFKA_PORT is taken by another process; stop it or set T2V_KAFKA_PORT"; exit 1; fi
  mkdir -p "$KAFKA_DIR/data"
  cat > "$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=60000
PROPS
  cat > "$KAFKA_DIR/log4j.properties" <<'LOG'
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
LOG
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    kafka_java kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
      || { log "FAILED: kafka storage format, see $KAFKA_DIR/format.log"; cat "$KAFKA_DIR/format.log"; exit 1; }
  fi
  log "starting kafka on 127.0.0.1:$KAFKA_PORT"
  setsid nohup bash -c "$(declare -f kafka_java); KAFKA_DIR='$KAFKA_DIR' KAFKA_LIB='$KAFKA_LIB'; exec java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j.configuration='file:$KAFKA_DIR/log4j.properties' -cp '$KAFKA_LIB/*' kafka.Kafka '$KAFKA_DIR/server.properties'" \
    >"$KAFKA_DIR/kafka.log" 2>&1 &
  echo $! >"$KAFKA_DIR/pid"
}

# Signed S3 request with curl's SigV4 (curl >= 7.75): prints the HTTP status, 000 when nothing answers.
s3_curl() { # s3_curl HEAD|PUT PATH
  local method=(-X "$1"); [ "$1" = HEAD ] && method=(--head)
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${method[@]}" --aws-sigv4 "aws:amz:$S3_REGION:s3" \
    --user "$S3_KEY_ID:$S3_SECRET" -H "x-amz-content-sha256: $EMPTY_SHA256" "http://127.0.0.1:$S3_PORT$2" || true
}
bucket_ready() { [ "$(s3_curl HEAD "/$BUCKET")" = 200 ]; }

# VersityGW's posix backend keeps object metadata (content type, ETag) in user xattrs; on a
# filesystem without them it keeps it in a sidecar directory instead.
xattrs_work() {
  python3 -c 'import os, sys; os.setxattr(sys.argv[1], "user.t2v-probe", b"1"); os.removexattr(sys.argv[1], "user.t2v-probe")' "$1" 2>/dev/null
}

start_s3() {
  if alive "$S3_DIR/pid"; then log "versitygw already running (pid $(cat "$S3_DIR/pid"))"; return; fi
  if port_open "$S3_PORT"; then
    if alive "$STACK/garage/pid"; then
      log "FAILED: port $S3_PORT is taken by the Garage server of an older stack.sh (pid $(cat "$STACK/garage/pid")); run \`bash scripts/stack.sh down\` first"
    else
      log "FAILED: port $S3_PORT is taken by another process; stop it or set T2V_S3_PORT"
    fi
    exit 1
  fi
  [ -x "$T2V_TOOLS/bin/versitygw" ] || { log "FAILED: $T2V_TOOLS/bin/versitygw not installed — run \`make deps\`"; exit 1; }
  mkdir -p "$S3_DIR/data"
  local meta=()
  if ! xattrs_work "$S3_DIR/data"; then
    log "the filesystem of $S3_DIR has no user xattrs: VersityGW keeps object metadata in $S3_DIR/meta"
    mkdir -p "$S3_DIR/meta"; meta=(--sidecar "$S3_DIR/meta")
  fi
  log "starting versitygw (S3) on 127.0.0.1:$S3_PORT, objects under $S3_DIR/data"
  # Root credentials through the environment, so they stay off the process list.
  ROOT_ACCESS_KEY_ID="$S3_KEY_ID" ROOT_SECRET_ACCESS_KEY="$S3_SECRET" setsid nohup "$T2V_TOOLS/bin/versitygw" \
    --port "127.0.0.1:$S3_PORT" --region "$S3_REGION" --keep-alive --quiet \
    posix "${meta[@]}" "$S3_DIR/data" >>"$S3_DIR/versitygw.log" 2>&1 &
  echo $! >"$S3_DIR/pid"
}

wait_s3() { # the bucket answers a signed HEAD: server up, credentials and bucket in place
  local deadline=$((SECONDS + 30))
  until [ "$(s3_curl HEAD /)" != 000 ]; do
    if ! alive "$S3_DIR/pid" || ((SECONDS >= deadline)); then
      log "FAILED: versitygw not answering on :$S3_PORT — last lines of $S3_DIR/versitygw.log:"; tail -20 "$S3_DIR/versitygw.log" >&2; return 1
    fi
    sleep 0.2
  done
  if ! bucket_ready; then
    local code; code=$(s3_curl PUT "/$BUCKET")
    [ "$code" = 200 ] || { log "FAILED: creating bucket '$BUCKET' answered HTTP $code — see $S3_DIR/versitygw.log"; return 1; }
  fi
  wait_for 10 "bucket '$BUCKET'" bucket_ready
}

# PostgreSQL from Debian's package. initdb and postgres refuse to run as root, so when we are root
# the cluster belongs to the `postgres` system user and runs as it (runuser).
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_pid() { head -1 "$PG_DIR/data/postmaster.pid" 2>/dev/null; }
pg_alive() { local pid; pid=$(pg_pid); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
psql_admin() { as_pg "$(pg_bin)/psql" -q -v ON_ERROR_STOP=1 -h "$PG_DIR/socket" -p "$PG_PORT" -d postgres "$@"; }

start_postgres() {
  local bin; bin=$(pg_bin)
  [ -n "$bin" ] || { log "FAILED: PostgreSQL not installed — run \`make deps\`"; exit 1; }
  if pg_alive; then log "postgres already running (pid $(pg_pid))"; return; fi
  if port_open "$PG_PORT"; then log "FAILED: port $PG_PORT is taken by another process; stop it or set T2V_PG_PORT"; exit 1; fi
  mkdir -p "$PG_DIR/socket"
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR" "$PG_DIR/socket"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    local pwfile="$PG_DIR/pw"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"; [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"; chmod 600 "$pwfile"
    # The superuser is the local `postgres` user over the socket (peer); TCP needs the password.
    as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
      || { log "FAILED: initdb, see $PG_DIR/initdb.log"; cat "$PG_DIR/initdb.log"; exit 1; }
    rm -f "$pwfile"
  fi
  log "starting postgres on 127.0.0.1:$PG_PORT, data under $PG_DIR/data"
  as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR/socket -c max_connections=300 -c fsync=off -c synchronous_commit=off" >/dev/null \
    || { log "FAILED: postgres did not start — last lines of $PG_DIR/postgres.log:"; tail -20 "$PG_DIR/postgres.log" >&2; exit 1; }
}

# The application role (may create databases: each gateway test makes its own) and database.
postgres_role() {
  wait_for 30 "postgres on :$PG_PORT" pg_ready
  psql_admin <<SQL
SELECT 'CREATE ROLE $PG_USER LOGIN CREATEDB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER')\gexec
ALTER ROLE $PG_USER PASSWORD '$PG_PASSWORD';
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE')\gexec
SQL
}

stop_postgres() {
  if pg_alive; then
    log "stopping postgres (pid $(pg_pid))"
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null || true
  fi
}

write_env() {
  cat >"$STACK/env" <<ENV
T2V_BROKERS=127.0.0.1:$KAFKA_PORT
T2V_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
T2V_S3_BUCKET=$BUCKET
T2V_S3_REGION=$S3_REGION
AWS_ACCESS_KEY_ID=$S3_KEY_ID
AWS_SECRET_ACCESS_KEY=$S3_SECRET
AWS_REGION=$S3_REGION
AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
AWS_ALLOW_HTTP=true
T2V_DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE
ENV
}

topics_apply() {
  # The debug build shares its dependencies with `cargo test`, so this costs nothing extra in CI.
  cargo build --quiet -p t2v-producer --bin t2v
  "$CARGO_TARGET_DIR/debug/t2v" --brokers "127.0.0.1:$KAFKA_PORT" topics apply --file schemas/topics.yaml
}

stop_pidfile() { # stop_pidfile FILE NAME
  if alive "$1"; then
    local pid; pid=$(cat "$1")
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

case "${1:-up}" in
  up)
    mkdir -p "$STACK"
    start_kafka
    start_s3
    start_postgres
    wait_for 90 "kafka broker on :$KAFKA_PORT" port_open "$KAFKA_PORT"
    wait_s3
    postgres_role
    write_env
    topics_apply
    log "ready: kafka 127.0.0.1:$KAFKA_PORT, S3 http://127.0.0.1:$S3_PORT bucket '$BUCKET', postgres 127.0.0.1:$PG_PORT (credentials in .stack/env)"
    ;;
  down)
    stop_pidfile "$KAFKA_DIR/pid" kafka
    stop_pidfile "$S3_DIR/pid" versitygw
    stop_postgres
    # The S3 server of stack.sh before VersityGW replaced it, if one still runs.
    stop_pidfile "$STACK/garage/pid" "garage (older stack)"
    ;;
  status)
    alive "$KAFKA_DIR/pid" && log "kafka running (pid $(cat "$KAFKA_DIR/pid"))" || log "kafka stopped"
    alive "$S3_DIR/pid" && log "versitygw (S3) running (pid $(cat "$S3_DIR/pid"))" || log "versitygw (S3) stopped"
    pg_alive && log "postgres running (pid $(pg_pid))" || log "postgres stopped"
    ;;
  stop-s3) stop_pidfile "$S3_DIR/pid" versitygw ;;
  start-s3) start_s3; wait_s3 ;;
  kill-kafka) alive "$KAFKA_DIR/pid" && kill -9 "$(cat "$KAFKA_DIR/pid")"; rm -f "$KAFKA_DIR/pid" ;;
  stop-kafka) stop_pidfile "$KAFKA_DIR/pid" kafka ;;
  start-kafka) start_kafka; wait_for 90 "kafka broker" port_open "$KAFKA_PORT" ;;
  stop-postgres) stop_postgres ;;
  start-postgres) start_postgres; postgres_role ;;
  *) echo "usage: $0 up|down|status|stop-s3|start-s3|stop-kafka|kill-kafka|start-kafka|stop-postgres|start-postgres" >&2; exit 2 ;;
esac
