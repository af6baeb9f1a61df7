# gamerelay images (multi-stage).
#   docker build -t gamerelay .                    the node (stage `node`, the default)
#   docker build --target devcert -t gamerelay-devcert .
#                                                  makes a self-signed TLS certificate for
#                                                  HAProxy's wss frontend (docker-compose.yml)

# --- build: the release binary -----------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gamerelay

# --- devcert: a self-signed certificate for local use only --------------------------------
# Writes /certs/gamerelay.pem (certificate + key, HAProxy's format) unless it exists, owned by
# uid 99 (the haproxy image's user). Never use it in production.
FROM debian:bookworm-slim AS devcert
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*
CMD ["/bin/sh", "-c", "set -e; test -s /certs/gamerelay.pem && exit 0; cd /certs; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem 2>/dev/null; cat cert.pem key.pem > gamerelay.pem; rm key.pem; chown 99:99 gamerelay.pem; chmod 600 gamerelay.pem"]

# --- node: the runtime image (last, so it is the default target) -------------------------
FROM debian:bookworm-slim AS node
RUN useradd --system --uid 10001 gamerelay
COPY --from=build /src/target/release/gamerelay /usr/local/bin/gamerelay
USER gamerelay
# Inside the container the node must listen on all interfaces, which it refuses to do
# without join authentication: run it with GAMERELAY_AUTH_KEYS (docs/SECURITY.md), or, for a
# local demo published on loopback only, GAMERELAY_INSECURE_DEV=true (docker-compose.yml).
ENV GAMERELAY_LISTEN=0.0.0.0:8080 GAMERELAY_LOG_FORMAT=json
EXPOSE 8080
# bash, not sh: Debian's sh (dash) has no /dev/tcp.
HEALTHCHECK --interval=5s --timeout=2s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gamerelay"]
