# syntax=docker/dockerfile:1
#
# entra-db-proxy container image.
#
#   docker build -t entra-db-proxy:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Build stage: the official Rust image on Debian 12 (bookworm), so the binary links against the
# same glibc as the run stage. rustls uses aws-lc-rs, which compiles C (gcc is in the image) and
# may call cmake (not in the image, installed below). No OpenSSL is linked.
# Run stage: distroless "cc" (glibc, libgcc, CA certificates, tzdata; no shell, no package
# manager), as the non-root user 65532. The image exposes no port: every listener defaults to
# 127.0.0.1 and is chosen by flags (see docs/DEPLOYMENT.md).
#
# The layers that matter for rebuild time are BuildKit cache mounts (the crates.io registry and
# target/), so a source change recompiles only the changed crates. This needs BuildKit, the
# default builder since Docker 23.

ARG RUST_IMAGE=rust:1.94-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build

# cmake for aws-lc-sys. The version is whatever Debian 12 ships (3.25.1); the base image tag pins
# the Debian release, and pinning a Debian package revision breaks the build as soon as the
# archive publishes a point-release update, so DL3008 is ignored here on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# --locked: the build fails rather than silently updating Cargo.lock.
# The binary is copied out of the cached target/ because cache mounts are not part of the layer.
# The release profile keeps line tables (debug = 1, ~59 MB); the image gets a copy without them
# (~11 MB; symbol names, hence readable backtraces, stay). The full binary remains in this
# stage: docker build --target build ...
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin entra-db-proxy \
 && install -D -m 0755 target/release/entra-db-proxy /out/entra-db-proxy.debug \
 && objcopy --strip-debug /out/entra-db-proxy.debug /out/entra-db-proxy

FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="entra-db-proxy" \
      org.opencontainers.image.description="Local proxy that logs unmodified PostgreSQL (and CQL) clients in to Azure databases with Entra ID credentials" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=build /out/entra-db-proxy /usr/local/bin/entra-db-proxy

# 65532 is distroless' "nonroot" user. Numeric on purpose: Kubernetes' runAsNonRoot can only
# verify a numeric user (a user name makes the kubelet refuse to start the container).
USER 65532:65532

ENTRYPOINT ["/usr/local/bin/entra-db-proxy"]
