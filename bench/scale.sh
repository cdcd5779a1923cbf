#!/usr/bin/env bash
# Many concurrent PostgreSQL sessions through entra-db-proxy, against a real PostgreSQL (TLS,
# `password` auth, max_connections raised) and a fake Entra ID: RSS per idle session, login
# latency p50/p99 for bursts of concurrent logins, and RSS 1 s / 10 s / 30 s after they all
# closed, against the baseline. Not a test: it prints figures (docs/RELIABILITY.md, "Memory").
#
#   bench/scale.sh [SESSIONS, default 10000] [BURST, default 500]
#   ALLOCATORS="jemalloc glibc mimalloc" bench/scale.sh 10000   # compare allocator builds
#
# ALLOCATORS (default: jemalloc, the shipped build) names proxy builds measured one after the
# other against the same server: jemalloc (default features), glibc (--no-default-features),
# mimalloc (--no-default-features --features mimalloc).
#
# Each session holds two descriptors in the proxy; with this machine's hard RLIMIT_NOFILE the
# session count may be capped (the run says so). PostgreSQL needs about 1.5 MB per backend.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="${1:-10000}"
burst="${2:-500}"
eval "$(scripts/install-deps.sh)"
target="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

args=()
for a in ${ALLOCATORS:-jemalloc}; do
  case "$a" in
    jemalloc) features=() ;;
    glibc) features=(--no-default-features) ;;
    mimalloc) features=(--no-default-features --features mimalloc) ;;
    *) echo "scale.sh: unknown allocator $a (jemalloc, glibc, mimalloc)" >&2; exit 2 ;;
  esac
  cargo build --quiet --release --bin entra-db-proxy "${features[@]}"
  cp "$target/entra-db-proxy" "$work/entra-db-proxy-$a"
  args+=(--proxy-bin "$a=$work/entra-db-proxy-$a")
done
cargo build --quiet --release -p dbproxy-testkit --bin dbproxy-scale
# The client holds one descriptor per session too.
ulimit -n "$(ulimit -Hn)"
"$target/dbproxy-scale" "${args[@]}" --sessions "$sessions" --burst "$burst"
