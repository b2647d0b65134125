#!/usr/bin/env bash
# Sets everything up and runs the checks and the tests: formatting, clippy (warnings are
# errors), unit tests (with the custom CUDA kernels compiled by NVRTC, which needs no GPU) and
# the end-to-end tests on SmolLM2 (other models join when present).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cache.sh
scripts/setup.sh --with-nvrtc
. "$UNIATTN_CACHE/env.sh"
scripts/fetch-models.sh smollm2 texts evals > /dev/null
cargo fmt --all -- --check
# Release profile throughout, so that libtorch's C++ glue and the dependencies build once.
cargo clippy --release --all-targets -- -D warnings
cargo test --release
