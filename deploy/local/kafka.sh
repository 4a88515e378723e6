#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one combined broker+controller, loopback only) for local
# development and tests. The broker's jars come from Maven Central through deploy/local/pom.xml.
#
#   deploy/local/kafka.sh start [--sasl]   fetch Kafka once, format storage once, start, wait until it answers
#   deploy/local/kafka.sh stop             SIGTERM the broker this script started, wait for it to exit
#   deploy/local/kafka.sh restart [--sasl] stop, then start
#   deploy/local/kafka.sh status           exit 0 when the broker is running and answering
#   deploy/local/kafka.sh logs [-f] [N]    the last N (200) lines of the broker's log; -f follows it
#   deploy/local/kafka.sh clean            stop, then remove the data dir (topics, offsets, logs)
#   deploy/local/kafka.sh fetch            only fetch the jars into the cache
#   deploy/local/kafka.sh topics ARGS...   kafka-topics against the broker, e.g. topics --list
#   deploy/local/kafka.sh tool CLASS ARGS  run any Kafka main class from the cached jars
#
# Environment (defaults in brackets): RAPPORT_KAFKA_PORT [9092], RAPPORT_KAFKA_CONTROLLER_PORT
# [PORT+1], RAPPORT_KAFKA_SASL_PORT [PORT+2], RAPPORT_KAFKA_DIR [~/.cache/rapport/kafka-run],
# RAPPORT_KAFKA_CACHE [~/.cache/rapport/kafka-VERSION]; see deploy/local/README.md for the rest.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$POM" | head -n 1)"

CACHE="${RAPPORT_KAFKA_CACHE:-$HOME/.cache/rapport/kafka-$KAFKA_VERSION}"
DATA="${RAPPORT_KAFKA_DIR:-$HOME/.cache/rapport/kafka-run}"
PORT="${RAPPORT_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${RAPPORT_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
SASL_PORT="${RAPPORT_KAFKA_SASL_PORT:-$((PORT + 2))}"
SASL_USER="${RAPPORT_KAFKA_SASL_USER:-rapport}"
SASL_PASSWORD="${RAPPORT_KAFKA_SASL_PASSWORD:-rapport-secret}"
HEAP="${RAPPORT_KAFKA_HEAP:-512m}"
START_TIMEOUT="${RAPPORT_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${RAPPORT_KAFKA_STOP_TIMEOUT:-30}"
AUTO_CREATE_TOPICS="${RAPPORT_KAFKA_AUTO_CREATE_TOPICS:-false}"

HOST=127.0.0.1
PID_FILE="$DATA/kafka.pid"
LOG_FILE="$DATA/kafka.log"
PROPS="$DATA/server.properties"
STATE_FILE="$DATA/running.env"   # ports and mode of the broker now running
KRAFT_DIR="$DATA/kraft-combined-logs"
MARKER="$DATA/.rapport-kafka"    # marks a data dir this script made (clean removes only such dirs)

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

[ -n "$KAFKA_VERSION" ] || die "cannot read <kafka.version> from $POM"
for p in "$PORT" "$CONTROLLER_PORT" "$SASL_PORT"; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "not a TCP port: '$p'"
done
[ "$PORT" != "$CONTROLLER_PORT" ] && [ "$PORT" != "$SASL_PORT" ] && [ "$CONTROLLER_PORT" != "$SASL_PORT" ] \
  || die "client ($PORT), controller ($CONTROLLER_PORT) and SASL ($SASL_PORT) ports must differ"
case "$AUTO_CREATE_TOPICS" in true|false) ;; *) die "RAPPORT_KAFKA_AUTO_CREATE_TOPICS must be true or false" ;; esac

# --- prerequisites -------------------------------------------------------------------------

# Checks for java (17+) and, when asked, mvn; names the exact packages to install when missing.
check_tools() {
  local want_mvn="${1:-}" missing=() java_major=""
  if command -v java >/dev/null 2>&1; then
    java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n 1)"
    if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
      say "java is version '${java_major:-unknown}'; the Kafka $KAFKA_VERSION broker needs Java 17 or newer"
      missing+=(openjdk-17-jre-headless)
    fi
  else
    say "java not found; the Kafka $KAFKA_VERSION broker needs Java 17 or newer"
    missing+=(openjdk-17-jre-headless)
  fi
  if [ -n "$want_mvn" ] && ! command -v mvn >/dev/null 2>&1; then
    say "mvn not found; Maven fetches the Kafka jars from Maven Central (once, into $CACHE)"
    missing+=(maven)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo "
    die "install with: ${sudo}apt-get update && ${sudo}apt-get install -y ${missing[*]}"
  fi
}

# Serialises start/stop/clean on one data dir. The lock file sits beside the data dir so that
# clean can remove the dir while holding it; fd 9 is closed in the broker so it never holds it.
lock_data() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$(dirname "$DATA")"
  exec 9>"$DATA.lock"
  flock -w 300 9 || die "another kafka.sh holds $DATA.lock for more than 300s"
}

# --- the jars --------------------------------------------------------------------------------

STAMP="$CACHE/.rapport-fetched"
cache_want() { printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -d ' ' -f 1)"; }
# True when the cache holds the jars of this very pom (the stamp names the version and the pom's hash).
cache_ready() { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(cache_want)" ]; }
# java always; mvn too while the jars still have to be fetched.
check_prereqs() { if cache_ready; then check_tools; else check_tools mvn; fi; }

fetch() {
  local stamp="$STAMP" want
  want="$(cache_want)"
  cache_ready && return 0
  check_tools mvn
  mkdir -p "$CACHE"
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$CACHE.lock"
    flock -w 600 8 || die "another kafka.sh holds $CACHE.lock for more than 600s"
    if cache_ready; then exec 8>&-; return 0; fi
  fi
  say "fetching Apache Kafka $KAFKA_VERSION and its runtime dependencies from Maven Central into $CACHE ..."
  local t0=$SECONDS
  rm -f "$CACHE"/*.jar "$stamp"   # a changed pom must not leave stale jars on the classpath
  local out rc=0
  out="$(mvn -q -B -f "$POM" dependency:copy-dependencies \
           -DincludeScope=runtime -DoutputDirectory="$CACHE" 2>&1)" || rc=$?
  # Drop the bare colour codes that Debian's Maven 3.8 prints even with -q -B; show the rest.
  out="$(printf '%s\n' "$out" | sed -e 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' || true)"
  [ -z "$out" ] || printf '%s\n' "$out" >&2
  [ "$rc" = 0 ] || die "mvn could not fetch the Kafka jars (exit $rc; is Maven Central reachable? see the output above)"
  [ -f "$CACHE/kafka_2.13-$KAFKA_VERSION.jar" ] || die "mvn ran but $CACHE/kafka_2.13-$KAFKA_VERSION.jar is missing"
  printf '%s\n' "$want" >"$stamp"
  say "fetched $(ls "$CACHE"/*.jar | wc -l) jars ($(du -sh "$CACHE" | cut -f 1)) in $((SECONDS - t0))s"
  if command -v flock >/dev/null 2>&1; then exec 8>&-; fi
}

# Runs a Kafka main class from the cache, logging only warnings (for CLI tools, not the broker).
run_tool() {
  local log4j="$HERE/log4j2.properties"
  java -Xmx256m -Dlog4j2.configurationFile="$log4j" -Drapport.kafka.loglevel=WARN \
    -cp "$CACHE/*" "$@"
}

# --- the broker process ----------------------------------------------------------------------

# Prints the pid of the broker this script started, if that process is still alive.
running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must be *our* kafka.Kafka with *this* data dir's config.
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $PROPS" || return 1
  fi
  printf '%s\n' "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

where() {
  # shellcheck disable=SC1090
  local R_PORT="$PORT" R_CONTROLLER_PORT="$CONTROLLER_PORT" R_SASL_PORT="$SASL_PORT" R_MODE=plain
  local R_SASL_USER="$SASL_USER" R_SASL_PASSWORD="$SASL_PASSWORD"
  [ -f "$STATE_FILE" ] && . "$STATE_FILE"
  echo "Kafka $KAFKA_VERSION (KRaft, broker+controller) running as pid $1"
  echo "  bootstrap servers: $HOST:$R_PORT  (PLAINTEXT)"
  if [ "$R_MODE" = sasl ]; then
    echo "  SASL listener:     $HOST:$R_SASL_PORT  (SASL_PLAINTEXT, mechanism PLAIN, user '$R_SASL_USER', password '$R_SASL_PASSWORD')"
    echo "  SASL client config: $DATA/sasl-client.properties"
  fi
  echo "  controller:        $HOST:$R_CONTROLLER_PORT"
  echo "  data:              $DATA"
  echo "  log:               $LOG_FILE"
}

esc() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

render_config() {
  local mode="$1"
  local listeners="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
  local advertised="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ "$mode" = sasl ]; then
    listeners+=",SASL_PLAINTEXT://$HOST:$SASL_PORT"
    advertised+=",SASL_PLAINTEXT://$HOST:$SASL_PORT"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  {
    sed -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
        -e "s|@LISTENERS@|$listeners|g" \
        -e "s|@ADVERTISED_LISTENERS@|$advertised|g" \
        -e "s|@PROTOCOL_MAP@|$protocols|g" \
        -e "s|@LOG_DIRS@|$(esc "$KRAFT_DIR")|g" \
        -e "s|@AUTO_CREATE_TOPICS@|$AUTO_CREATE_TOPICS|g" \
        "$HERE/server.properties.template"
    if [ "$mode" = sasl ]; then
      sed -e "s|@SASL_USER@|$(esc "$SASL_USER")|g" -e "s|@SASL_PASSWORD@|$(esc "$SASL_PASSWORD")|g" \
        "$HERE/sasl.properties.template"
    fi
  } >"$PROPS.tmp"
  mv -f "$PROPS.tmp" "$PROPS"
  rm -f "$DATA/sasl-client.properties"
  if [ "$mode" = sasl ]; then
    # Client settings for the SASL listener, e.g. for a CLI tool's --command-config.
    {
      echo "bootstrap.servers=$HOST:$SASL_PORT"
      echo "security.protocol=SASL_PLAINTEXT"
      echo "sasl.mechanism=PLAIN"
      echo "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$SASL_USER\" password=\"$SASL_PASSWORD\";"
    } >"$DATA/sasl-client.properties"
  fi
  # The broker reads its logging config from the data dir, so it outlives this checkout.
  cp -f "$HERE/log4j2.properties" "$DATA/log4j2.properties"
}

# Formats the KRaft storage once (a fresh cluster id, a single-node dynamic quorum).
format_storage() {
  if [ -f "$KRAFT_DIR/meta.properties" ]; then
    local formatted_port; formatted_port="$(cat "$DATA/controller-port" 2>/dev/null || echo "$CONTROLLER_PORT")"
    [ "$formatted_port" = "$CONTROLLER_PORT" ] || die "$DATA was formatted with the controller on port $formatted_port, \
not $CONTROLLER_PORT (the quorum records it): use RAPPORT_KAFKA_CONTROLLER_PORT=$formatted_port, or 'kafka.sh clean' first"
    return 0
  fi
  local cluster_id
  cluster_id="$(run_tool kafka.tools.StorageTool random-uuid)" || die "could not generate a cluster id"
  say "formatting KRaft storage in $KRAFT_DIR (cluster id $cluster_id)"
  if ! run_tool kafka.tools.StorageTool format --standalone --cluster-id "$cluster_id" --config "$PROPS" \
      >"$DATA/format.log" 2>&1; then
    cat "$DATA/format.log" >&2
    die "formatting the storage failed (output above, also in $DATA/format.log)"
  fi
  printf '%s\n' "$CONTROLLER_PORT" >"$DATA/controller-port"
  printf '%s\n' "$cluster_id" >"$DATA/cluster-id"
}

# Waits until the broker says it started and answers on its port(s); bounded by START_TIMEOUT.
wait_ready() {
  local pid="$1" mode="$2"
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE" "$STATE_FILE"
      say "the broker exited during startup; the last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2 || true
      exit 1
    fi
    if grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null && port_open "$PORT" \
        && { [ "$mode" != sasl ] || port_open "$SASL_PORT"; }; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "timed out after ${START_TIMEOUT}s: the broker (pid $pid) has not said 'Kafka Server started' and \
answered on $HOST:$PORT; it is left running: see '$0 logs', then '$0 stop' (or raise RAPPORT_KAFKA_START_TIMEOUT)"
    fi
    sleep 0.5
  done
}

start() {
  local mode=plain
  while [ $# -gt 0 ]; do
    case "$1" in
      --sasl) mode=sasl ;;
      *) die "start: unknown option '$1' (only --sasl)" ;;
    esac
    shift
  done
  lock_data

  local pid
  if pid="$(running_pid)"; then
    local R_PORT="" R_MODE=""
    # shellcheck disable=SC1090
    [ -f "$STATE_FILE" ] && . "$STATE_FILE"
    if [ "${R_MODE:-plain}" != "$mode" ] || [ "${R_PORT:-$PORT}" != "$PORT" ]; then
      die "a broker is already running (pid $pid, mode ${R_MODE:-plain}, port ${R_PORT:-$PORT}) with other \
settings than asked (mode $mode, port $PORT): run 'kafka.sh stop' first, or give a second broker its own \
RAPPORT_KAFKA_DIR and RAPPORT_KAFKA_PORT"
    fi
    if ! port_open "$PORT"; then
      say "pid $pid is running but $HOST:$PORT does not answer yet; waiting up to ${START_TIMEOUT}s ..."
      wait_ready "$pid" "$mode"
    fi
    echo "already running; reusing it"
    where "$pid"
    return 0
  fi

  check_prereqs
  fetch

  for p in "$PORT" "$CONTROLLER_PORT" $([ "$mode" = sasl ] && echo "$SASL_PORT"); do
    if port_open "$p"; then
      die "$HOST:$p is already in use by a process this script did not start (no live broker in $PID_FILE); \
stop it, or pick other ports with RAPPORT_KAFKA_PORT (controller and SASL follow as PORT+1 and PORT+2)"
    fi
  done

  if [ -d "$DATA" ] && [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DATA")" ]; then
    die "$DATA exists, is not empty and was not made by kafka.sh; point RAPPORT_KAFKA_DIR elsewhere"
  fi
  mkdir -p "$DATA"
  touch "$MARKER"
  rm -f "$PID_FILE" "$STATE_FILE"
  render_config "$mode"
  format_storage

  [ -f "$LOG_FILE" ] && mv -f "$LOG_FILE" "$LOG_FILE.1"
  local t0=$SECONDS
  local java_opts=(
    "-Xmx$HEAP" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$DATA/log4j2.properties" -Drapport.kafka.loglevel=INFO
  )
  # shellcheck disable=SC2206
  [ -n "${RAPPORT_KAFKA_JAVA_OPTS:-}" ] && java_opts+=($RAPPORT_KAFKA_JAVA_OPTS)
  # The child writes its own pid and then execs java, so the pid file names the JVM itself.
  # setsid: the broker gets its own session and survives the terminal or CI step that started it.
  local launcher=(); command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  "${launcher[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    java "${java_opts[@]}" -cp "$CACHE/*" kafka.Kafka "$PROPS" \
    </dev/null >>"$LOG_FILE" 2>&1 8>&- 9>&- &
  local waited=0
  until [ -s "$PID_FILE" ]; do
    sleep 0.1; waited=$((waited + 1))
    [ "$waited" -lt 100 ] || die "the broker process did not start (see $LOG_FILE)"
  done
  pid="$(cat "$PID_FILE")"
  printf 'R_PORT=%q\nR_CONTROLLER_PORT=%q\nR_SASL_PORT=%q\nR_MODE=%q\nR_SASL_USER=%q\nR_SASL_PASSWORD=%q\n' \
    "$PORT" "$CONTROLLER_PORT" "$SASL_PORT" "$mode" "$SASL_USER" "$SASL_PASSWORD" >"$STATE_FILE"
  say "started pid $pid; waiting up to ${START_TIMEOUT}s for $HOST:$PORT to answer ..."

  wait_ready "$pid" "$mode"
  say "ready in $((SECONDS - t0))s"
  where "$pid"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE" "$STATE_FILE"
    echo "not running"
    return 0
  fi
  say "stopping pid $pid (SIGTERM; up to ${STOP_TIMEOUT}s for a clean shutdown) ..."
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "pid $pid did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      local n=0
      while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
      break
    fi
    sleep 0.3
  done
  rm -f "$PID_FILE" "$STATE_FILE"
  echo "stopped"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    local R_PORT="$PORT"
    # shellcheck disable=SC1090
    [ -f "$STATE_FILE" ] && . "$STATE_FILE"
    if port_open "$R_PORT"; then
      where "$pid"
      return 0
    fi
    echo "pid $pid is alive but $HOST:$R_PORT does not answer (starting, or stuck: see '$0 logs')"
    return 1
  fi
  echo "not running (data: $DATA)"
  return 1
}

logs() {
  local follow="" lines=200
  while [ $# -gt 0 ]; do
    case "$1" in
      -f|--follow) follow=1 ;;
      ''|*[!0-9]*) die "logs: [-f] [N]" ;;
      *) lines="$1" ;;
    esac
    shift
  done
  [ -f "$LOG_FILE" ] || die "no log yet at $LOG_FILE"
  if [ -n "$follow" ]; then exec tail -n "$lines" -F "$LOG_FILE"; fi
  tail -n "$lines" "$LOG_FILE"
}

clean() {
  lock_data
  stop
  if [ -d "$DATA" ]; then
    if [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DATA")" ]; then
      die "refusing to remove $DATA: it was not made by kafka.sh"
    fi
    rm -rf -- "$DATA"
    echo "removed $DATA"
  else
    echo "nothing to remove at $DATA"
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) start "$@" ;;
  stop) lock_data; stop ;;
  restart) lock_data; stop; exec 9>&-; start "$@" ;;
  status) status ;;
  logs) logs "$@" ;;
  clean) clean ;;
  fetch) check_prereqs; fetch; echo "$CACHE" ;;
  topics) check_prereqs; fetch; run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$PORT" "$@" ;;
  tool)
    [ $# -gt 0 ] || die "tool: give a main class, e.g. org.apache.kafka.tools.TopicCommand"
    check_prereqs; fetch; run_tool "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
