#!/usr/bin/env bash
# title: Python · Django ORM (settings.py without PASSWORD)
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install) venv_ensure ;;
  test)
    cd "$here"
    export DJANGO_SETTINGS_MODULE=compatproj.settings PYTHONDONTWRITEBYTECODE=1
    # migrate forwards (creates the table), the ORM check, then migrate back to zero (drops it).
    if ! out=$("$CLIENTS_VENV/bin/python" manage.py migrate compat --no-input -v 0 2>&1); then
      echo "FAIL python-django migrate: $(echo "$out" | grep -v '^\s*$' | tail -n1)"; exit 1
    fi
    "$CLIENTS_VENV/bin/python" manage.py compat_check || exit 1
    if ! out=$("$CLIENTS_VENV/bin/python" manage.py migrate compat zero --no-input -v 0 2>&1); then
      echo "FAIL python-django migrate zero: $(echo "$out" | grep -v '^\s*$' | tail -n1)"; exit 1
    fi
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
