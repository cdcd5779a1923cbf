#!/usr/bin/env bash
# title: Java · pgjdbc + HikariCP
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  install) maven_ensure "$here" ;;
  test)
    cd "$here"
    exec java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "target/classes:$(cat target/classpath.txt)" compat.Main
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
