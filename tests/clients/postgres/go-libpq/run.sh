#!/usr/bin/env bash
# title: Go · lib/pq (database/sql)
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
bin="$CLIENTS_CACHE/clients-bin/$(basename "$here")"
case "${1:-}" in
  install)
    # Modules from the Go module proxy, checked against go.sum (GOMODCACHE and GOCACHE cache them).
    cd "$here" && go mod download && GOFLAGS=-mod=readonly go build -trimpath -o "$bin" .
    ;;
  test) exec "$bin" ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
