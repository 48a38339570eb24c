# The marketlane daemon image. Build: docker build -t marketlane .
# Stage 1 builds the release binary (rdkafka's bundled librdkafka needs a C toolchain, perl,
# libssl-dev); stage 2 is Debian slim with only the runtime libraries, as a non-root user.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY actors actors
COPY daemon daemon
COPY simulator simulator
COPY tests tests
COPY load-tests load-tests
# Only the daemon: the simulator (`marketlane-sim`) is for the demo and the tests, not shipped.
RUN cargo build --release --locked --bin marketlane \
 && cp target/release/marketlane /marketlane

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin marketlane \
 && install -d -o marketlane -g marketlane -m 0700 /run/marketlane
COPY --from=build /marketlane /usr/local/bin/marketlane
COPY schemas /etc/marketlane/schemas
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/marketlane"]
CMD ["run", "--config", "/etc/marketlane/config/marketlane.toml"]
