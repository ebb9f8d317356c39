#!/usr/bin/env bash
# What distributed tracing costs: purchases/s and CPU per purchase with tracing off, on at
# ratio 0.01 and on at ratio 1, side by side in one run, in interleaved rounds, against an OTLP
# sink that throws the spans away (otlp-sink, so the collector's own cost is not measured).
# Optionally a build without tracing (BASELINE_BIN) as a fourth column: "off" must stay within
# 1 % of it.
#
# For each round and setting: a private redis-server, ticketd on it selling EVENTS events, the
# load tester sending REQUESTS purchases over CONNECTIONS connections; ticketd's CPU time (utime
# + stime from /proc/<pid>/stat) over the load is divided by the answers: steadier than req/s on
# a shared machine.
#
# Usage: bash loadtest/tracing.sh
#   TICKETD_BIN     the build to measure (default: a release build of this tree)
#   BASELINE_BIN    a build without tracing to compare with (optional)
#   LOADTEST_BIN    the load tester, SINK_BIN the OTLP sink (default: release builds)
#   CONNECTIONS=256  EVENTS=4  REQUESTS=200000  ROUNDS=3
#   RATIOS="0.01 1"  the sampling ratios measured beside "off" (0 measures tracing on with
#                    nothing sampled: what the on-but-unsampled path costs)
# Prints one markdown row per round and setting, then the medians and their ratios to "off".
# Needs redis-server, redis-cli, curl, jq.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-256}
EVENTS=${EVENTS:-4}
REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
RATIOS=${RATIOS:-"0.01 1"}

. loadtest/common.sh
need tracing.sh redis-server redis-cli curl jq
binaries
SINK=${SINK_BIN:-${CARGO_TARGET_DIR:-target}/release/otlp-sink}
[ -x "$SINK" ] || cargo build --release -q -p loadtest --bin otlp-sink

WORK=$(mktemp -d -t ticketd-tracing.XXXXXX)
REDIS_PID=
TICKETD_PID=
SINK_PID=
cleanup() {
  stop_pid "$TICKETD_PID"
  stop_pid "$REDIS_PID"
  stop_pid "$SINK_PID"
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SINK_PORT=$(free_port)
"$SINK" "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!

per_event=$(((REQUESTS / EVENTS) * 2))
events_flag=$(seq -s, -f "e%g=$per_event" 1 "$EVENTS")
events_list=$(seq -s, -f "e%g" 1 "$EVENTS")
TICK=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

RESULTS="$WORK/results.txt"
: >"$RESULTS"

measure() { # label binary ratio ("" for tracing off)
  local label=$1 bin=$2 ratio=$3 dir port
  dir=$(mktemp -d -p "$WORK")
  start_redis "$dir"
  port=$(free_port)
  local env=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
  if [ -n "$ratio" ]; then
    env+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_TRACES_SAMPLER_ARG="$ratio")
  fi
  "${env[@]}" TICKETD_JOURNAL_DIR="$dir/journal" "$bin" --store redis --redis-url "$REDIS_URL" \
    --events "$events_flag" --stats-interval 0 --listen "127.0.0.1:$port" >"$dir/ticketd.log" 2>&1 &
  TICKETD_PID=$!
  for _ in $(seq 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" ||
    { cat "$dir/ticketd.log" >&2; echo "ticketd not ready" >&2; exit 1; }
  local before after
  before=$(cpu_ticks "$TICKETD_PID")
  "$LOADTEST" --url "http://127.0.0.1:$port" -c "$CONNECTIONS" -n "$REQUESTS" \
    --events "$events_list" --json >"$dir/report.json" 2>"$dir/loadtest.err" || true
  after=$(cpu_ticks "$TICKETD_PID")
  local dropped
  dropped=$(curl -sf "http://127.0.0.1:$port/metrics?format=json" | jq '.tracing.spans_dropped')
  jq -r --arg name "$label" --arg cpu "$((after - before))" --arg tick "$TICK" --arg dropped "$dropped" \
    '"\($name) \(.requests_per_second | floor) \(($cpu | tonumber) * 1000000 / ($tick | tonumber) / .answers * 10 | floor / 10) \(.latency_us.p99 / 1000) \(.answers - (.status["200"] // 0)) \($dropped)"' \
    "$dir/report.json" >>"$RESULTS" 2>/dev/null ||
    { echo "$label: no report" >&2; cat "$dir/loadtest.err" >&2; }
  tail -1 "$RESULTS" | awk '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}'
  stop_pid "$TICKETD_PID"
  TICKETD_PID=
  stop_pid "$REDIS_PID"
  REDIS_PID=
}

echo "$(nproc) cores, $CONNECTIONS connections, $REQUESTS purchases per run, $EVENTS events"
echo
echo "| setting | purchases/s | CPU µs/purchase | p99 (ms) | not 200 | spans dropped |"
echo "|---|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  [ -n "${BASELINE_BIN:-}" ] && measure no-tracing-build "$BASELINE_BIN" ""
  measure off "$TICKETD" ""
  for ratio in $RATIOS; do
    measure "ratio-$ratio" "$TICKETD" "$ratio"
  done
done

echo
echo "Medians over $ROUNDS rounds, and their ratio to \"off\":"
echo
echo "| setting | purchases/s | vs off | CPU µs/purchase | vs off |"
echo "|---|---:|---:|---:|---:|"
median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
off_rps=$(awk '$1=="off"{print $2}' "$RESULTS" | median)
off_cpu=$(awk '$1=="off"{print $3}' "$RESULTS" | median)
for label in $(awk '!seen[$1]++ {print $1}' "$RESULTS"); do
  rps=$(awk -v l="$label" '$1==l{print $2}' "$RESULTS" | median)
  cpu=$(awk -v l="$label" '$1==l{print $3}' "$RESULTS" | median)
  awk -v l="$label" -v r="$rps" -v c="$cpu" -v r0="$off_rps" -v c0="$off_cpu" \
    'BEGIN {printf "| %s | %d | %.3f | %.1f | %.3f |\n", l, r, r / r0, c, c / c0}'
done
