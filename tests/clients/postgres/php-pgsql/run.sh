#!/usr/bin/env bash
# title: PHP · pgsql extension (pg_connect, Debian's php-pgsql)
source "$(dirname "$0")/../../lib.sh"
case "${1:-}" in
  install)
    apt_ensure php php-cli php-pgsql
    php -r 'exit(function_exists("pg_connect") ? 0 : 1);' || apt_ensure /nonexistent php-pgsql
    ;;
  test) exec php -d display_errors=stderr -d error_reporting=E_ALL "$(dirname "$0")/main.php" ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
