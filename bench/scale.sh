#!/usr/bin/env bash
# Many concurrent PostgreSQL sessions through entra-db-proxy, against a PostgreSQL stand-in
# (TLS, cleartext password checked against the fake Entra's tokens; a few KB per session) or a
# real PostgreSQL (max_connections raised; about 2 MB per backend), and a fake Entra ID: RSS per
# idle session, login latency p50/p99 for bursts of concurrent logins, and RSS 1 s / 10 s / 30 s
# after they all closed, against the baseline. Not a test: it prints figures
# (docs/RELIABILITY.md, "Memory").
#
#   bench/scale.sh [SESSIONS, default 10000] [BURST, default 500]
#   ALLOCATORS="jemalloc glibc mimalloc" bench/scale.sh 10000   # compare allocator builds
#   UPSTREAM=real bench/scale.sh 2000     # a real PostgreSQL instead of the stand-in
#
# ALLOCATORS (default: jemalloc, the shipped build) names proxy builds measured one after the
# other against the same server: jemalloc (default features), glibc (--no-default-features),
# mimalloc (--no-default-features --features mimalloc).
#
# Each session holds two descriptors in the proxy; with this machine's hard RLIMIT_NOFILE the
# session count may be capped (the run says so). UPSTREAM=real needs about 2 MB of memory per
# session for PostgreSQL's backends: 10,000 of them take most of a 24 GB machine.
# INSPECT=CMD runs CMD at the baseline and 30 s after close, with PROXY_PID and PHASE set.
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
extra=()
if [ -n "${INSPECT:-}" ]; then extra+=(--inspect "$INSPECT"); fi
"$target/dbproxy-scale" "${args[@]}" --upstream "${UPSTREAM:-standin}" \
  --sessions "$sessions" --burst "$burst" "${extra[@]}"
