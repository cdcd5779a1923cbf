#!/usr/bin/env bash
# title: Java · DataStax Java driver 4.x (the seed's CqlSession.builder()…withLocalDatacenter("datacenter1"), tests/clients/cassandra/java)
# Runs the same program as the Rust driver tests (tests/cassandra_drivers.rs), built by
# tests/clients/cassandra/build.sh (Maven, ~/.m2): prepared INSERTs (async, 64 in flight), paged
# read-back, count(*), a missing table's InvalidQueryException caught, then a bound simple
# statement.
source "$(dirname "$0")/../../lib.sh"
jar="$CLIENTS_ROOT/cassandra/java/target/cassandra-java-client.jar"
java_bin() {
  local j
  for j in "${EDP_JAVA:-}" /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [ -n "$j" ] && [ -x "$j" ] && { echo "$j"; return; }
  done
  echo java
}
case "${1:-}" in
  install) bash "$CLIENTS_ROOT/cassandra/build.sh" ;;
  test)
    err="${TMPDIR:-/tmp}/java-driver.$$.err"
    set +e
    out=$(ROWS="${ROWS:-2000}" FETCH_SIZE=200 AZURE_COSMOS_KEYSPACE=ks_java_driver LOCAL_DATACENTER=datacenter1 \
      "$(java_bin)" -Xmx256m -jar "$jar" 2> "$err")
    rc=$?
    set -e
    cat "$err" >&2
    if [ $rc -ne 0 ] || [[ "$out" != "ok java "* ]]; then
      echo "FAIL java-driver exited $rc: $(grep -E 'Exception|Error' "$err" | head -n1 | cut -c1-200)"
      rm -f "$err"; exit 1
    fi
    rm -f "$err"
    echo "ok java-driver ${out#ok java }"
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
