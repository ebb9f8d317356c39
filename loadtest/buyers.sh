#!/usr/bin/env bash
# What knowing the buyer costs: anonymous purchases beside authenticated ones, in one run.
#
# Starts a private redis-server (a free port in a temporary directory, never 6379) and, per row,
# a fresh ticketd on it with a freshly seeded event, and measures with the project's load tester
# at $CONNECTIONS connections:
#   anonymous   POST /buy/:id, no authentication (the path every earlier benchmark measured)
#   jwt         every request carries an HS256 token of one of $BUYERS buyers (--jwt-secret)
#   jwt-key     the same, plus a fresh Idempotency-Key per request (looked up, bound to its event
#               and recorded by the purchase script, in the answers' time buckets)
#   jwt-key-limit  the same with --max-per-buyer (high enough never to refuse: what the count
#               costs, not what refusals save)
#   jwt-nocache, jwt-key-nocache  jwt and jwt-key with --jwt-cache-size 0: every token
#               verified on every request (what the cache of verified tokens saves)
# Rows are measured $ROUNDS times, interleaved, and each row's median round is reported, with
# ticketd's and Redis's CPU per purchase (from /proc, over the measured window) and the ratio
# of requests/s and of CPU per purchase to the anonymous row of the same round. The load
# tester checks every answer (no ticket twice, every ticket in the ledger).
#
# Usage: bash loadtest/buyers.sh
#   CONNECTIONS=2000  DURATION=8s  ROUNDS=3  BUYERS=10000  TICKETS=2000000
#   ROWS="anonymous jwt jwt-key jwt-key-limit"
#   TICKETD_BIN, LOADTEST_BIN   measure these binaries instead of building
# Needs redis-server, redis-cli, curl and jq. Client, server and Redis share this machine's
# cores: the ratios are the result, not the absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-2000}
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-3}
BUYERS=${BUYERS:-10000}
TICKETS=${TICKETS:-2000000}
ROWS=${ROWS:-"anonymous jwt jwt-key jwt-key-limit"}
EVENT=1
SECRET=buyers-bench-secret-0123456789abcdef

. loadtest/common.sh
need buyers.sh redis-server redis-cli curl jq
binaries
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t ticketd-buyers.XXXXXX)
REDIS_PID=
SERVER_PID=
cleanup() {
  stop_pid "$SERVER_PID"
  stop_pid "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/redis"
start_redis "$WORK/redis" --maxclients 1000

start_row() { # row: a flushed, seeded Redis and a fresh ticketd set up for the row
  local row=$1 args=()
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  "$TICKETD" seed --redis-url "$REDIS_URL" --events "$EVENT=$TICKETS" >"$WORK/seed.log" 2>&1
  case $row in
    anonymous) ;;
    jwt | jwt-key) args=(--jwt-secret "$SECRET") ;;
    jwt-nocache | jwt-key-nocache) args=(--jwt-secret "$SECRET" --jwt-cache-size 0) ;;
    jwt-key-limit) args=(--jwt-secret "$SECRET" --max-per-buyer 1000000) ;;
    *) echo "buyers.sh: unknown row $row" >&2; exit 1 ;;
  esac
  PORT=$(free_port)
  TICKETD_JOURNAL_DIR="$WORK/journal-$PORT" "$TICKETD" --store redis --redis-url "$REDIS_URL" \
    --events "$EVENT=$TICKETS" --listen "127.0.0.1:$PORT" --stats-interval 0 "${args[@]}" \
    >"$WORK/server-$PORT.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "buyers.sh: ticketd did not become ready:" >&2
  tail -20 "$WORK/server-$PORT.log" >&2
  exit 1
}

declare -A RPS SCPU RCPU ERRS
FAILED=0

measure() { # row round
  local row=$1 round=$2 extra=() rc=0 key="$1/$2"
  start_row "$row"
  case $row in
    jwt | jwt-nocache) extra=(--jwt-secret "$SECRET" --buyers "$BUYERS") ;;
    jwt-key | jwt-key-nocache | jwt-key-limit) extra=(--jwt-secret "$SECRET" --buyers "$BUYERS" --idempotency-keys) ;;
  esac
  echo "measuring $row, round $round of $ROUNDS, $CONNECTIONS connections for $DURATION..." >&2
  "$LOADTEST" --url "http://127.0.0.1:$PORT" --connections "$CONNECTIONS" --duration "$DURATION" \
    --events "$EVENT" --redis-url "$REDIS_URL" --json --no-progress \
    --cpu-of "$SERVER_PID" --cpu-of "$REDIS_PID" "${extra[@]}" >"$WORK/out.json" 2>"$WORK/err.txt" || rc=$?
  local server=$SERVER_PID
  stop_pid "$SERVER_PID"
  SERVER_PID=
  local j=$WORK/out.json
  if ! jq -e . "$j" >/dev/null 2>&1; then
    echo "buyers.sh: loadtest failed (exit $rc):" >&2
    cat "$WORK/err.txt" >&2
    exit 1
  fi
  [ "$rc" = 0 ] || { FAILED=1; jq -r '.failures[]' "$j" | sed "s|^|  FAILED at $key: |" >&2; }
  local answers
  answers=$(jq -r '.answers' "$j")
  RPS[$key]=$(jq -r '.requests_per_second | floor' "$j")
  local per='[.cpu[] | select(.pid == $p) | .seconds] | add // 0 | . * 1e6 / $n | . * 10 | round / 10'
  SCPU[$key]=$(jq -r --argjson n "$answers" --argjson p "$server" "$per" "$j")
  RCPU[$key]=$(jq -r --argjson n "$answers" --argjson p "$REDIS_PID" "$per" "$j")
  ERRS[$key]=$(jq -r '([.status | to_entries[] | select((.key | tonumber) >= 300) | .value] | add // 0)
      + .connection_errors + .timeouts' "$j")
}

for round in $(seq "$ROUNDS"); do
  for row in $ROWS; do
    measure "$row" "$round"
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo
echo "| row | requests/s | vs anonymous | ticketd CPU µs/purchase | Redis CPU µs/purchase | CPU vs anonymous | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for row in $ROWS; do
  rps=$(for r in $(seq "$ROUNDS"); do echo "${RPS[$row/$r]}"; done | median)
  scpu=$(for r in $(seq "$ROUNDS"); do echo "${SCPU[$row/$r]}"; done | median)
  rcpu=$(for r in $(seq "$ROUNDS"); do echo "${RCPU[$row/$r]}"; done | median)
  errs=$(for r in $(seq "$ROUNDS"); do echo "${ERRS[$row/$r]}"; done | median)
  # Ratios per round against the anonymous row of the same round, then their median.
  vs=$(for r in $(seq "$ROUNDS"); do
    awk -v a="${RPS[$row/$r]}" -v b="${RPS[anonymous/$r]:-0}" 'BEGIN { if (b > 0) printf "%.3f\n", a / b; else print 0 }'
  done | median)
  cvs=$(for r in $(seq "$ROUNDS"); do
    awk -v a="${SCPU[$row/$r]}" -v ra="${RCPU[$row/$r]}" -v b="${SCPU[anonymous/$r]:-0}" -v rb="${RCPU[anonymous/$r]:-0}" \
      'BEGIN { if (b + rb > 0) printf "%.3f\n", (a + ra) / (b + rb); else print 0 }'
  done | median)
  echo "| $row | $rps | $vs | $scpu | $rcpu | $cvs | $errs |"
done
echo
echo "($CONNECTIONS connections, $DURATION per row, median of $ROUNDS interleaved rounds, $BUYERS buyers; $(nproc) cores shared by client, server and Redis)"
exit "$FAILED"
