#!/usr/bin/env bash
# Purchases on a Redis Cluster against one Redis, in one sitting: requests/s, Redis CPU µs per
# purchase (primaries and replicas apart), and ticketd CPU µs per purchase (from /proc).
#
# For each round: one private redis-server, then a loopback cluster of six (three primaries with
# a replica each, formed with redis-cli --cluster create), both durable (appendonly yes,
# appendfsync always). ticketd sells EVENTS events of 200,000 tickets; on the cluster they
# spread over the three primaries by their hash slots, and every round of sales waits for a
# replica (WAIT, --redis-replica-acks 1; with ACKS0=1 also a run at 0, to isolate what WAIT
# costs). The load tester runs DURATION at each connection count.
#
# Usage: bash loadtest/cluster.sh
#   CONNECTIONS="256 2000"  EVENTS=30  DURATION=8s  ROUNDS=1  ACKS0=1
#   TICKETD_BIN / LOADTEST_BIN   the builds to measure (default: a release build of this tree)
# Prints one markdown row per setup, round and connection count. Needs redis-server, redis-cli,
# curl, jq. Everything runs on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-"256 2000"}
EVENTS=${EVENTS:-30}
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-1}
ACKS0=${ACKS0:-1}
DURABLE=(--appendonly yes --appendfsync always)

. loadtest/common.sh
need cluster.sh redis-server redis-cli curl jq
binaries

WORK=$(mktemp -d -t ticketd-cluster.XXXXXX)
PIDS=()
TICKETD_PID=
cleanup() {
  stop_pid "$TICKETD_PID"
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

events_flag=$(seq -s, -f "e%g=200000" 1 "$EVENTS")
events_list=$(seq -s, -f "e%g" 1 "$EVENTS")

cluster_port() { # a free port whose cluster bus port (+10000) is free too
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 2000))
    port_is_free "$p" && port_is_free $((p + 10000)) && { echo "$p"; return 0; }
  done
  return 1
}

start_cluster() { # dir: six nodes, formed; sets NODES (ports) and URL
  local dir=$1 p i
  NODES=()
  for i in 1 2 3 4 5 6; do
    p=$(cluster_port)
    mkdir -p "$dir/n$i"
    redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/n$i" --save "" "${DURABLE[@]}" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --cluster-require-full-coverage no --repl-diskless-sync-delay 0 \
      >"$dir/n$i/redis.log" 2>&1 &
    PIDS+=($!)
    NODES+=("$p")
  done
  for p in "${NODES[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${NODES[@]}") --cluster-replicas 1 \
    --cluster-yes >"$dir/create.log" 2>&1
  for _ in $(seq 200); do
    local ok=1
    for p in "${NODES[@]}"; do
      redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0
      [ "$(redis-cli -p "$p" info replication | grep -c 'master_link_status:down')" = 0 ] || ok=0
    done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  URL="redis-cluster://127.0.0.1:${NODES[0]}?node=127.0.0.1:${NODES[1]}&node=127.0.0.1:${NODES[2]}"
}

redis_cpu_us() { # role port...: summed used_cpu_user + used_cpu_sys of the nodes with that role, µs
  local role=$1 total=0 p cpu
  shift
  for p in "$@"; do
    redis-cli -p "$p" role | head -1 | grep -qx "$role" || continue
    cpu=$(redis-cli -p "$p" info cpu | tr -d '\r' |
      awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%d", s * 1e6}')
    total=$((total + cpu))
  done
  echo "$total"
}

proc_cpu_us() { # pid: utime + stime in µs
  awk -v hz="$(getconf CLK_TCK)" '{printf "%d", ($14 + $15) * 1e6 / hz}' "/proc/$1/stat"
}

measure() { # label url conns extra-flags...; nodes in $MEASURED
  local label=$1 url=$2 conns=$3 dir port
  shift 3
  dir=$(mktemp -d -p "$WORK")
  port=$(free_port)
  "$TICKETD" --store redis --redis-url "$url" --events "$events_flag" --stats-interval 0 \
    --journal-dir "$dir/journal" --listen "127.0.0.1:$port" "$@" >"$dir/ticketd.log" 2>&1 &
  TICKETD_PID=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  local p0 r0 t0 p1 r1 t1
  p0=$(redis_cpu_us master "${MEASURED[@]}")
  r0=$(redis_cpu_us slave "${MEASURED[@]}")
  t0=$(proc_cpu_us "$TICKETD_PID")
  "$LOADTEST" --url "http://127.0.0.1:$port" -c "$conns" -d "$DURATION" --events "$events_list" \
    --json >"$dir/report.json" 2>"$dir/loadtest.err" || true
  p1=$(redis_cpu_us master "${MEASURED[@]}")
  r1=$(redis_cpu_us slave "${MEASURED[@]}")
  t1=$(proc_cpu_us "$TICKETD_PID")
  jq -r --arg name "$label" --arg c "$conns" --argjson p $((p1 - p0)) --argjson r $((r1 - r0)) \
    --argjson t $((t1 - t0)) \
    '(.status["200"] // 0) as $sold
     | "| \($name) | \($c) | \(.requests_per_second | floor) | \($sold) | \(.answers - $sold) | \(if $sold > 0 then ($p / $sold * 100 | floor) / 100 else "-" end) | \(if $sold > 0 then ($r / $sold * 100 | floor) / 100 else "-" end) | \(if $sold > 0 then ($t / $sold * 10 | floor) / 10 else "-" end) |"' \
    "$dir/report.json" 2>/dev/null || { echo "| $label | $conns | (no report) |"; cat "$dir/loadtest.err" >&2; }
  stop_pid "$TICKETD_PID"
  TICKETD_PID=
}

echo "| setup | connections | requests/s | sold | other | Redis primaries µs/purchase | replicas µs/purchase | ticketd µs/purchase |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  for conns in $CONNECTIONS; do
    dir=$(mktemp -d -p "$WORK")
    start_redis "$dir" "${DURABLE[@]}"
    MEASURED=("$REDIS_PORT")
    measure "one Redis" "$REDIS_URL" "$conns"
    stop_pid "$REDIS_PID"

    dir=$(mktemp -d -p "$WORK")
    start_cluster "$dir"
    MEASURED=("${NODES[@]}")
    measure "cluster, 3 primaries, WAIT 1" "$URL" "$conns"
    if [ "$ACKS0" = 1 ]; then
      measure "cluster, 3 primaries, no WAIT" "$URL" "$conns" --redis-replica-acks 0
    fi
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    PIDS=()
  done
done
