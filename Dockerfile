# syntax=docker/dockerfile:1
# kube-hardener: a static (musl) binary on distroless/static, running as a
# non-root numeric UID. Build context: the repository root.
#
#   docker build -t kube-hardener:dev .

FROM rust:1.95-alpine AS build
# ring compiles C and assembly: it needs a C toolchain and musl headers.
RUN apk add --no-cache musl-dev gcc make
WORKDIR /src
# Manifests first, so the dependency layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY config config
COPY .cargo .cargo
COPY e2e e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kube-hardener \
    && install -D -m 0755 target/release/kube-hardener /out/kube-hardener

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kube-hardener /usr/local/bin/kube-hardener
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/kube-hardener"]
CMD ["serve"]
