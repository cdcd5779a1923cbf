# Shared helpers for the client compatibility stacks (sourced by tests/clients/*/*/run.sh).
# Every helper is idempotent and keeps what it downloads in a cache, so a second run is fast:
#   - Python: one virtualenv, $CLIENTS_CACHE/clients-venv, rebuilt only when
#     tests/clients/clients-requirements.txt changes (its sha256 is kept inside the venv)
#   - Debian packages: installed only when missing
#   - Maven (~/.m2), Go (GOMODCACHE/GOCACHE), npm (~/.npm): the tools' own caches
# Nothing here reads or writes a password.

set -euo pipefail

CLIENTS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLIENTS_CACHE="${ENTRA_DB_PROXY_CACHE:-$HOME/.cache/entra-db-proxy}"
CLIENTS_VENV="$CLIENTS_CACHE/clients-venv"
export CLIENTS_ROOT CLIENTS_CACHE CLIENTS_VENV

# Progress and errors go to stderr; stdout of `run.sh test` is the one result line.
log() { echo "[$(basename "$(dirname "$0")")] $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then CLIENTS_SUDO=sudo; else CLIENTS_SUDO=; fi

# apt_ensure CMD-OR-FILE PACKAGE...: installs PACKAGEs from Debian unless CMD (a command name,
# or a path that must exist) is already there. `apt-get update` runs at most once per run.sh.
apt_ensure() {
  local probe="$1"; shift
  if [[ "$probe" == /* ]]; then [ -e "$probe" ] && return 0; else command -v "$probe" >/dev/null 2>&1 && return 0; fi
  log "installing from Debian: $*"
  if [ -z "${CLIENTS_APT_UPDATED:-}" ]; then
    $CLIENTS_SUDO apt-get update -qq >&2
    CLIENTS_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $CLIENTS_SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

# venv_ensure: the shared Python virtualenv for every Python stack (postgres and, later,
# cassandra), keyed by the hash of tests/clients/clients-requirements.txt.
venv_ensure() {
  local req="$CLIENTS_ROOT/clients-requirements.txt" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$(cat "$CLIENTS_VENV/.requirements-sha256" 2>/dev/null)" = "$want" ] && [ -x "$CLIENTS_VENV/bin/python" ]; then
    return 0
  fi
  python3 -m venv --help >/dev/null 2>&1 || apt_ensure /nonexistent python3-venv
  log "creating $CLIENTS_VENV from $req"
  rm -rf "$CLIENTS_VENV"
  python3 -m venv "$CLIENTS_VENV" >&2
  "$CLIENTS_VENV/bin/pip" install -q --disable-pip-version-check --no-input -r "$req" >&2
  echo "$want" > "$CLIENTS_VENV/.requirements-sha256"
}

# The Maven local repository: ~/.m2/repository unless CLIENTS_MAVEN_REPO says otherwise (a cold
# run points it at an empty directory).
mvn_q() {
  local repo=()
  [ -n "${CLIENTS_MAVEN_REPO:-}" ] && repo=("-Dmaven.repo.local=$CLIENTS_MAVEN_REPO")
  mvn -q -B -ntp "${repo[@]}" "$@"
}

# maven_ensure DIR: resolves the project's dependencies (cached in the local repository),
# compiles it, and writes DIR/target/classpath.txt; skipped when pom.xml and the sources are
# unchanged since the last build.
maven_ensure() {
  local dir="$1" stamp want
  command -v mvn >/dev/null 2>&1 || apt_ensure mvn maven
  stamp="$dir/target/.built-sha256"
  want=$(cd "$dir" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -f "$dir/target/classpath.txt" ]; then return 0; fi
  log "building $dir with Maven"
  (cd "$dir" && mvn_q compile dependency:build-classpath -Dmdep.outputFile=target/classpath.txt -Dmdep.includeScope=runtime >&2)
  echo "$want" > "$stamp"
}
