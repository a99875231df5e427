# Multi-stage build: compile with the Rust toolchain, run from a small Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY fixtures ./fixtures
RUN cargo build --release --locked --bin hls-relay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home relay
COPY --from=build /src/target/release/hls-relay /usr/local/bin/hls-relay
COPY config/hls-relay.toml /etc/hls-relay/hls-relay.toml
USER relay
EXPOSE 8080
ENTRYPOINT ["hls-relay"]
CMD ["serve", "--config", "/etc/hls-relay/hls-relay.toml"]
