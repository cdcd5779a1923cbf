#!/usr/bin/env bash
# title: Node.js · cassandra-driver (the seed's Client options, localDataCenter 'datacenter1')
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install)
    cd "$here"
    # npm ci from package-lock.json (the npm cache keeps the tarballs); skipped when unchanged.
    want=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [ "$(cat node_modules/.lock-sha256 2>/dev/null)" != "$want" ]; then
      npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
      echo "$want" > node_modules/.lock-sha256
    fi
    ;;
  test) cd "$here" && AZURE_COSMOS_KEYSPACE=ks_node exec node main.js ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
