# gsr container image: `gsr webhook` (the GitLab Job Hook receiver) with bash, git and CA
# certificates, running as a non-root user. Deployment guides: docs/deploy/.
#
# Two ways to get the `gsr` binary into it:
#
# 1. From source (needs Docker Hub and crates.io). Builds the last stage, `image`:
#
#        docker build -t gsr .
#
# 2. From a binary you built yourself (offline; this is what CI does, see
#    .ci/container-test.sh). Builds only the `prebuilt` stage, which copies the binary from
#    the build context:
#
#        cargo build --release --locked -p gsr --no-default-features
#        DOCKER_BUILDKIT=0 docker build --target prebuilt -t gsr .
#        # another binary: --build-arg GSR_BINARY=dist/gsr   (a path inside the context;
#        # .dockerignore lets through only target/release/gsr and dist/)
#
#    The binary is dynamically linked against glibc: build it on Debian 12 (bookworm) or
#    older, or in `rust:1-bookworm`. The stages are in this order on purpose: the legacy
#    builder (no BuildKit) builds every stage up to `--target` in file order, so with
#    `--target prebuilt` it never needs `rust:1-bookworm`. BuildKit skips unused stages
#    anyway.
#
# Run it (the variables are described in docs/deploy/README.md):
#
#     docker run -p 8080:8080 -e RUNNER_TOKEN=glrt-... -e CI_SERVER_URL=https://gitlab.com \
#                -e GITLAB_SECRET=... gsr

# ---- runtime: what every variant ships ------------------------------------------------
FROM debian:bookworm-slim AS runtime

# bash runs job scripts, git fetches sources, ca-certificates lets git (libcurl) verify
# TLS. gsr's own HTTPS client carries its own root store.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends bash ca-certificates git; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log; \
    useradd --system --uid 10001 --user-group --home-dir /home/gsr --create-home \
            --shell /usr/sbin/nologin gsr

# Job checkouts go to /tmp: on some serverless platforms it is the only place that is
# surely writable (and it is memory-backed on Cloud Run, so it counts against the memory
# limit). Override with RUNNER_BUILDS_DIR.
# MALLOC_ARENA_MAX=2: glibc's per-thread malloc arenas hold freed memory; two arenas cut
# `gsr serve`'s idle RSS with 1,000 runners by ~15 % at no measurable CPU cost (BENCHMARKS.md).
ENV PORT=8080 \
    RUNNER_BUILDS_DIR=/tmp/gsr/builds \
    MALLOC_ARENA_MAX=2
WORKDIR /home/gsr
# numeric, so that Kubernetes' runAsNonRoot can check it
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["gsr"]
CMD ["webhook"]

# ---- prebuilt: copy a binary from the build context (offline builds, CI) ----------------
FROM runtime AS prebuilt
ARG GSR_BINARY=target/release/gsr
COPY ${GSR_BINARY} /usr/local/bin/gsr
RUN ["gsr", "--version"]

# ---- build: compile from source (needs registry access) ---------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY crates crates
COPY xtask xtask
# The serverless image leaves out the container backends (cargo features `docker`,
# `kubernetes`: large clients a webhook receiver does not use); a control-plane image that
# places jobs on them builds with --build-arg GSR_FEATURES="docker kubernetes".
ARG GSR_FEATURES=""
RUN cargo build --release --locked -p gsr --no-default-features --features "$GSR_FEATURES" \
    && install -m 0755 target/release/gsr /usr/local/bin/gsr

# ---- image (default target): the runtime with the binary compiled above ----------------
FROM runtime AS image
COPY --from=build /usr/local/bin/gsr /usr/local/bin/gsr
RUN ["gsr", "--version"]
