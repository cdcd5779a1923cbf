#!/usr/bin/env bash
# Installs what the Cassandra integration tests need, idempotently:
#   - a JDK 17 (Cassandra 5.0 runs on JDK 11 or 17 only; a newer JDK such as Temurin 25 will NOT do):
#     Debian's openjdk-17-jre-headless when none is found
#   - the cassandra-all jars and their runtime dependencies from Maven Central, copied by Maven into
#     $ENTRA_DB_PROXY_CACHE/cassandra-<version>/lib (default ~/.cache/entra-db-proxy/...); ~/.m2 caches
# Prints the variables dbproxy_testkit::cassandra reads (EDP_CASSANDRA_LIB, EDP_JAVA) for `eval`.
# Usage: eval "$(scripts/install-cassandra.sh)"      (CASSANDRA_VERSION=5.0.x to choose another)
set -euo pipefail

version="${CASSANDRA_VERSION:-5.0.9}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ENTRA_DB_PROXY_CACHE:-$HOME/.cache/entra-db-proxy}"
lib="$cache/cassandra-$version/lib"

if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
apt_install() {
  echo "installing from Debian: $*" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

is_jdk17() { [ -x "$1" ] && "$1" -version 2>&1 | grep -q 'version "17\.'; }
find_java17() {
  local j
  if [ -n "${EDP_JAVA:-}" ] && is_jdk17 "$EDP_JAVA"; then echo "$EDP_JAVA"; return 0; fi
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*-17-*/bin/java /usr/lib/jvm/*17*/bin/java; do
    if is_jdk17 "$j"; then echo "$j"; return 0; fi
  done
  return 1
}

java=$(find_java17) || { apt_install openjdk-17-jre-headless; java=$(find_java17); } ||
  { echo "no JDK 17 found even after installing openjdk-17-jre-headless" >&2; exit 1; }
java_home=$(dirname "$(dirname "$(readlink -f "$java")")")

if [ ! -f "$lib/.complete" ]; then
  command -v mvn >/dev/null 2>&1 || apt_install maven
  echo "fetching cassandra-all $version and its runtime dependencies into $lib" >&2
  tmp="$lib.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  # runtime = compile + runtime scopes; the provided ones (byteman, antlr tool, ACCP) are not needed.
  # Maven runs on the same JDK 17 (JAVA_HOME), whatever else is on the PATH.
  JAVA_HOME="$java_home" mvn -q -B -Dstyle.color=never -f "$here/cassandra/pom.xml" -Dcassandra.version="$version" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
  for jar in "cassandra-all-$version.jar" 'jamm-*.jar' 'jna-[0-9]*.jar' 'logback-classic-*.jar'; do
    # shellcheck disable=SC2086
    ls "$tmp"/$jar >/dev/null 2>&1 || { echo "missing $jar after the Maven copy" >&2; exit 1; }
  done
  touch "$tmp/.complete"
  rm -rf "$lib"; mv "$tmp" "$lib"
fi

echo "export EDP_CASSANDRA_LIB=$lib"
echo "export EDP_JAVA=$java"
