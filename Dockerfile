# syntax=docker/dockerfile:1
# The Ganglion image: ganglion (all-in-one and tools), ganglion-main, ganglion-sync and
# ganglion-federation-sender.
#
#   docker build -t ganglion:0.1.0 .
#
# Default command: `ganglion serve --config /etc/ganglion/ganglion.toml` (the documented
# defaults file is baked in there; mount your own over it). Kubernetes runs
# `ganglion-main serve ...`, `ganglion-sync serve ...` and
# `ganglion-federation-sender serve ...` instead (deploy/k8s, docs/deploy-kubernetes.md).
# Needs BuildKit (the default builder of Docker 23 and later) for the cache mounts.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and the target dir are cache mounts (kept between builds, not in the
# layer), so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ganglion-server --bins \
    && mkdir -p /out \
    && cp target/release/ganglion target/release/ganglion-main target/release/ganglion-sync \
        target/release/ganglion-federation-sender /out/

FROM debian:bookworm-slim
# ca-certificates follows Debian's security updates; pinning its version would only
# break the build when Debian ships a new one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ganglion \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ganglion \
    && mkdir -p /data /etc/ganglion \
    && chown 10001:10001 /data
COPY --from=builder /out/ganglion /out/ganglion-main /out/ganglion-sync \
    /out/ganglion-federation-sender /usr/local/bin/
COPY config/ganglion.example.toml /etc/ganglion/ganglion.toml
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /data
# 8008: client API; 9090: metrics, /health, /ready; 8090: main's internal listener;
# 8448: main's federation listener (TLS). Which of them a process opens is configuration
# (GANGLION_LISTENERS__*).
EXPOSE 8008 9090 8090 8448
CMD ["ganglion", "serve", "--config", "/etc/ganglion/ganglion.toml"]
