#!/usr/bin/env bash
# The soak of issue 12: MINUTES of 16 concurrent streams against `amanuensis serve` with the
# kit's micro model, mixing every kind of kit file with broken ones (the stress run's set).
# Passes when no request got a 5xx or no answer, every valid file got 200 and every broken
# one 400; the server's resident memory over the last sixth of the run stays within 5% of
# its highest between the first sixth and the first third (minutes 5-10 of a 30-minute
# run: the warm state, with allocator arenas and batch buffers at their sizes); and the
# server holds no more file descriptors when idle after the run than when idle before it.
# usage: tests/soak/soak.sh AMANUENSIS_BINARY [SHARED_DIR] [MINUTES]   (default 30)
#   SOAK_REPORT names a folder to keep the samples and loadtest reports in.
set -euo pipefail

CLI=$(realpath "${1:?usage: soak.sh AMANUENSIS_BINARY [SHARED_DIR] [MINUTES]}")
SHARED=$(realpath "${2:-$(dirname "$0")/../../../shared}")
MINUTES=${3:-30}
AUDIO=$SHARED/conformance/audio
MODEL=$SHARED/conformance/models/micro.en-f16.bin
STREAMS=16

WORK=$(mktemp -d)
SAMPLER_PID=""
# shellcheck source=../stress/serve_lib.sh
source "$(dirname "$0")/../stress/serve_lib.sh"
cleanup() {
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  stop_server
  if [ -n "${SOAK_REPORT:-}" ]; then mkdir -p "$SOAK_REPORT" && cp "$WORK"/*.json "$WORK"/samples.txt "$SOAK_REPORT"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
make_upload_files
start_server --max-queue-seconds 100000
URL="http://127.0.0.1:$PORT"

open_descriptors() { find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
resident_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }

# warm-up (not judged), then the idle descriptor count the run must come back to
"$CLI" loadtest --url "$URL" --concurrency "$STREAMS" --requests 64 --timeout 600 "${FILES[@]}" >/dev/null
sleep 1
FDS_BEFORE=$(open_descriptors)

START=$(date +%s)
END=$((START + MINUTES * 60))
# one sample every 2 s: seconds since the start, resident kB, open descriptors
(
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$(($(date +%s) - START)) $(resident_kb) $(open_descriptors)"
    sleep 2
  done
) >"$WORK/samples.txt" 2>/dev/null &
SAMPLER_PID=$!

round=0
while [ "$(date +%s)" -lt "$END" ]; do
  round=$((round + 1))
  "$CLI" loadtest --url "$URL" --concurrency "$STREAMS" --requests 48 --timeout 600 \
    --json "$WORK/round-$round.json" "${FILES[@]}" >/dev/null
done
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
sleep 1
FDS_AFTER=$(open_descriptors)

python3 - "$WORK" "$MINUTES" "$FDS_BEFORE" "$FDS_AFTER" <<'PY'
import glob, json, sys

work, minutes, fds_before, fds_after = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
failures, statuses, requests = [], {}, 0
broken_names = ("empty.wav", "random.wav", "truncated-header.wav", "notes.txt")
for path in sorted(glob.glob(f"{work}/round-*.json")):
    level = json.load(open(path))["levels"][0]
    requests += level["requests"]
    for status, count in level["statuses"].items():
        statuses[status] = statuses.get(status, 0) + count
    for entry in level["per_file"]:
        name = entry["file"].rsplit("/", 1)[-1]
        expected = "400" if name in broken_names else "200"
        if set(entry["statuses"]) - {expected}:
            failures.append(f"{path.rsplit('/', 1)[-1]}: {name} answered {entry['statuses']}, expected {expected}")
    if level["unexpected"]:
        failures.append(f"{path.rsplit('/', 1)[-1]}: {level['unexpected']} unexpected answers")
for status, count in statuses.items():
    if status.startswith("5") or status.startswith("transport:"):
        failures.append(f"{count} requests answered {status}")

samples = [tuple(map(int, line.split())) for line in open(f"{work}/samples.txt") if len(line.split()) == 3]
run = minutes * 60
reference = [kb for t, kb, _ in samples if run / 6 <= t <= run / 3]
final = [kb for t, kb, _ in samples if t >= run * 5 / 6]
if not reference or not final:
    failures.append(f"too few memory samples ({len(samples)})")
else:
    ratio = max(final) / max(reference)
    if ratio > 1.05:
        failures.append(f"resident memory over the last sixth peaks at {ratio:.3f}x its peak over the second sixth")
if fds_after > fds_before:
    failures.append(f"{fds_after} open descriptors after the run, {fds_before} before it")

mib = lambda values, f: f(values) / 1024 if values else 0
print(f"soak: {minutes:g} min, {requests} requests at 16 streams, statuses {statuses}; resident memory "
      f"{mib(reference, min):.1f}-{mib(reference, max):.1f} MiB over the second sixth, "
      f"{mib(final, min):.1f}-{mib(final, max):.1f} MiB over the last sixth; "
      f"descriptors idle {fds_before} before, {fds_after} after, at most {max((s[2] for s in samples), default=0)} during")
for failure in failures:
    print("soak: FAIL:", failure)
sys.exit(1 if failures else 0)
PY
