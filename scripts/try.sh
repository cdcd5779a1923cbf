#!/usr/bin/env bash
# Try entra-db-proxy on this machine with no Azure.
#
#   scripts/try.sh             PostgreSQL: a local PostgreSQL with TLS and password auth and a
#                              fake Entra ID; psql through the proxy with no password.
#   scripts/try.sh cassandra   Cosmos DB for Apache Cassandra: a real Cassandra 5.0 behind the
#                              Cosmos DB stand-in (v4 only, 20 % of requests throttled, request
#                              charges) and a fake Entra ID + ARM listKeys; the proxy with Service
#                              Connector's AZURE_COSMOS_* variables; cqlsh through it with no
#                              credentials, then the request units and throttling from /metrics.
#
# Interactive psql / cqlsh if stdin is a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-postgres}"
case "$mode" in postgres|cassandra) ;; *) echo "usage: scripts/try.sh [postgres|cassandra]" >&2; exit 2 ;; esac
eval "$(scripts/install-deps.sh)"
target="${CARGO_TARGET_DIR:-target}/debug"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_env() {
  for _ in $(seq 1 "$1"); do [ -f "$work/env" ] && return 0; sleep 0.2; done
  echo "stand-ins did not start" >&2; exit 1
}
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
}

if [ "$mode" = postgres ]; then
  cargo build --quiet --bin entra-db-proxy && cargo build --quiet -p dbproxy-testkit --bin dbproxy-standins
  "$target/dbproxy-standins" --env-file "$work/env" &
  pids+=($!)
  wait_env 300
  port="${TRY_PORT:-15432}"
  echo
  echo "== Service Connector-style variables the proxy reads (a fake service principal):"
  grep -E '^AZURE_POSTGRESQL_(CONNECTIONSTRING|CLIENTID|TENANTID)' "$work/env"
  echo
  (set -a; . "$work/env"; set +a; exec "$target/entra-db-proxy" --postgres-listen "127.0.0.1:$port") &
  pids+=($!)
  wait_port "$port"
  echo
  echo "== psql -h 127.0.0.1 -p $port -U anyone -d orders   (no password)"
  psql -X -h 127.0.0.1 -p "$port" -U anyone -d orders \
    -c "select current_user as logged_in_as, current_database(), (select ssl from pg_stat_ssl where pid = pg_backend_pid()) as upstream_tls"
  if [ -t 0 ]; then
    echo "Interactive session; \\q to quit."
    psql -X -h 127.0.0.1 -p "$port" -U anyone -d orders
  fi
  exit 0
fi

# cassandra: cqlsh from the client matrix's virtualenv.
source tests/clients/lib.sh
venv_ensure >/dev/null
cargo build --quiet --bin entra-db-proxy && cargo build --quiet -p dbproxy-testkit --bin dbproxy-cql-standins
echo "== starting Cassandra behind the Cosmos DB stand-in (about a minute)…"
"$target/dbproxy-cql-standins" --env-file "$work/env" --cosmos --throttle "${TRY_THROTTLE:-0.2}" &
pids+=($!)
wait_env 1500
port="${TRY_PORT:-19042}" admin="${TRY_ADMIN_PORT:-19090}"
echo
echo "== Service Connector-style variables the proxy reads (a fake service principal):"
grep -E '^AZURE_COSMOS_(CONTACTPOINT|PORT|USERNAME|LISTKEYURL|SCOPE|CLIENTID|TENANTID)=' "$work/env"
echo "   plus ENTRA_DB_PROXY_CASSANDRA_COSMOS=true: the stand-in on 127.0.0.1 is Cosmos DB"
echo
(set -a; . "$work/env"; set +a
 exec "$target/entra-db-proxy" --cassandra-listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin") &
pids+=($!)
wait_port "$port"
wait_port "$admin"
cat > "$work/try.cql" <<'CQL'
CREATE KEYSPACE IF NOT EXISTS try WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1};
CREATE TABLE IF NOT EXISTS try.items (id int PRIMARY KEY, name text);
INSERT INTO try.items (id, name) VALUES (1, 'one');
INSERT INTO try.items (id, name) VALUES (2, 'two');
INSERT INTO try.items (id, name) VALUES (3, 'three');
SELECT * FROM try.items;
CQL
echo "== cqlsh 127.0.0.1 $port   (no -u / -p, no --ssl)"
HOME="$work" "$CLIENTS_VENV/bin/cqlsh" 127.0.0.1 "$port" --connect-timeout 30 --request-timeout 60 -f "$work/try.cql"
if [ -t 0 ]; then
  echo "Interactive session (try.items exists); exit to quit."
  HOME="$work" "$CLIENTS_VENV/bin/cqlsh" 127.0.0.1 "$port" --connect-timeout 30 --request-timeout 60 || true
fi
echo
echo "== the request charge and the throttling the proxy absorbed (http://127.0.0.1:$admin/metrics)"
curl -fsS "http://127.0.0.1:$admin/metrics" | grep -E '^entra_db_proxy_cosmos_'
