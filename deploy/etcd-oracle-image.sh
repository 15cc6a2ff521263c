#!/usr/bin/env bash
# `make test-deploy-etcd`'s image: etcd 3.4 (Debian's etcd-server on this host) in the same shape
# as the metastore image — same base, user, volume, ETCD_* defaults and health probe — so
# deploy/test-compose.sh can run unchanged against etcd and its figures (write gaps, start
# times) have an oracle beside them. Needs `make image` first (it builds on its base).
#
#   IMAGE  the tag to build (default metastore-etcd-oracle:local)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-metastore-etcd-oracle:local}
ctx=target/deploy/etcd-context
rm -rf "$ctx"
mkdir -p "$ctx/data"
cp "$(command -v etcd)" "$ctx/etcd"
cp target/deploy/context/metastore-healthcheck "$ctx/"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM metastore-base:local
COPY etcd metastore-healthcheck /usr/local/bin/
COPY --chown=65532:65532 data/ /var/lib/metastore/
ENV ETCD_DATA_DIR=/var/lib/metastore \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380
USER 65532:65532
WORKDIR /var/lib/metastore
VOLUME /var/lib/metastore
EXPOSE 2379 2380
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/metastore-healthcheck", "http://127.0.0.1:2379/health"]
ENTRYPOINT ["/usr/local/bin/etcd"]
DOCKERFILE
if ! DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
echo "built $IMAGE: $(($(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000)) MB"
