# token-sidecar container image, for linux/amd64 and linux/arm64.
#
#   docker build -t token-sidecar:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/token-sidecar:0.1.0 .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts and the platform
# arguments. The release workflow (.github/workflows/release.yml) builds both platforms.

# Build stage: the release profile from Cargo.toml (fat LTO, line tables kept for backtraces),
# with the lock file as committed. Only the binary's sources are copied: .dockerignore keeps
# target/, tests/, examples/ and the Kubernetes files out of the context.
#
# The stage runs on the build machine's own architecture ($BUILDPLATFORM) and compiles for the
# image's ($TARGETARCH), with Debian's cross C compiler when the two differ (ring and mimalloc
# have C parts): a multi-platform build emulates no compiler (a fat-LTO build under QEMU takes
# hours). The binary links glibc dynamically, like a native build.
FROM --platform=$BUILDPLATFORM rust:1-bookworm AS builder
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# /target.env: the Rust target, the GNU triple of its C toolchain, and the cargo and cc
# variables that name that toolchain. For another architecture than the build machine's: its
# cross compiler and C library (Debian's, versions from the base image's release) and Rust's
# standard library for it.
# hadolint ignore=DL3008
RUN case "$TARGETARCH" in \
      amd64) gnu=x86_64-linux-gnu deb=amd64 ;; \
      arm64) gnu=aarch64-linux-gnu deb=arm64 ;; \
      *) echo "unsupported architecture '$TARGETARCH': linux/amd64 and linux/arm64 are" >&2; exit 1 ;; \
    esac \
 && rust_target="${gnu%%-*}-unknown-linux-gnu" \
 && if [ "$(dpkg --print-architecture)" != "$deb" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends "gcc-${gnu//_/-}" "libc6-dev-$deb-cross" \
      && rm -rf /var/lib/apt/lists/* \
      && rustup target add "$rust_target"; \
    fi \
 && target_var="${rust_target//-/_}" \
 && { echo "RUST_TARGET=$rust_target"; \
      echo "GNU_TRIPLE=$gnu"; \
      echo "export CARGO_TARGET_${target_var^^}_LINKER=$gnu-gcc"; \
      echo "export CC_$target_var=$gnu-gcc AR_$target_var=$gnu-ar"; } > /target.env \
 && cat /target.env
COPY Cargo.toml Cargo.lock ./
# Build settings for the C part of the allocator (mimalloc); see the file.
COPY .cargo ./.cargo
# The test doubles' crate (a member of the workspace): cargo needs it to resolve the
# workspace, but the build below has no features, so the binary holds none of it.
COPY testkit/Cargo.toml ./testkit/Cargo.toml
COPY testkit/src ./testkit/src
COPY src ./src
# No features: the shipped binary has no `dev` demo and no test double. The line tables are
# compressed (36 MB -> 15 MB) rather than stripped, so panics and backtraces keep their
# file:line. The target directory's cache is one per architecture.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=token-sidecar-target-$TARGETARCH \
    source /target.env \
 && cargo build --release --locked --target "$RUST_TARGET" --bin token-sidecar \
 && install -D -m 0755 "target/$RUST_TARGET/release/token-sidecar" /out/token-sidecar \
 && "$GNU_TRIPLE-objcopy" --compress-debug-sections=zlib /out/token-sidecar

# Final stage: glibc, libgcc and CA certificates; no shell, no package manager.
# The binary links glibc dynamically, hence the "cc" flavour of distroless. Pulled for the
# image's platform.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/token-sidecar /usr/local/bin/token-sidecar
# 65532 is distroless' "nonroot", numeric so that Kubernetes can verify runAsNonRoot.
USER 65532:65532
# 8080: the proxy listener (127.0.0.1 by default: the app in the same pod talks to it).
# 9090: admin: /healthz, /readyz, /metrics, /token-info.
EXPOSE 8080 9090
# With no subcommand the binary serves (`run`); pass flags or `--config FILE` as arguments.
ENTRYPOINT ["/usr/local/bin/token-sidecar"]
