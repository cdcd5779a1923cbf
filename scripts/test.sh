#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every check CI runs.
#   scripts/test.sh            # fmt, clippy, all tests
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/install-deps.sh)"
export EDP_PYTHON

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
