# ticketd and its load tester in one small image.
#
#   docker build -t ticketd .
#   docker run --rm -p 3000:3000 -e REDIS_URL=redis://my-redis:6379 -e TICKETD_EVENTS=1=10000 ticketd
#   docker run --rm -e REDIS_URL=redis://my-redis:6379 ticketd seed --events 1=10000
#   docker run --rm --entrypoint loadtest ticketd --url http://ticketd:3000 --connections 2000 --duration 30s
#
# The build stage fetches and compiles the dependencies in a layer of their own (only the
# manifests and the lock file go into it), so editing the sources rebuilds ticketd and loadtest
# alone.

# Any Rust release at or above the crate's rust-version (1.89) builds it; `1` follows the newest.
ARG RUST_VERSION=1

############################################################################################
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /build

# 1. Dependencies only: the manifests, the lock file, and empty stand-ins for every target that
#    the manifests name (a [[bench]] whose file is missing is an error even in a release build).
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
COPY chaos/Cargo.toml chaos/Cargo.toml
RUN mkdir -p src benches loadtest/src chaos/src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > benches/auth.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && echo 'fn main() {}' > benches/journal.rs \
 && echo 'fn main() {}' > benches/metrics.rs \
 && echo 'fn main() {}' > benches/redis.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && echo 'fn main() {}' > chaos/src/main.rs \
 && : > chaos/src/lib.rs \
 && cargo build --locked --release --workspace --bin ticketd --bin loadtest \
 && rm -rf src benches loadtest/src chaos/src

# 2. The real sources. COPY keeps the files' own (older) modification times, which would let
#    cargo take the stand-ins' artefacts for up to date: touch them, then build.
COPY src src
COPY lua lua
COPY benches benches
COPY loadtest/src loadtest/src
# The fault-injection harness is a workspace member: its sources must be there, it is not built.
COPY chaos/src chaos/src
RUN find src lua benches loadtest/src chaos/src -type f -exec touch {} + \
 && cargo build --locked --release --workspace --bin ticketd --bin loadtest \
 && install -D -m 0755 target/release/ticketd /out/ticketd \
 && install -D -m 0755 target/release/loadtest /out/loadtest

############################################################################################
FROM debian:bookworm-slim AS runtime

# curl serves the HEALTHCHECK below, and nothing else. No TLS is compiled into ticketd (plain
# redis:// only), so no CA bundle is needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ticketd \
 && useradd --system --uid 10001 --gid ticketd --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ticketd \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/ticketd

COPY --from=build /out/ticketd /out/loadtest /usr/local/bin/

ENV TICKETD_LISTEN=0.0.0.0:3000
# The instance's identity and its journal of fallback sales: mount a volume here, one per
# instance, so that a restarted container is the same instance (README, When Redis fails).
ENV TICKETD_JOURNAL_DIR=/var/lib/ticketd
VOLUME /var/lib/ticketd

USER 10001:10001
EXPOSE 3000

# /healthz does no I/O: it says the process serves HTTP. The port follows TICKETD_LISTEN.
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
    CMD curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${TICKETD_LISTEN##*:}/healthz" || exit 1

# `ticketd` serves; `ticketd seed --events ...` seeds Redis and exits;
# `--entrypoint loadtest` runs the load tester.
ENTRYPOINT ["ticketd"]
