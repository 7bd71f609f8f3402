#!/usr/bin/env bash
# Runs the whole test suite: setup (quick when everything is installed), then CTest, then
# the suite again built with ASan+UBSan (tests/sanitize/run_asan.sh, build-asan).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
(
  cd build
  # Every label runs but soak_long (the 30-minute soak): the stress run (`stress`), the
  # 3-minute soak (`soak`), the fresh-machine test (`fresh`, a package install and full
  # build in a new bookworm root) and the fuzz targets (`fuzz`, 60 s each) included; these
  # run alone.
  ctest --output-on-failure -j"$(nproc)" --timeout 1200 -LE soak_long
)
# The sanitizer job, after the normal suite: every test but fresh, stress and fuzz (the
# script says why) under ASan, UBSan and LeakSanitizer. Measured on 2 cores, each sharing
# the machine with one fuzzer: the build 13.5 min, the tests 12 min (718 s).
tests/sanitize/run_asan.sh
