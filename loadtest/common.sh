# Shared by bench.sh and callgrind.sh (sourced, not run): the tools they need and the binaries
# they measure.

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

free_port() { # a port the kernel has free now (never 6379: that one is never handed out free)
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_redis() { # dir: a private redis-server on a free port, data in dir; sets REDIS_PORT,
  # REDIS_PID and REDIS_URL (stop it with: redis-cli -p "$REDIS_PORT" shutdown nosave)
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$1" \
    >"$1/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 ||
    { echo "redis-server did not start:" >&2; cat "$1/redis.log" >&2; exit 1; }
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
}
