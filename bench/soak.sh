#!/usr/bin/env bash
# Soak: one entra-db-proxy process with a PostgreSQL and a CQL listener under mixed load for
# MINUTES, on the local stand-ins (`dbproxy-standins --cassandra`: a real PostgreSQL with TLS +
# password auth, a real Cassandra 5.0 with TLS + PasswordAuthenticator, a fake Entra ID and ARM
# listKeys), all on loopback. Usage: bench/soak.sh [MINUTES, default 10]
#
# Load, all at once and continuously:
#   * pgbench, 4 persistent clients, 90 % select-only / 10 % simple-update (writes), throttled
#     to 500 tps in all (-R) so that the rest of the load gets its share of a small machine;
#   * pgbench, 4 clients with a new connection per transaction (-C, select-only): churn;
#   * CQL (dbproxy-cqlsoak, scylla driver): prepared INSERTs and checked SELECTs on one
#     long-lived session (8 in flight) plus a new short session about every second.
# Credentials: Entra tokens live SOAK_TOKEN_LIFETIME s (default 90), so the proxy refreshes
# ahead (at half the lifetime) about every 45 s, and the PostgreSQL role's password follows
# each new token (the old one stops working). The Cosmos DB keys rotate twice (SIGUSR1 to the
# stand-ins): at 1/3 of the run the primary key is regenerated (only the secondary logs in),
# at 2/3 the secondary (only the new primary logs in).
# Every 10 s the proxy's RSS (VmRSS; also RssAnon, the heap), open fds (/proc/PID/fd),
# threads, its /metrics counters and the clients' rates go to soak.tsv in the output directory
# (SOAK_OUT, default a new /tmp/soak.* directory; it is kept and printed).
#
# The run FAILS (exit 1, the reasons printed) if:
#   * a client reports an error: pgbench exits non-zero, reports failed transactions or an
#     aborted client; dbproxy-cqlsoak counts any failed request or wrong/missing row;
#   * the proxy exits, logs an ERROR, or logs a WARN other than the expected "the upstream
#     refused the credential; retrying with a fresh one" (key rotations, token rotation races);
#   * fewer PostgreSQL token refreshes than MINUTES, or the proxy never fetched changed
#     Cosmos keys after a rotation;
#   * growth after warm-up: of the samples after the first minute, the median of the last 20 %
#     exceeds the median of the first 20 % by more than 20 % RSS or more than 10 fds.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
case "$minutes" in '' | *[!0-9]*) echo "usage: bench/soak.sh [MINUTES]" >&2; exit 2 ;; esac
[ "$minutes" -ge 2 ] || { echo "bench/soak.sh: at least 2 minutes (1 is warm-up)" >&2; exit 2; }
secs=$((minutes * 60))
lifetime="${SOAK_TOKEN_LIFETIME:-90}"
eval "$(scripts/install-deps.sh)"
export EDP_CASSANDRA_LIB EDP_JAVA
cargo build --quiet --release --bin entra-db-proxy
cargo build --quiet --release -p dbproxy-testkit --bin dbproxy-standins --bin dbproxy-cqlsoak
target="${CARGO_TARGET_DIR:-target}/release"

out="${SOAK_OUT:-$(mktemp -d /tmp/soak.XXXXXX)}"
mkdir -p "$out"
pids=()
standins_pid=
cleanup() { # newest first: the clients, the proxy, then the stand-ins (which stop Cassandra)
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

echo "soak: ${minutes} min, tokens live ${lifetime} s; output in $out"
"$target/dbproxy-standins" --cassandra --token-lifetime "$lifetime" --env-file "$out/env" 2>"$out/standins.log" &
standins_pid=$!
pids+=("$standins_pid")
for _ in $(seq 1 1500); do [ -f "$out/env" ] && break; kill -0 "$standins_pid" 2>/dev/null || break; sleep 0.2; done
[ -f "$out/env" ] || { echo "soak: the stand-ins did not start:" >&2; tail -20 "$out/standins.log" >&2; exit 1; }
set -a
# shellcheck source=/dev/null
. "$out/env"
set +a

pg_port=$(free_port); cql_port=$(free_port); admin_port=$(free_port)
RUST_LOG="warn,dbproxy_credentials=info" "$target/entra-db-proxy" --log-format json \
  --postgres-listen "127.0.0.1:$pg_port" --cassandra-listen "127.0.0.1:$cql_port" \
  --admin-listen "127.0.0.1:$admin_port" --max-shutdown-delay 5s 2>"$out/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
for p in "$pg_port" "$cql_port" "$admin_port"; do
  wait_port "$p" || { echo "soak: the proxy did not listen on $p:" >&2; tail -20 "$out/proxy.log" >&2; exit 1; }
done

export PGSSLMODE=disable
pg=(-h 127.0.0.1 -p "$pg_port" -U anyone "$STANDINS_DB")
pgbench -i -s 10 -q "${pg[@]}" >"$out/pgbench-init.log" 2>&1 || { echo "soak: pgbench -i failed" >&2; cat "$out/pgbench-init.log" >&2; exit 1; }

# The load. Each client's exit status lands in $out/<name>.rc.
run_bg() { # name command...; killing the wrapper kills the command too
  local name=$1; shift
  (
    set +e
    "$@" >"$out/$name.out" 2>"$out/$name.err" &
    child=$!
    trap 'kill "$child" 2>/dev/null; exit 143' TERM
    wait "$child"
    echo $? >"$out/$name.rc"
  ) &
  pids+=($!)
}
run_bg pgbench-persistent pgbench -n -c 4 -j 2 -R 500 -T "$secs" -P 10 -b select-only@9 -b simple-update@1 "${pg[@]}"
run_bg pgbench-churn pgbench -n -C -c 4 -j 2 -T "$secs" -P 10 -S "${pg[@]}"
run_bg cql "$target/dbproxy-cqlsoak" --addr "127.0.0.1:$cql_port" --seconds "$secs" --stats "$out/cql.stats"

metrics() { # prints: pg_conns cql_conns active handshake_failures pg_refreshes cql_refreshes refresh_failures
  curl -s --max-time 5 "http://127.0.0.1:$admin_port/metrics" | awk '
    function lbl(s, k,   r) { r = s; if (!sub(".*" k "=\"", "", r)) return ""; sub("\".*", "", r); return r }
    /^entra_db_proxy_connections_total\{/ { p = lbl($1, "protocol"); proto[lbl($1, "listener")] = p; conns[p] += $2 }
    /^entra_db_proxy_connections_active\{/ { active += $2 }
    /^entra_db_proxy_handshake_failures_total\{/ { hf += $2 }
    /^entra_db_proxy_credential_refreshes_total\{/ { ref[lbl($1, "listener")] = $2 }
    /^entra_db_proxy_credential_refresh_failures_total\{/ { rf += $2 }
    END { for (l in ref) r[proto[l]] += ref[l]
          printf "%d\t%d\t%d\t%d\t%d\t%d\t%d", conns["postgres"], conns["cassandra"], active, hf, r["postgres"], r["cassandra"], rf }'
}
last_tps() { awk '/^progress:/ { t = $4 } END { printf "%s", (t == "" ? "0" : t) }' "$out/$1.err" 2>/dev/null || printf 0; }

tsv="$out/soak.tsv"
printf 'time_utc\telapsed_s\trss_kb\trss_anon_kb\tfds\tthreads\tpg_conns_total\tcql_conns_total\tconns_active\thandshake_failures\tpg_token_refreshes\tcql_refreshes\trefresh_failures\tpg_tps_persistent\tpg_tps_churn\tcql_ops_total\tcql_errors\tcql_sessions\tload1\n' >"$tsv"
start=$(date +%s)
rotations=0
while :; do
  now=$(date +%s); el=$((now - start))
  kill -0 "$proxy_pid" 2>/dev/null || { echo "soak: the proxy exited" >&2; break; }
  if ((rotations < 2 && el >= (rotations + 1) * secs / 3)); then
    kill -USR1 "$standins_pid"; rotations=$((rotations + 1))
  fi
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$proxy_pid/status")
  anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$proxy_pid/status")
  thr=$(awk '/^Threads:/ { print $2 }' "/proc/$proxy_pid/status")
  fds=$(find "/proc/$proxy_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  cqls=$(tr '\t' ' ' 2>/dev/null <"$out/cql.stats" || echo "0 0 0")
  read -r cops cerr csess <<<"$cqls"
  printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$el" "$rss" "$anon" "$fds" "$thr" \
    "$(metrics)" "$(last_tps pgbench-persistent)" "$(last_tps pgbench-churn)" "${cops:-0}" "${cerr:-0}" "${csess:-0}" \
    "$(cut -d' ' -f1 /proc/loadavg)" >>"$tsv"
  done_all=1
  for n in pgbench-persistent pgbench-churn cql; do [ -f "$out/$n.rc" ] || done_all=0; done
  [ "$done_all" = 1 ] && break
  sleep 10
done
for n in pgbench-persistent pgbench-churn cql; do
  for _ in $(seq 1 120); do [ -f "$out/$n.rc" ] && break; sleep 1; done
done

# Verdict. Cassandra's log goes with the results (the stand-ins remove it when they stop).
cp "${STANDINS_CQL_SYSTEM_LOG:-}" "$out/cassandra-system.log" 2>/dev/null || true
fail=()
for n in pgbench-persistent pgbench-churn cql; do
  rc=$(cat "$out/$n.rc" 2>/dev/null || echo missing)
  [ "$rc" = 0 ] || fail+=("$n exited with status $rc (see $out/$n.err)")
done
for n in pgbench-persistent pgbench-churn; do
  grep -q 'aborted' "$out/$n.err" "$out/$n.out" 2>/dev/null && fail+=("$n: a client aborted (see $out/$n.err)")
  f=$(awk '/^number of failed transactions:/ { print $5 }' "$out/$n.out")
  [ "${f:-missing}" = 0 ] || fail+=("$n: failed transactions: ${f:-no summary}")
done
kill -0 "$proxy_pid" 2>/dev/null || fail+=("the proxy is not running any more")
rot_done=$(grep -c '^cosmos key rotation [0-9]*: regenerated' "$out/standins.log" || true)
[ "$rot_done" -ge 2 ] || fail+=("only $rot_done of 2 Cosmos key rotations happened (see $out/standins.log)")

py_ok=1
python3 - "$tsv" "$out/proxy.log" "$minutes" "$rot_done" >"$out/summary.txt" <<'EOF' || py_ok=0
import collections, json, statistics, sys
tsv, log, minutes, rotations = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(tsv)]
head, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
num = lambda r, k: float(r[k] or 0)
fails = []
last = rows[-1]
span = max(num(last, "elapsed_s"), 1)
print(f"samples: {len(rows)} over {span:.0f} s; load average (1 min) {min(num(r,'load1') for r in rows):.1f}-{max(num(r,'load1') for r in rows):.1f}, median {statistics.median(num(r,'load1') for r in rows):.1f}")
pgc, cqlc = num(last, "pg_conns_total"), num(last, "cql_conns_total")
print(f"proxy connections: PostgreSQL {pgc:.0f} ({pgc/span:.1f}/s), CQL {cqlc:.0f}; handshake failures {num(last,'handshake_failures'):.0f}")
print(f"CQL: {num(last,'cql_ops_total'):.0f} requests ({num(last,'cql_ops_total')/span:.0f}/s), {num(last,'cql_sessions'):.0f} sessions, {num(last,'cql_errors'):.0f} errors")
tps_p = [num(r, "pg_tps_persistent") for r in rows[1:-1]] or [0]
tps_c = [num(r, "pg_tps_churn") for r in rows[1:-1]] or [0]
print(f"pgbench tps (10 s progress, median / min): persistent {statistics.median(tps_p):.0f} / {min(tps_p):.0f}, churn (-C) {statistics.median(tps_c):.0f} / {min(tps_c):.0f}")
pg_ref, cql_ref, ref_fail = num(last, "pg_token_refreshes"), num(last, "cql_refreshes"), num(last, "refresh_failures")
print(f"credential refreshes: PostgreSQL token {pg_ref:.0f}, CQL (ARM token/keys) {cql_ref:.0f}, failures {ref_fail:.0f}; Cosmos key rotations {rotations}")
if pg_ref < minutes:
    fails.append(f"only {pg_ref:.0f} PostgreSQL token refreshes in {minutes} min")
levels, warns, msgs = collections.Counter(), collections.Counter(), collections.Counter()
keys_changed = 0
for line in open(log):
    try:
        v = json.loads(line)
    except ValueError:
        levels["unparsed"] += 1
        continue
    lvl, msg = v.get("level", "?"), v.get("message", "")
    levels[lvl] += 1
    msgs[msg] += 1
    if msg == "Cosmos DB account keys obtained" and v.get("keys_changed") in (True, "true"):
        keys_changed += 1
    if lvl in ("WARN", "ERROR"):
        warns[(lvl, msg)] += 1
print("proxy log:", dict(levels))
for m in ("access token obtained", "Cosmos DB account keys obtained", "the database rejected the cached access token; fetching a new one",
          "the database refused the Cosmos DB account key; fetching the keys again"):
    print(f"  {msgs[m]:6d}  {m}")
print(f"  {keys_changed:6d}  (of which keys_changed=true)")
expected = {"the upstream refused the credential; retrying with a fresh one"}
for (lvl, msg), n in warns.most_common():
    print(f"  {n:6d}  {lvl} {msg}")
    if lvl == "ERROR" or msg not in expected:
        fails.append(f"proxy logged {lvl} {msg!r} {n} times")
if rotations >= 1 and keys_changed < 1:
    fails.append("the proxy never fetched changed Cosmos keys after a rotation")
warm = [r for r in rows if num(r, "elapsed_s") >= 60]
if len(warm) < 5:
    fails.append(f"only {len(warm)} samples after the warm-up minute")
else:
    k = max(1, len(warm) // 5)
    med = lambda rs, key: statistics.median(num(r, key) for r in rs)
    rss0, rss1 = med(warm[:k], "rss_kb"), med(warm[-k:], "rss_kb")
    fd0, fd1 = med(warm[:k], "fds"), med(warm[-k:], "fds")
    start_rss, start_fd = num(rows[0], "rss_kb"), num(rows[0], "fds")
    print(f"RSS KiB: start {start_rss:.0f}, after warm-up (median of first 20 %) {rss0:.0f}, end (median of last 20 %) {rss1:.0f} ({(rss1/rss0-1)*100:+.1f} %), max {max(num(r,'rss_kb') for r in rows):.0f}")
    a0, a1 = med(warm[:k], "rss_anon_kb"), med(warm[-k:], "rss_anon_kb")
    print(f"RssAnon KiB (heap): start {num(rows[0], 'rss_anon_kb'):.0f}, after warm-up {a0:.0f}, end {a1:.0f} ({(a1/max(a0,1)-1)*100:+.1f} %)")
    print(f"fds:     start {start_fd:.0f}, after warm-up {fd0:.0f}, end {fd1:.0f} ({fd1-fd0:+.0f}), max {max(num(r,'fds') for r in rows):.0f}")
    print(f"threads: {min(num(r,'threads') for r in rows):.0f}-{max(num(r,'threads') for r in rows):.0f}")
    if rss1 > rss0 * 1.20:
        fails.append(f"RSS grew {(rss1/rss0-1)*100:.1f} % after warm-up (limit 20 %)")
    if fd1 > fd0 + 10:
        fails.append(f"open fds grew by {fd1-fd0:.0f} after warm-up (limit 10)")
for f in fails:
    print("FAIL: " + f)
sys.exit(1 if fails else 0)
EOF
echo
echo "== soak summary (${minutes} min; $out) =="
cat "$out/summary.txt"
for n in pgbench-persistent pgbench-churn; do
  echo "$n: $(awk '/^number of transactions actually processed:/ { t = $6 } /^number of failed transactions:/ { f = $5 } /^tps = / { tps = $3 } END { printf "%s transactions, %s failed, %s tps", t, f, tps }' "$out/$n.out")"
done
cat "$out/cql.out" 2>/dev/null || true
grep -h 'cqlsoak error' "$out/cql.err" 2>/dev/null | head -5 || true
# Not part of the verdict: Cassandra's own overload (mutations or reads it dropped after its
# timeouts), which explains a WriteTimeout/ReadTimeout a client got through the proxy.
dropped=$(grep -c 'messages were dropped' "$out/cassandra-system.log" 2>/dev/null || true)
echo "Cassandra reported dropped messages ${dropped:-0} times (its own timeouts; $out/cassandra-system.log)"
echo "Cosmos key rotations: $(grep '^cosmos key rotation' "$out/standins.log" | paste -sd';' -)"
if [ "$py_ok" = 0 ]; then
  while IFS= read -r l; do fail+=("${l#FAIL: }"); done < <(grep '^FAIL: ' "$out/summary.txt")
  [ "${#fail[@]}" -gt 0 ] || fail+=("the summary failed (see $out/summary.txt)")
fi
if [ "${#fail[@]}" -gt 0 ]; then
  echo "SOAK FAILED:"
  printf '  - %s\n' "${fail[@]}"
  exit 1
fi
echo "SOAK PASSED"
