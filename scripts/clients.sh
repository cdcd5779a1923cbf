#!/usr/bin/env bash
# Client compatibility matrix: real applications' database libraries, each in its own language,
# connect to entra-db-proxy with NO password and do ordinary work (DDL, parameterised inserts and
# reads, a prepared statement, a duplicate-key error caught by SQLSTATE, current_user = the Entra
# user, a clean close). Results go to docs/COMPATIBILITY.md.
#
#   scripts/clients.sh                      # every PostgreSQL stack
#   scripts/clients.sh --only node-pg       # one row (the others in the doc are kept as they were)
#   scripts/clients.sh --list [postgres]    # the stacks
#   scripts/clients.sh [--only STACK] [postgres|cassandra]
#
# What it does: installs what the selected stacks need (idempotent, cached between runs: Debian
# packages, a venv keyed by the requirements' hash, ~/.m2, GOMODCACHE, the npm cache), builds the
# proxy and the stand-ins, starts the stand-ins (real PostgreSQL with TLS + password auth, fake
# Entra ID) and ONE proxy on a free loopback port, runs each stack's `run.sh test`, collects the
# one-line results, rewrites its section of docs/COMPATIBILITY.md, and exits non-zero if any row
# failed. ENTRA_DB_PROXY_BIN / DBPROXY_STANDINS_BIN: use these binaries instead of building them
# (e.g. a release build, or CI's). Logs of the last run: $ENTRA_DB_PROXY_CACHE/clients-logs/<db>/ (default ~/.cache/...).
#
# A stack is a directory tests/clients/<db>/<stack>/ with an executable run.sh (see
# tests/clients/README.md for the contract). Adding the Cassandra half = adding
# tests/clients/cassandra/<stack>/run.sh and filling in start_cassandra below.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

db=postgres only="" list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) [ $# -ge 2 ] || usage; only="$2"; shift 2 ;;
    --only=*) only="${1#--only=}"; shift ;;
    --list) list=1; shift ;;
    postgres|cassandra) db="$1"; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

stacks_dir="tests/clients/$db"
mapfile -t all_stacks < <(find "$stacks_dir" -mindepth 2 -maxdepth 2 -name run.sh -printf '%h\n' 2>/dev/null | xargs -rn1 basename | sort)
if [ $list -eq 1 ]; then printf '%s\n' "${all_stacks[@]}"; exit 0; fi
if [ ${#all_stacks[@]} -eq 0 ]; then
  echo "no $db stacks yet: add tests/clients/$db/<stack>/run.sh (see tests/clients/README.md)" >&2
  exit 2
fi
if [ -n "$only" ]; then
  if [ ! -x "$stacks_dir/$only/run.sh" ]; then
    echo "no $db stack named '$only'; the stacks are: ${all_stacks[*]}" >&2
    exit 2
  fi
  stacks=("$only")
else
  stacks=("${all_stacks[@]}")
fi

cache="${ENTRA_DB_PROXY_CACHE:-$HOME/.cache/entra-db-proxy}"
logs="$cache/clients-logs/$db"
if [ -z "$only" ]; then rm -rf "$logs"; fi; mkdir -p "$logs"; rm -f "$logs/results.txt"
work=$(mktemp -d)
results="$work/results.tsv"
: > "$results"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_start=$(date +%s)
now() { date +%s; }

# ---- 1. install what each selected stack needs (cached) -------------------------------------
declare -A install_s install_fail
for s in "${stacks[@]}"; do
  t0=$(now)
  echo "== install $s" >&2
  if ! timeout 1200 "$stacks_dir/$s/run.sh" install > "$logs/$s.install.log" 2>&1; then
    install_fail[$s]="install failed (see $logs/$s.install.log): $(grep -v '^\s*$' "$logs/$s.install.log" | tail -n1 | cut -c1-200)"
    echo "   install of $s failed; last lines of $logs/$s.install.log:" >&2
    tail -n 15 "$logs/$s.install.log" | sed 's/^/   | /' >&2
  fi
  install_s[$s]=$(( $(now) - t0 ))
done
t_installed=$(now)

# ---- 2. the target: build, stand-ins, one proxy ----------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { local _; for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

start_postgres() {
  eval "$(scripts/install-deps.sh)"   # PostgreSQL server/client for the stand-ins (cached)
  local target="${CARGO_TARGET_DIR:-target}/debug"
  local proxy_bin="${ENTRA_DB_PROXY_BIN:-$target/entra-db-proxy}"
  local standins_bin="${DBPROXY_STANDINS_BIN:-$target/dbproxy-standins}"
  if [ -z "${ENTRA_DB_PROXY_BIN:-}" ]; then
    echo "== build entra-db-proxy" >&2
    cargo build --quiet --bin entra-db-proxy
  fi
  if [ -z "${DBPROXY_STANDINS_BIN:-}" ]; then
    echo "== build dbproxy-standins" >&2
    cargo build --quiet -p dbproxy-testkit --bin dbproxy-standins
  fi

  "$standins_bin" --env-file "$work/standins.env" > "$logs/standins.log" 2>&1 &
  pids+=($!)
  local _
  for _ in $(seq 1 300); do [ -f "$work/standins.env" ] && break; sleep 0.2; done
  [ -f "$work/standins.env" ] || { echo "stand-ins did not start:" >&2; tail -n 20 "$logs/standins.log" >&2; exit 1; }

  local port; port=$(free_port)
  # The proxy alone sees the stand-ins' variables (fake service principal, CA file); the clients
  # below see only host, port, database and an unrelated user name.
  (set -a; . "$work/standins.env"; set +a
   RUST_LOG="${RUST_LOG:-info}" exec "$proxy_bin" --postgres-listen "127.0.0.1:$port") \
    > "$logs/proxy.log" 2>&1 &
  pids+=($!)
  wait_port "$port" || { echo "proxy did not listen on $port:" >&2; tail -n 20 "$logs/proxy.log" >&2; exit 1; }

  # shellcheck disable=SC1091
  local entra_user db_name
  entra_user=$(. "$work/standins.env"; echo "$STANDINS_ENTRA_USER")
  db_name=$(. "$work/standins.env"; echo "$STANDINS_DB")
  # Nothing that could carry a password or force TLS reaches the clients.
  unset PGPASSWORD PGSSLMODE PGSERVICE PGSERVICEFILE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGOPTIONS \
        PGREQUIRESSL PGGSSENCMODE PGCHANNELBINDING PGTARGETSESSIONATTRS DATABASE_URL
  export PGHOST=127.0.0.1 PGPORT="$port" PGDATABASE="$db_name" PGUSER=app-user
  export PGPASSFILE="$work/no-pgpass"       # no ~/.pgpass either
  export EXPECT_USER="$entra_user"
  export PGAPPNAME=entra-db-proxy-compat
  echo "== proxy on 127.0.0.1:$port (upstream user $entra_user, database $db_name)" >&2
}

start_cassandra() {
  # For the Cassandra half: build and start its stand-ins and one proxy listener, then export
  # what its stacks read (e.g. CQL_HOST, CQL_PORT, CQL_KEYSPACE, EXPECT_USER).
  echo "the Cassandra half is not implemented yet (see tests/clients/README.md)" >&2
  exit 2
}

"start_$db"
t_started=$(now)

# ---- 3. run the stacks -----------------------------------------------------------------------
fails=0
for s in "${stacks[@]}"; do
  title=$(sed -n 's/^# title: //p' "$stacks_dir/$s/run.sh" | head -n1)
  t0=$(now)
  if [ -n "${install_fail[$s]:-}" ]; then
    line="FAIL $s ${install_fail[$s]}"
  else
    echo "== test $s" >&2
    set +e
    out=$(timeout 300 "$stacks_dir/$s/run.sh" test 2> "$logs/$s.test.log")
    rc=$?
    set -e
    echo "$out" >> "$logs/$s.test.log"
    line=$(printf '%s\n' "$out" | grep -E "^(ok|FAIL|SKIP) $s( |$)" | tail -n1 || true)
    if [ $rc -ne 0 ] && [[ "$line" != FAIL* ]]; then
      reason=$(grep -v '^\s*$' "$logs/$s.test.log" | tail -n1 | cut -c1-200)
      [ $rc -eq 124 ] && reason="timed out after 300 s; $reason"
      line="FAIL $s exit $rc: $reason"
    elif [ $rc -eq 0 ] && [ -z "$line" ]; then
      line="FAIL $s printed no result line"
    fi
  fi
  test_s=$(( $(now) - t0 ))
  echo "$line" | tee -a "$logs/results.txt"
  if [[ "$line" == FAIL* ]]; then
    fails=$((fails + 1))
    { echo "   --- last lines of $logs/$s.test.log:"; tail -n 15 "$logs/$s.test.log" | sed 's/^/   | /'
      echo "   --- last lines of $logs/proxy.log:"; tail -n 15 "$logs/proxy.log" | sed 's/^/   | /'; } >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$db" "$s" "$title" "${install_s[$s]}" "$test_s" "$line" >> "$results"
done
t_end=$(now)

# ---- 4. docs/COMPATIBILITY.md ----------------------------------------------------------------
if [ -n "${ENTRA_DB_PROXY_BIN:-}" ]; then
  rev="$("$ENTRA_DB_PROXY_BIN" --version 2>/dev/null || echo entra-db-proxy) (prebuilt, ENTRA_DB_PROXY_BIN)"
else
  rev="entra-db-proxy $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + local changes')"
fi
ENTRA_DB_PROXY_REV="$rev" \
ALL_STACKS="${all_stacks[*]}" ONLY="$only" \
TIMES="$(( t_end - t_start )) s in all: install $(( t_installed - t_start )) s, build and start $(( t_started - t_installed )) s, tests $(( t_end - t_started )) s" \
  python3 tests/clients/gen_compat.py "$db" "$results" docs/COMPATIBILITY.md

echo "== $(( t_end - t_start )) s (install $(( t_installed - t_start )) s, build+start $(( t_started - t_installed )) s, tests $(( t_end - t_started )) s); $fails failed; logs in $logs; docs/COMPATIBILITY.md updated" >&2
[ $fails -eq 0 ]
