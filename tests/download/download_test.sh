#!/usr/bin/env bash
# `amanuensis download` and models by name against a loopback HTTP server
# (model_server.py, serving the kit's micro.en-f16 under several names): a download cut
# off half way leaves NAME.partial and the next run resumes it with a byte range; the file
# appears under its final name only once its SHA-1 matches; redirects are followed; a
# server that ignores the range gives a fresh start; a checksum mismatch, a 404, an unknown
# name and an unreachable server fail with exit 1 and a message; `--model NAME` then finds
# the download in $XDG_CACHE_HOME/amanuensis and transcribes exactly like the file itself.
# usage: tests/download/download_test.sh AMANUENSIS_BINARY SHARED_DIR
set -euo pipefail
{
CLI=$(realpath "${1:?usage: download_test.sh AMANUENSIS_BINARY SHARED_DIR}")
SHARED=$(realpath "${2:?usage: download_test.sh AMANUENSIS_BINARY SHARED_DIR}")
MODEL=$SHARED/conformance/models/micro.en-f16.bin
JFK=$SHARED/conformance/audio/jfk.wav
SHA1=$(sha1sum "$MODEL" | cut -d' ' -f1)

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export XDG_CACHE_HOME=$WORK/cache
CACHE=$XDG_CACHE_HOME/amanuensis
python3 "$(dirname "$0")/model_server.py" "$WORK/requests.log" micro.en="$MODEL" tiny.en="$MODEL" >"$WORK/port" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
URL=http://127.0.0.1:$(cat "$WORK/port")

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
# run NAME EXPECTED_STATUS ARGS...: runs the CLI, keeps its stderr in $WORK/NAME.err
run() {
  local name=$1 expected=$2; shift 2
  local rc=0
  "$CLI" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null || rc=$?
  if [ "$rc" -ne "$expected" ]; then
    fail "$name: exit $rc, expected $expected ($*)"; sed 's/^/    /' "$WORK/$name.err" >&2
  fi
}
expect_err() { grep -qF -- "$2" "$WORK/$1.err" || { fail "$1: stderr lacks '$2'"; sed 's/^/    /' "$WORK/$1.err" >&2; }; }
same_as_model() { cmp -s "$1" "$MODEL" || fail "$1 differs from $MODEL"; }

# Not downloaded yet: --model NAME says how to get it.
run not_downloaded 1 transcribe --model tiny.en "$JFK"
expect_err not_downloaded "model tiny.en is not downloaded yet"
expect_err not_downloaded "amanuensis download tiny.en"

# Cut off half way: exit 1, the half kept as .partial, nothing under the final name.
run cut 1 download --base-url "$URL/cut" --sha1 "$SHA1" micro.en
expect_err cut "run the same command again to resume"
[ ! -e "$CACHE/ggml-micro.en.bin" ] || fail "cut: the final file exists after a failed download"
half=$(stat -c %s "$CACHE/ggml-micro.en.bin.partial" 2>/dev/null || echo 0)
[ "$half" -gt 0 ] || fail "cut: no partial file"

# Resumed with a byte range from where it stopped.
: >"$WORK/requests.log"
run resume 0 download --base-url "$URL" --sha1 "$SHA1" micro.en
expect_err resume "resuming at byte $half"
expect_err resume "SHA-1 ok, resumed"
grep -qx "/ggml-micro.en.bin bytes=$half-" "$WORK/requests.log" || fail "resume: no range request from byte $half"
same_as_model "$CACHE/ggml-micro.en.bin"
[ ! -e "$CACHE/ggml-micro.en.bin.partial" ] || fail "resume: the partial file is left"

# By name: the same transcript as the file itself.
run by_name 0 transcribe --threads 1 --no-fallback --model micro.en "$JFK"
run by_path 0 transcribe --threads 1 --no-fallback --model "$MODEL" "$JFK"
[ -s "$WORK/by_name.out" ] && cmp -s "$WORK/by_name.out" "$WORK/by_path.out" || fail "by_name: transcript differs from by_path"

# Already there: nothing fetched.
: >"$WORK/requests.log"
run again 0 download --base-url "$URL" --sha1 "$SHA1" micro.en
expect_err again "already downloaded"
[ ! -s "$WORK/requests.log" ] || fail "again: the server was asked for an existing model"

# Redirects, into another folder.
run redirect 0 download --dir "$WORK/other" --base-url "$URL/redirect" --sha1 "$SHA1" micro.en
same_as_model "$WORK/other/ggml-micro.en.bin"

# A partial file the server will not resume (range ignored): started over.
mkdir -p "$WORK/norange"
head -c 1000 /dev/urandom >"$WORK/norange/ggml-micro.en.bin.partial"
run norange 0 download --dir "$WORK/norange" --base-url "$URL/norange" --sha1 "$SHA1" micro.en
same_as_model "$WORK/norange/ggml-micro.en.bin"

# --force fetches again.
run force 0 download --force --dir "$WORK/other" --base-url "$URL" --sha1 "$SHA1" micro.en
expect_err force "downloaded"

# Wrong bytes for an official model (the server has micro.en's bytes as tiny.en): refused.
run mismatch 1 download --base-url "$URL" tiny.en
expect_err mismatch "tiny.en: checksum mismatch: SHA-1 $SHA1, expected c78c86eb1a8faa21b369bcd33207cc90d64ae9df"
[ ! -e "$CACHE/ggml-tiny.en.bin" ] && [ ! -e "$CACHE/ggml-tiny.en.bin.partial" ] || fail "mismatch: a file is left"

# Other failures.
run missing 1 download --base-url "$URL" --sha1 "$SHA1" no-such-model
expect_err missing "answered HTTP 404"
run unknown 1 download --base-url "$URL" whisper-huge
expect_err unknown "unknown model 'whisper-huge'"
run bad_sha 1 download --sha1 1234 micro.en
expect_err bad_sha "is not 40 hexadecimal digits"
run no_name 1 download
expect_err no_name "at least one model name"
run unreachable 1 download --dir "$WORK/unreachable" --base-url http://127.0.0.1:9 --sha1 "$SHA1" micro.en
expect_err unreachable "failed after 0 bytes"
run bad_url 1 download --base-url ftp://example.org tiny.en
expect_err bad_url "must start with http:// or https://"

# --list: every official model, and which are in the cache.
mkdir -p "$CACHE" && cp "$MODEL" "$CACHE/ggml-base.en.bin"
run list 0 download --list
for name in tiny tiny.en base.en small medium.en large-v2 large-v3 large-v3-turbo; do
  grep -qE "^  $name +[0-9]+ MiB" "$WORK/list.out" || fail "list: no line for $name"
done
grep -qE "^  base.en +142 MiB  \(downloaded\)" "$WORK/list.out" || fail "list: base.en not marked downloaded"
grep -qE "^  tiny.en +75 MiB$" "$WORK/list.out" || fail "list: tiny.en marked downloaded"
grep -qF "models in $CACHE:" "$WORK/list.out" || fail "list: cache folder not named"

if [ "$failures" -ne 0 ]; then echo "download test: $failures failure(s)" >&2; exit 1; fi
echo "download test: all checks passed"
exit 0
}
