# etcdbr: the etcdbrctl sidecar, plus what its restore needs (etcd and etcdutl/etcdctl, pinned)
# and what the etcd container's entrypoint needs (sh, curl, scripts/etcd-bootstrap.sh), so that
# one image serves both containers of the StatefulSet.

ARG RUST_VERSION=1.89
ARG ETCD_VERSION=v3.5.17

# etcd's official image carries the binaries (distroless: copied out, not run)
FROM gcr.io/etcd-development/etcd:${ETCD_VERSION} AS etcd

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# protoc: etcd-client's build script compiles etcd's protobufs
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler=3.21.12-3+deb12u1 \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin etcdbrctl \
 && strip target/release/etcdbrctl

FROM debian:bookworm-slim
# curl for the bootstrap script; ca-certificates for object stores and TLS
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20250419~deb12u2 curl=7.88.1-10+deb12u15 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 etcdbr \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /var/etcd --shell /usr/sbin/nologin etcdbr
COPY --from=etcd /usr/local/bin/etcd /usr/local/bin/etcdctl /usr/local/bin/etcdutl /usr/local/bin/
COPY --from=build /src/target/release/etcdbrctl /usr/local/bin/etcdbrctl
COPY scripts/etcd-bootstrap.sh /usr/local/bin/etcd-bootstrap.sh
ENV HOME=/var/etcd
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/etcdbrctl"]
CMD ["server"]
