// Exercises `amanuensis serve` with OpenAI's official Node.js client.
// usage: node client.mjs BASE_URL API_KEY AUDIO_FILE   (BASE_URL like http://127.0.0.1:8080/v1)
// Prints one line per check and a closing "N passed, N failed"; exits 1 on any failure.
import fs from 'node:fs';
import OpenAI from 'openai';

const [baseURL, apiKey, audioPath] = process.argv.slice(2);
if (!baseURL || !apiKey || !audioPath) {
  console.error('usage: node client.mjs BASE_URL API_KEY AUDIO_FILE');
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
let passed = 0;
let failed = 0;

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

await check('models.list names the served model and the whisper-1 alias', async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  assert(page.data.length === 2 && ids.includes('whisper-1') && ids.every((id) => typeof id === 'string' && id.length > 0),
    `unexpected models: ${JSON.stringify(page.data)}`);
});

await check('models.retrieve finds a listed model', async () => {
  const m = await client.models.retrieve('whisper-1');
  assert(m.id === 'whisper-1' && m.object === 'model', `unexpected model: ${JSON.stringify(m)}`);
});

await check('an unknown model is refused with 404 (NotFoundError, model_not_found)', async () => {
  try {
    await client.audio.transcriptions.create({ file: fs.createReadStream(audioPath), model: 'no-such-model' });
  } catch (e) {
    assert(e instanceof OpenAI.NotFoundError, `expected NotFoundError, got ${e}`);
    assert(e.code === 'model_not_found' && e.param === 'model', `error ${JSON.stringify(e.error)}`);
    return;
  }
  throw new Error('the request was accepted');
});

let jsonText;
await check('transcriptions.create, response_format json', async () => {
  const r = await client.audio.transcriptions.create({ file: fs.createReadStream(audioPath), model: 'whisper-1' });
  assert(typeof r.text === 'string', `no text in ${JSON.stringify(r)}`);
  jsonText = r.text;
});

await check('json: text without a leading space, usage in whole seconds, _request_id', async () => {
  const r = await client.audio.transcriptions.create({ file: fs.createReadStream(audioPath), model: 'whisper-1' });
  assert(r.text.length > 0 && r.text === r.text.trim(), `text ${JSON.stringify(r.text)} has outer spaces`);
  assert(r.usage && r.usage.type === 'duration' && Number.isInteger(r.usage.seconds) && r.usage.seconds > 0,
    `usage ${JSON.stringify(r.usage)}`);
  assert(typeof r._request_id === 'string' && r._request_id.startsWith('req_'), `_request_id ${r._request_id}`);
});

await check('include logprobs: one {token, logprob, bytes} per text token, spelling the text', async () => {
  const r = await client.audio.transcriptions.create({
    file: fs.createReadStream(audioPath), model: 'whisper-1', include: ['logprobs'], temperature: 0,
  });
  assert(Array.isArray(r.logprobs) && r.logprobs.length > 0, `no logprobs in ${JSON.stringify(r)}`);
  assert(r.logprobs.every((t) => typeof t.token === 'string' && Array.isArray(t.bytes) && t.logprob <= 0 && Number.isFinite(t.logprob)),
    `logprobs ${JSON.stringify(r.logprobs)}`);
  const spelled = Buffer.from(r.logprobs.flatMap((t) => t.bytes)).toString('utf8');
  assert(spelled.trim() === r.text, `tokens spell ${JSON.stringify(spelled)}, text is ${JSON.stringify(r.text)}`);
});

// OpenAI's client sends these fields; the server refuses what it cannot do, naming it.
for (const [name, fields, param] of [
  ['stream=true', { stream: true }, 'stream'],
  ['include logprobs with response_format text', { include: ['logprobs'], response_format: 'text' }, 'include'],
  ['language xx', { language: 'xx' }, 'language'],
  ['language de on an English-only model', { language: 'de' }, 'language'],
  ['word granularity with json', { timestamp_granularities: ['word'] }, 'timestamp_granularities'],
  ['an unknown chunking_strategy', { chunking_strategy: { type: 'client_vad' } }, 'chunking_strategy'],
]) {
  await check(`${name} is refused with 400 naming ${param}`, async () => {
    try {
      await client.audio.transcriptions.create({ file: fs.createReadStream(audioPath), model: 'whisper-1', ...fields });
    } catch (e) {
      assert(e instanceof OpenAI.BadRequestError, `expected BadRequestError, got ${e}`);
      assert(e.error && e.error.param === param, `error body ${JSON.stringify(e.error)}`);
      return;
    }
    throw new Error('the request was accepted');
  });
}

await check('chunking_strategy auto and server_vad are taken', async () => {
  for (const chunking_strategy of ['auto', { type: 'server_vad', threshold: 0.4, silence_duration_ms: 500 }]) {
    const r = await client.audio.transcriptions.create({ file: fs.createReadStream(audioPath), model: 'whisper-1', chunking_strategy });
    assert(typeof r.text === 'string', `no text in ${JSON.stringify(r)}`);
  }
});

await check('transcriptions.create, response_format text', async () => {
  const r = await client.audio.transcriptions.create({
    file: fs.createReadStream(audioPath), model: 'whisper-1', response_format: 'text',
  });
  assert(typeof r === 'string', `expected a string, got ${typeof r}`);
  if (jsonText !== undefined) assert(r.trim() === jsonText.trim(), `text ${JSON.stringify(r)} != json ${JSON.stringify(jsonText)}`);
});

await check('transcriptions.create, verbose_json with word timestamps', async () => {
  const r = await client.audio.transcriptions.create({
    file: fs.createReadStream(audioPath), model: 'whisper-1', response_format: 'verbose_json',
    timestamp_granularities: ['word', 'segment'], temperature: 0,
  });
  assert(Array.isArray(r.segments), 'no segments');
  assert(Array.isArray(r.words), 'no words');
  assert(typeof r.duration === 'number' && r.duration > 0, 'no duration');
  assert(r.language === 'english', `language ${r.language}: OpenAI names it`);
  assert(r.words.every((w) => w.word === w.word.trim() && w.word.length > 0), `words ${JSON.stringify(r.words)}`);
  assert(r.usage && r.usage.type === 'duration' && r.usage.seconds === Math.ceil(r.duration), `usage ${JSON.stringify(r.usage)}`);
});

await check('translations.create', async () => {
  const r = await client.audio.translations.create({ file: fs.createReadStream(audioPath), model: 'whisper-1' });
  assert(typeof r.text === 'string', `no text in ${JSON.stringify(r)}`);
});

await check('a wrong API key is refused with 401 (AuthenticationError)', async () => {
  const bad = new OpenAI({ baseURL, apiKey: apiKey + '-wrong', maxRetries: 0 });
  try {
    await bad.audio.transcriptions.create({ file: fs.createReadStream(audioPath), model: 'whisper-1' });
  } catch (e) {
    assert(e instanceof OpenAI.AuthenticationError, `expected AuthenticationError, got ${e}`);
    assert(e.status === 401, `status ${e.status}`);
    return;
  }
  throw new Error('the request was accepted');
});

await check('a bad response_format is refused with 400 (BadRequestError)', async () => {
  try {
    await client.audio.transcriptions.create({
      file: fs.createReadStream(audioPath), model: 'whisper-1', response_format: 'docx',
    });
  } catch (e) {
    assert(e instanceof OpenAI.BadRequestError, `expected BadRequestError, got ${e}`);
    assert(e.error && e.error.param === 'response_format', `error body ${JSON.stringify(e.error)}`);
    return;
  }
  throw new Error('the request was accepted');
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
