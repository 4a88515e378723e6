#!/usr/bin/env bash
# A small Apache Kafka cluster (KRaft, loopback only) for tests of broker and leadership faults:
# node 1 is broker and controller, nodes 2..N are brokers only. It uses the jars kafka.sh fetches
# and runs beside the single broker of kafka.sh (other ports, another data dir), never touching it.
#
#   deploy/local/cluster.sh start            format once, start node 1, create the internal topics
#                                            on it, then start the other nodes; wait until each answers
#   deploy/local/cluster.sh stop             SIGTERM every node this script started, wait for them
#   deploy/local/cluster.sh status           exit 0 when every node is running and answering
#   deploy/local/cluster.sh start-node N     start node N (after kill-node or stop-node), wait until it answers
#   deploy/local/cluster.sh stop-node N      SIGTERM node N, wait for it to exit
#   deploy/local/cluster.sh kill-node N      SIGKILL node N (a crashed broker), wait for it to be gone
#   deploy/local/cluster.sh pid N            the pid of node N
#   deploy/local/cluster.sh logs N [LINES]   the last LINES (200) lines of node N's log
#   deploy/local/cluster.sh clean            stop, then remove the data dir
#   deploy/local/cluster.sh topics ARGS...   kafka-topics against the cluster, e.g. topics --describe
#
# Environment (defaults in brackets): RAPPORT_CLUSTER_NODES [2], RAPPORT_CLUSTER_PORT [19092]:
# node N's client port is PORT+2(N-1), the controller's PORT+1; RAPPORT_CLUSTER_DIR
# [~/.cache/rapport/kafka-cluster]; RAPPORT_KAFKA_HEAP [512m]; see deploy/local/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES="${RAPPORT_CLUSTER_NODES:-2}"
PORT="${RAPPORT_CLUSTER_PORT:-19092}"
CONTROLLER_PORT=$((PORT + 1))
DATA="${RAPPORT_CLUSTER_DIR:-$HOME/.cache/rapport/kafka-cluster}"
HEAP="${RAPPORT_KAFKA_HEAP:-512m}"
START_TIMEOUT="${RAPPORT_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${RAPPORT_KAFKA_STOP_TIMEOUT:-30}"
HOST=127.0.0.1
MARKER="$DATA/.rapport-kafka-cluster"

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

[[ "$NODES" =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] && [ "$NODES" -le 9 ] || die "RAPPORT_CLUSTER_NODES must be 1..9"
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1024 ] && [ $((PORT + 2 * NODES)) -le 65535 ] \
  || die "not a usable base port: '$PORT'"

node_port() { echo $((PORT + 2 * ($1 - 1))); }
node_dir() { echo "$DATA/node-$1"; }
pid_file() { echo "$(node_dir "$1")/kafka.pid"; }
log_file() { echo "$(node_dir "$1")/kafka.log"; }
props() { echo "$(node_dir "$1")/server.properties"; }
check_node() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$NODES" ] || die "no node '$1' (1..$NODES)"; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

CACHE=""
jars() {
  [ -n "$CACHE" ] && return 0
  CACHE="$("$HERE/kafka.sh" fetch)" || die "could not fetch the Kafka jars (see kafka.sh fetch)"
}

run_tool() {
  jars
  java -Xmx256m -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Drapport.kafka.loglevel=WARN \
    -cp "$CACHE/*" "$@"
}

# The pid of node N if the process this script started for it is still that node.
running_pid() {
  local f; f="$(pid_file "$1")"
  [ -f "$f" ] || return 1
  local pid; pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $(props "$1")" || return 1
  fi
  printf '%s\n' "$pid"
}

lock_data() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$(dirname "$DATA")"
  exec 9>"$DATA.lock"
  flock -w 300 9 || die "another cluster.sh holds $DATA.lock for more than 300s"
}

render_config() {
  local n="$1" p; p="$(node_port "$n")"
  local dir; dir="$(node_dir "$n")"
  mkdir -p "$dir"
  {
    echo "# Rendered by deploy/local/cluster.sh on every start of node $n."
    if [ "$n" = 1 ]; then
      echo "process.roles=broker,controller"
      echo "listeners=PLAINTEXT://$HOST:$p,CONTROLLER://$HOST:$CONTROLLER_PORT"
      echo "advertised.listeners=PLAINTEXT://$HOST:$p,CONTROLLER://$HOST:$CONTROLLER_PORT"
    else
      echo "process.roles=broker"
      echo "listeners=PLAINTEXT://$HOST:$p"
      echo "advertised.listeners=PLAINTEXT://$HOST:$p"
    fi
    cat <<EOF
node.id=$n
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/kraft-logs
num.partitions=1
# Internal topics: one replica each, created while node 1 is the only broker (see start), so
# that stopping any other node never takes a group coordinator or transaction log away.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
  } >"$(props "$n").tmp"
  mv -f "$(props "$n").tmp" "$(props "$n")"
  cp -f "$HERE/log4j2.properties" "$dir/log4j2.properties"
}

format_node() {
  local n="$1" dir; dir="$(node_dir "$n")"
  [ -f "$dir/kraft-logs/meta.properties" ] && return 0
  local id; id="$(cat "$DATA/cluster-id")"
  local mode=(--no-initial-controllers)
  [ "$n" = 1 ] && mode=(--standalone)
  say "formatting node $n's storage (cluster id $id)"
  if ! run_tool kafka.tools.StorageTool format "${mode[@]}" --cluster-id "$id" --config "$(props "$n")" \
      >"$dir/format.log" 2>&1; then
    cat "$dir/format.log" >&2
    die "formatting node $n failed (output above)"
  fi
}

wait_answering() {
  local n="$1" pid="$2" p; p="$(node_port "$1")"
  local deadline=$((SECONDS + START_TIMEOUT))
  until grep -q "Kafka Server started" "$(log_file "$n")" 2>/dev/null && port_open "$p"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$(pid_file "$n")"
      say "node $n exited during startup; the last lines of $(log_file "$n"):"
      tail -n 40 "$(log_file "$n")" >&2 || true
      exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "node $n (pid $pid) did not answer on $HOST:$p within ${START_TIMEOUT}s; see '$0 logs $n'"
    sleep 0.3
  done
}

start_node() {
  local n="$1" pid p; p="$(node_port "$n")"
  if pid="$(running_pid "$n")"; then
    wait_answering "$n" "$pid"
    say "node $n already running (pid $pid) on $HOST:$p"
    return 0
  fi
  for q in "$p" $([ "$n" = 1 ] && echo "$CONTROLLER_PORT"); do
    port_open "$q" && die "$HOST:$q is in use by a process this script did not start; pick another RAPPORT_CLUSTER_PORT"
  done
  jars
  render_config "$n"
  format_node "$n"
  local log; log="$(log_file "$n")"
  [ -f "$log" ] && mv -f "$log" "$log.1"
  rm -f "$(pid_file "$n")"
  local launcher=(); command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  "${launcher[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$(pid_file "$n")" \
    java "-Xmx$HEAP" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$(node_dir "$n")/log4j2.properties" -Drapport.kafka.loglevel=INFO \
    -cp "$CACHE/*" kafka.Kafka "$(props "$n")" </dev/null >>"$log" 2>&1 9>&- &
  local waited=0
  until [ -s "$(pid_file "$n")" ]; do
    sleep 0.1; waited=$((waited + 1))
    [ "$waited" -lt 100 ] || die "node $n did not start (see $log)"
  done
  pid="$(cat "$(pid_file "$n")")"
  local t0=$SECONDS
  wait_answering "$n" "$pid"
  say "node $n (pid $pid) answers on $HOST:$p after $((SECONDS - t0))s"
}

# Signals node N and waits for it to be gone; SIGTERM falls back to SIGKILL after STOP_TIMEOUT.
end_node() {
  local n="$1" sig="$2" pid
  if ! pid="$(running_pid "$n")"; then
    rm -f "$(pid_file "$n")"
    say "node $n is not running"
    return 0
  fi
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "node $n (pid $pid) did not exit within ${STOP_TIMEOUT}s of SIG$sig; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
    fi
    sleep 0.1
  done
  rm -f "$(pid_file "$n")"
  say "node $n (pid $pid) ended by SIG$sig"
}

start() {
  lock_data
  if [ -d "$DATA" ] && [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DATA")" ]; then
    die "$DATA exists, is not empty and was not made by cluster.sh; point RAPPORT_CLUSTER_DIR elsewhere"
  fi
  mkdir -p "$DATA"
  touch "$MARKER"
  if [ ! -f "$DATA/cluster-id" ]; then
    run_tool kafka.tools.StorageTool random-uuid >"$DATA/cluster-id" || die "could not generate a cluster id"
  fi
  start_node 1
  # The group coordinator's topic is created on the first coordinator lookup: make that happen
  # while node 1 is the only broker, so that all its partitions live there.
  local deadline=$((SECONDS + START_TIMEOUT))
  until run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$(node_port 1)" \
      --describe --topic __consumer_offsets 2>/dev/null | grep -q 'Leader: 1'; do
    run_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$HOST:$(node_port 1)" \
      --describe --group rapport-cluster-sh-bootstrap >/dev/null 2>&1 || true
    [ "$SECONDS" -lt "$deadline" ] || die "__consumer_offsets was not created on node 1 within ${START_TIMEOUT}s"
  done
  local n
  for ((n = 2; n <= NODES; n++)); do start_node "$n"; done
  status
}

stop() {
  lock_data
  local n
  for ((n = NODES; n >= 1; n--)); do end_node "$n" TERM; done
}

status() {
  local n pid ok=0 brokers=()
  for ((n = 1; n <= NODES; n++)); do
    brokers+=("$HOST:$(node_port "$n")")
    if pid="$(running_pid "$n")" && port_open "$(node_port "$n")"; then
      echo "node $n: pid $pid, $HOST:$(node_port "$n")$([ "$n" = 1 ] && echo " (controller $HOST:$CONTROLLER_PORT)")"
    else
      echo "node $n: not running"
      ok=1
    fi
  done
  local IFS=,
  echo "bootstrap servers: ${brokers[*]}"
  echo "data: $DATA"
  return "$ok"
}

clean() {
  stop
  if [ -d "$DATA" ]; then
    [ -f "$MARKER" ] || die "refusing to remove $DATA: it was not made by cluster.sh"
    rm -rf -- "$DATA"
    echo "removed $DATA"
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  start-node) [ $# = 1 ] || die "start-node N"; check_node "$1"; lock_data; start_node "$1" ;;
  stop-node) [ $# = 1 ] || die "stop-node N"; check_node "$1"; lock_data; end_node "$1" TERM ;;
  kill-node) [ $# = 1 ] || die "kill-node N"; check_node "$1"; lock_data; end_node "$1" KILL ;;
  pid) [ $# = 1 ] || die "pid N"; check_node "$1"; running_pid "$1" || die "node $1 is not running" ;;
  logs) [ $# -ge 1 ] || die "logs N [LINES]"; check_node "$1"; tail -n "${2:-200}" "$(log_file "$1")" ;;
  clean) clean ;;
  topics) run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$(node_port 1)" "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
