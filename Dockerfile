# One gamerelay node. Build: docker build -t gamerelay .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p gamerelay

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 gamerelay
COPY --from=build /src/target/release/gamerelay /usr/local/bin/gamerelay
USER gamerelay
# Inside the container the node must listen on all interfaces; publish the port on
# loopback only (see docker-compose.yml) until authentication is configured.
ENV GAMERELAY_LISTEN=0.0.0.0:8080 GAMERELAY_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gamerelay"]
