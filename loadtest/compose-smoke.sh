#!/usr/bin/env bash
# The compose stack end to end, where a Docker engine runs: builds and starts it (redis, seed,
# ticketd, prometheus) under a project name of its own, waits for ticketd, buys a ticket,
# checks that the ticket is in the Redis ledger, that /metrics counts it and that Prometheus
# scrapes ticketd, then tears the stack down with its volumes. Exit 0 when all of that held.
#
# Usage: bash loadtest/compose-smoke.sh
#   TICKETD_PORT (default 3000), PROMETHEUS_PORT (default 9090): the host ports compose binds
#   COMPOSE="docker compose" (or docker-compose)
# Needs docker with a running engine, curl and jq. CI has no engine: .ci/check-deploy validates
# the same files statically there.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE=${COMPOSE:-"docker compose"}
PROJECT=ticketd-smoke-$$
TICKETD_PORT=${TICKETD_PORT:-3000}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
export TICKETD_PORT PROMETHEUS_PORT TICKETD_EVENTS=smoke=100

for tool in docker curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "compose-smoke.sh: $tool is needed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "compose-smoke.sh: no Docker engine answers (docker info)" >&2; exit 1; }

compose() { $COMPOSE -p "$PROJECT" "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "compose-smoke.sh: FAILED: $*" >&2; compose logs --no-color --tail 50 >&2 || true; exit 1; }

echo "building and starting the stack ($PROJECT)..."
compose up -d --build --wait redis ticketd prometheus || fail "the stack did not come up healthy"

base=http://127.0.0.1:$TICKETD_PORT
for _ in $(seq 120); do
  curl -fsS -o /dev/null "$base/readyz" 2>/dev/null && break
  sleep 0.5
done
curl -fsS -o /dev/null "$base/readyz" || fail "ticketd is not ready"

answer=$(curl -sS -X POST "$base/buy/smoke") || fail "no answer to POST /buy/smoke"
ticket=$(jq -r '.ticket // empty' <<<"$answer")
[ -n "$ticket" ] || fail "no ticket: $answer"
echo "bought $ticket"

record=$(compose exec -T redis redis-cli HGET 'event:{smoke}:sold' "$ticket" | tr -d '\r')
[ -n "$record" ] || fail "$ticket is not in the Redis ledger"
echo "ledger: $ticket -> $record"

sold=$(curl -fsS "$base/metrics" | sed -n 's/^ticketd_tickets_sold_total{event="smoke"} //p')
[ "$sold" = 1 ] || fail "/metrics counts $sold tickets sold, not 1"

prom=http://127.0.0.1:$PROMETHEUS_PORT
for _ in $(seq 60); do
  up=$(curl -fsS "$prom/api/v1/query?query=up%7Bjob%3D%22ticketd%22%7D" 2>/dev/null |
    jq -r '.data.result[0].value[1] // empty' 2>/dev/null || true)
  [ "$up" = 1 ] && break
  sleep 1
done
[ "${up:-}" = 1 ] || fail "Prometheus does not scrape ticketd (up != 1)"
echo "prometheus scrapes ticketd"
echo "compose-smoke.sh: OK"
