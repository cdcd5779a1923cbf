#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, idempotently:
#   - PostgreSQL server + client (initdb, pg_ctl, psql, pgbench) from Debian's packages
#   - a Python virtualenv with psycopg2 (the seed's Python sample) and psycopg 3 (its wheel
#     bundles libpq 17+, for sslnegotiation=direct), cached under ~/.cache
# Prints the variables the test suite reads (EDP_PYTHON) for `eval`.
set -euo pipefail

cache="${ENTRA_DB_PROXY_CACHE:-$HOME/.cache/entra-db-proxy}"
mkdir -p "$cache"

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-contrib)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing from Debian: ${need_apt[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >&2
fi

venv="$cache/venv"
# Re-install when tests/clients/requirements.txt changes (its hash is kept in the venv).
want=$(sha256sum tests/clients/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import psycopg2, psycopg' >/dev/null 2>&1; then
  echo "installing the Python test clients into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt >&2
  echo "$want" > "$venv/.requirements-sha256"
fi
echo "export EDP_PYTHON=$venv/bin/python"
# A real Apache Cassandra 5.0 (jars from Maven Central) and a JDK 17 for it.
bash scripts/install-cassandra.sh
# The Java CQL client the tests run (Maven; cached).
bash tests/clients/cassandra/build.sh
