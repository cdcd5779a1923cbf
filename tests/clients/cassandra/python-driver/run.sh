#!/usr/bin/env bash
# title: Python · cassandra-driver (the seed's Cluster([contactPoint], port=port), tests/clients/cassandra/python/sample.py)
# Runs the same program as the Rust driver tests (tests/cassandra_drivers.rs), under the matrix's
# venv: prepared INSERTs through execute_concurrent_with_args, paged read-back, count(*), a
# missing table's InvalidRequest caught, then a parameterised simple statement.
source "$(dirname "$0")/../../lib.sh"
case "${1:-}" in
  install) venv_ensure ;;
  test)
    err="${TMPDIR:-/tmp}/python-driver.$$.err"
    set +e
    out=$(ROWS="${ROWS:-2000}" FETCH_SIZE=200 AZURE_COSMOS_KEYSPACE=ks_python_driver \
      "$CLIENTS_VENV/bin/python" "$CLIENTS_ROOT/cassandra/python/sample.py" 2> "$err")
    rc=$?
    set -e
    cat "$err" >&2
    if [ $rc -ne 0 ] || [[ "$out" != "ok python "* ]]; then
      echo "FAIL python-driver sample.py exited $rc: $(grep -v '^\s*$' "$err" | tail -n1 | cut -c1-200)"
      rm -f "$err"
      exit 1
    fi
    rm -f "$err"
    echo "ok python-driver ${out#ok python }"
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
