#!/usr/bin/env bash
# Builds the Cassandra client programs the driver tests run (tests/cassandra_drivers.rs),
# idempotently: the Java sample (java/, DataStax java-driver-core 4.x) into
#   java/target/cassandra-java-client.jar  (+ java/target/lib/*.jar, named by its manifest).
# Nothing is done when the jar is newer than the pom and the sources. Maven runs offline when
# ~/.m2 already holds everything (the usual case after the first build), else online.
# The Python sample needs no build: cassandra-driver is in tests/clients/requirements.txt.
# Output goes to stderr; prints nothing on stdout (safe inside `eval "$(scripts/install-deps.sh)"`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proj="$here/java"
jar="$proj/target/cassandra-java-client.jar"

stale=1
if [ -f "$jar" ] && [ -f "$proj/target/.complete" ] &&
  [ -z "$(find "$proj/pom.xml" "$proj/src" -newer "$proj/target/.complete" -print -quit)" ]; then
  stale=0
fi
[ "$stale" = 0 ] && exit 0

java_home="${EDP_JAVA_HOME:-}"
if [ -z "$java_home" ]; then
  for j in "${EDP_JAVA:-}" /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*-17-*/bin/java; do
    if [ -n "$j" ] && [ -x "$j" ] && [ -x "$(dirname "$j")/javac" ]; then
      java_home=$(dirname "$(dirname "$(readlink -f "$j")")"); break
    fi
  done
fi
[ -n "$java_home" ] || { echo "build.sh: no JDK 17 with javac found (set EDP_JAVA_HOME)" >&2; exit 1; }
command -v mvn >/dev/null 2>&1 || {
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq maven >&2
}

echo "building the Cassandra Java client in $proj" >&2
rm -f "$proj/target/.complete"
mvn_args=(-q -B -Dstyle.color=never -f "$proj/pom.xml" clean package -DskipTests)
if ! JAVA_HOME="$java_home" mvn -o "${mvn_args[@]}" >&2 2>/dev/null; then
  JAVA_HOME="$java_home" mvn "${mvn_args[@]}" >&2
fi
[ -f "$jar" ] && ls "$proj/target/lib/"java-driver-core-*.jar >/dev/null
touch "$proj/target/.complete"
