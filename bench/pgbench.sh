#!/usr/bin/env bash
# pgbench through entra-db-proxy vs. directly (TLS + password), in one run, on the local
# stand-ins (a real PostgreSQL with TLS; a fake Entra ID). Prints transactions per second and
# the proxy/direct ratio for:
#   select-only (-S) with 1 and 8 clients on persistent connections (relay overhead), and
#   select-only with a new connection per transaction (-C, login overhead).
# Usage: bench/pgbench.sh [SECONDS per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
eval "$(scripts/install-deps.sh)"
cargo build --quiet --release --bin entra-db-proxy
cargo build --quiet --release -p dbproxy-testkit --bin dbproxy-standins
target="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$target/dbproxy-standins" --env-file "$work/env" 2>/dev/null &
pids+=($!)
for _ in $(seq 1 300); do [ -f "$work/env" ] && break; sleep 0.2; done
set -a; . "$work/env"; set +a
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$target/entra-db-proxy" --postgres-listen "127.0.0.1:$port" 2>"$work/proxy.log" &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

via_proxy=(-h 127.0.0.1 -p "$port" -U anyone "$STANDINS_DB")
direct=(-h 127.0.0.1 -p "$STANDINS_PG_PORT" -U "$STANDINS_BENCH_USER" "$STANDINS_DB")
export PGPASSWORD_DIRECT="$STANDINS_BENCH_PASSWORD"

pgbench -i -s 10 -q "${via_proxy[@]}" >/dev/null 2>&1

tps() { # args: pgbench args...; prints tps
  pgbench "$@" 2>/dev/null | awk '/^tps = / { print $3; exit }'
}
run_direct() { PGSSLMODE=verify-full PGSSLROOTCERT="$SSL_CERT_FILE" PGPASSWORD="$PGPASSWORD_DIRECT" tps "$@" "${direct[@]}"; }
run_proxy() { PGSSLMODE=disable tps "$@" "${via_proxy[@]}"; }

printf '%-34s %12s %12s %8s\n' "workload (${secs}s each)" "direct tps" "proxy tps" "ratio"
for spec in "-S -c 1 -j 1" "-S -c 8 -j 2" "-S -C -c 1 -j 1"; do
  # shellcheck disable=SC2086
  d=$(run_direct $spec -n -T "$secs")
  # shellcheck disable=SC2086
  p=$(run_proxy $spec -n -T "$secs")
  ratio=$(python3 -c "print(f'{float(\"$p\")/float(\"$d\"):.2f}')")
  printf '%-34s %12.0f %12.0f %8s\n' "pgbench $spec" "$d" "$p" "$ratio"
done
