#!/usr/bin/env bash
# Runs the whole test suite: setup (quick when everything is installed), then CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
cd build
# Every label runs (no -L): the stress run (`stress`) and the fresh-machine test (`fresh`,
# a package install and full build in a new bookworm root) included; both run alone.
ctest --output-on-failure -j"$(nproc)" --timeout 1200
