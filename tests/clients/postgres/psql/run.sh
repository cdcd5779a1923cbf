#!/usr/bin/env bash
# title: psql (libpq command line)
# A scripted psql session through the proxy, then a query cancelled with SIGINT (psql sends a
# CancelRequest on a new connection, which the proxy must forward upstream).
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install) apt_ensure psql postgresql-client ;;
  test)
    fail() { echo "FAIL psql $*"; exit 1; }
    out=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -f "$here/session.sql" 2>&1) || fail "session: $(echo "$out" | tail -n1)"
    res=$(echo "$out" | grep '^result|' | tail -n1)
    [ -n "$res" ] || fail "no result line from the session: $(echo "$out" | tail -n1)"
    IFS='|' read -r _ sqlstate rows user ssl <<< "$res"
    [ "$sqlstate" = 23505 ] || fail "duplicate key gave SQLSTATE '$sqlstate', want 23505"
    [ "$rows" = 3 ] || fail "read back $rows rows, want 3"
    [ "$user" = "$EXPECT_USER" ] || fail "current_user is '$user', want '$EXPECT_USER'"
    # Cancel: SIGINT to psql while pg_sleep runs.
    psql -X -q -c "select pg_sleep(20)" > "${TMPDIR:-/tmp}/psql-cancel.$$" 2>&1 &
    p=$!
    sleep 1.5
    kill -INT "$p"
    wait "$p" && fail "pg_sleep(20) was not cancelled"
    cancel=$(cat "${TMPDIR:-/tmp}/psql-cancel.$$"); rm -f "${TMPDIR:-/tmp}/psql-cancel.$$"
    echo "$cancel" | grep -q "canceling statement due to user request" || fail "cancel: $cancel"
    ver=$(psql --version | awk '{print $3}')
    echo "ok psql psql $ver simple query protocol, PREPARE/EXECUTE, \\gset, transaction; SIGINT cancel forwarded (57014); upstream TLS ${ssl}"
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
