#!/usr/bin/env bash
# What many events cost when nobody buys: one idle ticketd with EVENTS events, and the CPU it
# and its Redis spend on the upkeep alone (lease renewals, reserve top-ups, the /metrics
# snapshot), read from /proc, with Redis's INFO commandstats of the same window.
#
# Starts a private redis-server (a free port in a temporary directory, never 6379; AOF with
# appendfsync always, as deployed), seeds events 1..EVENTS of TICKETS each, starts ticketd on
# it, waits WARMUP for the first rounds of upkeep (the reserves' first top-ups), then measures
# WINDOW. Prints one line (ticketd and Redis CPU as % of a core, ticketd's RSS) and the
# commands Redis ran, busiest first.
#
# Usage: bash loadtest/idle.sh
#   EVENTS=10000   events
#   TICKETS=200    tickets per event
#   STORE=redis    or memory (no Redis at all: the floor to compare with)
#   WARMUP=6       seconds before the window
#   WINDOW=10      seconds measured
#   TICKETD_BIN    the binary to measure (default: a release build)
#   Any TICKETD_* setting reaches the server (TICKETD_METRICS_REFRESH=1h leaves the snapshot
#   out, for example).
# Needs redis-server, redis-cli and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-10000}
TICKETS=${TICKETS:-200}
STORE=${STORE:-redis}
WARMUP=${WARMUP:-6}
WINDOW=${WINDOW:-10}

. loadtest/common.sh
need idle.sh redis-server redis-cli curl
LOADTEST_BIN=${LOADTEST_BIN:-unused} binaries # builds ticketd unless TICKETD_BIN is given

WORK=$(mktemp -d -t ticketd-idle.XXXXXX)
SERVER_PID=
cleanup() {
  stop_pid "$SERVER_PID"
  stop_pid "${REDIS_PID:-}"
  rm -rf "$WORK"
}
trap cleanup EXIT

SPECS=$(seq -s, -f "%.0f=$TICKETS" 1 "$EVENTS")
PORT=$(free_port)
if [ "$STORE" = redis ]; then
  start_redis "$WORK" --appendonly yes --appendfsync always
  "$TICKETD" seed --redis-url "$REDIS_URL" --events "$SPECS" >"$WORK/seed.log" 2>&1
  "$TICKETD" --redis-url "$REDIS_URL" --events "$SPECS" --listen "127.0.0.1:$PORT" \
    --journal-dir "$WORK/journal" >"$WORK/ticketd.log" 2>&1 &
else
  "$TICKETD" --store memory --events "$SPECS" --listen "127.0.0.1:$PORT" \
    >"$WORK/ticketd.log" 2>&1 &
fi
SERVER_PID=$!
for _ in $(seq 300); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "127.0.0.1:$PORT/healthz" >/dev/null ||
  { echo "ticketd did not start:" >&2; cat "$WORK/ticketd.log" >&2; exit 1; }
sleep "$WARMUP"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
t0=$(ticks "$SERVER_PID")
if [ "$STORE" = redis ]; then
  r0=$(ticks "$REDIS_PID")
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
fi
sleep "$WINDOW"
t1=$(ticks "$SERVER_PID")
rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$SERVER_PID/status")
pct() { awk -v d="$1" -v hz="$HZ" -v w="$WINDOW" 'BEGIN {printf "%.0f", d * 100 / hz / w}'; }
if [ "$STORE" = redis ]; then
  r1=$(ticks "$REDIS_PID")
  echo "idle, $EVENTS events of $TICKETS on Redis, ${WINDOW}s: ticketd $(pct $((t1 - t0)))% of a core, Redis $(pct $((r1 - r0)))%, ticketd RSS $rss MiB"
  redis-cli -p "$REDIS_PORT" info commandstats | grep '^cmdstat_' | sed 's/^cmdstat_//' |
    sort -t= -k3 -rn | cut -d, -f1-3
else
  echo "idle, $EVENTS events of $TICKETS in memory, ${WINDOW}s: ticketd $(pct $((t1 - t0)))% of a core, RSS $rss MiB"
fi
