#!/usr/bin/env bash
# The stress run of issue #5: 1,000 requests from 32 concurrent clients, mixing 1 s, 5 s,
# 30 s and 75 s of speech, silence, noise and broken files, against `amanuensis serve` with
# the kit's micro model. Passes when no request got a 5xx or no answer, every valid file got
# 200 and every broken one 400, and the server's resident memory over the last 200 requests
# is within 15% of that over the first 200 (a leak would grow it).
# usage: tests/stress/stress.sh AMANUENSIS_BINARY [SHARED_DIR] [REQUESTS]
#   SHARED_DIR: the folder holding conformance/ (default: ../shared beside the checkout)
#   The loadtest report is kept when STRESS_REPORT names a path for it.
set -euo pipefail

CLI=$(realpath "${1:?usage: stress.sh AMANUENSIS_BINARY [SHARED_DIR] [REQUESTS]}")
SHARED=$(realpath "${2:-$(dirname "$0")/../../../shared}")
REQUESTS=${3:-1000}
AUDIO=$SHARED/conformance/audio
MODEL=$SHARED/conformance/models/micro.en-f16.bin

WORK=$(mktemp -d)
# shellcheck source=serve_lib.sh
source "$(dirname "$0")/serve_lib.sh"
cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
make_upload_files

# 32 clients with up to 75 s each can queue 2,400 s of audio: the queue must take it all,
# or 429s (correct behaviour, but not what this run checks) would appear.
start_server --max-queue-seconds 100000
URL="http://127.0.0.1:$PORT"

# A fresh server grows by about as much again as the model while its first few dozen
# requests run (buffers sized by the largest batch so far, allocator arenas); a warm-up
# keeps that out of the first 200 requests, which are the baseline for spotting a leak.
# On a loaded machine batches reach their largest sizes later (x1.108 after 96 warm-up
# requests at load ~10, x1.026 on a quiet machine), so the warm-up is 256 requests.
"$CLI" loadtest --url "$URL" --concurrency 32 --requests "${STRESS_WARMUP:-256}" --timeout 600 "${FILES[@]}" >/dev/null

START=$(date +%s.%N)
"$CLI" loadtest --url "$URL" --concurrency 32 --requests "$REQUESTS" --metrics-every 10 --timeout 600 \
  --json "$WORK/report.json" "${FILES[@]}"
END=$(date +%s.%N)
if [ -n "${STRESS_REPORT:-}" ]; then cp "$WORK/report.json" "$STRESS_REPORT"; fi

status=0
python3 - "$WORK/report.json" "$REQUESTS" "$START" "$END" <<'PY' || status=$?
import json, sys

report = json.load(open(sys.argv[1]))
requests, seconds = int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
level = report["levels"][0]
failures = []

if level["requests"] != requests:
    failures.append(f"{level['requests']} requests sent, not {requests}")
for status, count in level["statuses"].items():
    if status.startswith("5") or status.startswith("transport:"):
        failures.append(f"{count} requests answered {status}")
broken_names = ("empty.wav", "random.wav", "truncated-header.wav", "notes.txt")
for entry in level["per_file"]:
    name = entry["file"].rsplit("/", 1)[-1]
    expected = "400" if name in broken_names else "200"
    if str(entry["expected_status"]) != expected:
        failures.append(f"{name}: the load tester expected {entry['expected_status']}, the run expects {expected}")
    if set(entry["statuses"]) != {expected}:
        failures.append(f"{name}: answered {entry['statuses']}, every request should get {expected}")
if level["unexpected"] != 0:
    failures.append(f"{level['unexpected']} unexpected answers")

memory = level.get("memory", {})
ratio = memory.get("last_to_first_ratio")
if ratio is None:
    failures.append("no resident memory for the first and last 200 requests (needs >= 400 requests and /metrics)")
# 15%: the mean over 200 requests moves with the batch sizes the machine's load allows
# (x0.97-1.11 measured at 1000 requests with a build running beside, x0.99-1.03 without);
# a leak of a few kB a request is the soak's to find (issue 12), not this run's.
elif abs(ratio - 1.0) > 0.15:
    failures.append(f"resident memory over the last 200 requests is {ratio:.3f}x that over the first 200")

latency = level["latency_seconds"]
mib = lambda key: memory.get(key, 0) / 2**20
print(f"stress: {level['requests']} requests at {level['concurrency']} clients in {seconds:.1f} s: "
      f"statuses {level['statuses']}; {level['audio_seconds']:.0f} s of audio, "
      f"{level['audio_seconds_per_second']:.1f} audio s/s, {level['requests_per_second']:.2f} req/s; "
      f"latency p50 {latency['p50']:.2f} s, p95 {latency['p95']:.2f} s, p99 {latency['p99']:.2f} s, "
      f"max {latency['max']:.2f} s; resident memory {mib('first_200_mean_rss_bytes'):.1f} MiB over the first 200, "
      f"{mib('last_200_mean_rss_bytes'):.1f} MiB over the last 200 (x{ratio or 0:.3f})")
for failure in failures:
    print("stress: FAIL:", failure)
sys.exit(1 if failures else 0)
PY
if [ "$status" -ne 0 ]; then
  echo "stress: the server's log ends:"
  tail -n 20 "$WORK/server.log"
fi
exit "$status"
