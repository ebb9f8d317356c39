#!/usr/bin/env bash
# Instructions per request of ticketd, counted by callgrind: a cost that does not move with the
# machine's load, so two builds can be compared on a shared, noisy machine.
#
# For each case it runs ticketd under `valgrind --tool=callgrind` twice, with N1 and N2 requests
# from the load tester, and prints (I(N2) - I(N1)) / (N2 - N1): start-up and shutdown cancel
# out. The Redis case uses a private redis-server (a free port in a temporary directory, never
# 6379) and also prints how many purchases shared one script call. Only ticketd is counted;
# Redis's own time per call is in `redis-cli info commandstats`.
#
# Usage: bash loadtest/callgrind.sh
#   CASES="healthz buy-memory buy-redis"   also buy-redis-jwt (an HS256 token of one of 1000
#         buyers on every request) and buy-redis-jwt-key (the same, plus a fresh Idempotency-Key)
#   CONNECTIONS=64    load tester connections (batches grow with them)
#   N1=5000 N2=25000  requests of the two runs
#   TICKETD_BIN, LOADTEST_BIN   count these binaries instead of building (before/after)
# Needs valgrind, redis-server, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-"healthz buy-memory buy-redis"}
CONNECTIONS=${CONNECTIONS:-64}
N1=${N1:-5000}
N2=${N2:-25000}

. loadtest/common.sh
need callgrind.sh valgrind redis-server redis-cli curl jq
binaries

WORK=$(mktemp -d -t ticketd-callgrind.XXXXXX)
REDIS_PID=
cleanup() {
  stop_pid "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis "$WORK"

count() { # case requests: instructions of one whole ticketd run serving that many requests
  local case=$1 n=$2 store=memory extra=(--events 1) serve=() port server
  local secret=callgrind-secret-0123456789abcdef
  case $case in
    healthz) extra=(--method GET --path /healthz) ;;
    buy-memory) ;;
    buy-redis) store=redis ;;
    buy-redis-jwt)
      store=redis serve=(--jwt-secret "$secret")
      extra+=(--jwt-secret "$secret" --buyers 1000) ;;
    buy-redis-jwt-key)
      store=redis serve=(--jwt-secret "$secret")
      extra+=(--jwt-secret "$secret" --buyers 1000 --idempotency-keys) ;;
    *) echo "callgrind.sh: unknown case $case" >&2; exit 1 ;;
  esac
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  if [ "$store" = redis ]; then
    "$TICKETD" seed --redis-url "$REDIS_URL" --events 1=1000000 >/dev/null
  fi
  port=$(free_port)
  TICKETD_JOURNAL_DIR="$WORK/journal" \
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$TICKETD" --store "$store" \
    --redis-url "$REDIS_URL" --events 1=1000000 --listen "127.0.0.1:$port" --stats-interval 0 \
    "${serve[@]}" >"$WORK/ticketd.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$LOADTEST" --url "http://127.0.0.1:$port" --connections "$CONNECTIONS" --requests "$n" \
    --no-progress --json "${extra[@]}" >"$WORK/out.json" 2>/dev/null
  if [ "$store" = redis ]; then
    curl -sf "http://127.0.0.1:$port/metrics?format=json" |
      jq -r '"\(.totals.sold) \(.redis.purchase_batches)"' >"$WORK/batches"
  fi
  # Not stop_pid: callgrind writes its counts on exit, however long that takes.
  kill -TERM "$server"
  wait "$server" 2>/dev/null || true
  grep -E '^(summary|totals):' "$WORK/cg.out" | head -1 | awk '{print $2}'
}

echo "| case | instructions per request | vs healthz |"
echo "|---|---:|---:|"
base=
for case in $CASES; do
  a=$(count "$case" "$N1")
  b=$(count "$case" "$N2")
  per=$(((b - a) / (N2 - N1)))
  [ "$case" = healthz ] && base=$per
  ratio=-
  [ -n "$base" ] && ratio=$(awk -v a="$per" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
  echo "| $case | $per | $ratio |"
  if [[ $case == buy-redis* ]]; then
    read -r sold calls <"$WORK/batches"
    if [ "$calls" != null ]; then
      echo "  $case: $sold sales in $calls script calls at $CONNECTIONS connections" >&2
    fi
  fi
done
