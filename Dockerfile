# resevent: `resevent run` and `resevent capture` in one image.
# Build stage: the release binary (librdkafka and RocksDB build from source
# inside their crates: a C/C++ toolchain, libclang for RocksDB's bindings,
# OpenSSL headers for librdkafka's TLS).
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
# Compiled in (include_str!): the built-in pipeline and the business event's Avro schema.
COPY pipelines pipelines
COPY schemas schemas
RUN cargo build --release --locked --bin resevent \
    && cp target/release/resevent /resevent

# Runtime stage: the binary, the pipeline files, OpenSSL (librdkafka links
# it), CA certificates, and curl for the health checks.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /resevent /usr/local/bin/resevent
COPY pipelines /app/pipelines
WORKDIR /app
RUN useradd --system --uid 10001 resevent && mkdir -p /state && chown resevent /state
USER resevent
# run: 9464, capture: 9465 (/healthz, /readyz, /metrics).
EXPOSE 9464 9465
ENTRYPOINT ["resevent"]
CMD ["--help"]
