#!/usr/bin/env bash
# ticketd's benchmark in one command: what a purchase costs next to the cheapest request.
#
# Builds ticketd and loadtest in release mode, starts a private redis-server (a free port in a
# temporary directory, never 6379) and measures, with the same load tester, at each connection
# count:
#   (1) GET /healthz                       (the HTTP floor: no store touched)
#   (2) POST /buy/:id with --store redis   (the real purchase: the Lua script, in batches)
#   (3) POST /buy/:id with --store memory
# Every measurement gets a freshly started ticketd (and a flushed private Redis, seeded by
# `ticketd seed` beforehand) with $TICKETS tickets, so an event never sells out while measured;
# the peak RSS column is that ticketd's VmHWM. It prints a markdown table; the ratio column is
# the row's requests/s over the healthz row's at the same connection count (in the same round),
# and 2xx/s counts only successful answers (a server shedding load with fast 503s has a high
# requests/s but a low 2xx/s). Exit status:
# 0 when every row is clean (no sold_out, no other error, the load tester's checks passed),
# 1 otherwise.
#
# Usage: bash loadtest/bench.sh
#   DURATION=10s           measured time per row
#   ROUNDS=1               measure every row this many times, interleaved (round 1 of every row,
#                          then round 2, ...), and report each row's median round: on a shared,
#                          noisy machine a slow minute then hits every row alike
#   CONNECTIONS="256 2000 10000"
#   CASES="healthz buy-redis buy-memory"   a subset re-measures only those rows
#   TICKETS=2000000        tickets of the event per row
#   CARGO_TARGET_DIR       honoured (default: target)
#   TICKETD_BIN, LOADTEST_BIN   measure these binaries instead of building (before/after runs)
#   Any TICKETD_* setting (for example TICKETD_REDIS_POOL_SIZE) reaches the server.
# Needs redis-server, curl and jq. Client and server share this machine's cores, so the
# numbers are a comparison between rows, not the server's capacity on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-"256 2000 10000"}
CASES=${CASES:-"healthz buy-redis buy-memory"}
ROUNDS=${ROUNDS:-1}
TICKETS=${TICKETS:-2000000}
EVENT=1

. loadtest/common.sh
need bench.sh redis-server redis-cli curl jq
binaries

WORK=$(mktemp -d -t ticketd-bench.XXXXXX)
REDIS_PID=
TICKETD_PID=

cleanup() {
  stop_pid "$TICKETD_PID"
  stop_pid "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/redis"
start_redis "$WORK/redis" --maxclients 1000

start_ticketd() { # store: starts a fresh ticketd on a free port; sets PORT and TICKETD_PID
  local store=$1
  PORT=$(free_port)
  local args=(--store "$store" --events "$EVENT=$TICKETS" --listen "127.0.0.1:$PORT")
  if [ "$store" = redis ]; then
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    args+=(--redis-url "$REDIS_URL")
    # Seed in a separate process, so the server's peak RSS is that of serving (seeding millions
    # of tickets at start-up has a peak of its own). If that fails, the server seeds at start.
    "$TICKETD" seed --redis-url "$REDIS_URL" --events "$EVENT=$TICKETS" >"$WORK/seed.log" 2>&1 ||
      echo "bench.sh: ticketd seed failed; the server seeds at start-up (its RSS includes it)" >&2
  fi
  # A journal of its own (TICKETD_JOURNAL_DIR: builds before the journal ignore it).
  TICKETD_JOURNAL_DIR="$WORK/journal-$PORT" "$TICKETD" "${args[@]}" >"$WORK/ticketd-$store-$PORT.log" 2>&1 &
  TICKETD_PID=$!
  for _ in $(seq 300); do
    if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
      # Ready when the event is seeded and visible.
      local remaining
      remaining=$(curl -sf "http://127.0.0.1:$PORT/metrics?format=json" | jq -r ".events[\"$EVENT\"].remaining // 0" 2>/dev/null || echo 0)
      [ "${remaining:-0}" -gt 0 ] && return 0
    fi
    kill -0 "$TICKETD_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: ticketd --store $store did not become ready:" >&2
  tail -20 "$WORK"/ticketd-"$store"-"$PORT".log >&2
  exit 1
}

declare -A RPS OKPS P50 P99 RSS SOLDOUT OTHER CHECK
FAILED=0

measure() { # case connections round
  local case=$1 conns=$2 round=$3 store extra=() rc=0
  case $case in
    healthz) store=memory; extra=(--method GET --path /healthz) ;;
    buy-redis) store=redis; extra=(--events "$EVENT" --redis-url "$REDIS_URL") ;;
    buy-memory) store=memory; extra=(--events "$EVENT") ;;
    *) echo "bench.sh: unknown case $case (healthz, buy-redis, buy-memory)" >&2; exit 1 ;;
  esac
  start_ticketd "$store"
  echo "measuring $case at $conns connections for $DURATION, round $round of $ROUNDS (ticketd --store $store on :$PORT)..." >&2
  "$LOADTEST" --url "http://127.0.0.1:$PORT" --connections "$conns" --duration "$DURATION" \
    --json --no-progress "${extra[@]}" >"$WORK/out.json" 2>"$WORK/err.txt" || rc=$?
  local key="$case/$conns/$round"
  RSS[$key]=$(awk '/^VmHWM:/ {printf "%.0f MiB", $2 / 1024}' "/proc/$TICKETD_PID/status")
  if [ "$store" = redis ]; then # how many purchases shared one script call, on average
    curl -sf "http://127.0.0.1:$PORT/metrics?format=json" | jq -r --arg at "$case/$conns" '.totals.sold as $s | .redis.purchase_batches as $b
        | select($b > 0) | "  \($at): \($s) sales in \($b) script calls, \($s / $b * 10 | round / 10) per call"' >&2 || true
  fi
  stop_pid "$TICKETD_PID"
  TICKETD_PID=
  if ! jq -e . "$WORK/out.json" >/dev/null 2>&1; then
    echo "bench.sh: loadtest failed (exit $rc):" >&2
    cat "$WORK/err.txt" >&2
    RPS[$key]=0; OKPS[$key]=0; P50[$key]=-; P99[$key]=-; SOLDOUT[$key]=-; OTHER[$key]=-; CHECK[$key]="exit $rc"
    FAILED=1
    return
  fi
  local j=$WORK/out.json
  RPS[$key]=$(jq -r '.requests_per_second | floor' "$j")
  OKPS[$key]=$(jq -r '([.status | to_entries[] | select(.key | startswith("2")) | .value] | add // 0)
      / .elapsed_seconds | floor' "$j")
  P50[$key]=$(jq -r '.latency_us.p50 / 1000 | . * 100 | round / 100' "$j")
  P99[$key]=$(jq -r '.latency_us.p99 / 1000 | . * 100 | round / 100' "$j")
  SOLDOUT[$key]=$(jq -r '.errors.sold_out // 0' "$j")
  # Every answer that is neither a 2xx nor sold_out, plus connection errors and timeouts.
  OTHER[$key]=$(jq -r '([.status | to_entries[] | select((.key | tonumber) >= 300) | .value] | add // 0)
      - (.errors.sold_out // 0) + .connection_errors + .timeouts' "$j")
  if [ "$rc" = 0 ]; then CHECK[$key]=ok; else CHECK[$key]="exit $rc"; FAILED=1; fi
  if [ "${SOLDOUT[$key]}" != 0 ] || [ "${OTHER[$key]}" != 0 ]; then FAILED=1; fi
  if [ "${OTHER[$key]}" != 0 ]; then
    echo "  non-sold_out errors at $key: $(jq -c '{status, errors, connection_error_kinds, timeouts}' "$j")" >&2
  fi
  jq -r '.warnings[]' "$j" | sed "s|^|  warning at $key: |" >&2
  jq -r '.failures[]' "$j" | sed "s|^|  FAILED at $key: |" >&2
}

for round in $(seq "$ROUNDS"); do
  for conns in $CONNECTIONS; do
    for case in $CASES; do
      measure "$case" "$conns" "$round"
    done
  done
done

median_round() { # case connections: the round whose requests/s is the median of the rounds
  local case=$1 conns=$2 r
  for r in $(seq "$ROUNDS"); do echo "${RPS[$case/$conns/$r]} $r"; done |
    sort -n | awk '{ rounds[NR] = $2 } END { print rounds[int((NR + 1) / 2)] }'
}

echo
echo "ticketd benchmark: $(nproc) cores shared by client and server, $DURATION per row, $TICKETS tickets per row, median of $ROUNDS interleaved round(s)"
echo
echo "| case | connections | requests/s | 2xx/s | p50 (ms) | p99 (ms) | server peak RSS | vs healthz | sold_out | other errors | checks |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for case in $CASES; do
  for conns in $CONNECTIONS; do
    key="$case/$conns/$(median_round "$case" "$conns")"
    # The ratio: the median over rounds of (this row / healthz at the same connection count),
    # each pair measured in the same round.
    ratio=-
    if [ -n "${RPS[healthz/$conns/1]:-}" ]; then
      ratio=$(for r in $(seq "$ROUNDS"); do
        awk -v a="${RPS[$case/$conns/$r]}" -v b="${RPS[healthz/$conns/$r]}" 'BEGIN { if (b > 0) printf "%.4f\n", a / b; else print 0 }'
      done | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] }')
    fi
    # Over all rounds: the peak RSS, every error, and the checks.
    rss=0 soldout=0 other=0 checks=ok
    for r in $(seq "$ROUNDS"); do
      k="$case/$conns/$r"
      m=${RSS[$k]%% MiB}
      [ "${m:-0}" -gt "$rss" ] && rss=$m
      [ "${SOLDOUT[$k]}" = - ] || soldout=$((soldout + SOLDOUT[$k]))
      [ "${OTHER[$k]}" = - ] || other=$((other + OTHER[$k]))
      [ "${CHECK[$k]}" = ok ] || checks=${CHECK[$k]}
    done
    label=$case
    case $case in
      healthz) label="GET /healthz" ;;
      buy-redis) label="POST /buy/$EVENT (redis)" ;;
      buy-memory) label="POST /buy/$EVENT (memory)" ;;
    esac
    echo "| $label | $conns | ${RPS[$key]} | ${OKPS[$key]} | ${P50[$key]} | ${P99[$key]} | $rss MiB | $ratio | $soldout | $other | $checks |"
  done
done
if [ "$FAILED" != 0 ]; then
  echo
  echo "Some rows are not clean (sold_out, other errors or a failed check): see above." >&2
  exit 1
fi
