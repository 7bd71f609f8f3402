#include "cli/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/wav.h"
#include "cli/args.h"
#include "cli/compute_flags.h"
#include "cli/model_cache.h"
#include "common/cpu_features.h"
#include "common/error.h"
#include "decoding/beam_search.h"
#include "decoding/window_decoder.h"
#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "mel/log_mel.h"
#include "pipeline/transcriber.h"

namespace amanuensis::cli {

const char* const kBenchUsage = R"(amanuensis bench --model MODEL.bin [options]

Times mel (30 s), the encoder (per 30 s window), the decoder (per token, one token per
forward call, teacher-forced, tokens-per-second x audio seconds tokens) and the whole
chain end to end over the audio's windows.

options:
  --audio FILE.wav          audio to time (default: --seconds of synthetic audio)
  --seconds S               length of the synthetic audio (default 30)
  --tokens-per-second N     decoded tokens per audio second (default 3)
  --threads N               compute threads (default: all cores)
  --precision P             auto (default), fp32, bf16 or int8
  --max-isa CAP             the most the kernels may use: native (default), avx512 (no AMX),
                            avx2 (an AVX2-only machine's paths) or baseline (no AVX)
  --runs N                  timed repetitions of each stage; the median is reported (default 3)
  --batch-sizes LIST        batched decoder steps to time: sequences per step, each with its
                            own KV cache and window (what the server's batching runs;
                            default 1,4,16,64)
  --json                    print one JSON object instead of the table
)";

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// CPU time of the whole process (all threads): on a busy machine wall time stretches
// but this does not, so cpu / threads hints at the time on an idle one.
double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Deterministic speech-like noise: a few gliding tones under white noise.
std::vector<float> synthetic_audio(double seconds) {
  const auto n = static_cast<std::size_t>(seconds * audio::kSampleRate);
  std::vector<float> s(n);
  std::uint32_t state = 12345;
  for (std::size_t i = 0; i < n; ++i) {
    state = state * 1664525u + 1013904223u;
    const double t = static_cast<double>(i) / audio::kSampleRate;
    const double noise = (static_cast<double>(state >> 8) / 16777216.0 - 0.5) * 0.05;
    const double f0 = 140.0 + 40.0 * std::sin(2.0 * M_PI * 0.7 * t);
    s[i] = static_cast<float>(0.3 * std::sin(2.0 * M_PI * f0 * t) + 0.1 * std::sin(2.0 * M_PI * 3.0 * f0 * t) + noise);
  }
  return s;
}

// The mel window of 30 s starting at `first` sample (zero-padded like a single-window call).
std::vector<float> window_mel(const pipeline::Model& model, std::span<const float> samples, std::size_t first) {
  const std::size_t n = std::min<std::size_t>(mel::kChunkSamples, samples.size() - std::min(first, samples.size()));
  return mel::log_mel_spectrogram(samples.subspan(first, n), model.file().mel_filters(), model.hparams().n_mels,
                                  mel::kChunkSamples - n)
      .data;
}

// Ordinary text tokens (below the special ids) standing in for decoded speech.
std::vector<nn::TokenId> text_tokens(const pipeline::Model& model, int count) {
  const int n_text = std::min(model.hparams().n_vocab, 50257);
  std::vector<nn::TokenId> t(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) t[i] = (1000 + 7919 * i) % n_text;
  return t;
}

// The prompt a window starts with: start-of-transcript (and language/task when
// multilingual) and no-timestamps, as the decoder feeds it in one call.
std::vector<nn::TokenId> prompt_tokens(const pipeline::Model& model) {
  const int v = model.hparams().n_vocab;
  if (model.hparams().is_multilingual()) return {50258, 50259, 50359, 50363};
  return {std::min(50257, v - 1), std::min(50362, v - 1)};
}

struct DecodeTiming {
  double prompt_ms = 0.0;
  double prompt_ms_cpu = 0.0;
  double per_token_ms = 0.0;
  std::int64_t kv_bytes = 0;  // the pool's blocks the window's sequence held at its end
};

// Feeds the prompt in one call and then `n_tokens` tokens one at a time.
DecodeTiming decode_window(const pipeline::Model& model, const nn::CrossAttentionCache& cross, int n_tokens) {
  const auto& dec = model.decoder();
  auto cache = dec.new_sequence();
  const auto prompt = prompt_tokens(model);
  const int room = dec.n_text_ctx() - static_cast<int>(prompt.size());
  const auto tokens = text_tokens(model, std::min(n_tokens, room));
  DecodeTiming t;
  auto t0 = Clock::now();
  const double cpu0 = process_cpu_ms();
  dec.forward(prompt, cache, cross);
  t.prompt_ms = ms_since(t0);
  t.prompt_ms_cpu = process_cpu_ms() - cpu0;
  t0 = Clock::now();
  for (auto token : tokens) {
    const auto logits = dec.forward({&token, 1}, cache, cross);
    // the argmax a greedy decoder takes, so the logits are really consumed
    volatile auto best = std::max_element(logits.begin(), logits.end()) - logits.begin();
    (void)best;
  }
  t.per_token_ms = tokens.empty() ? 0.0 : ms_since(t0) / static_cast<double>(tokens.size());
  t.kv_bytes = cache.bytes();
  return t;
}

struct BatchTiming {
  int sequences = 0;
  double ms_per_step = 0.0;
};

// One decoder step over `n` sequences, each at its own position (a few tokens apart) with
// its own KV cache and its own copy of the window's audio, as requests batched together.
BatchTiming time_batched_step(const pipeline::Model& model, const nn::CrossAttentionCache& cross, int n, int runs) {
  const auto& dec = model.decoder();
  const int steps_per_run = 8;
  std::vector<nn::CrossAttentionCache> audio(static_cast<std::size_t>(n), cross);
  std::vector<nn::KvSequence> caches;
  std::vector<std::vector<float>> logits(static_cast<std::size_t>(n), std::vector<float>(dec.n_vocab()));
  const auto prompt = prompt_tokens(model);
  const auto filler = text_tokens(model, 32 + n);
  for (int i = 0; i < n; ++i) {
    caches.push_back(dec.new_sequence());
    dec.forward(prompt, caches.back(), audio[static_cast<std::size_t>(i)]);
    const auto at = std::span(filler).first(static_cast<std::size_t>(1 + i % 32));
    dec.forward(at, caches.back(), audio[static_cast<std::size_t>(i)]);
  }
  std::vector<nn::SequenceStep> batch(static_cast<std::size_t>(n));
  std::vector<double> ms;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    for (int s = 0; s < steps_per_run; ++s) {
      for (std::size_t i = 0; i < batch.size(); ++i) batch[i] = {filler[i % filler.size()], &caches[i], &audio[i], logits[i]};
      dec.step(batch);
    }
    ms.push_back(ms_since(t0) / steps_per_run);
  }
  return {n, median(ms)};
}

// Beam search 5 over one window (the default decoding at temperature 0) and what its forks
// cost in the decoder's KV pool: forks share blocks (none is copied at a fork), and a
// forked beam's first write into a shared, partly filled tail block copies that block.
// The bench runs alone, so the counters' change over the search is the search's own.
nlohmann::json beam_kv(const pipeline::Model& model, const nn::CrossAttentionCache& cross) {
  const auto& dec = model.decoder();
  decoding::WindowDecoder wd(dec, model.tokenizer(), decoding::DecodeOptions{});
  decoding::BeamOptions beams;
  beams.beam_size = 5;
  const auto before = dec.kv_pool().stats();
  const auto result =
      decoding::beam_search(dec, model.tokenizer(), wd.rules(), wd.initial_tokens({}), wd.sample_len(), cross, beams);
  const auto after = dec.kv_pool().stats();
  return {{"beam_size", beams.beam_size},
          {"tokens", result.tokens.size()},
          {"forks", after.forks - before.forks},
          {"blocks_shared_at_fork", after.blocks_shared_at_fork - before.blocks_shared_at_fork},
          {"positions_shared_at_fork", after.positions_shared_at_fork - before.positions_shared_at_fork},
          {"tail_blocks_copied_on_write", after.blocks_copied - before.blocks_copied},
          {"tail_positions_copied_on_write", after.positions_copied - before.positions_copied},
          {"pool_peak_bytes", after.peak_used_bytes},
          {"blocks_in_use_after", after.blocks_in_use}};
}

std::vector<int> parse_batch_sizes(const std::string& list) {
  std::vector<int> sizes;
  std::size_t start = 0;
  while (start <= list.size()) {
    const auto comma = std::min(list.find(',', start), list.size());
    const std::string item = list.substr(start, comma - start);
    int n = 0;
    try {
      n = std::stoi(item);
    } catch (const std::exception&) {
    }
    if (n < 1 || n > 256) throw Error("--batch-sizes wants numbers from 1 to 256 separated by commas (got '" + item + "')");
    sizes.push_back(n);
    start = comma + 1;
  }
  return sizes;
}

}  // namespace

int run_bench(const std::vector<std::string>& argv) {
  for (const auto& a : argv)
    if (a == "--help" || a == "-h") {
      std::cout << kBenchUsage;
      return 0;
    }
  Args args(argv, {"json"}, {"model", "audio", "seconds", "tokens-per-second", "threads", "precision", "runs", "batch-sizes",
                                           "max-isa"});
  apply_thread_flag(args);
  apply_isa_flag(args);
  const double tokens_per_second = args.get_double("tokens-per-second", 3.0);
  if (tokens_per_second < 0) throw Error("--tokens-per-second must not be negative");
  const int runs = args.get_int("runs", 3);
  if (runs < 1) throw Error("--runs must be at least 1");
  const bool json = args.flag("json");
  const auto batch_sizes = parse_batch_sizes(args.get_or("batch-sizes", "1,4,16,64"));

  std::vector<float> samples;
  if (auto path = args.get("audio")) {
    samples = audio::read_wav_file(*path);
  } else {
    const double seconds = args.get_double("seconds", 30.0);
    if (!(seconds > 0)) throw Error("--seconds must be positive");
    samples = synthetic_audio(seconds);
  }
  if (samples.empty()) throw Error("the audio is empty");
  const double audio_seconds = static_cast<double>(samples.size()) / audio::kSampleRate;

  auto t0 = Clock::now();
  const auto model = pipeline::Model::load(resolve_model(args.required("model")), load_options(args));
  const double load_ms = ms_since(t0);
  const auto& weights_backend = *model->encoder().backend();

  // warm-up: every stage once (first-touch, primitive creation, caches)
  {
    const auto mel = window_mel(*model, samples, 0);
    const auto features = model->encoder().encode(mel);
    const auto cross = model->decoder().cross_attention(features);
    decode_window(*model, cross, 4);
  }

  const auto mel30 = [&] {
    std::vector<float> s(samples.begin(), samples.begin() + std::min<std::size_t>(samples.size(), mel::kChunkSamples));
    return s;
  }();
  std::vector<double> mel_ms, enc_ms, cross_ms, tok_ms, prompt_ms, e2e_ms, enc_cpu_ms, tok_cpu_ms;
  const int window_seconds = std::min(30, static_cast<int>(std::ceil(audio_seconds)));
  const int tokens_per_window = static_cast<int>(std::lround(tokens_per_second * window_seconds));
  std::vector<float> mel_window;
  for (int r = 0; r < runs; ++r) {
    t0 = Clock::now();
    mel_window = window_mel(*model, mel30, 0);
    mel_ms.push_back(ms_since(t0));
    t0 = Clock::now();
    double cpu0 = process_cpu_ms();
    const auto features = model->encoder().encode(mel_window);
    enc_ms.push_back(ms_since(t0));
    enc_cpu_ms.push_back(process_cpu_ms() - cpu0);
    t0 = Clock::now();
    const auto cross = model->decoder().cross_attention(features);
    cross_ms.push_back(ms_since(t0));
    cpu0 = process_cpu_ms();
    const auto d = decode_window(*model, cross, tokens_per_window);
    tok_ms.push_back(d.per_token_ms);
    tok_cpu_ms.push_back(tokens_per_window > 0 ? (process_cpu_ms() - cpu0 - d.prompt_ms_cpu) / tokens_per_window : 0.0);
    prompt_ms.push_back(d.prompt_ms);
  }

  // end to end: every 30 s window of the audio, tokens-per-second x its length tokens
  const std::size_t n_windows = (samples.size() + mel::kChunkSamples - 1) / mel::kChunkSamples;
  int total_tokens = 0;
  std::int64_t kv_bytes_per_sequence = 0;  // of the longest window's sequence
  for (int r = 0; r < runs; ++r) {
    total_tokens = 0;
    t0 = Clock::now();
    for (std::size_t w = 0; w < n_windows; ++w) {
      const std::size_t first = w * mel::kChunkSamples;
      const double seconds = std::min<double>(30.0, static_cast<double>(samples.size() - first) / audio::kSampleRate);
      const auto mel = window_mel(*model, samples, first);
      const auto features = model->encoder().encode(mel);
      const auto cross = model->decoder().cross_attention(features);
      const int n_tokens = static_cast<int>(std::lround(tokens_per_second * seconds));
      kv_bytes_per_sequence = std::max(kv_bytes_per_sequence, decode_window(*model, cross, n_tokens).kv_bytes);
      total_tokens += n_tokens;
    }
    e2e_ms.push_back(ms_since(t0));
  }

  std::vector<BatchTiming> batched;
  nlohmann::json beam;
  {
    const auto cross = model->decoder().cross_attention(model->encoder().encode(mel_window));
    beam = beam_kv(*model, cross);  // before the batched steps: its pool peak is its own
    for (int n : batch_sizes) batched.push_back(time_batched_step(*model, cross, n, runs));
  }
  nlohmann::json batch_json = nlohmann::json::array();
  for (const auto& b : batched)
    batch_json.push_back({{"sequences", b.sequences},
                          {"ms_per_step", b.ms_per_step},
                          {"ms_per_sequence", b.ms_per_step / b.sequences}});

  const double end_to_end = median(e2e_ms);
  // KV memory: self-attention keys and values are float32 per layer and position, in the
  // decoder's pool of fixed-size blocks (nn/kv_pool.h), measured there: the bytes one
  // window's sequence held, the block size, and the pool's peak over the whole run (the
  // batched steps included). A window's cross-attention keys and values are halves,
  // shared by all the window's sequences.
  const auto& hp = model->hparams();
  const auto& dec = model->decoder();
  const auto pool = dec.kv_pool().stats();
  // a block holds block_positions positions of every layer's keys and values
  const double kv_per_token = static_cast<double>(pool.block_bytes) / static_cast<double>(pool.block_positions);
  // what the server's admission (--max-kv-mb) counts for one greedy request with fallback
  const auto admitted_greedy = pipeline::decoder_memory_bytes(*model, pipeline::TranscribeOptions{});
  nlohmann::json kv = {{"bytes_per_token", kv_per_token},
                       {"bytes_per_sequence_at_this_audio", kv_bytes_per_sequence},
                       {"bytes_per_sequence_full_context", dec.sequence_bytes(hp.n_text_ctx)},
                       {"block_positions", pool.block_positions},
                       {"block_bytes", pool.block_bytes},
                       {"pool_peak_bytes", pool.peak_used_bytes},
                       {"pool_capacity_bytes", pool.capacity_bytes},
                       {"cross_bytes_per_window", dec.cross_attention_bytes()},
                       {"admitted_bytes_per_request", admitted_greedy},
                       {"beam_search", beam}};
  nlohmann::json out = {
      {"model", args.required("model")},
      {"backend", weights_backend.name()},
      {"kernels", weights_backend.kernels()},
      {"isa_cap", std::string(isa_cap_name(isa_cap()))},
      {"precision", std::string(kernels::precision_name(weights_backend.precision()))},
      {"threads", kernels::cpu::thread_count()},
      {"audio_seconds", audio_seconds},
      {"windows", n_windows},
      {"decoded_tokens", total_tokens},
      {"load_ms", load_ms},
      {"mel_ms", median(mel_ms)},
      {"encoder_ms_per_window", median(enc_ms)},
      {"cross_kv_ms_per_window", median(cross_ms)},
      {"prompt_ms_per_window", median(prompt_ms)},
      {"decoder_ms_per_token", median(tok_ms)},
      {"end_to_end_ms", end_to_end},
      {"encoder_cpu_ms_per_window", median(enc_cpu_ms)},
      {"decoder_cpu_ms_per_token", median(tok_cpu_ms)},
      {"realtime_factor", audio_seconds / (end_to_end / 1000.0)},
      {"decoder_batched_steps", batch_json},
      {"kv_cache", kv},
      {"runs", runs},
  };
  if (json) {
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::printf("model      %s\n", out["model"].get<std::string>().c_str());
  std::printf("backend    %s (%s), %d threads\n", out["backend"].get<std::string>().c_str(),
              out["precision"].get<std::string>().c_str(), out["threads"].get<int>());
  std::printf("kernels    %s\n", out["kernels"].get<std::string>().c_str());
  std::printf("audio      %.2f s, %zu window(s), %d tokens decoded, median of %d runs\n\n", audio_seconds, n_windows,
              total_tokens, runs);
  std::printf("%-28s %12s\n", "stage", "ms");
  std::printf("%-28s %12.2f\n", "load", load_ms);
  std::printf("%-28s %12.2f\n", "mel (30 s)", median(mel_ms));
  std::printf("%-28s %12.2f\n", "encoder / window", median(enc_ms));
  std::printf("%-28s %12.2f\n", "cross K/V / window", median(cross_ms));
  std::printf("%-28s %12.2f\n", "decoder prompt / window", median(prompt_ms));
  std::printf("%-28s %12.3f\n", "decoder / token", median(tok_ms));
  std::printf("%-28s %12.2f\n", "end to end", end_to_end);
  std::printf("%-28s %12.2f\n", "encoder CPU time / window", median(enc_cpu_ms));
  std::printf("%-28s %12.3f\n", "decoder CPU time / token", median(tok_cpu_ms));
  std::printf("%-28s %11.1fx\n", "realtime factor", audio_seconds / (end_to_end / 1000.0));
  std::printf("%-28s %12.0f\n", "KV KB / sequence", static_cast<double>(kv_bytes_per_sequence) / 1024);
  std::printf("%-28s %12.0f\n", "KV pool peak KB", static_cast<double>(pool.peak_used_bytes) / 1024);
  std::printf("%-28s %12.0f\n", "cross K/V KB / window", kv["cross_bytes_per_window"].get<double>() / 1024);
  std::printf("\n%-28s %12s %16s\n", "batched decoder step", "ms / step", "ms / sequence");
  for (const auto& b : batched)
    std::printf("%4d sequences %13s %12.2f %16.3f\n", b.sequences, "", b.ms_per_step, b.ms_per_step / b.sequences);
  return 0;
}

}  // namespace amanuensis::cli
