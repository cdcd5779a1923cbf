#!/usr/bin/env bash
# title: Java · Spring Boot datasource (HikariCP, JdbcTemplate)
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install) maven_ensure "$here" ;;
  test)
    cd "$here"
    exec java -cp "target/classes:$(cat target/classpath.txt)" compat.App
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
