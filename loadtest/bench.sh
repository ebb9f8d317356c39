#!/usr/bin/env bash
# ticketd's benchmark in one command: what a purchase costs next to the cheapest request, next to
# a bare HTTP responder, and next to the idiomatic axum + redis-rs implementation of it.
#
# Builds ticketd and loadtest (with its comparison binaries bare and peer) in release mode,
# starts a private redis-server (a free port in a temporary directory, never 6379) and measures,
# with the same client, at each connection count, the rows of CASES:
#   healthz     GET /healthz of ticketd --store memory      (ticketd's HTTP floor: no store)
#   buy-redis   POST /buy/:id of ticketd --store redis      (the real purchase: Lua, in batches)
#   buy-memory  POST /buy/:id of ticketd --store memory
#   bare        POST /buy/:id of loadtest's `bare`: a bare hyper responder with a fixed sale
#               body, no store (the baseline issue 16 states its targets against)
#   peer        POST /buy/:id of loadtest's `peer`: axum + redis-rs, one script call per request
#               through a ConnectionManager, on the same Redis and pool layout as buy-redis
# Every measurement gets a freshly started server (and a flushed private Redis, seeded by
# `ticketd seed` beforehand) with $TICKETS tickets, so an event never sells out while measured;
# the peak RSS column is that server's VmHWM. It prints a markdown table; the "vs" columns are
# the row's requests/s over the named row's at the same connection count (each pair measured in
# the same round), 2xx/s counts only successful answers (a server shedding load with fast 503s
# has a high requests/s but a low 2xx/s), and the CPU columns are the user + system CPU time
# (/proc/PID/stat) the server, and Redis for the rows that use it, spent in the measured window
# divided by the requests answered in it; "CPU vs bare" is (server + Redis) CPU per request over
# bare's. Exit status: 0 when every row is clean (no sold_out, no other error, the load tester's
# checks passed), 1 otherwise.
#
# Usage: bash loadtest/bench.sh
#   DURATION=10s           measured time per row
#   ROUNDS=1               measure every row this many times, interleaved (round 1 of every row,
#                          then round 2, ...), and report each row's median round: on a shared,
#                          noisy machine a slow minute then hits every row alike
#   CONNECTIONS="256 2000 10000"
#   CASES="healthz buy-redis buy-memory"   any of: healthz buy-redis buy-memory bare peer
#   CLIENT=loadtest        the project's load tester (checks every ticket and the ledger), or
#                          CLIENT=wrk: wrk -t2 -cN -dD -s loadtest/wrk/buy.lua (healthz: plain
#                          wrk GET); wrk checks nothing but the status codes
#   TICKETS=2000000        tickets per row (of the one event; with EVENTS, split evenly over them)
#   EVENTS=1               events per row (ids 1..EVENTS), each request buying one at random
#                          (uniformly): EVENTS=10000 measures whether a purchase stays flat in
#                          the number of events (catalogue, keys, batches of fewer purchases)
#   CARGO_TARGET_DIR       honoured (default: target)
#   TICKETD_BIN, LOADTEST_BIN   measure these binaries instead of building (before/after runs);
#                          bare and peer are taken from LOADTEST_BIN's directory, or from
#                          BARE_BIN and PEER_BIN
#   Any TICKETD_* setting (for example TICKETD_REDIS_POOL_SIZE) reaches the server.
# Needs redis-server, curl and jq (and wrk with CLIENT=wrk: apt-get install -y wrk). Client,
# servers and Redis share this machine's cores, so the numbers are a comparison between rows,
# not the server's capacity on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-"256 2000 10000"}
CASES=${CASES:-"healthz buy-redis buy-memory"}
CLIENT=${CLIENT:-loadtest}
ROUNDS=${ROUNDS:-1}
TICKETS=${TICKETS:-2000000}
EVENTS=${EVENTS:-1}
EVENT=1
[ "$EVENTS" -ge 1 ] 2>/dev/null || { echo "bench.sh: EVENTS must be a number of events, 1 or more" >&2; exit 1; }
PER_EVENT=$((TICKETS / EVENTS))
[ "$PER_EVENT" -ge 1 ] || { echo "bench.sh: TICKETS=$TICKETS is fewer than EVENTS=$EVENTS" >&2; exit 1; }
# Event specs for ticketd (ID=TICKETS,...) and ids for the clients (ID,...): 1..EVENTS.
SPECS=$(seq -s, -f "%.0f=$PER_EVENT" 1 "$EVENTS")
IDS=$(seq -s, 1 "$EVENTS")

. loadtest/common.sh
need bench.sh redis-server redis-cli curl jq
for case in $CASES; do
  case $case in
    healthz | buy-redis | buy-memory | bare | peer) ;;
    *) echo "bench.sh: unknown case $case (healthz, buy-redis, buy-memory, bare, peer)" >&2; exit 1 ;;
  esac
done
case $CLIENT in
  loadtest) CHECKED=ok ;;
  wrk)
    command -v wrk >/dev/null 2>&1 || { echo "bench.sh: CLIENT=wrk needs wrk (apt-get install -y wrk)" >&2; exit 1; }
    CHECKED="none (wrk)" ;;
  *) echo "bench.sh: unknown CLIENT $CLIENT (loadtest, wrk)" >&2; exit 1 ;;
esac
binaries
BARE=${BARE_BIN:-$(dirname "$LOADTEST")/bare}
PEER=${PEER_BIN:-$(dirname "$LOADTEST")/peer}
HZ=$(getconf CLK_TCK)
# 10,000 connections: wrk (and the servers) need more descriptors than the usual soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d -t ticketd-bench.XXXXXX)
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

seed_redis() { # a flushed private Redis holding events 1..$EVENTS with $TICKETS tickets in all
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  # Seeded in a separate process, so the server's peak RSS is that of serving (seeding millions
  # of tickets at start-up has a peak of its own).
  "$TICKETD" seed --redis-url "$REDIS_URL" --events "$SPECS" >"$WORK/seed.log" 2>&1
}

start_ticketd() { # store: starts a fresh ticketd on a free port; sets PORT and SERVER_PID
  local store=$1
  PORT=$(free_port)
  local args=(--store "$store" --events "$SPECS" --listen "127.0.0.1:$PORT")
  if [ "$store" = redis ]; then
    args+=(--redis-url "$REDIS_URL")
    # If seeding fails, the server seeds at start (and its RSS includes it).
    seed_redis || echo "bench.sh: ticketd seed failed; the server seeds at start-up (its RSS includes it)" >&2
  fi
  # A journal of its own (TICKETD_JOURNAL_DIR: builds before the journal ignore it).
  TICKETD_JOURNAL_DIR="$WORK/journal-$PORT" "$TICKETD" "${args[@]}" >"$WORK/server-$PORT.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
      # Ready when the event is seeded and visible.
      local remaining
      remaining=$(curl -sf "http://127.0.0.1:$PORT/metrics?format=json" | jq -r ".events[\"$EVENT\"].remaining // 0" 2>/dev/null || echo 0)
      [ "${remaining:-0}" -gt 0 ] && return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: ticketd --store $store did not become ready:" >&2
  tail -20 "$WORK/server-$PORT.log" >&2
  exit 1
}

start_other() { # binary [arg...]: starts bare or peer on a free port; sets PORT and SERVER_PID
  local bin=$1
  shift
  PORT=$(free_port)
  "$bin" --listen "127.0.0.1:$PORT" "$@" >"$WORK/server-$PORT.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    port_is_free "$PORT" || return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: $bin did not start listening:" >&2
  tail -20 "$WORK/server-$PORT.log" >&2
  exit 1
}

start_server() { # case
  case $1 in
    healthz | buy-memory) start_ticketd memory ;;
    buy-redis) start_ticketd redis ;;
    bare) start_other "$BARE" ;;
    peer)
      seed_redis || { echo "bench.sh: ticketd seed failed:" >&2; cat "$WORK/seed.log" >&2; exit 1; }
      start_other "$PEER" --redis-url "$REDIS_URL" ;;
  esac
}

cpu_seconds() { # pid: user + system CPU seconds so far (all threads), from /proc/PID/stat
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  # Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  echo "${stat##*) }" | awk -v hz="$HZ" '{ printf "%.2f\n", ($12 + $13) / hz }'
}

per_request() { # seconds answers: microseconds per answer
  awk -v s="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print "-" }'
}

to_ms() { # a wrk latency (812.00us, 1.23ms, 1.05s, 2.00m) in milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

declare -A RPS OKPS P50 P99 RSS SCPU RCPU TCPU SOLDOUT OTHER CHECK
FAILED=0

run_loadtest() { # case connections key: one measurement with the project's load tester
  local case=$1 conns=$2 key=$3 extra=() rc=0
  case $case in
    healthz) extra=(--method GET --path /healthz) ;;
    buy-redis | peer) extra=(--events "$IDS" --redis-url "$REDIS_URL") ;;
    buy-memory) extra=(--events "$IDS") ;;
    # The same fixed ticket in every answer: not a purchase, so no ticket check.
    bare) extra=(--path "/buy/$EVENT") ;;
  esac
  extra+=(--cpu-of "$SERVER_PID")
  [ "$USES_REDIS" = 1 ] && extra+=(--cpu-of "$REDIS_PID")
  "$LOADTEST" --url "http://127.0.0.1:$PORT" --connections "$conns" --duration "$DURATION" \
    --json --no-progress "${extra[@]}" >"$WORK/out.json" 2>"$WORK/err.txt" || rc=$?
  if ! jq -e . "$WORK/out.json" >/dev/null 2>&1; then
    echo "bench.sh: loadtest failed (exit $rc):" >&2
    cat "$WORK/err.txt" >&2
    RPS[$key]=0; OKPS[$key]=0; P50[$key]=-; P99[$key]=-; SOLDOUT[$key]=-; OTHER[$key]=-; CHECK[$key]="exit $rc"
    SCPU[$key]=-; RCPU[$key]=-; TCPU[$key]=-
    FAILED=1
    return
  fi
  local j=$WORK/out.json answers
  answers=$(jq -r '.answers' "$j")
  RPS[$key]=$(jq -r '.requests_per_second | floor' "$j")
  OKPS[$key]=$(jq -r '([.status | to_entries[] | select(.key | startswith("2")) | .value] | add // 0)
      / .elapsed_seconds | floor' "$j")
  P50[$key]=$(jq -r '.latency_us.p50 / 1000 | . * 100 | round / 100' "$j")
  P99[$key]=$(jq -r '.latency_us.p99 / 1000 | . * 100 | round / 100' "$j")
  SOLDOUT[$key]=$(jq -r '.errors.sold_out // 0' "$j")
  # Every answer that is neither a 2xx nor sold_out, plus connection errors and timeouts.
  OTHER[$key]=$(jq -r '([.status | to_entries[] | select((.key | tonumber) >= 300) | .value] | add // 0)
      - (.errors.sold_out // 0) + .connection_errors + .timeouts' "$j")
  local server redis=0
  server=$(jq -r --argjson p "$SERVER_PID" '[.cpu[] | select(.pid == $p) | .seconds] | add // 0' "$j")
  SCPU[$key]=$(per_request "$server" "$answers")
  RCPU[$key]=-
  if [ "$USES_REDIS" = 1 ]; then
    redis=$(jq -r --argjson p "$REDIS_PID" '[.cpu[] | select(.pid == $p) | .seconds] | add // 0' "$j")
    RCPU[$key]=$(per_request "$redis" "$answers")
  fi
  TCPU[$key]=$(per_request "$(awk -v a="$server" -v b="$redis" 'BEGIN { print a + b }')" "$answers")
  if [ "$rc" = 0 ]; then CHECK[$key]=ok; else CHECK[$key]="exit $rc"; FAILED=1; fi
  if [ "${OTHER[$key]}" != 0 ]; then
    echo "  non-sold_out errors at $key: $(jq -c '{status, errors, connection_error_kinds, timeouts}' "$j")" >&2
  fi
  jq -r '.warnings[]' "$j" | sed "s|^|  warning at $key: |" >&2
  jq -r '.failures[]' "$j" | sed "s|^|  FAILED at $key: |" >&2
}

run_wrk() { # case connections key: one measurement with wrk
  local case=$1 conns=$2 key=$3 rc=0 out=$WORK/wrk.txt
  local s0 r0=0 s1 r1=0
  s0=$(cpu_seconds "$SERVER_PID")
  [ "$USES_REDIS" = 1 ] && r0=$(cpu_seconds "$REDIS_PID")
  if [ "$case" = healthz ]; then
    # buy.lua POSTs; the health check is a plain GET.
    wrk -t2 -c"$conns" -d"$DURATION" --timeout 10s --latency "http://127.0.0.1:$PORT/healthz" >"$out" 2>&1 || rc=$?
  else
    local events=()
    # One event: the static request (no Lua per request); several: a random one per request.
    [ "$EVENTS" -gt 1 ] && events=(-- "$IDS")
    wrk -t2 -c"$conns" -d"$DURATION" --timeout 10s -s loadtest/wrk/buy.lua "http://127.0.0.1:$PORT/buy/$EVENT" "${events[@]}" >"$out" 2>&1 || rc=$?
  fi
  s1=$(cpu_seconds "$SERVER_PID")
  [ "$USES_REDIS" = 1 ] && r1=$(cpu_seconds "$REDIS_PID")
  local rps answers ok sold_out non2xx errors
  rps=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
  if [ -z "$rps" ] || [ "$rc" != 0 ]; then
    echo "bench.sh: wrk failed (exit $rc):" >&2
    cat "$out" >&2
    RPS[$key]=0; OKPS[$key]=0; P50[$key]=-; P99[$key]=-; SOLDOUT[$key]=-; OTHER[$key]=-; CHECK[$key]="exit $rc"
    SCPU[$key]=-; RCPU[$key]=-; TCPU[$key]=-
    FAILED=1
    return
  fi
  # Socket errors: connect, read, write, timeout (buy.lua's line, or wrk's own).
  errors=$(awk '/socket errors: connect/ || /Socket errors: connect/ {
      s = $0; sub(/.*[Ss]ocket errors: /, "", s); gsub(/[a-z,]/, "", s); n = split(s, f, " ")
      for (i = 1; i <= n; i++) t += f[i] } END { print t + 0 }' "$out")
  if [ "$case" = healthz ]; then
    answers=$(awk '/requests in/ { print $1 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    non2xx=${non2xx:-0}
    ok=$((answers - non2xx))
    sold_out=0
    P50[$key]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99[$key]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  else
    answers=$(awk '/^answers: / { gsub(",", "", $2); print $2 }' "$out")
    non2xx=$(awk '/^answers: / { gsub(",", "", $4); print $4 }' "$out")
    ok=$(awk '/^answers by status:/ { for (i = 4; i < NF; i += 2) { c = $i; sub(":", "", c); if (c >= 200 && c < 300) t += $(i + 1) } } END { print t + 0 }' "$out")
    sold_out=$(awk '/^answers by status:/ { for (i = 4; i < NF; i += 2) if ($i == "409:") t += $(i + 1) } END { print t + 0 }' "$out")
    P50[$key]=$(awk '/^latency: p50/ { sub("ms", "", $3); print $3 }' "$out")
    P99[$key]=$(awk '/^latency: p50/ { sub("ms", "", $5); print $5 }' "$out")
  fi
  RPS[$key]=$rps
  OKPS[$key]=$(awk -v r="$rps" -v ok="$ok" -v n="$answers" 'BEGIN { if (n > 0) printf "%d", r * ok / n; else print 0 }')
  SOLDOUT[$key]=$sold_out
  OTHER[$key]=$((non2xx - sold_out + errors))
  SCPU[$key]=$(per_request "$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')" "$answers")
  RCPU[$key]=-
  [ "$USES_REDIS" = 1 ] && RCPU[$key]=$(per_request "$(awk -v a="$r0" -v b="$r1" 'BEGIN { print b - a }')" "$answers")
  TCPU[$key]=$(per_request "$(awk -v a="$s0" -v b="$s1" -v c="$r0" -v d="$r1" 'BEGIN { print b - a + d - c }')" "$answers")
  CHECK[$key]=$CHECKED
  if [ "${OTHER[$key]}" != 0 ]; then
    echo "  non-sold_out errors at $key: $(grep -E '^answers|[Ss]ocket errors|Non-2xx' "$out" | tr '\n' ' ')" >&2
  fi
}

measure() { # case connections round
  local case=$1 conns=$2 round=$3
  local key="$case/$conns/$round"
  USES_REDIS=0
  case $case in buy-redis | peer) USES_REDIS=1 ;; esac
  start_server "$case"
  echo "measuring $case at $conns connections with $CLIENT for $DURATION, round $round of $ROUNDS (on :$PORT)..." >&2
  if [ "$CLIENT" = wrk ]; then
    run_wrk "$case" "$conns" "$key"
  else
    run_loadtest "$case" "$conns" "$key"
  fi
  RSS[$key]=$(awk '/^VmHWM:/ {printf "%.0f MiB", $2 / 1024}' "/proc/$SERVER_PID/status")
  if [ "$case" = buy-redis ]; then # how many purchases shared one script call, on average
    curl -sf "http://127.0.0.1:$PORT/metrics?format=json" | jq -r --arg at "$case/$conns" '.totals.sold as $s | .redis.purchase_batches as $b
        | select($b > 0) | "  \($at): \($s) sales in \($b) script calls, \($s / $b * 10 | round / 10) per call"' >&2 || true
  fi
  stop_pid "$SERVER_PID"
  SERVER_PID=
  if [ "${SOLDOUT[$key]}" != 0 ] || [ "${OTHER[$key]}" != 0 ]; then FAILED=1; fi
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
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

ratio() { # array case base connections: the median over rounds of (case / base), each pair
  # measured in the same round; - when the base row was not measured
  local -n values=$1
  local case=$2 base=$3 conns=$4 r
  [ -n "${values[$base/$conns/1]:-}" ] || { echo -; return; }
  for r in $(seq "$ROUNDS"); do
    awk -v a="${values[$case/$conns/$r]}" -v b="${values[$base/$conns/$r]}" \
      'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.4f\n", a / b; else print "-" }'
  done | grep -v '^-$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", v[int((NR + 1) / 2)]; else print "-" }'
}

echo
echo "ticketd benchmark: $(nproc) cores shared by client, servers and Redis; client $CLIENT, $DURATION per row, $TICKETS tickets per row over $EVENTS event(s), median of $ROUNDS interleaved round(s); load average before: $LOAD_BEFORE"
echo
echo "| case | connections | requests/s | 2xx/s | p50 (ms) | p99 (ms) | server peak RSS | server CPU µs/req | Redis CPU µs/req | vs healthz | vs bare | vs peer | CPU vs bare | sold_out | other errors | checks |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for case in $CASES; do
  for conns in $CONNECTIONS; do
    key="$case/$conns/$(median_round "$case" "$conns")"
    # Over all rounds: the peak RSS, every error, and the checks.
    rss=0 soldout=0 other=0 checks=$CHECKED
    for r in $(seq "$ROUNDS"); do
      k="$case/$conns/$r"
      m=${RSS[$k]%% MiB}
      [ "${m:-0}" -gt "$rss" ] && rss=$m
      [ "${SOLDOUT[$k]}" = - ] || soldout=$((soldout + SOLDOUT[$k]))
      [ "${OTHER[$k]}" = - ] || other=$((other + OTHER[$k]))
      [ "${CHECK[$k]}" = "$CHECKED" ] || checks=${CHECK[$k]}
    done
    label=$case
    path=/buy/$EVENT
    [ "$EVENTS" -gt 1 ] && path="/buy/{1..$EVENTS}"
    case $case in
      healthz) label="GET /healthz" ;;
      buy-redis) label="POST $path (redis)" ;;
      buy-memory) label="POST $path (memory)" ;;
      bare) label="POST $path (bare hyper)" ;;
      peer) label="POST $path (axum + redis-rs)" ;;
    esac
    echo "| $label | $conns | ${RPS[$key]} | ${OKPS[$key]} | ${P50[$key]} | ${P99[$key]} | $rss MiB | ${SCPU[$key]} | ${RCPU[$key]} | $(ratio RPS "$case" healthz "$conns") | $(ratio RPS "$case" bare "$conns") | $(ratio RPS "$case" peer "$conns") | $(ratio TCPU "$case" bare "$conns") | $soldout | $other | $checks |"
  done
done
if [ "$FAILED" != 0 ]; then
  echo
  echo "Some rows are not clean (sold_out, other errors or a failed check): see above." >&2
  exit 1
fi
