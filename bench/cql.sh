#!/usr/bin/env bash
# CQL through entra-db-proxy vs. directly (TLS + PasswordAuthenticator), in one run, against a
# local Cassandra 5.0 and a fake Entra ID / ARM listKeys: prepared INSERTs and SELECTs with many
# requests in flight (scylla driver, protocol v4). Prints operations per second and the
# proxy/direct ratio. Usage: bench/cql.sh [OPS, default 20000] [CONCURRENCY, default 32]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/install-deps.sh)"
export EDP_CASSANDRA_LIB EDP_JAVA
cargo build --quiet --release --bin entra-db-proxy
cargo build --quiet --release -p dbproxy-testkit --bin dbproxy-cqlbench
target="${CARGO_TARGET_DIR:-target}/release"
"$target/dbproxy-cqlbench" --proxy-bin "$target/entra-db-proxy" --ops "${1:-20000}" --concurrency "${2:-32}"
