# Shared by bench.sh, callgrind.sh and ab.sh (sourced, not run): the tools they need, the
# binaries they measure, free ports, a private redis-server, and stopping what they started.

need() { # script tool...: exits with a message naming the first tool missing from PATH
  local script=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$script: $tool is needed" >&2; exit 1; }
  done
}

binaries() { # sets TICKETD and LOADTEST: $TICKETD_BIN and $LOADTEST_BIN, or a fresh release build
  local target=${CARGO_TARGET_DIR:-target}
  if [ -z "${TICKETD_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
    echo "building ticketd and loadtest (release)..." >&2
    cargo build --release -q -p ticketd -p loadtest
  fi
  TICKETD=${TICKETD_BIN:-$target/release/ticketd}
  LOADTEST=${LOADTEST_BIN:-$target/release/loadtest}
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # a port below the ephemeral range that nothing listens on (never 6379)
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 10000))
    if [ "$p" != 6379 ] && port_is_free "$p"; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2
  return 1
}

stop_pid() { # pid: TERM, up to 5 s, then KILL
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

start_redis() { # dir [redis-server option...]: a private redis-server on a free port, its data
  # and log in dir; sets REDIS_PORT, REDIS_PID and REDIS_URL (stop it with stop_pid)
  local dir=$1
  shift
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    "$@" >"$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 ||
    { echo "redis-server did not start:" >&2; cat "$dir/redis.log" >&2; exit 1; }
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
}
