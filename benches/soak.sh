#!/usr/bin/env bash
# The soak (tests/soak.rs) for SECONDS (default 600) on a release build:
# the real binary under the whole mix of client requests at 80% of the
# most it took a moment before, printing resident memory and open file
# descriptors every 10 s. It fails on any unexpected answer, and on either
# figure moving more than 10% once warm. The suite runs the same test for
# 30 s in debug.
#
#   benches/soak.sh [SECONDS]
#
# Builds the package in release first (about 10 minutes from nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
PORTCULLIS_SOAK_SECONDS=${1:-600} cargo test --release --locked --test soak -- --nocapture
