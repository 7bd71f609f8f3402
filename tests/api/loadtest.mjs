// A bounded load test of `amanuensis serve` on this machine: sends REQUESTS transcriptions
// of one audio file, CONCURRENCY at a time, and reports status counts, latency percentiles,
// throughput and the server's real-time factor. Loopback or the project's own test hosts only.
// usage: node loadtest.mjs URL AUDIO_FILE [--requests N] [--concurrency C] [--api-key KEY]
//                          [--response-format F] [--timeout-s S]
//   URL: the server's base, e.g. http://127.0.0.1:8080
import fs from 'node:fs';
import path from 'node:path';

const argv = process.argv.slice(2);
const positional = [];
const opts = { requests: 20, concurrency: 4, 'api-key': '', 'response-format': 'json', 'timeout-s': 300 };
for (let i = 0; i < argv.length; i++) {
  if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
  else positional.push(argv[i]);
}
const [base, audioPath] = positional;
if (!base || !audioPath) {
  console.error('usage: node loadtest.mjs URL AUDIO_FILE [--requests N] [--concurrency C] [--api-key KEY]');
  process.exit(2);
}
const requests = Math.max(1, Math.min(10000, Number(opts.requests)));
const concurrency = Math.max(1, Math.min(256, Number(opts.concurrency)));
const audio = fs.readFileSync(audioPath);
const url = base.replace(/\/$/, '') + '/v1/audio/transcriptions';
const headers = opts['api-key'] ? { Authorization: `Bearer ${opts['api-key']}` } : {};

const latencies = [];
const statuses = {};
let audioSeconds = 0;
let transcriptionSeconds = 0;
let next = 0;

async function one() {
  const form = new FormData();
  form.append('file', new Blob([audio]), path.basename(audioPath));
  form.append('model', 'whisper-1');
  form.append('response_format', opts['response-format'] === 'json' ? 'json' : opts['response-format']);
  form.append('include_timing', 'true');
  const t0 = performance.now();
  let status = 'error';
  try {
    const res = await fetch(url, { method: 'POST', body: form, headers,
                                   signal: AbortSignal.timeout(Number(opts['timeout-s']) * 1000) });
    status = res.status;
    const body = await res.text();
    if (res.status === 200 && opts['response-format'] === 'json') {
      const t = JSON.parse(body).timing;
      if (t) {
        audioSeconds += t.audio_seconds;
        transcriptionSeconds += t.transcription_seconds;
      }
    }
  } catch (e) {
    status = e.name === 'TimeoutError' ? 'timeout' : 'error';
  }
  latencies.push((performance.now() - t0) / 1000);
  statuses[status] = (statuses[status] || 0) + 1;
}

async function worker() {
  while (next < requests) {
    next++;
    await one();
  }
}

const start = performance.now();
await Promise.all(Array.from({ length: concurrency }, worker));
const wall = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(3);
console.log(`requests ${requests}, concurrency ${concurrency}, wall ${wall.toFixed(2)} s, ` +
            `${(requests / wall).toFixed(2)} req/s`);
console.log(`status ${JSON.stringify(statuses)}`);
console.log(`latency s: p50 ${pct(0.5)} p90 ${pct(0.9)} p99 ${pct(0.99)} max ${latencies.at(-1).toFixed(3)}`);
if (audioSeconds > 0) {
  console.log(`audio ${audioSeconds.toFixed(1)} s transcribed; ${(audioSeconds / wall).toFixed(1)} audio s per wall s; ` +
              `mean real-time factor ${(transcriptionSeconds / audioSeconds).toFixed(4)}`);
}
process.exit(statuses[200] === requests ? 0 : 1);
