#!/usr/bin/env bash
# Before against after, on a noisy machine: two ticketd builds side by side on one private Redis,
# loaded in alternating short runs, so that whatever else the machine does hits both alike.
#
# Build A sells event 1 and build B event 2 of the same redis-server (a free port in a temporary
# directory, never 6379). Each round loads A, then B, with the same load tester; the rounds
# alternate which goes first. It prints requests/s per round and the mean of B over A.
#
# Usage: bash loadtest/ab.sh A_BINARY B_BINARY
#   CONNECTIONS=1   load tester connections
#   RUN=1s          length of one run
#   ROUNDS=10
#   LOADTEST_BIN    the load tester (default: a release build)
#   Any TICKETD_* setting reaches both servers.
# Needs redis-server, redis-cli, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# = 2 ] || { echo "usage: bash loadtest/ab.sh A_BINARY B_BINARY" >&2; exit 64; }
A_BIN=$1
B_BIN=$2
CONNECTIONS=${CONNECTIONS:-1}
RUN=${RUN:-1s}
ROUNDS=${ROUNDS:-10}

. loadtest/common.sh
need ab.sh redis-server redis-cli curl jq
TICKETD_BIN=$A_BIN binaries # builds the load tester unless LOADTEST_BIN is given

WORK=$(mktemp -d -t ticketd-ab.XXXXXX)
PIDS=()
REDIS_PID=
cleanup() {
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  stop_pid "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis "$WORK"
"$A_BIN" seed --redis-url "$REDIS_URL" --events 1=2000000,2=2000000 >/dev/null

start() { # binary event port: starts one server (in this shell, so cleanup stops it)
  # Each its own journal (TICKETD_JOURNAL_DIR: builds before the journal ignore it).
  TICKETD_JOURNAL_DIR="$WORK/journal-$3" \
  "$1" --store redis --redis-url "$REDIS_URL" --events "$2=2000000" \
    --listen "127.0.0.1:$3" >"$WORK/ticketd-$2.log" 2>&1 &
  PIDS+=($!)
}

wait_ready() { # port
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "ab.sh: ticketd on :$1 did not become ready" >&2
  exit 1
}

A_PORT=$(free_port)
B_PORT=$(free_port)
start "$A_BIN" 1 "$A_PORT"
start "$B_BIN" 2 "$B_PORT"
wait_ready "$A_PORT"
wait_ready "$B_PORT"

load() { # port event: requests/s of one run
  "$LOADTEST" --url "http://127.0.0.1:$1" --connections "$CONNECTIONS" --duration "$RUN" \
    --events "$2" --no-progress --json | jq '.requests_per_second | floor'
}

echo "A: $A_BIN"
echo "B: $B_BIN"
echo "$CONNECTIONS connection(s), $RUN per run, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    a=$(load "$A_PORT" 1)
    b=$(load "$B_PORT" 2)
  else
    b=$(load "$B_PORT" 2)
    a=$(load "$A_PORT" 1)
  fi
  echo "$a $b"
done | awk '{ a += $1; b += $2; print "round " NR ": A " $1 "/s, B " $2 "/s" }
  END { printf "mean: A %d/s, B %d/s, B/A %.3f\n", a / NR, b / NR, b / a }'
