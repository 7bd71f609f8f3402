#!/usr/bin/env bash
# Installs what amanuensis needs on Debian bookworm (apt only) and builds it.
# Idempotent: packages already installed are not fetched again, and the build is incremental.
# usage: scripts/setup.sh [build-dir]   (default: build)
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

PACKAGES=(
  build-essential cmake pkg-config python3
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev zlib1g-dev
  ffmpeg libdnnl-dev libavformat-dev libavcodec-dev libswresample-dev libavutil-dev
  libboost-dev curl libssl-dev
  # Debian's libdnnl-dev is built with the OpenCL GPU runtime: its CMake config needs the
  # OpenCL headers and loader, which are only a Recommends (not installed below).
  ocl-icd-opencl-dev
  # The .deb (`cmake --build build --target package`): CPack finds the ELF files with `file`
  # and dpkg-shlibdeps (dpkg-dev, also pulled in by build-essential) writes their Depends.
  file dpkg-dev
  # The fresh-machine test (tests/fresh) builds a minimal bookworm root with it.
  debootstrap
  # The fuzz targets (tests/fuzz, run by the suite's fuzz_targets test): clang and libFuzzer.
  clang-14 libclang-rt-14-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm run the API tests with OpenAI's client (tests/api). Checked by command,
# not by package: a Node.js from elsewhere ships its own npm, which Debian's npm conflicts with.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The API tests' npm packages, installed from the lock file when it changed. Outside CI a
# failure only warns (the OpenAI client test then skips, saying why); in CI (CI=true, as
# CI services set it) it stops the run: a green CI must have run the client test.
if [ ! -f tests/api/node_modules/.package-lock.json ] || [ tests/api/package-lock.json -nt tests/api/node_modules/.package-lock.json ]; then
  if ! (cd tests/api && npm ci --no-audit --no-fund --loglevel=error); then
    if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
      echo "setup: npm ci in tests/api failed, and CI is set: the OpenAI client test cannot run" >&2
      exit 1
    fi
    echo "setup: npm ci in tests/api failed; the OpenAI client test will be skipped" >&2
  fi
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built $BUILD_DIR/src/cli/amanuensis"
