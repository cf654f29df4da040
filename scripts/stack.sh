#!/usr/bin/env bash
# The local stack for tests and the demo, no container engine: a single-node Apache Kafka
# (KRaft) from the broker jars and a single-node Garage S3 server, both on loopback.
#   stack.sh up      start what is not running, wait until healthy, create topics + bucket
#   stack.sh down    stop exactly what `up` started (by pid file)
#   stack.sh status  print what runs
#   stack.sh stop-s3 | start-s3 | stop-kafka | start-kafka   (fault tests)
# State lives in .stack/ (git-ignored). Endpoints are written to .stack/env for scripts and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

STACK="$PWD/.stack"
KAFKA_DIR="$STACK/kafka"
GARAGE_DIR="$STACK/garage"
KAFKA_PORT="${T2V_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${T2V_KAFKA_CONTROLLER_PORT:-9093}"
S3_PORT="${T2V_S3_PORT:-3900}"
GARAGE_RPC_PORT="${T2V_GARAGE_RPC_PORT:-3901}"
GARAGE_ADMIN_PORT="${T2V_GARAGE_ADMIN_PORT:-3903}"
BUCKET=t2v
# Fixed, loopback-only credentials for the local stack (Garage key ids are GK + 24 hex).
S3_KEY_ID=GK0123456789abcdef01234567
S3_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef

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
  nohup bash -c "$(declare -f kafka_java); KAFKA_DIR='$KAFKA_DIR' KAFKA_LIB='$KAFKA_LIB'; exec java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j.configuration='file:$KAFKA_DIR/log4j.properties' -cp '$KAFKA_LIB/*' kafka.Kafka '$KAFKA_DIR/server.properties'" \
    >"$KAFKA_DIR/kafka.log" 2>&1 &
  echo $! >"$KAFKA_DIR/pid"
}

garage() { "$T2V_TOOLS/bin/garage" -c "$GARAGE_DIR/garage.toml" "$@"; }

start_garage() {
  if alive "$GARAGE_DIR/pid"; then log "garage already running (pid $(cat "$GARAGE_DIR/pid"))"; return; fi
  if port_open "$S3_PORT"; then log "FAILED: port $S3_PORT is taken by another process; stop it or set T2V_S3_PORT"; exit 1; fi
  mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
  [ -f "$GARAGE_DIR/rpc_secret" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$GARAGE_DIR/rpc_secret"
  cat > "$GARAGE_DIR/garage.toml" <<TOML
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(cat "$GARAGE_DIR/rpc_secret")"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
TOML
  log "starting garage (S3) on 127.0.0.1:$S3_PORT"
  nohup "$T2V_TOOLS/bin/garage" -c "$GARAGE_DIR/garage.toml" server >"$GARAGE_DIR/garage.log" 2>&1 &
  echo $! >"$GARAGE_DIR/pid"
}

setup_garage() {
  wait_for 60 "garage rpc" garage status
  if ! garage layout show 2>/dev/null | grep -q "Current cluster layout version: [1-9]"; then
    local node_id
    node_id=$(garage node id -q | cut -d@ -f1)
    garage layout assign -z local -c 2G "$node_id" >/dev/null
    garage layout apply --version 1 >/dev/null
  fi
  wait_for 30 "garage layout" bash -c "'$T2V_TOOLS/bin/garage' -c '$GARAGE_DIR/garage.toml' bucket list"
  garage key info "$S3_KEY_ID" >/dev/null 2>&1 || garage key import --yes -n t2v-local "$S3_KEY_ID" "$S3_SECRET" >/dev/null
  garage bucket info "$BUCKET" >/dev/null 2>&1 || garage bucket create "$BUCKET" >/dev/null
  garage bucket allow --read --write --owner "$BUCKET" --key "$S3_KEY_ID" >/dev/null
  wait_for 30 "S3 API" port_open "$S3_PORT"
}

write_env() {
  cat >"$STACK/env" <<ENV
T2V_BROKERS=127.0.0.1:$KAFKA_PORT
T2V_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
T2V_S3_BUCKET=$BUCKET
T2V_S3_REGION=garage
AWS_ACCESS_KEY_ID=$S3_KEY_ID
AWS_SECRET_ACCESS_KEY=$S3_SECRET
AWS_REGION=garage
AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
AWS_ALLOW_HTTP=true
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
    start_garage
    wait_for 90 "kafka broker on :$KAFKA_PORT" port_open "$KAFKA_PORT"
    setup_garage
    write_env
    topics_apply
    log "ready: kafka 127.0.0.1:$KAFKA_PORT, S3 http://127.0.0.1:$S3_PORT bucket '$BUCKET' (credentials in .stack/env)"
    ;;
  down)
    stop_pidfile "$KAFKA_DIR/pid" kafka
    stop_pidfile "$GARAGE_DIR/pid" garage
    ;;
  status)
    alive "$KAFKA_DIR/pid" && log "kafka running (pid $(cat "$KAFKA_DIR/pid"))" || log "kafka stopped"
    alive "$GARAGE_DIR/pid" && log "garage running (pid $(cat "$GARAGE_DIR/pid"))" || log "garage stopped"
    ;;
  stop-s3) stop_pidfile "$GARAGE_DIR/pid" garage ;;
  start-s3) start_garage; wait_for 60 "S3 API" port_open "$S3_PORT" ;;
  kill-kafka) alive "$KAFKA_DIR/pid" && kill -9 "$(cat "$KAFKA_DIR/pid")"; rm -f "$KAFKA_DIR/pid" ;;
  stop-kafka) stop_pidfile "$KAFKA_DIR/pid" kafka ;;
  start-kafka) start_kafka; wait_for 90 "kafka broker" port_open "$KAFKA_PORT" ;;
  *) echo "usage: $0 up|down|status|stop-s3|start-s3|stop-kafka|kill-kafka|start-kafka" >&2; exit 2 ;;
esac
