# keygate's container image: built in one stage, run from a small one as a non-root user. It
# holds keygate and the storage backend, and the shipped policies in /etc/keygate/policies.
#
#   docker build -t keygate .
#   docker run --rm keygate --version
#
# deploy/compose.yaml runs a cluster of it; deploy/kubernetes/ the same on Kubernetes.

FROM rust:1.95-bookworm AS build
# pingora's build needs cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keygate -p storage-backend --bins \
    && install -D -m 0755 target/release/keygate /out/keygate \
    && install -D -m 0755 target/release/storage-backend /out/storage-backend

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/keygate --create-home keygate \
    && install -d -o 10001 -g 10001 /var/lib/keygate/storage
COPY --from=build /out/ /usr/local/bin/
COPY policies /etc/keygate/policies
ENV KEYGATE_POLICIES_DIR=/etc/keygate/policies
USER 10001:10001
WORKDIR /var/lib/keygate
# The data plane, the control plane (health, metrics, management).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["--config", "/etc/keygate/keygate.toml", "serve"]
