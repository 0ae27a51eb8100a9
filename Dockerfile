# Multi-stage build: compile reel, then a slim runtime with the system ffmpeg.
# Not tested on the development machines (no Docker engine there); see README.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
COPY examples ./examples
RUN cargo build --release --locked --bin reel

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/reel --create-home reel
COPY --from=build /src/target/release/reel /usr/local/bin/reel
USER reel
WORKDIR /var/lib/reel
EXPOSE 8080
# Inside a container the node must listen beyond loopback to be reachable.
ENTRYPOINT ["reel"]
CMD ["serve", "--data-dir", "/var/lib/reel", "--listen", "0.0.0.0:8080"]
