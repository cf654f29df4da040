# syntax=docker/dockerfile:1.7
# The HTTP gateway (crate t2v-gateway). No GPU, no libtorch: a Debian slim runtime with the
# OpenSSL that librdkafka links and CA certificates (JWKS over HTTPS, object storage, TLS to a
# managed PostgreSQL), as non-root. Configured only through T2V_GATEWAY_CONFIG and
# T2V_GATEWAY__* variables (helm/t2v-gateway sets them).
#
#   docker build -f docker/gateway.Dockerfile -t t2v-gateway:dev .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_TARGET_DIR=/target
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/target \
    cargo build --release --locked -p t2v-gateway --bin t2v-gateway \
 && install -D -m 0755 /target/release/t2v-gateway /out/usr/local/bin/t2v-gateway

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libzstd1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 t2v \
 && useradd --uid 10001 --gid t2v --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin t2v
COPY --from=build /out/usr/local/bin/t2v-gateway /usr/local/bin/t2v-gateway
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/t2v-gateway"]
