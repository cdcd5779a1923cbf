#!/usr/bin/env bash
# title: Python · psycopg2 (libpq)
source "$(dirname "$0")/../../lib.sh"
case "${1:-}" in
  install) venv_ensure ;;
  test) exec "$CLIENTS_VENV/bin/python" "$(dirname "$0")/main.py" ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
