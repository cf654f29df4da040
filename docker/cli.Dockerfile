# syntax=docker/dockerfile:1.7
# The `t2v` CLI (crate t2v-producer): submit, --wait, batch, watch, cancel, topics. No GPU,
# no libtorch: a Debian slim runtime with the OpenSSL that librdkafka links, as non-root.
#
#   docker build -f docker/cli.Dockerfile -t t2v-cli:dev .
#   docker run --rm t2v-cli:dev --help

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
    cargo build --release --locked -p t2v-producer --bin t2v \
 && install -D -m 0755 /target/release/t2v /out/usr/local/bin/t2v

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libzstd1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 t2v \
 && useradd --uid 10001 --gid t2v --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin t2v
COPY --from=build /out/usr/local/bin/t2v /usr/local/bin/t2v
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/t2v"]
CMD ["--help"]
