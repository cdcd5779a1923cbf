#!/usr/bin/env bash
# title: Go · gocql (the seed's ClusterConfig: ProtoVersion 4, default consistency)
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
bin="$CLIENTS_CACHE/clients-bin/cassandra-$(basename "$here")"
case "${1:-}" in
  install)
    # Modules from the Go module proxy, checked against go.sum (GOMODCACHE and GOCACHE cache them).
    cd "$here" && go mod download && GOFLAGS=-mod=readonly go build -trimpath -o "$bin" .
    ;;
  test) AZURE_COSMOS_KEYSPACE=ks_gocql exec "$bin" ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
