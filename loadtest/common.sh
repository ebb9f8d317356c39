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
