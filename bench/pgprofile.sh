#!/usr/bin/env bash
# The PostgreSQL relay's cost per message, on the local stand-ins (a real PostgreSQL with TLS +
# `password` auth, a fake Entra ID): pgbench -S -M prepared through entra-db-proxy (plain
# client hop, TLS upstream), release build. Figures that hold on a busy machine:
#
#   bench/pgprofile.sh cpu [CLIENTS...]        proxy CPU µs per transaction (/proc/PID/stat
#                                              over DURATION s, default 10) and tps; default 1 8
#   bench/pgprofile.sh callgrind [CLIENTS...]  the proxy under valgrind --tool=callgrind:
#                                              instructions per transaction, from two runs of
#                                              TX and 2×TX transactions per client (default
#                                              TX=2000; the difference cancels login and start-up);
#                                              the profile of the second is kept (OUT, printed)
#   bench/pgprofile.sh syscalls [CLIENTS...]   strace -c -f of the proxy over TX transactions per
#                                              client: system calls per transaction, by call
#   bench/pgprofile.sh perf [CLIENTS...]       perf record -g of the proxy over DURATION s; the
#                                              report's top entries (perf: apt-get install linux-perf)
#
# Environment: DURATION (s), TX, OUT (where profiles are kept; default a new /tmp directory),
# PROXY_ARGS (extra entra-db-proxy flags).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-cpu}"
shift || true
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(1 8)
duration="${DURATION:-10}"
tx="${TX:-2000}"
out="${OUT:-$(mktemp -d /tmp/pgprofile.XXXXXX)}"
mkdir -p "$out"
work=$(mktemp -d)
# shellcheck source=bench/pg-common.sh
. bench/pg-common.sh
build_release
start_standins
port=$(free_port)
read -r -a extra <<<"${PROXY_ARGS:-}"
case "$mode" in
  callgrind)
    command -v valgrind >/dev/null || { echo "pgprofile: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
    start_proxy proxy "$port" valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$out/callgrind.out.%p" -- "${extra[@]}"
    ;;
  cpu | perf | syscalls) start_proxy proxy "$port" -- "${extra[@]}" ;;
  *) echo "usage: bench/pgprofile.sh cpu|callgrind|perf [CLIENTS...]" >&2; exit 2 ;;
esac
via=(-h 127.0.0.1 -p "$port" -U anyone "$STANDINS_DB")
export PGSSLMODE=disable
pgbench -i -s 10 -q "${via[@]}" >/dev/null 2>&1
pgbench -S -M prepared -n -t 100 "${via[@]}" >/dev/null # warm: token cached, code paged in

# Total instructions (Ir) since the last zeroing, from a fresh dump.
dump_ir() {
  rm -f "$out"/callgrind.out."$proxy_pid".*
  callgrind_control -d "$proxy_pid" >/dev/null
  local f
  for _ in $(seq 1 100); do f=$(ls "$out"/callgrind.out."$proxy_pid".* 2>/dev/null | head -1) && [ -n "$f" ] && break; sleep 0.1; done
  awk '/^(summary|totals):/ { print $2; exit }' "$f"
  mv "$f" "$out/callgrind.out.$1"
}

for c in "${clients[@]}"; do
  j=$((c < 2 ? 1 : 2))
  case "$mode" in
    cpu)
      read -r ub sb < <(awk '{ print $14, $15 }' "/proc/$proxy_pid/stat")
      tps=$(pgbench -S -M prepared -n -c "$c" -j "$j" -T "$duration" "${via[@]}" 2>/dev/null | awk '/^tps = / { print $3; exit }')
      read -r ua sa < <(awk '{ print $14, $15 }' "/proc/$proxy_pid/stat")
      python3 -c "
tps, user, sys, hz, secs = float('$tps'), $ua - $ub, $sa - $sb, $clk_tck, $duration
n = tps * secs
us = lambda t: t / hz * 1e6 / n
print(f'-S -M prepared, {$c} clients: {tps:,.0f} tps, proxy CPU {us(user + sys):.1f} µs/transaction (user {us(user):.1f}, system {us(sys):.1f}; {n:,.0f} transactions), load {open(\"/proc/loadavg\").read().split()[0]}')"
      ;;
    callgrind)
      irs=()
      for n in "$tx" $((2 * tx)); do
        callgrind_control -z "$proxy_pid" >/dev/null
        pgbench -S -M prepared -n -c "$c" -j "$j" -t "$n" "${via[@]}" >/dev/null 2>&1
        irs+=("$(dump_ir "c$c-t$n")")
      done
      python3 -c "
a, b, n = ${irs[0]}, ${irs[1]}, $tx * $c
print(f'-S -M prepared, {$c} clients: {(b - a) / n:,.0f} instructions/transaction (callgrind; {a:,} for {n}, {b:,} for {2 * n})')"
      echo "  profile: callgrind_annotate $out/callgrind.out.c$c-t$((2 * tx))"
      ;;
    syscalls)
      command -v strace >/dev/null || { echo "pgprofile: needs strace (apt-get install strace)" >&2; exit 2; }
      strace -c -f -o "$out/strace.c$c" -p "$proxy_pid" &
      st=$!
      sleep 1
      pgbench -S -M prepared -n -c "$c" -j "$j" -t "$tx" "${via[@]}" >/dev/null 2>&1
      kill -INT "$st"; wait "$st" || true
      echo "-S -M prepared, $c clients: system calls per transaction (strace -c -f, $((tx * c)) transactions)"
      awk -v n=$((tx * c)) '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %6.2f\n", $NF, $4 / n }' "$out/strace.c$c"
      ;;
    perf)
      perf record -e cpu-clock -g -o "$out/perf.c$c.data" -p "$proxy_pid" -- sleep "$duration" >/dev/null 2>&1 &
      rec=$!
      pgbench -S -M prepared -n -c "$c" -j "$j" -T "$duration" "${via[@]}" >/dev/null 2>&1
      wait "$rec" || true
      echo "-S -M prepared, $c clients: perf report -i $out/perf.c$c.data"
      perf report -i "$out/perf.c$c.data" --no-children --stdio --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | head -25
      ;;
  esac
done
echo "kept: $out"
