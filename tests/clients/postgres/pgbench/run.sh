#!/usr/bin/env bash
# title: pgbench (libpq load tool)
# pgbench -i (COPY into pgbench_*), a select-only run with 4 clients, and a custom script with
# named prepared statements (-M prepared) that records current_user per row.
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install) apt_ensure psql postgresql-client; apt_ensure pgbench postgresql-contrib ;;
  test)
    fail() { echo "FAIL pgbench $*"; exit 1; }
    log=$(mktemp); trap 'rm -f "$log"' EXIT
    pgbench -i -s 1 -q > "$log" 2>&1 || fail "pgbench -i: $(tail -n1 "$log")"
    pgbench -n -S -M extended -c 4 -j 2 -t 200 > "$log" 2>&1 || fail "pgbench -S: $(grep -v '^\s*$' "$log" | tail -n1)"
    sel=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
    [ "$sel" = 800 ] || fail "select-only run processed '$sel' transactions, want 800"
    psql -X -q -v ON_ERROR_STOP=1 -c "drop table if exists compat_pgbench" \
      -c "create table compat_pgbench (id bigint primary key, client int not null, who name not null)" > "$log" 2>&1 \
      || fail "setup: $(tail -n1 "$log")"
    pgbench -n -M prepared -c 2 -j 1 -t 50 -f "$here/insert.sql" > "$log" 2>&1 || fail "custom script: $(grep -v '^\s*$' "$log" | tail -n1)"
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log")
    [ "${failed:-0}" = 0 ] || fail "$failed failed transactions"
    check=$(psql -X -A -t -v ON_ERROR_STOP=1 -c "select count(*), count(distinct client), string_agg(distinct who::text, ',') from compat_pgbench" 2>&1) \
      || fail "check: $check"
    IFS='|' read -r n clients who <<< "$check"
    [ "$n" -ge 95 ] && [ "$clients" = 2 ] || fail "custom script left $n rows from $clients clients"
    [ "$who" = "$EXPECT_USER" ] || fail "rows were written as '$who', want '$EXPECT_USER'"
    psql -X -q -c "drop table compat_pgbench" > /dev/null 2>&1
    pgbench -i -I d > /dev/null 2>&1 || fail "pgbench -i -I d (drop) failed"
    echo "ok pgbench pgbench $(pgbench --version | awk '{print $3}') -i (COPY), -S -M extended 4 clients, custom script -M prepared 2 clients, 0 failed"
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
