#!/usr/bin/env bash
# PostgreSQL through entra-db-proxy beside its peers, in one run, on the local stand-ins (a real
# PostgreSQL with TLS + `password` auth; a fake Entra ID whose tokens are the Entra role's
# password, so the proxy logs in with a token-length password). Targets, each measured in
# interleaved rounds (every target once per round, in turn), medians printed:
#   direct     pgbench → PostgreSQL, TLS (verify-full), password role `bench`
#   proxy      pgbench → entra-db-proxy (plain, loopback) → TLS, Entra token
#   warm       the same with warm upstream sessions (-C workloads only; skipped, with a
#              message, while the proxy has no warm_sessions setting)
#   alt        only with ALT_ARGS: the proxy with those extra flags (a variant measured in the
#              same run, e.g. ALT_ARGS="--session-threads 0"); -S and -C workloads
#   pgbouncer  pgbench → pgbouncer (session pool, plain) → TLS (verify-full), role `bench`
#   haproxy    pgbench → HAProxy (TCP mode) → PostgreSQL, TLS end to end (verify-full)
# pgbouncer and HAProxy are installed from Debian when missing (apt-get, as root or via sudo).
# Workloads: `-S -M prepared` at 1, 8 and 32 clients (the relay's cost per message); `-S -C`
# at 4 clients, a new connection per transaction as fast as they go (login cost; pgbench's
# average connection time); the same at CONNECT_RATE (default 40) connections per second, the
# way an app that connects per request behaves (what warm sessions are for: a tight -C loop
# is bound by the upstream's login rate, as each warm session serves one client only);
# `COPY … TO STDOUT` and `COPY … FROM STDIN` of COPY_MB (default 500) MB (bulk).
# Every ratio is throughput / direct's (for COPY: direct's time / the target's). The CPU per
# transaction (user + system, /proc/PID/stat over its runs) of the process in the middle (the
# proxy, pgbouncer, HAProxy) is printed too.
#
# Usage: bench/pgbench.sh            ROUNDS=3 DURATION=10 (s per run), about 12 minutes
#        ROUNDS=1 DURATION=5 COPY_MB=100 bench/pgbench.sh    a short run, about 3 minutes
# Environment: ROUNDS, DURATION, COPY_MB, TARGETS (default "direct proxy pgbouncer haproxy"),
# WORKLOADS (default "S C CR copy": -S, -C, -C at a rate, COPY), CONNECT_RATE, WARM_SESSIONS
# (default 4), PROXY_ARGS (extra entra-db-proxy flags for every proxy), ALT_ARGS (see `alt`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
secs="${DURATION:-10}"
copy_mb="${COPY_MB:-500}"
warm_n="${WARM_SESSIONS:-4}"
connect_rate="${CONNECT_RATE:-40}"
read -r -a workloads <<<"${WORKLOADS:-S C CR copy}"
read -r -a targets <<<"${TARGETS:-direct proxy pgbouncer haproxy}"
work=$(mktemp -d)
# shellcheck source=bench/pg-common.sh
. bench/pg-common.sh

have() { printf '%s\n' "${targets[@]}" | grep -qx "$1"; }
run_workload() { printf '%s\n' "${workloads[@]}" | grep -qx "$1"; }
need_apt=()
have pgbouncer && ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && need_apt+=(pgbouncer)
have haproxy && ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ] && need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing from Debian: ${need_apt[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi
export PATH="$PATH:/usr/sbin"

build_release
start_standins
chmod 755 "$work"
read -r -a extra <<<"${PROXY_ARGS:-}"
proxy_port=$(free_port)
start_proxy proxy "$proxy_port" -- "${extra[@]}"
cold_pid=$proxy_pid
alt_port=
if [ -n "${ALT_ARGS:-}" ]; then
  read -r -a alt_args <<<"$ALT_ARGS"
  alt_port=$(free_port)
  start_proxy alt "$alt_port" -- "${alt_args[@]}" "${extra[@]}"
  alt_pid=$proxy_pid
fi

# Warm sessions: the setting is the PostgreSQL listener's warm_sessions (flag and env alike).
warm_flag=
help=$("$target/entra-db-proxy" --help)
for f in --postgres-warm-sessions --warm-sessions; do
  grep -q -- "$f" <<<"$help" && { warm_flag=$f; break; }
done
warm_port=
if [ -n "$warm_flag" ]; then
  warm_port=$(free_port)
  warm_admin=$(free_port)
  start_proxy warm "$warm_port" -- "$warm_flag" "$warm_n" --admin-listen "127.0.0.1:$warm_admin" "${extra[@]}"
  warm_pid=$proxy_pid
else
  echo "note: this entra-db-proxy has no warm_sessions setting; the warm -C rows are skipped" >&2
fi

if have pgbouncer; then
  bouncer_port=$(free_port)
  cat >"$work/pgbouncer.ini" <<EOF
[databases]
$STANDINS_DB = host=127.0.0.1 port=$STANDINS_PG_PORT dbname=$STANDINS_DB user=$STANDINS_BENCH_USER password=$STANDINS_BENCH_PASSWORD
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
server_tls_sslmode = verify-full
server_tls_ca_file = $work/bouncer/ca.pem
logfile = $work/bouncer/pgbouncer.log
EOF
  printf '"%s" "%s"\n' "$STANDINS_BENCH_USER" "$STANDINS_BENCH_PASSWORD" >"$work/userlist.txt"
  chmod 644 "$work/pgbouncer.ini" "$work/userlist.txt"
  mkdir -p "$work/bouncer"
  cp "$SSL_CERT_FILE" "$work/bouncer/ca.pem" # readable by pgbouncer's user
  chmod 644 "$work/bouncer/ca.pem"
  # pgbouncer refuses to run as root.
  if [ "$(id -u)" -eq 0 ]; then as=(runuser -u postgres --); chown postgres "$work/bouncer"; else as=(); fi
  "${as[@]}" pgbouncer "$work/pgbouncer.ini" 2>>"$work/pgbouncer.err" &
  pids+=($!)
  wait_port "$bouncer_port" || { echo "pgbouncer did not start:" >&2; cat "$work/pgbouncer.err" "$work/bouncer/pgbouncer.log" >&2; exit 1; }
  # runuser forks: pgbouncer itself is the process started with this configuration file.
  bouncer_pid=$(pgrep -f -n "^pgbouncer $work/pgbouncer.ini" || true)
  PGSSLMODE=disable psql -qAtX -h 127.0.0.1 -p "$bouncer_port" -U "$STANDINS_BENCH_USER" -c "SELECT 1" "$STANDINS_DB" >/dev/null ||
    { echo "pgbouncer cannot log in upstream:" >&2; tail -20 "$work/bouncer/pgbouncer.log" >&2; exit 1; }
fi
if have haproxy; then
  haproxy_port=$(free_port)
  cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 10s
  timeout client 1h
  timeout server 1h
frontend pg
  bind 127.0.0.1:$haproxy_port
  default_backend pg
backend pg
  server pg 127.0.0.1:$STANDINS_PG_PORT
EOF
  haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.err" &
  pids+=($!)
  haproxy_pid=$!
  wait_port "$haproxy_port" || { echo "HAProxy did not start:" >&2; cat "$work/haproxy.err" >&2; exit 1; }
fi

# conn TARGET: libpq environment and arguments for pgbench/psql, in `conn_env` / `conn_args`.
conn() {
  case "$1" in
    direct) conn_env=(PGSSLMODE=verify-full PGSSLROOTCERT="$SSL_CERT_FILE" PGPASSWORD="$STANDINS_BENCH_PASSWORD")
      conn_args=(-h 127.0.0.1 -p "$STANDINS_PG_PORT" -U "$STANDINS_BENCH_USER" "$STANDINS_DB") ;;
    proxy) conn_env=(PGSSLMODE=disable); conn_args=(-h 127.0.0.1 -p "$proxy_port" -U anyone "$STANDINS_DB") ;;
    warm) conn_env=(PGSSLMODE=disable); conn_args=(-h 127.0.0.1 -p "$warm_port" -U anyone "$STANDINS_DB") ;;
    alt) conn_env=(PGSSLMODE=disable); conn_args=(-h 127.0.0.1 -p "$alt_port" -U anyone "$STANDINS_DB") ;;
    pgbouncer) conn_env=(PGSSLMODE=disable); conn_args=(-h 127.0.0.1 -p "$bouncer_port" -U "$STANDINS_BENCH_USER" "$STANDINS_DB") ;;
    haproxy) conn_env=(PGSSLMODE=verify-full PGSSLROOTCERT="$SSL_CERT_FILE" PGPASSWORD="$STANDINS_BENCH_PASSWORD")
      conn_args=(-h 127.0.0.1 -p "$haproxy_port" -U "$STANDINS_BENCH_USER" "$STANDINS_DB") ;;
  esac
}
# The process in the middle for TARGET (empty: none, or not found).
pid_of() {
  case "$1" in
    proxy) echo "$cold_pid" ;; warm) echo "$warm_pid" ;; alt) echo "$alt_pid" ;;
    pgbouncer) echo "${bouncer_pid:-}" ;; haproxy) echo "${haproxy_pid:-}" ;; *) echo ;;
  esac
}

conn proxy
env "${conn_env[@]}" pgbench -i -s 10 -q "${conn_args[@]}" >/dev/null 2>&1
env "${conn_env[@]}" psql -qX "${conn_args[@]}" -c "CREATE UNLOGGED TABLE IF NOT EXISTS bench_copy (t text)" >/dev/null
# The COPY input: rows of 1000 characters.
python3 - "$work/copy.txt" "$copy_mb" <<'EOF'
import sys
row = ("x" * 999 + "\n").encode()
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2]) * 1000):
        f.write(row)
EOF
copy_rows=$((copy_mb * 1000))

# Results: one line per run, "workload target value [proxy-cpu-µs-per-transaction]".
results="$work/results"
: >"$results"
pgb_run() { # WORKLOAD TARGET pgbench-args...
  local w=$1 t=$2 pid before after out tps extra_fig=
  shift 2
  conn "$t"
  pid=$(pid_of "$t")
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(env "${conn_env[@]}" pgbench "$@" -n -T "$secs" "${conn_args[@]}" 2>&1) || { echo "pgbench $* ($t) failed:" >&2; echo "$out" >&2; exit 1; }
  tps=$(awk '/^tps = / { print $3; exit }' <<<"$out")
  if [ -z "$tps" ] || [ "$(awk '/^number of transactions actually processed: / { print $6; exit }' <<<"$out")" = 0 ]; then
    echo "note: pgbench $* ($t) completed no transaction in ${secs} s (connections too slow on a loaded machine?); not counted" >&2
    return 0
  fi
  if [ -n "$pid" ]; then
    after=$(cpu_ticks "$pid")
    extra_fig=$(python3 -c "print(f'{($after - $before) / $clk_tck * 1e6 / ($tps * $secs):.1f}')")
  fi
  echo "$w $t $tps ${extra_fig:--}" >>"$results"
  # -C: pgbench's average connection time (ms), as a second row.
  if [[ " $* " == *" -C "* ]]; then
    echo "$w/connect-ms $t $(awk '/^average connection time = / { print $5; exit }' <<<"$out") -" >>"$results"
  fi
}
copy_run() { # out|in TARGET
  local t=$2 start end
  conn "$t"
  env "${conn_env[@]}" psql -qX "${conn_args[@]}" -c "TRUNCATE bench_copy" >/dev/null
  start=$(date +%s%N)
  if [ "$1" = out ]; then
    env "${conn_env[@]}" psql -qX "${conn_args[@]}" -c "COPY (SELECT repeat('x', 999) FROM generate_series(1, $copy_rows)) TO STDOUT" >/dev/null
  else
    env "${conn_env[@]}" psql -qX "${conn_args[@]}" -c "COPY bench_copy FROM STDIN" <"$work/copy.txt" >/dev/null
  fi
  end=$(date +%s%N)
  echo "copy-$1 $t $(python3 -c "print(($end - $start) / 1e9)") -" >>"$results"
}

s_targets=() c_targets=()
for t in "${targets[@]}"; do
  s_targets+=("$t")
  c_targets+=("$t")
  [ "$t" = proxy ] && [ -n "$warm_port" ] && c_targets+=(warm)
  [ "$t" = proxy ] && [ -n "$alt_port" ] && s_targets+=(alt) && c_targets+=(alt)
done
echo "pgbench.sh: ${rounds} round(s), ${secs} s per run, COPY ${copy_mb} MB; targets: ${targets[*]}${warm_port:+ (+ warm, $warm_flag $warm_n)}${alt_port:+ (+ alt: $ALT_ARGS)}; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$rounds"); do
  echo "round $r/$rounds…" >&2
  if run_workload S; then
    for c in 1 8 32; do
      for t in "${s_targets[@]}"; do pgb_run "S-c$c" "$t" -S -M prepared -c "$c" -j $((c < 2 ? 1 : 2)); done
    done
  fi
  if run_workload C; then
    for t in "${c_targets[@]}"; do pgb_run "C-c4" "$t" -S -C -c 4 -j 2; done
  fi
  if run_workload CR; then
    for t in "${c_targets[@]}"; do pgb_run "CR-c4" "$t" -S -C -c 4 -j 2 -R "$connect_rate"; done
  fi
  if run_workload copy; then
    for dir in out in; do
      for t in "${targets[@]}"; do copy_run "$dir" "$t"; done
    done
  fi
done

python3 - "$results" "$rounds" "$secs" "$copy_mb" "$connect_rate" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
order = ["direct", "proxy", "alt", "warm", "pgbouncer", "haproxy"]
fig = {}
cpu = {}
for w, t, v, c in rows:
    if v in ("", "-"):
        continue
    fig.setdefault(w, {}).setdefault(t, []).append(float(v))
    if c != "-":
        cpu.setdefault((w, t), []).append(float(c))
targets = [t for t in order if any(t in d for d in fig.values())]
names = {
    "S-c1": "-S -M prepared, 1 client (tps)",
    "S-c8": "-S -M prepared, 8 clients (tps)",
    "S-c32": "-S -M prepared, 32 clients (tps)",
    "C-c4": "-S -C, 4 clients (tps)",
    "C-c4/connect-ms": "-S -C, 4 clients: avg connect (ms)",
    "CR-c4": f"-S -C -R {sys.argv[5]}, 4 clients (tps)",
    "CR-c4/connect-ms": f"-S -C -R {sys.argv[5]}, 4 clients: avg connect (ms)",
    "copy-out": f"COPY TO STDOUT, {sys.argv[4]} MB (s)",
    "copy-in": f"COPY FROM STDIN, {sys.argv[4]} MB (s)",
}
print(f"\nmedians of {sys.argv[2]} round(s), {sys.argv[3]} s per pgbench run; ratio = throughput / direct's")
print(f"{'workload':<38}" + "".join(f"{t:>18}" for t in targets))
for w, name in names.items():
    if w not in fig:
        continue
    d = fig[w]
    base = statistics.median(d["direct"]) if "direct" in d else None
    cells = []
    for t in targets:
        if t not in d:
            cells.append(f"{'–':>18}")
            continue
        m = statistics.median(d[t])
        lower_is_better = w.startswith("copy") or w.endswith("connect-ms")
        if base and t != "direct":
            ratio = base / m if lower_is_better else m / base
            cells.append(f"{m:>10,.2f} ({ratio:.2f})" if m < 100 else f"{m:>10,.0f} ({ratio:.2f})")
        else:
            cells.append(f"{m:>18,.2f}" if m < 100 else f"{m:>18,.0f}")
    print(f"{name:<38}" + "".join(cells))
for (w, t), v in sorted(cpu.items()):
    if w in names and not w.endswith("connect-ms"):
        print(f"CPU per transaction, {names[w].split(' (')[0]} [{t}]: {statistics.median(v):.1f} µs")
EOF
if [ -n "$warm_port" ]; then
  # How the warm proxy's clients were served: hits, and misses by reason (a miss is a cold login).
  python3 - "$warm_admin" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
hits = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("entra_db_proxy_warm_session_hits_total{"))
misses = {}
for l in text.splitlines():
    if l.startswith("entra_db_proxy_warm_session_misses_total{"):
        reason = l.split('reason="', 1)[1].split('"', 1)[0]
        misses[reason] = misses.get(reason, 0) + float(l.split()[-1])
print(f"warm sessions [warm]: {hits:.0f} hits, misses: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(misses.items())) or "none"))
EOF
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
