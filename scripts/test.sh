#!/usr/bin/env bash
# Runs the whole test suite: setup (quick when everything is installed), then CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 1200
