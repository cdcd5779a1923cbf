#!/usr/bin/env bash
# Client compatibility matrix: real applications' database libraries, each in its own language,
# connect to entra-db-proxy with NO password (PostgreSQL) or NO credentials and NO TLS (CQL) and
# do ordinary work (DDL, parameterised inserts and reads, a prepared statement, an expected error
# caught by its code, a clean close). The result is the table of docs/COMPATIBILITY.md.
#
#   scripts/clients.sh                      # every PostgreSQL stack, cold, then with warm sessions
#   scripts/clients.sh cassandra            # every Cassandra stack, on a 1-node and a 3-node cluster
#   scripts/clients.sh all                  # both (PostgreSQL, then Cassandra); what scripts/test.sh runs
#   scripts/clients.sh all --write          # ... and rewrite the tracked docs/COMPATIBILITY.md
#   scripts/clients.sh --only node-pg       # one row (the others in the doc are kept as they were)
#   scripts/clients.sh --only gocql --nodes 3 cassandra   # one Cassandra row
#   scripts/clients.sh --list [postgres|cassandra]        # the stacks
#   scripts/clients.sh [--only STACK] [--nodes 1|3|cosmos] [--write] [postgres|cassandra|all]
#
# The tracked docs/COMPATIBILITY.md is never touched unless --write is given: the script writes
# the regenerated document to ${CARGO_TARGET_DIR:-target}/compat/COMPATIBILITY.md (a copy of the
# tracked file with the rows that ran replaced; per checkout, like the build) and then, with CI=true, fails if it differs from the tracked
# file, printing the diff and the command that regenerates it; without CI it only says so. The
# document is deterministic (no dates, durations, proxy revision or ephemeral ports: see
# tests/clients/gen_compat.py), so an unchanged matrix regenerates byte for byte; durations go
# to the log directory ($logs/timings.tsv) and stderr.
#
# What it does: installs what the selected stacks need (idempotent, cached between runs: Debian
# packages, a venv keyed by the requirements' hash, ~/.m2, GOMODCACHE, the npm cache), builds the
# proxy and the stand-ins, starts the stand-ins (real PostgreSQL with TLS + password auth, fake
# Entra ID) and ONE proxy on a free loopback port, runs each stack's `run.sh test`, collects the
# one-line results, rewrites its section of the generated document (above), and exits non-zero
# if any row failed or (CI) the document is not the tracked one. PostgreSQL: every stack runs
# twice, against a proxy with cold sessions (the default), then against one with
# --postgres-warm-sessions 2, waiting before each stack until both warm sessions are ready; the
# second pass fails a stack that the proxy never served a warm session (its hit counter did not
# move) or that failed, and the row shows that failure; otherwise the row is the cold pass's. Cassandra: the stand-ins are a real Cassandra 5.0 (TLS, PasswordAuthenticator) and a
# fake Entra ID + ARM listKeys (dbproxy-cql-standins); every stack runs against a 1-node cluster,
# a 3-node one, and the 1-node one behind the Cosmos DB stand-in with 20 % of requests throttled
# (--nodes 1|3|cosmos picks one), each behind its own proxy, and a row passes only if the driver
# knows exactly one host (the proxy). The Cosmos pass also fails a stack unless, over its run,
# the stand-in throttled requests, the proxy retried every throttled answer and gave none up, and
# the proxy's request-unit counter moved by exactly what the stand-in charged. ENTRA_DB_PROXY_BIN / DBPROXY_STANDINS_BIN /
# DBPROXY_CQL_STANDINS_BIN: use these binaries instead of building them (e.g. a release build, or
# CI's). Logs of the last run: $ENTRA_DB_PROXY_CACHE/clients-logs/<db>/ (default ~/.cache/...).
#
# A stack is a directory tests/clients/<db>/<stack>/ with an executable run.sh (see
# tests/clients/README.md for the contract). Adding the Cassandra half = adding
# tests/clients/cassandra/<stack>/run.sh and filling in start_cassandra below.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

db=postgres only="" list=0 nodes_arg="" write=0
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --write) write=1; shift ;;
    --only) [ $# -ge 2 ] || usage; only="$2"; shift 2 ;;
    --only=*) only="${1#--only=}"; shift ;;
    --nodes) [ $# -ge 2 ] || usage; nodes_arg="$2"; shift 2 ;;
    --nodes=*) nodes_arg="${1#--nodes=}"; shift ;;
    --list) list=1; shift ;;
    postgres|cassandra|all) db="$1"; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
case "$nodes_arg" in ""|1|3|cosmos) ;; *) echo "--nodes 1, 3 or cosmos" >&2; exit 2 ;; esac

cache="${ENTRA_DB_PROXY_CACHE:-$HOME/.cache/entra-db-proxy}"
tracked=docs/COMPATIBILITY.md
# The regenerated document. The outermost run starts it as a copy of the tracked file; the runs
# of `all` (EDP_COMPAT_NESTED) update the same copy in turn.
generated_dir="${CARGO_TARGET_DIR:-$root/target}/compat"
generated="$generated_dir/COMPATIBILITY.md"
start_generated() {
  mkdir -p "$generated_dir"
  cp "$tracked" "$generated"
}
# Compare (CI) or --write: only in the outermost run, after every section is regenerated.
finish_generated() {
  if [ "${EDP_COMPAT_NESTED:-}" = 1 ]; then return 0; fi
  local regen=(scripts/clients.sh)
  local a
  for a in "${args[@]}"; do [ "$a" = --write ] || regen+=("$a"); done
  regen+=(--write)
  if [ $write -eq 1 ]; then
    cp "$generated" "$tracked"
    echo "== $tracked rewritten from $generated" >&2
  elif cmp -s "$tracked" "$generated"; then
    echo "== $generated is identical to $tracked" >&2
  elif [ "${CI:-}" = true ]; then
    echo "== $tracked is out of date: the client matrix now says (diff -u tracked generated):" >&2
    diff -u "$tracked" "$generated" >&2 || true
    echo "== regenerate it with: ${regen[*]}   (then review and commit $tracked)" >&2
    return 1
  else
    echo "== $generated differs from $tracked ($(diff "$tracked" "$generated" | grep -c '^[<>]') lines); see: diff -u $tracked $generated; to update it: ${regen[*]}" >&2
  fi
}

if [ "$db" = all ]; then
  [ -z "$only" ] || { echo "--only names one stack of one database: add postgres or cassandra" >&2; exit 2; }
  if [ $list -eq 1 ]; then "$root/scripts/clients.sh" --list postgres; "$root/scripts/clients.sh" --list cassandra; exit 0; fi
  start_generated
  rc=0
  EDP_COMPAT_NESTED=1 "$root/scripts/clients.sh" postgres || rc=1
  EDP_COMPAT_NESTED=1 "$root/scripts/clients.sh" ${nodes_arg:+--nodes "$nodes_arg"} cassandra || rc=1
  finish_generated || rc=1
  exit $rc
fi
# The targets each stack runs against: one for PostgreSQL; for Cassandra, a cluster of each size.
if [ "$db" = cassandra ]; then
  if [ -n "$nodes_arg" ]; then targets=("$nodes_arg"); else targets=(1 3 cosmos); fi
else
  [ -z "$nodes_arg" ] || { echo "--nodes is for cassandra" >&2; exit 2; }
  targets=("" warm)
fi

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

logs="$cache/clients-logs/$db"
if [ -z "$only" ]; then rm -rf "$logs"; fi; mkdir -p "$logs"; rm -f "$logs/results.txt"
work=$(mktemp -d)
results="$work/results.tsv"
: > "$results"
pids=()
# Stops what start_<db> started (the proxy, then the stand-ins, which stop their servers).
stop_target() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_target
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

proxy_log="$logs/proxy.log"
admin_port=""
# The proxy's warm-session hits (0 when none yet).
warm_hits() {
  python3 - "$admin_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("entra_db_proxy_warm_session_hits_total{")))
PY
}
# The Cosmos pass's counters, one line: the proxy's throttled, retried, given-up and request
# units, then the stand-in's throttled and charged (its file is rewritten every 100 ms).
cosmos_stats=""
cosmos_counters() {
  sleep 0.5
  python3 - "$admin_port" "$cosmos_stats" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
def m(name):
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if l.startswith(f"entra_db_proxy_cosmos_{name}{{"))
st = dict(kv.split("=", 1) for kv in open(sys.argv[2]).read().split())
print(m("throttled_total"), m("retried_total"), m("given_up_total"), m("request_units_total"),
      st["COSMOS_THROTTLED"], st["COSMOS_CHARGED"])
PY
}
# cosmos_verdict BEFORE AFTER (cosmos_counters lines): nothing if the stack's run was absorbed
# (throttled, every throttled answer retried, none given up, request units as charged), else
# why not. The figures go to stderr.
cosmos_verdict() {
  python3 - "$1" "$2" <<'PY'
import sys
b, a = ([float(x) for x in v.split()] for v in sys.argv[1:3])
thr, ret, gave, ru, s_thr, s_ru = (y - x for x, y in zip(b, a))
print(f"   cosmos: stand-in throttled {s_thr:g} charged {s_ru:.2f}; proxy throttled {thr:g} "
      f"retried {ret:g} given up {gave:g} request units {ru:.2f}", file=sys.stderr)
why = []
if s_thr <= 0 or thr <= 0:
    why.append("nothing was throttled")
if ret != thr:
    why.append(f"{thr:g} throttled answers but {ret:g} retries")
if gave:
    why.append(f"{gave:g} requests given up")
if abs(ru - s_ru) > 1e-6 * max(1.0, s_ru):
    why.append(f"request units {ru:.2f} where the stand-in charged {s_ru:.2f}")
print("; ".join(why))
PY
}
# Waits (at most 30 s) until the proxy has $1 warm sessions ready.
wait_warm_ready() {
  local _
  for _ in $(seq 1 150); do
    python3 - "$admin_port" "$1" <<'PY' && return 0
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
ready = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("entra_db_proxy_warm_sessions{"))
sys.exit(0 if ready >= float(sys.argv[2]) else 1)
PY
    sleep 0.2
  done
  return 1
}
# start_postgres [warm]: the stand-ins and one proxy (with warm sessions and the admin server).
start_postgres() {
  local mode="${1:-}"
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

  rm -f "$work/standins.env"   # a second start (the warm pass) waits for its own
  "$standins_bin" --env-file "$work/standins.env" > "$logs/standins${mode:+.$mode}.log" 2>&1 &
  pids+=($!)
  local _
  for _ in $(seq 1 300); do [ -f "$work/standins.env" ] && break; sleep 0.2; done
  [ -f "$work/standins.env" ] || { echo "stand-ins did not start:" >&2; tail -n 20 "$logs/standins.log" >&2; exit 1; }

  local port; port=$(free_port)
  local warm_args=()
  proxy_log="$logs/proxy.log"
  if [ "$mode" = warm ]; then
    admin_port=$(free_port)
    warm_args=(--postgres-warm-sessions 2 --admin-listen "127.0.0.1:$admin_port")
    proxy_log="$logs/proxy.warm.log"
  fi
  # The proxy alone sees the stand-ins' variables (fake service principal, CA file); the clients
  # below see only host, port, database and an unrelated user name.
  (set -a; . "$work/standins.env"; set +a
   RUST_LOG="${RUST_LOG:-info}" exec "$proxy_bin" --postgres-listen "127.0.0.1:$port" "${warm_args[@]}") \
    > "$proxy_log" 2>&1 &
  pids+=($!)
  wait_port "$port" || { echo "proxy did not listen on $port:" >&2; tail -n 20 "$proxy_log" >&2; exit 1; }

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
  echo "== proxy on 127.0.0.1:$port (upstream user $entra_user, database $db_name${mode:+, warm sessions})" >&2
}

# start_cassandra NODES: a Cassandra cluster of NODES nodes with a Cosmos-like account (its
# password is the fake ARM's primary key) and ONE proxy CQL listener in front of it; the stacks
# get only the proxy's address, as Service Connector's AZURE_COSMOS_CONTACTPOINT/PORT.
start_cassandra() {
  local tgt="$1" nodes="$1" cosmos_args=()
  if [ "$tgt" = cosmos ]; then nodes=1 cosmos_args=(--cosmos --throttle 0.2); fi
  eval "$(scripts/install-deps.sh)"   # Cassandra's jars and JDK 17 (EDP_CASSANDRA_LIB, EDP_JAVA), cached
  local target="${CARGO_TARGET_DIR:-target}/debug"
  local proxy_bin="${ENTRA_DB_PROXY_BIN:-$target/entra-db-proxy}"
  local standins_bin="${DBPROXY_CQL_STANDINS_BIN:-$target/dbproxy-cql-standins}"
  if [ -z "${cql_built:-}" ]; then
    if [ -z "${ENTRA_DB_PROXY_BIN:-}" ]; then
      echo "== build entra-db-proxy" >&2
      cargo build --quiet --bin entra-db-proxy
    fi
    if [ -z "${DBPROXY_CQL_STANDINS_BIN:-}" ]; then
      echo "== build dbproxy-cql-standins" >&2
      cargo build --quiet -p dbproxy-testkit --bin dbproxy-cql-standins
    fi
    cql_built=1
  fi

  local env_file="$work/cql-standins-$tgt.env"
  echo "== start Cassandra ($nodes node(s)${cosmos_args[*]:+, behind the Cosmos DB stand-in}) and the fake Entra ID / ARM" >&2
  "$standins_bin" --env-file "$env_file" --nodes "$nodes" "${cosmos_args[@]}" > "$logs/standins.n$tgt.log" 2>&1 &
  local standins_pid=$!
  pids+=("$standins_pid")
  local _
  for _ in $(seq 1 1500); do
    [ -f "$env_file" ] && break
    kill -0 "$standins_pid" 2>/dev/null || break
    sleep 0.2
  done
  [ -f "$env_file" ] || { echo "the CQL stand-ins did not start:" >&2; tail -n 20 "$logs/standins.n$tgt.log" >&2; exit 1; }

  local port; port=$(free_port)
  proxy_log="$logs/proxy.n$tgt.log"
  admin_port=$(free_port)
  cosmos_stats=$(. "$env_file"; echo "${STANDINS_COSMOS_STATS:-}")
  # The proxy alone sees the stand-ins' variables (AZURE_COSMOS_* of a service principal, the
  # CA file); the clients see only the proxy's address. --cassandra-data-center: the seed's apps
  # say withLocalDatacenter("datacenter1") / localDataCenter: 'datacenter1'.
  (set -a; . "$env_file"; set +a
   RUST_LOG="${RUST_LOG:-info}" ENTRA_DB_PROXY_CASSANDRA_LISTEN="127.0.0.1:$port" \
     exec "$proxy_bin" --cassandra-data-center datacenter1 --admin-listen "127.0.0.1:$admin_port") > "$proxy_log" 2>&1 &
  pids+=($!)
  wait_port "$port" || { echo "proxy did not listen on $port:" >&2; tail -n 20 "$proxy_log" >&2; exit 1; }

  # Nothing that could carry a credential or turn TLS on reaches the clients.
  unset AZURE_COSMOS_USERNAME AZURE_COSMOS_LISTKEYURL AZURE_COSMOS_SCOPE AZURE_COSMOS_CLIENTID \
        AZURE_COSMOS_CLIENTSECRET AZURE_COSMOS_TENANTID AZURE_COSMOS_KEYSPACE AZURE_CLIENT_ID \
        AZURE_CLIENT_SECRET AZURE_TENANT_ID SSL_CERT_FILE
  export AZURE_COSMOS_CONTACTPOINT=127.0.0.1 AZURE_COSMOS_PORT="$port"
  export CQL_HOST=127.0.0.1 CQL_PORT="$port" CQL_NODES="$nodes"
  echo "== proxy on 127.0.0.1:$port in front of $(. "$env_file"; echo "$STANDINS_CQL_NODE_ADDRS") (account $(. "$env_file"; echo "$STANDINS_CQL_ACCOUNT"))" >&2
}

# ---- 3. per target: start it, run the stacks, stop it ----------------------------------------
fails=0
t_started_sum=0 t_tests_sum=0
for tgt in "${targets[@]}"; do
t_before_start=$(now)
"start_$db" $tgt
t_started=$(now)
t_started_sum=$(( t_started_sum + t_started - t_before_start ))
if [ "$db" = postgres ]; then
  sfx=${tgt:+.$tgt}
  where=${tgt:+" (warm sessions)"}
else
  sfx=${tgt:+.n$tgt}
  where=${tgt:+" ($tgt node$([ "$tgt" = 1 ] || echo s))"}
  [ "$tgt" != cosmos ] || where=" (Cosmos DB stand-in, 20 % throttled)"
fi
for s in "${stacks[@]}"; do
  title=$(sed -n 's/^# title: //p' "$stacks_dir/$s/run.sh" | head -n1)
  t0=$(now)
  tlog="$logs/$s$sfx.test.log"
  hits_before="" cosmos_before=""
  # A stack that could not be installed has its row from the cold pass already.
  if [ "$tgt" = warm ] && [ -n "${install_fail[$s]:-}" ]; then continue; fi
  if [ -n "${install_fail[$s]:-}" ]; then
    line="FAIL $s ${install_fail[$s]}"
  else
    echo "== test $s$where" >&2
    if [ "$tgt" = warm ]; then
      wait_warm_ready 2 || echo "   warm sessions not ready after 30 s; see $proxy_log" >&2
      hits_before=$(warm_hits)
    fi
    if [ "$tgt" = cosmos ]; then cosmos_before=$(cosmos_counters); fi
    set +e
    out=$(timeout 300 "$stacks_dir/$s/run.sh" test 2> "$tlog")
    rc=$?
    set -e
    echo "$out" >> "$tlog"
    line=$(printf '%s\n' "$out" | grep -E "^(ok|FAIL|SKIP) $s( |$)" | tail -n1 || true)
    if [ $rc -ne 0 ] && [[ "$line" != FAIL* ]]; then
      reason=$(grep -v '^\s*$' "$tlog" | tail -n1 | cut -c1-200)
      [ $rc -eq 124 ] && reason="timed out after 300 s; $reason"
      line="FAIL $s exit $rc: $reason"
    elif [ $rc -eq 0 ] && [ -z "$line" ]; then
      line="FAIL $s printed no result line"
    fi
    # CQL: the driver must know exactly one host, the proxy, and say which protocol it speaks.
    if [ "$db" = cassandra ] && [[ "$line" == ok* ]]; then
      hosts=$(sed -n 's/.* hosts=\([0-9]*\).*/\1/p' <<<"$line")
      if [ "$hosts" != 1 ]; then
        line="FAIL $s the driver knows ${hosts:-an unknown number of} hosts, not just the proxy: ${line#ok $s }"
      elif ! grep -qE ' protocol=v[0-9]+' <<<"$line"; then
        line="FAIL $s no protocol=vN in its result: ${line#ok $s }"
      fi
    fi
  fi
  # Warm pass: the stack must have been served at least one warm session.
  if [ -n "$hits_before" ] && [[ "$line" == ok* ]]; then
    hits_after=$(warm_hits)
    if ! python3 -c "import sys; sys.exit(0 if float(sys.argv[2]) > float(sys.argv[1]) else 1)" "$hits_before" "$hits_after"; then
      line="FAIL $s was never served a warm session (see $proxy_log)"
    fi
  fi
  # Cosmos pass: the stack's throttled requests were absorbed and its request units counted.
  # The driver's last connections may still be closing (their last answers read): up to 10 s.
  if [ -n "$cosmos_before" ] && [[ "$line" == ok* ]]; then
    for _ in $(seq 1 20); do
      [ -n "$(cosmos_verdict "$cosmos_before" "$(cosmos_counters)" 2>/dev/null)" ] || break
    done
    why=$(cosmos_verdict "$cosmos_before" "$(cosmos_counters)")
    [ -z "$why" ] || line="FAIL $s through the Cosmos DB stand-in: $why"
  fi
  test_s=$(( $(now) - t0 ))
  if [ "$db" = postgres ]; then
    echo "${tgt:+[warm sessions] }$line" | tee -a "$logs/results.txt"
  else
    label="[$tgt node(s)] "; [ "$tgt" != cosmos ] || label="[Cosmos DB stand-in] "
    echo "${where:+$label}$line" | tee -a "$logs/results.txt"
  fi
  if [[ "$line" == FAIL* ]]; then
    fails=$((fails + 1))
    { echo "   --- last lines of $tlog:"; tail -n 15 "$tlog" | sed 's/^/   | /'
      echo "   --- last lines of $proxy_log:"; tail -n 15 "$proxy_log" | sed 's/^/   | /'; } >&2
  fi
  if [ "$db" = postgres ] && [ "$tgt" = warm ]; then
    # The row is the cold pass's unless the warm pass failed (or did not run: SKIP).
    if [[ "$line" == FAIL* ]]; then
      line="FAIL $s with warm sessions: ${line#"FAIL $s "}"
      awk -F'\t' -v OFS='\t' -v s="$s" -v l="$line" '$2 == s { $6 = l } { print }' "$results" > "$results.new"
      mv "$results.new" "$results"
    fi
  else
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$db" "$s" "$title" "${install_s[$s]}" "$test_s" "$line" "$tgt" >> "$results"
  fi
done
t_tests_sum=$(( t_tests_sum + $(now) - t_started ))
stop_target
done
t_end=$(now)

# ---- 4. the generated docs/COMPATIBILITY.md -----------------------------------------------------
# Durations (and which proxy ran) stay out of the document, which must not change run to run.
if [ -n "${ENTRA_DB_PROXY_BIN:-}" ]; then
  rev="$("$ENTRA_DB_PROXY_BIN" --version 2>/dev/null || echo entra-db-proxy) (prebuilt, ENTRA_DB_PROXY_BIN)"
else
  rev="entra-db-proxy $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + local changes')"
fi
{ printf '# %s; %s s in all: install %s s, build and start %s s, tests %s s\n' "$rev" \
    "$(( t_end - t_start ))" "$(( t_installed - t_start ))" "$t_started_sum" "$t_tests_sum"
  printf '# db\tstack\ttitle\tinstall s\ttest s\tresult\ttarget\n'
  cat "$results"; } > "$logs/timings.tsv"
[ "${EDP_COMPAT_NESTED:-}" = 1 ] || start_generated
ALL_STACKS="${all_stacks[*]}" ONLY="$only" NODES="$nodes_arg" TARGETS="${targets[*]}" \
  python3 tests/clients/gen_compat.py "$db" "$results" "$generated"

echo "== $(( t_end - t_start )) s (install $(( t_installed - t_start )) s, build+start $t_started_sum s, tests $t_tests_sum s); $fails failed; logs and timings in $logs; generated $generated" >&2
doc_ok=0
finish_generated || doc_ok=1
[ $fails -eq 0 ] && [ $doc_ok -eq 0 ]
