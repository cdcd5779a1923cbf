#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target in fuzz/ (see docs/RELIABILITY.md).
#   scripts/fuzz.sh             # each target for 60 s
#   scripts/fuzz.sh 5           # each target for 5 s (what scripts/test.sh runs)
#   scripts/fuzz.sh 600 pg_startup cql_frame   # only these targets
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600     # each target stops after 10 million executions,
#                                               # or after 3600 s, whichever comes first
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz itself
# into the project cache. A crash stops the script with a non-zero status; libFuzzer writes the
# input under fuzz/artifacts/<target>/. Each run's figures are appended to
# $CACHE/fuzz-runs.tsv (time, target, executions, seconds, crashes, corpus entries).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${1:-60}"
shift || true
CACHE="${EDP_CACHE:-$HOME/.cache/entra-db-proxy}"
CARGO_FUZZ_ROOT="$CACHE/cargo-fuzz"
# A target dir shared between clones: the instrumented build of the proxy is slow cold.
TARGET_DIR="${FUZZ_TARGET_DIR:-$CACHE/fuzz-target}"
# Safe Rust: no sanitizer by default (twice the speed); FUZZ_SANITIZER=address for ASan.
SANITIZER="${FUZZ_SANITIZER:-none}"
# Executions per target (libFuzzer -runs=); the time budget stays an upper bound. Unset: no limit.
RUNS="${FUZZ_RUNS:-}"
if [ -n "$RUNS" ] && ! [[ "$RUNS" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: FUZZ_RUNS must be a positive number of executions, not '$RUNS'" >&2
  exit 2
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz.sh: the nightly Rust toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly" >&2
  exit 1
fi
export PATH="$CARGO_FUZZ_ROOT/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz.sh: cargo-fuzz is missing: installing it into $CARGO_FUZZ_ROOT" >&2
  cargo install cargo-fuzz --locked --root "$CARGO_FUZZ_ROOT" >&2 || {
    echo "fuzz.sh: could not install cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    exit 1
  }
fi

cd fuzz
if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
BUILD=(--release --debug-assertions --sanitizer "$SANITIZER" --target-dir "$TARGET_DIR")

start=$(date +%s)
cargo +nightly fuzz build "${BUILD[@]}"
echo "fuzz.sh: built the targets in $(( $(date +%s) - start )) s" >&2
# Run the built binaries directly: `cargo fuzz run` would call cargo again for every target.
BIN_DIR="$TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

LOG="$CACHE/fuzz-runs.tsv"
mkdir -p "$CACHE"
status=0
for t in "${TARGETS[@]}"; do
  # The checked-in seeds stay read-only: new inputs go to a scratch corpus in the cache.
  scratch="$CACHE/fuzz-corpus/$t"
  mkdir -p "$scratch" "artifacts/$t"
  out="$(mktemp)"
  t0=$(date +%s)
  rc=0
  "$BIN_DIR/$t" "$scratch" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$SECONDS_EACH" ${RUNS:+-runs="$RUNS"} -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$out" 2>&1 || rc=$?
  secs=$(( $(date +%s) - t0 ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' | tail -1 || true)
  crashes=0
  if [ "$rc" -ne 0 ]; then
    crashes=1
    status=1
    echo "fuzz.sh: $t FAILED (exit $rc):" >&2
    grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written|Base64" "$out" >&2 || tail -30 "$out" >&2
  fi
  entries=$(find "$scratch" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "${execs:-?}" "$secs" "$crashes" \
    "$entries" | tee -a "$LOG"
  rm -f "$out"
done
exit "$status"
