#!/usr/bin/env bash
# title: cqlsh (PyPI's cqlsh, on the Python driver; a scripted session with -f)
# cqlsh HOST PORT -f session.cql, with no -u/-p, no --ssl and no cqlshrc: SHOW VERSION / HOST,
# DESCRIBE CLUSTER / KEYSPACES / TABLE / KEYSPACE, CREATE KEYSPACE, USE, DDL, CONSISTENCY,
# literal INSERTs, a batch, a lightweight transaction, a missing table's error (the only one
# allowed), EXPAND, COPY TO and COPY FROM (cqlsh's worker processes), and the peers cqlsh's
# driver learns (system.peers / peers_v2: none). cqlsh sends every statement unprepared.
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install) venv_ensure ;;
  test)
    w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
    sed "s|@CSV@|$w/items.csv|g" "$here/session.cql" > "$w/session.cql"
    set +e
    # HOME: no ~/.cassandra/cqlshrc (credentials, ssl) from the machine.
    HOME="$w" timeout 240 "$CLIENTS_VENV/bin/cqlsh" \
      "${AZURE_COSMOS_CONTACTPOINT:-127.0.0.1}" "${AZURE_COSMOS_PORT:-9042}" \
      --connect-timeout 30 --request-timeout 60 -f "$w/session.cql" > "$w/out" 2> "$w/err"
    rc=$?
    set -e
    cat "$w/out" "$w/err" >&2
    fail() { echo "FAIL cqlsh $*"; exit 1; }
    errors=$(grep -E '^[^ ]*session\.cql:[0-9]+:' "$w/err" || true)
    n_errors=$(printf '%s' "$errors" | grep -c . || true)
    [ "$rc" -eq 2 ] || fail "exit $rc (want 2: the one expected error); $(tail -n1 "$w/err" | cut -c1-200)"
    [ "$n_errors" -eq 1 ] || fail "$n_errors errors, want only the missing table's: $(printf '%s' "$errors" | grep -v no_such_table | head -n1 | cut -c1-200)"
    grep -q 'InvalidRequest.*code=2200.*no_such_table' <<<"$errors" || fail "unexpected error: $errors"
    version=$("$CLIENTS_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("cqlsh"))')
    drv=$("$CLIENTS_VENV/bin/python" -c 'import cassandra; print(cassandra.__version__)')
    proto=$(sed -n 's/.*| Native protocol v\([0-9]*\)\].*/\1/p' "$w/out" | head -n1)
    [ -n "$proto" ] || fail "SHOW VERSION printed no protocol version"
    grep -qE '^ +True$' "$w/out" || fail "the lightweight transaction was not applied"
    grep -q '3 rows exported' "$w/out" || fail "COPY TO did not export 3 rows"
    grep -q '3 rows imported' "$w/out" || fail "COPY FROM did not import 3 rows"
    grep -qE '^ +3 \| +three$' "$w/out" || fail "row 3 not read back after COPY FROM"
    # Rows of `SELECT peer FROM system.peers` and `... peers_v2`: what the driver learns hosts from.
    peers=$(awk '/^ peer$/ {p=1} p && /^\([0-9]+ rows\)$/ {gsub(/[()a-z ]/, ""); s += $0; p=0} END {print s+0}' "$w/out")
    n_peer_queries=$(grep -c '^ peer$' "$w/out" || true)
    [ "$n_peer_queries" -eq 2 ] || fail "the system.peers queries printed no result"
    echo "ok cqlsh cqlsh $version protocol=v$proto hosts=$((1 + peers)) driver=cassandra-driver $drv; DESCRIBE, USE, batch, LWT, EXPAND, COPY TO/FROM (worker process), InvalidRequest/2200 reported and the session went on; unprepared statements only"
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
