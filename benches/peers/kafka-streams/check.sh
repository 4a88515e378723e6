#!/usr/bin/env bash
# Correctness check of the Kafka Streams peer against rapport: the same synthetic events through
# rapport's embedded mode (NDJSON in, NDJSON out) and through the peer on a real broker must give
# the same churn alerts and the same health-score changes.
#
#   check.sh RAPPORT_BINARY [--accounts N] [--days D] [--bad-every K] [--format json|protobuf|mixed]
#            [--guarantee at_least_once|exactly_once_v2|both] [--bootstrap HOST:PORT] [--keep]
#
# Defaults: 2000 accounts, 30 days, JSON on the wire, one malformed record every 5000 events, both
# guarantees, 127.0.0.1:9092. With --format protobuf or mixed (JSON, protobuf and Schema-Registry-
# framed protobuf in turn) the default is no malformed records: `rapport produce` re-encodes every
# line that parses as JSON, so the generator's over-long `too_large` line (valid apart from its
# size) reaches the topic as a small, valid protobuf event, which the embedded run never sees.
# Needs a running broker (deploy/local/kafka.sh start), python3, and the peer's jar (run.sh build
# builds it). Creates its own topics (prefix ks-peer-check-, 6 partitions) and deletes them at the
# end. Exits 0 when everything matches, 1 on any difference, 2 on a usage or setup error.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
KAFKA="$ROOT/deploy/local/kafka.sh"

die() { printf 'check.sh: %s\n' "$*" >&2; exit 2; }
say() { printf 'check.sh: %s\n' "$*" >&2; }

[ $# -ge 1 ] || die "give the rapport binary: check.sh PATH/TO/rapport [options]"
RAPPORT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
[ -x "$RAPPORT" ] || die "$RAPPORT is not an executable rapport binary"
ACCOUNTS=2000 DAYS=30 BAD_EVERY= FORMAT=json GUARANTEES=both BOOTSTRAP=127.0.0.1:9092 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) ACCOUNTS="$2"; shift 2 ;;
    --days) DAYS="$2"; shift 2 ;;
    --bad-every) BAD_EVERY="$2"; shift 2 ;;
    --format) FORMAT="$2"; shift 2 ;;
    --guarantee) GUARANTEES="$2"; shift 2 ;;
    --bootstrap) BOOTSTRAP="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
case "$GUARANTEES" in
  both) GUARANTEES="at_least_once exactly_once_v2" ;;
  at_least_once|exactly_once_v2) ;;
  *) die "--guarantee must be at_least_once, exactly_once_v2 or both" ;;
esac
case "$FORMAT" in json|protobuf|mixed) ;; *) die "--format must be json, protobuf or mixed" ;; esac
if [ -z "$BAD_EVERY" ]; then
  if [ "$FORMAT" = json ]; then BAD_EVERY=5000; else BAD_EVERY=0; fi
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the comparison"

tool() { "$KAFKA" tool "$@"; }
tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1 \
  || die "no Kafka broker answers at $BOOTSTRAP; start one with deploy/local/kafka.sh start"
JAR="$("$HERE/run.sh" build)"

WORK="$(mktemp -d /tmp/ks-peer-check.XXXXXX)"
PREFIX="ks-peer-check-$(date +%s)-$$"
GROUPS_MADE=()
cleanup() {
  set +e
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --delete --topic "$PREFIX.*" >/dev/null 2>&1
  for g in "${GROUPS_MADE[@]}"; do
    tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BOOTSTRAP" --delete --group "$g" >/dev/null 2>&1
  done
  if [ "$KEEP" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say "generating $ACCOUNTS accounts x $DAYS days"
"$RAPPORT" generate --out "$WORK/events.ndjson" --accounts "$ACCOUNTS" --days "$DAYS" --bad-every "$BAD_EVERY" >&2
RECORDS="$(wc -l < "$WORK/events.ndjson" | tr -d ' ')"

say "rapport, embedded: $RECORDS records"
"$RAPPORT" run --input "$WORK/events.ndjson" --output "$WORK/rapport-out" --data-dir "$WORK/rapport-data" --quiet \
  >/dev/null 2> "$WORK/rapport-run.log" || { tail -n 5 "$WORK/rapport-run.log" >&2; die "rapport run failed"; }

topic() {
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --create --topic "$1" --partitions 6 \
    --replication-factor 1 >/dev/null
}
for t in product_usage email call deal; do topic "$PREFIX.$t"; done
CFG="$WORK/produce.toml"
cat "$ROOT/config/kafka.toml" > "$CFG"
cat >> "$CFG" <<TOML

[kafka.input_topics]
product_usage = "$PREFIX.product_usage"
email = "$PREFIX.email"
call = "$PREFIX.call"
deal = "$PREFIX.deal"

[kafka.output_topics]
health_scores = "$PREFIX.rapport-health"
churn_alerts = "$PREFIX.rapport-alerts"
dlq = "$PREFIX.rapport-dlq"
TOML
say "producing to $PREFIX.* ($FORMAT)"
(cd "$WORK" && RAPPORT_KAFKA__BROKERS="$BOOTSTRAP" "$RAPPORT" produce --config "$CFG" --input "$WORK/events.ndjson" \
  --format "$FORMAT" >&2 2> "$WORK/produce.log") || { tail -n 5 "$WORK/produce.log" >&2; die "rapport produce failed"; }

consume() { # topic count file
  tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" --topic "$1" --from-beginning \
    --max-messages "$2" --timeout-ms 60000 --command-property isolation.level=read_committed \
    --command-property "group.id=$PREFIX-reader-$RANDOM" > "$3" 2>/dev/null || true
}

FAILED=0
for g in $GUARANTEES; do
  app="$PREFIX-$g"
  GROUPS_MADE+=("$app")
  topic "$PREFIX.$g.health"
  topic "$PREFIX.$g.alerts"
  say "peer, $g"
  if ! "$HERE/run.sh" run --bootstrap "$BOOTSTRAP" --application-id "$app" \
      --product-usage-topic "$PREFIX.product_usage" --email-topic "$PREFIX.email" --call-topic "$PREFIX.call" \
      --deal-topic "$PREFIX.deal" --health-topic "$PREFIX.$g.health" --alerts-topic "$PREFIX.$g.alerts" \
      --guarantee "$g" --state-dir "$WORK/state-$g" --expect "$RECORDS" > "$WORK/peer-$g.json" 2> "$WORK/peer-$g.log"; then
    tail -n 5 "$WORK/peer-$g.log" >&2
    say "the peer failed under $g (log: $WORK/peer-$g.log)"
    KEEP=1
    FAILED=1
    continue
  fi
  line="$(cat "$WORK/peer-$g.json")"
  printf '%s %s\n' "$g" "$line"
  counts="$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["alerts"], r["health"])' "$line")"
  consume "$PREFIX.$g.alerts" "${counts% *}" "$WORK/peer-$g-alerts.ndjson"
  consume "$PREFIX.$g.health" "${counts#* }" "$WORK/peer-$g-health.ndjson"
  if ! python3 - "$WORK/rapport-out" "$WORK/peer-$g-alerts.ndjson" "$WORK/peer-$g-health.ndjson" "$g" <<'PY'
import collections, json, sys

out, peer_alerts, peer_health, g = sys.argv[1:5]

def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]

ra, pa = load(out + "/churn_alerts.ndjson"), load(peer_alerts)
rh, ph = load(out + "/health_scores.ndjson"), load(peer_health)
canon = lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False)
key = lambda a: (a["account_id"], a["rule"], a["opened_at"], a["status"], a["alert_id"])

ok = True
rk, pk = collections.Counter(map(key, ra)), collections.Counter(map(key, pa))
print(f"{g}: alerts rapport={len(ra)} peer={len(pa)}; (account, rule, opened_at, status, alert_id) "
      f"only in rapport={sum((rk - pk).values())} only in peer={sum((pk - rk).values())}")
for k in list((rk - pk).elements())[:5]:
    print("  only in rapport:", k)
for k in list((pk - rk).elements())[:5]:
    print("  only in peer:", k)
ok &= rk == pk
full = collections.Counter(map(canon, ra)) == collections.Counter(map(canon, pa))
print(f"{g}: alert records identical (every field): {full}")
ok &= full

rhc, phc = collections.Counter(map(canon, rh)), collections.Counter(map(canon, ph))
print(f"{g}: health changes rapport={len(rh)} peer={len(ph)}; only in rapport={sum((rhc - phc).values())} "
      f"only in peer={sum((phc - rhc).values())}")
ok &= rhc == phc
last = lambda rs: {r["account_id"]: (r["score"], r["band"], r["change_id"]) for r in rs}
rl, pl = last(rh), last(ph)
diff = sorted(a for a in rl.keys() | pl.keys() if rl.get(a) != pl.get(a))
print(f"{g}: accounts scored rapport={len(rl)} peer={len(pl)}; final score differs for {len(diff)}")
for a in diff[:5]:
    print(f"  {a}: rapport={rl.get(a)} peer={pl.get(a)}")
ok &= not diff
print(f"{g}: {'MATCH' if ok else 'MISMATCH'}")
sys.exit(0 if ok else 1)
PY
  then
    FAILED=1
    KEEP=1
  fi
done
exit "$FAILED"
