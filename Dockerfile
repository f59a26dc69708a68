# syntax=docker/dockerfile:1
#
# permit-stats in a container: a Rust build stage, then a distroless runtime that holds the one
# binary and runs it as a non-root user.
#
#   docker build -t permit-stats .
#   docker run --rm -p 8080:8080 permit-stats serve --demo --listen 0.0.0.0:8080
#
# docker-compose.yml builds this file and wires it to Kafka, Prometheus and Grafana.

# --- build ---------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is compiled from source by rdkafka-sys (its own configure and make, both in this
# image). zlib and zstd are linked statically; TLS and SASL SCRAM/OAUTHBEARER use the system's
# OpenSSL (libssl-dev and pkg-config to build, installed below so the requirement is written
# down: the rust image has them already), so the runtime needs glibc, libgcc and libssl3.
# OPENSSL_STATIC stays unset on purpose: security fixes then come with the base image.
# Debug info is stripped (44 MB -> 9 MB); symbols stay, so a backtrace still names functions.
ENV LIBZ_SYS_STATIC=1 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# The registry and target caches survive between builds (BuildKit), so a code change rebuilds
# the crate, not its ~300 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin permit-stats \
    && cp target/release/permit-stats /usr/local/bin/permit-stats
# The checkpoint directory of docker-compose.yml's volume, owned by the runtime's user: a new
# named volume takes the image directory's owner (distroless has no shell to chown it later).
RUN mkdir -p /var/lib/permit-stats/checkpoints

# --- runtime -------------------------------------------------------------------------------------
# glibc, libgcc, libssl3 (OpenSSL 3, for TLS to Kafka) and CA certificates, no shell, no package
# manager; "nonroot" is uid 65532. cc-debian12 is distroless' `base` (which ships libssl3 and
# ca-certificates; `base-nossl` is the variant without) plus libgcc. It carries the TLS library
# now: rebuild on a fresh base image regularly to pick up OpenSSL fixes.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /usr/local/bin/permit-stats /usr/local/bin/permit-stats
COPY --from=build --chown=65532:65532 /var/lib/permit-stats /var/lib/permit-stats
USER nonroot:nonroot
# Inside a container the API must listen on every interface; the flag's default is loopback.
ENV PERMIT_STATS_LISTEN=0.0.0.0:8080 \
    PERMIT_STATS_LOG_FORMAT=json
EXPOSE 8080
# HTTPS instead of HTTP on the same port (README "HTTPS"), with the pair mounted read-only, e.g.
#   docker run -v "$PWD/tls:/etc/permit-stats/tls:ro" \
#     -e PERMIT_STATS_TLS_CERT=/etc/permit-stats/tls/tls.crt \
#     -e PERMIT_STATS_TLS_KEY=/etc/permit-stats/tls/tls.key -p 8443:8080 permit-stats:local
# ENV PERMIT_STATS_TLS_CERT=/etc/permit-stats/tls/tls.crt \
#     PERMIT_STATS_TLS_KEY=/etc/permit-stats/tls/tls.key
ENTRYPOINT ["/usr/local/bin/permit-stats"]
CMD ["serve", "--demo"]
