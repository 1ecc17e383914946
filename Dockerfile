# weir in a container: build in release, run as an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin weir

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/weir weir \
 && mkdir -p /var/lib/weir /etc/weir/queries \
 && chown weir /var/lib/weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY queries/*.sql /etc/weir/queries/
# Numeric, so that Kubernetes' runAsNonRoot can see it is not root.
USER 10001
ENV WEIR_HTTP_LISTEN=0.0.0.0:8080 \
    WEIR_MQTT_LISTEN=0.0.0.0:1883 \
    WEIR_DATA_DIR=/var/lib/weir \
    WEIR_QUERIES_DIR=/etc/weir/queries
VOLUME /var/lib/weir
EXPOSE 8080 1883
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["weir"]
CMD ["serve"]
