#!/usr/bin/env bash
# Try entra-db-proxy on this machine with no Azure: starts local stand-ins (a PostgreSQL with TLS
# and password auth, a fake Entra ID), runs the proxy with Service Connector's variables, and
# shows a psql session through it with no password. Interactive psql if stdin is a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/install-deps.sh)"
cargo build --quiet --bin entra-db-proxy && cargo build --quiet -p dbproxy-testkit --bin dbproxy-standins
target="${CARGO_TARGET_DIR:-target}/debug"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$target/dbproxy-standins" --env-file "$work/env" &
pids+=($!)
for _ in $(seq 1 300); do [ -f "$work/env" ] && break; sleep 0.2; done
[ -f "$work/env" ] || { echo "stand-ins did not start" >&2; exit 1; }

port="${TRY_PORT:-15432}"
echo
echo "== Service Connector-style variables the proxy reads (a fake service principal):"
grep -E '^AZURE_POSTGRESQL_(CONNECTIONSTRING|CLIENTID|TENANTID)' "$work/env"
echo
(set -a; . "$work/env"; set +a; exec "$target/entra-db-proxy" --postgres-listen "127.0.0.1:$port") &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

echo
echo "== psql -h 127.0.0.1 -p $port -U anyone -d orders   (no password)"
psql -X -h 127.0.0.1 -p "$port" -U anyone -d orders \
  -c "select current_user as logged_in_as, current_database(), (select ssl from pg_stat_ssl where pid = pg_backend_pid()) as upstream_tls"
if [ -t 0 ]; then
  echo "Interactive session; \\q to quit."
  psql -X -h 127.0.0.1 -p "$port" -U anyone -d orders
fi
