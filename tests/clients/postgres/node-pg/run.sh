#!/usr/bin/env bash
# title: Node.js · pg (node-postgres)
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
  test) cd "$here" && exec node main.js ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
