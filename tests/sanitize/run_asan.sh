#!/usr/bin/env bash
# The sanitizer job: the whole test suite built with GCC's AddressSanitizer and
# UndefinedBehaviorSanitizer (LeakSanitizer comes with ASan) in build-asan, then run. Any
# report fails the test that made it: UBSan stops at the first (-fno-sanitize-recover), ASan
# always does, and LeakSanitizer makes the process exit non-zero. Suppressions are for
# third-party libraries only (tests/sanitize/lsan.supp, with the reason for each).
# Excluded labels: fresh (a package install and full build in a debootstrapped root: it
# tests the packaging, not this code, and would build everything again uninstrumented),
# stress (1,000 requests whose time and memory limits assume an uninstrumented build), fuzz
# (the fuzz targets have their own ASan+UBSan build, tests/fuzz), soak_long (the 30-minute
# soak, which the normal suite does not run either; the 3-minute one runs here).
# The default build (build/) is not touched: the flags go to build-asan's cache only.
# usage: tests/sanitize/run_asan.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=build-asan
SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# Release (-O3) as the product is built, so the model tests keep their speed; -g1 gives the
# reports file and line. The benchmarks are no tests: not built.
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DAMANUENSIS_BUILD_BENCH=OFF \
  "-DCMAKE_CXX_FLAGS=$SANITIZE -g1" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/sanitize/lsan.supp:print_suppressions=0
cd "$BUILD_DIR"
ctest --output-on-failure -j"$(nproc)" --timeout 1200 -LE 'fresh|stress|fuzz|soak_long'
