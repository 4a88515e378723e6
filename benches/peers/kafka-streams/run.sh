#!/usr/bin/env bash
# The Kafka Streams peer of rapport (benchmark contender).
#
#   run.sh build          build the shaded jar if it is missing or older than its sources; print its path
#   run.sh run ARGS...    build if needed, then run the peer with ARGS (see README.md)
#
# JVM options: PEER_JAVA_OPTS, default "-Xms1g -Xmx1g" (a fixed 1 GiB heap; RocksDB's memory is
# off-heap and comes on top). Needs Java 17+ and Maven; the first build fetches the dependencies
# from Maven Central, later builds run offline.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JAR="$HERE/target/rapport-kafka-streams-peer.jar"
JAVA_OPTS="${PEER_JAVA_OPTS:--Xms1g -Xmx1g}"

die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

need_build() {
  [ -f "$JAR" ] || return 0
  [ -n "$(find "$HERE/pom.xml" "$HERE/src" -newer "$JAR" -print -quit)" ]
}

build() {
  command -v java >/dev/null 2>&1 || die "java not found; install Java 17 (apt-get install -y openjdk-17-jdk-headless)"
  command -v mvn >/dev/null 2>&1 || die "mvn not found; install Maven (apt-get install -y maven)"
  if need_build; then
    printf 'run.sh: building %s\n' "$JAR" >&2
    (cd "$HERE" && { mvn -o -q -B -Dstyle.color=never package -DskipTests >/dev/null 2>&1 || mvn -q -B -Dstyle.color=never package -DskipTests >&2; }) \
      || die "the Maven build failed (see above)"
  fi
  [ -f "$JAR" ] || die "the build did not produce $JAR"
}

case "${1:-}" in
  build) build; echo "$JAR" ;;
  run)
    shift
    build
    # shellcheck disable=SC2086
    exec java $JAVA_OPTS -jar "$JAR" "$@"
    ;;
  *) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
