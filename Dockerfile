# syntax=docker/dockerfile:1
#
# sluice's image for Kubernetes: `docker build -t REGISTRY/sluice:TAG .`
#
# Runtime: distroless cc (glibc, libgcc, CA certificates, nothing else: no
# shell, no package manager, no git), as the `nonroot` user (65532). With
# the Kubernetes executor sluice itself runs no git or test command (the
# Jobs do, in their own images), so the image needs neither. The local
# executor does need git and a shell, so it does not work in this image;
# run it from a host install or an image with git instead.

FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Exactly the locked dependencies; caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && install -D -m 0755 target/release/sluice /out/sluice

# Debian 12, as the builder: the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 65532:65532
EXPOSE 8080
# sluice stops cleanly on Ctrl-C (SIGINT); as PID 1 it would ignore SIGTERM.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/sluice", "serve", "--config", "/etc/sluice/config.toml"]
