#!/usr/bin/env bash
# The warm-session hand-over alone: a raw StartupMessage to entra-db-proxy with warm sessions
# on, and the time until ReadyForQuery, for 30 connections 150 ms apart (so the pool refills
# between them), with only user and database, then with application_name as well (one round
# trip to apply it upstream). Prints the median, min and max in ms. Uses the release build and
# the local stand-ins like pgbench.sh. Usage: bench/warm-handover.sh [WARM_SESSIONS, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
# shellcheck source=bench/pg-common.sh
. bench/pg-common.sh
build_release
start_standins
port=$(free_port)
start_proxy warm "$port" -- --postgres-warm-sessions "${1:-8}"
sleep 3
python3 - "$port" "$STANDINS_DB" <<'PY'
import socket, struct, sys, time
port, db = int(sys.argv[1]), sys.argv[2]

def startup(params):
    body = struct.pack(">I", 196608)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
    return struct.pack(">I", len(body) + 4) + body

def once(params):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(startup(params))
    buf = b""
    while not buf.endswith(b"Z\0\0\0\x05I"):
        d = s.recv(65536)
        if not d:
            raise SystemExit(f"the proxy closed the connection: {buf[:200]!r}")
        buf += d
    t1 = time.perf_counter()
    s.sendall(b"X\0\0\0\x04")
    s.close()
    return (t1 - t0) * 1000

for label, params in [
    ("user, database", [("user", "anyone"), ("database", db)]),
    ("user, database, application_name", [("user", "anyone"), ("database", db), ("application_name", "probe")]),
]:
    ts = []
    for _ in range(30):
        ts.append(once(params))
        time.sleep(0.15)
    ts.sort()
    print(f"{label}: median {ts[len(ts) // 2]:.2f} ms, min {ts[0]:.2f}, max {ts[-1]:.2f}")
PY
