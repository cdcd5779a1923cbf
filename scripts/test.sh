#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every check CI runs.
#   scripts/test.sh            # fmt, clippy, all tests
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/install-deps.sh)"
export EDP_PYTHON

# One rustls crypto provider (aws-lc-rs) and no OpenSSL anywhere in the tree.
if cargo tree --workspace --locked -e normal,build,dev --prefix none 2>/dev/null \
    | grep -E '^(ring|openssl|openssl-sys|native-tls) ' ; then
  echo "dependency policy: ring/OpenSSL found in the tree (see above)" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"

# The fuzz targets (fuzz/, docs/RELIABILITY.md), each for a few seconds so the harness cannot
# rot: a target that no longer builds, or a seed that crashes, fails here. Needs nightly.
scripts/fuzz.sh "${FUZZ_SECONDS:-5}"

# The client compatibility matrix: every client stack of the seed documents. It writes the table
# to the cache directory, never to the working tree; with CI=true it fails if that differs from
# the tracked docs/COMPATIBILITY.md (regenerate with `scripts/clients.sh all --write`).
scripts/clients.sh all

# Deployment artifacts: Kubernetes manifests against the schemas (offline), the Dockerfile
# linted, the systemd unit verified; the self-test proves each check can fail.
scripts/validate-deploy.sh --self-test
