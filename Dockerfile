# syntax=docker/dockerfile:1
# rotor's image: `make image` (needs a container engine), or
#   docker build --build-arg ROTOR_GIT_SHA=$(git rev-parse --short=12 HEAD) -t rotor:dev .
#
# Builder: the Rust toolchain rotor is developed with (rustc 1.95) on Debian
# bookworm, the same glibc as the runtime stage. Runtime: distroless cc
# (glibc, libgcc_s, CA certificates, /etc/passwd with nonroot 65532; no shell,
# no package manager), running as 65532 like the chart's securityContext.
# hack/image-check.sh proves the runtime stage holds everything the binary
# needs by running it in a chroot with only those files.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
# The build context has no .git (.dockerignore): build.rs takes the revision
# from this variable instead, and says "unknown" without it.
ARG ROTOR_GIT_SHA=unknown
ENV ROTOR_GIT_SHA=${ROTOR_GIT_SHA}
COPY . .
# The caches keep the registry and target dir between builds (BuildKit);
# the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rotor \
 && cp target/release/rotor /rotor

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /rotor /rotor
USER 65532:65532
ENTRYPOINT ["/rotor"]
CMD ["run"]
