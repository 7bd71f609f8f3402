#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang in build-fuzz and runs each one over
# its committed corpus for SECONDS (default 60), one after the other; any crash, sanitizer
# report, leak, timeout or out-of-memory fails the run, and the input is left in
# build-fuzz/artifacts/. New inputs go to a scratch folder, so the committed corpus stays
# as it is. Without clang-14 and its libFuzzer runtime (clang-14, libclang-rt-14-dev) it
# exits 77 (CTest: skipped) with the reason, except under CI=true, where that fails it.
# usage: tests/fuzz/run_fuzzers.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-60}
BUILD_DIR=build-fuzz

skip() {
  if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
    echo "fuzz: $1, and CI is set: the fuzzers must run" >&2
    exit 1
  fi
  echo "fuzz: skipped: $1"
  exit 77
}
command -v clang++-14 >/dev/null 2>&1 || skip "clang++-14 is not installed (apt-get install clang-14 libclang-rt-14-dev)"
if ! ls "$(clang++-14 -print-resource-dir)"/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  skip "clang-14's libFuzzer runtime is not installed (apt-get install libclang-rt-14-dev)"
fi

CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD_DIR" -DAMANUENSIS_FUZZ=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"

mkdir -p "$BUILD_DIR/artifacts"
# target and the longest input it takes (a little above its largest seed)
TARGETS=("model 300000" "wav 16384" "decode 65536" "multipart 16384" "request_options 4096")
failed=()
for spec in "${TARGETS[@]}"; do
  read -r target max_len <<<"$spec"
  scratch=$(mktemp -d)
  echo "fuzz: $target for ${SECONDS_EACH} s"
  if "$BUILD_DIR/tests/fuzz/${target}_fuzz" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len="$max_len" \
      -timeout=25 -print_final_stats=1 -artifact_prefix="$BUILD_DIR/artifacts/${target}-" \
      "$scratch" "tests/fuzz/corpus/$target" >"$BUILD_DIR/artifacts/$target.log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$BUILD_DIR/artifacts/$target.log" || true
  else
    echo "fuzz: $target FAILED; the end of its log ($BUILD_DIR/artifacts/$target.log):" >&2
    tail -n 60 "$BUILD_DIR/artifacts/$target.log" >&2
    failed+=("$target")
  fi
  rm -rf "$scratch"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets ran ${SECONDS_EACH} s each without a finding"
