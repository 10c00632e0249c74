# token-sidecar container image.
#
#   docker build -t token-sidecar:0.1.0 .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# Build stage: the release profile from Cargo.toml (fat LTO, line tables kept for backtraces),
# with the lock file as committed. Only the binary's sources are copied: .dockerignore keeps
# target/, tests/, examples/ and the Kubernetes files out of the context.
FROM rust:1-bookworm AS builder
WORKDIR /src
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
# file:line.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin token-sidecar \
 && install -D -m 0755 target/release/token-sidecar /out/token-sidecar \
 && objcopy --compress-debug-sections=zlib /out/token-sidecar

# Final stage: glibc, libgcc and CA certificates; no shell, no package manager.
# The binary links glibc dynamically, hence the "cc" flavour of distroless.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/token-sidecar /usr/local/bin/token-sidecar
# 65532 is distroless' "nonroot", numeric so that Kubernetes can verify runAsNonRoot.
USER 65532:65532
# 8080: the proxy listener (127.0.0.1 by default: the app in the same pod talks to it).
# 9090: admin: /healthz, /readyz, /metrics, /token-info.
EXPOSE 8080 9090
# With no subcommand the binary serves (`run`); pass flags or `--config FILE` as arguments.
ENTRYPOINT ["/usr/local/bin/token-sidecar"]
