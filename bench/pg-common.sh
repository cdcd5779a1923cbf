# Shared by bench/pgbench.sh and bench/pgprofile.sh (sourced, not run): builds the release
# binaries once, starts the stand-ins (a real PostgreSQL with TLS + `password` auth, a fake
# Entra ID) and entra-db-proxy processes, and reads a process's CPU time.
# The caller sets `work` (a scratch directory) first; everything started is stopped on exit.

pids=()
cleanup() { # newest first
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 "${2:-300}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# Builds entra-db-proxy and the stand-ins (release; reused when up to date; NO_BUILD=1: as built).
build_release() {
  eval "$(scripts/install-deps.sh)"
  if [ -z "${NO_BUILD:-}" ]; then
    cargo build --quiet --release --bin entra-db-proxy
    cargo build --quiet --release -p dbproxy-testkit --bin dbproxy-standins
  fi
  target="${CARGO_TARGET_DIR:-target}/release"
}

# Starts the stand-ins and exports their variables (AZURE_POSTGRESQL_*, STANDINS_*).
start_standins() {
  "$target/dbproxy-standins" --env-file "$work/env" 2>"$work/standins.log" &
  pids+=($!)
  local _
  for _ in $(seq 1 600); do [ -f "$work/env" ] && break; sleep 0.2; done
  [ -f "$work/env" ] || { echo "the stand-ins did not start:" >&2; tail -20 "$work/standins.log" >&2; exit 1; }
  set -a
  # shellcheck source=/dev/null
  . "$work/env"
  set +a
}

# start_proxy NAME PORT [WRAPPER...] [-- PROXY ARGS...]: entra-db-proxy on 127.0.0.1:PORT
# (plain towards the client), optionally under WRAPPER (e.g. valgrind); sets proxy_pid.
start_proxy() {
  local name=$1 port=$2
  shift 2
  local wrapper=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do wrapper+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  RUST_LOG=warn "${wrapper[@]}" "${PROXY_BIN:-$target/entra-db-proxy}" --postgres-listen "127.0.0.1:$port" "$@" \
    2>"$work/$name.log" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  wait_port "$port" 1200 || { echo "the proxy ($name) did not listen:" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
}

# CPU time (user + system) of a process and its threads, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)
