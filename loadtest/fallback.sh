#!/usr/bin/env bash
# Fallback sales during a Redis outage: requests/s and latency of sales from the reserves, with
# the journal (every sale synced to disk, in groups, before its buyer hears of it) against a
# build without it, in one sitting.
#
# For each binary and round: a private redis-server, ticketd with EVENTS events and a reserve of
# 5000 tickets per event (a 10-minute lease, so the reserve stays sellable), Redis paused with
# SIGSTOP once every reserve is claimed, one purchase per event to open the breaker, then the
# load tester sends REQUESTS purchases (fewer than the reserves hold) and must get 200 for each.
#
# Usage: bash loadtest/fallback.sh
#   TICKETD_BIN     the build to measure (default: a release build of this tree)
#   BASELINE_BIN    a build to compare with (for example one without the journal); optional
#   CONNECTIONS="256 2000"  EVENTS=20  REQUESTS=90000  ROUNDS=1
#   LOADTEST_BIN    the load tester (default: a release build)
# Prints one markdown row per binary, round and connection count. Needs redis-server, curl, jq.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-"256 2000"}
EVENTS=${EVENTS:-20}
REQUESTS=${REQUESTS:-90000}
ROUNDS=${ROUNDS:-1}
RESERVE=5000

. loadtest/common.sh
need fallback.sh redis-server redis-cli curl jq
binaries

WORK=$(mktemp -d -t ticketd-fallback.XXXXXX)
REDIS_PID=
TICKETD_PID=
cleanup() {
  [ -n "$REDIS_PID" ] && kill -CONT "$REDIS_PID" 2>/dev/null || true
  stop_pid "$TICKETD_PID"
  stop_pid "$REDIS_PID"
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

events_flag=$(seq -s, -f "e%g=40000" 1 "$EVENTS")
events_list=$(seq -s, -f "e%g" 1 "$EVENTS")

measure() { # label binary connections
  local label=$1 bin=$2 conns=$3 dir port
  dir=$(mktemp -d -p "$WORK")
  start_redis "$dir"
  port=$(free_port)
  TICKETD_JOURNAL_DIR="$dir/journal" "$bin" --store redis --redis-url "$REDIS_URL" \
    --events "$events_flag" --fallback-reserve "$RESERVE" --reserve-lease 10m \
    --stats-interval 0 --listen "127.0.0.1:$port" >"$dir/ticketd.log" 2>&1 &
  TICKETD_PID=$!
  local want=$((EVENTS * RESERVE)) got=0
  for _ in $(seq 600); do
    got=$(curl -sf "http://127.0.0.1:$port/metrics?format=json" |
      jq '[.fallback.reserved[]] | add // 0' 2>/dev/null || echo 0)
    [ "$got" = "$want" ] && break
    sleep 0.1
  done
  [ "$got" = "$want" ] || { cat "$dir/ticketd.log" >&2; echo "reserves not claimed ($got)" >&2; exit 1; }
  kill -STOP "$REDIS_PID"
  for e in $(seq 1 "$EVENTS"); do curl -s -o /dev/null -X POST "http://127.0.0.1:$port/buy/e$e"; done
  "$LOADTEST" --url "http://127.0.0.1:$port" -c "$conns" -n "$REQUESTS" --events "$events_list" \
    --json >"$dir/report.json" 2>"$dir/loadtest.err" || true
  jq -r --arg name "$label" --arg c "$conns" \
    '"| \($name) | \($c) | \(.answers) | \(.requests_per_second | floor) | \(.latency_us.p50 / 1000) | \(.latency_us.p99 / 1000) | \(.status["200"] // 0) | \(.answers - (.status["200"] // 0)) |"' \
    "$dir/report.json" 2>/dev/null || { echo "| $label | $conns | (no report) |"; cat "$dir/loadtest.err" >&2; }
  kill -CONT "$REDIS_PID"
  stop_pid "$TICKETD_PID"
  TICKETD_PID=
  stop_pid "$REDIS_PID"
  REDIS_PID=
}

echo "| build | connections | answers | requests/s | p50 (ms) | p99 (ms) | 200 | other |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  for conns in $CONNECTIONS; do
    measure "journal ($TICKETD)" "$TICKETD" "$conns"
    if [ -n "${BASELINE_BIN:-}" ]; then
      measure "baseline ($BASELINE_BIN)" "$BASELINE_BIN" "$conns"
    fi
  done
done
