# Shared by the stress run (stress.sh) and the soak (tests/soak/soak.sh), sourced after
# CLI, AUDIO, MODEL and WORK are set: broken uploads, the kit files beside them, and a
# server on a free port. The caller's EXIT trap calls stop_server.

SERVER_PID=""
PORT=""

stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  SERVER_PID=""
}

# Broken uploads, each failing a different way: nothing at all, noise without a container,
# a WAV cut off inside its header, and text. Then FILES: every kind of kit file and these.
make_upload_files() {
  : >"$WORK/empty.wav"
  python3 -c 'import random, sys; random.seed(5); sys.stdout.buffer.write(random.randbytes(16384))' >"$WORK/random.wav"
  head -c 30 "$AUDIO/speech-1s.wav" >"$WORK/truncated-header.wav"
  printf 'These are meeting notes, not audio.\n' >"$WORK/notes.txt"
  FILES=("$AUDIO/speech-1s.wav" "$AUDIO/speech-5s.wav" "$AUDIO/speech-30s.wav" "$AUDIO/speech-75s.wav"
         "$AUDIO/silence-5s.wav" "$AUDIO/noise-5s.wav"
         "$WORK/empty.wav" "$WORK/random.wav" "$WORK/truncated-header.wav" "$WORK/notes.txt")
}

# Starts `amanuensis serve` on the micro model with the extra arguments given, sets
# SERVER_PID and PORT once /health answers 200, or fails with the server's log.
# Short greedy decoding: the micro model's weights are random, and what is tested is the
# serving. STRESS_THREADS sets the compute threads (default: every core; the run is alone).
start_server() {
  : >"$WORK/server.out"  # before the server starts: the loop below reads it at once
  "$CLI" serve --model "$MODEL" --port 0 --threads "${STRESS_THREADS:-$(nproc)}" --sample-len 8 --beam-size 1 \
    --no-fallback "$@" >"$WORK/server.out" 2>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 300); do
    PORT=$(grep -o '127\.0\.0\.1:[0-9]*' "$WORK/server.out" | head -n 1 | cut -d: -f2 || true)
    if [ -n "$PORT" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ]; then
      return 0
    fi
    PORT=""
    sleep 0.1
  done
  echo "$(basename "$0"): the server did not come up" >&2
  cat "$WORK/server.log" >&2
  return 1
}
