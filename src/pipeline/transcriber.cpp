#include "pipeline/transcriber.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "decoding/word_alignment.h"
#include "mel/log_mel.h"
#include "pipeline/word_timestamps.h"

namespace amanuensis::pipeline {
namespace {

using decoding::Semantics;
using decoding::WindowResult;

constexpr int kFramesPerSecond = 100;      // mel frames per second (hop 160 at 16 kHz)
constexpr int kFramesPerTimestamp = 2;     // one timestamp step (0.02 s) = two mel frames
constexpr int kWindowFrames = mel::kChunkFrames;

double frames_to_seconds(long frames) { return static_cast<double>(frames) / kFramesPerSecond; }

// The 30 s encoder input at `seek`. OpenAI's transcribe() zero-fills the part of the
// window past the audio (pad_or_trim of the log-mel); whisper.cpp keeps the log-mel of the
// zero samples appended to the audio.
std::vector<float> window_at(mel::StreamingLogMel& mel, int seek, int content_frames, Semantics semantics) {
  auto window = mel.window(seek);
  if (semantics == Semantics::OpenAI) {
    const int valid = std::min(kWindowFrames, content_frames - seek);
    for (int band = 0; band < mel.n_mels(); ++band)
      std::fill(window.begin() + band * kWindowFrames + valid, window.begin() + (band + 1) * kWindowFrames, 0.0f);
  }
  return window;
}

class SegmentBuilder {
 public:
  SegmentBuilder(const text::Tokenizer& tokenizer, Transcript& out) : tokenizer_(tokenizer), out_(out) {}

  void add(int seek, double start, double end, std::span<const TokenId> tokens, const WindowResult& window) {
    Segment s;
    s.id = static_cast<int>(out_.segments.size());
    s.seek = seek;
    s.start = start;
    s.end = end;
    s.tokens.assign(tokens.begin(), tokens.end());
    // `tokens` is a part of the window's tokens: the log-probabilities of that part
    const auto first = static_cast<std::size_t>(tokens.data() - window.tokens.data());
    if (window.token_logprobs.size() == window.tokens.size() && first + tokens.size() <= window.tokens.size())
      s.token_logprobs.assign(window.token_logprobs.begin() + first, window.token_logprobs.begin() + first + tokens.size());
    s.text = tokenizer_.decode(tokens);
    s.avg_logprob = window.avg_logprob;
    s.no_speech_prob = window.no_speech_prob;
    out_.segments.push_back(std::move(s));
  }

 private:
  const text::Tokenizer& tokenizer_;
  Transcript& out_;
};

// What a window leaves for the next: where it starts, and the tokens that condition it.
struct WindowOutcome {
  int next_seek = 0;
  std::vector<TokenId> context;
};

// OpenAI transcribe(): segments between consecutive timestamp pairs; seek moves to the
// last complete pair unless the window ended on a single timestamp. The next window is
// conditioned on the tokens of the segments.
WindowOutcome openai_segments(const text::Tokenizer& tok, int seek, int segment_size, const WindowResult& w,
                    SegmentBuilder& builder) {
  const auto& tokens = w.tokens;
  const double offset = frames_to_seconds(seek);
  auto ts_index = [&](TokenId id) { return id - tok.special().timestamp_begin; };
  const std::size_t n = tokens.size();
  const bool single_timestamp_ending =
      n >= 2 && !tok.is_timestamp(tokens[n - 2]) && tok.is_timestamp(tokens[n - 1]);
  std::vector<std::size_t> slices;  // ends of segments: after each consecutive timestamp pair
  for (std::size_t i = 1; i < n; ++i)
    if (tok.is_timestamp(tokens[i - 1]) && tok.is_timestamp(tokens[i])) slices.push_back(i);

  if (!slices.empty()) {
    if (single_timestamp_ending) slices.push_back(n);
    std::size_t last = 0;
    for (std::size_t end : slices) {
      std::span<const TokenId> part(tokens.data() + last, end - last);
      builder.add(seek, offset + ts_index(part.front()) * 0.02, offset + ts_index(part.back()) * 0.02, part, w);
      last = end;
    }
    if (single_timestamp_ending) return {seek + segment_size, {tokens.begin(), tokens.begin() + last}};
    return {seek + ts_index(tokens[last - 1]) * kFramesPerTimestamp, {tokens.begin(), tokens.begin() + last}};
  }
  double duration = frames_to_seconds(segment_size);
  for (auto it = tokens.rbegin(); it != tokens.rend(); ++it) {
    if (tok.is_timestamp(*it)) {
      if (*it != tok.special().timestamp_begin) duration = ts_index(*it) * 0.02;
      break;
    }
  }
  builder.add(seek, offset, offset + duration, tokens, w);
  return {seek + segment_size, tokens};
}

// Without timestamps a window is one segment, whatever stray timestamp tokens a model
// emits (OpenAI does not mask them in that mode).
WindowOutcome whole_window_segment(int seek, int segment_size, const WindowResult& w, SegmentBuilder& builder) {
  builder.add(seek, frames_to_seconds(seek), frames_to_seconds(seek + segment_size), w.tokens, w);
  return {seek + segment_size, w.tokens};
}

// whisper.cpp whisper_full(): a segment ends at each timestamp above <|0.00|> (runs of
// timestamps are skipped), its start is the likeliest timestamp of its first token, and
// seek moves by the last timestamp (3000 frames when there is none). The next window is
// conditioned on the tokens up to that last timestamp (none when there is none).
WindowOutcome whisper_cpp_segments(const text::Tokenizer& tok, int seek, const WindowResult& w, bool timestamps,
                         SegmentBuilder& builder) {
  const TokenId ts_begin = tok.special().timestamp_begin;
  const int window_frames = kWindowFrames;
  int seek_delta = window_frames;
  std::size_t result_len = 0;
  for (std::size_t i = 0; i < w.tokens.size(); ++i) {
    if (w.tokens[i] > ts_begin) {
      seek_delta = kFramesPerTimestamp * (w.tokens[i] - ts_begin);
      result_len = i + 1;
    }
  }
  if (!timestamps) seek_delta = window_frames;
  // A decode that ran to the token limit without moving far is "failed"; with no
  // fallback left, whisper.cpp keeps all its tokens. Otherwise text after the last
  // timestamp is dropped.
  const bool failed = !w.reached_end_of_text && (result_len == 0 || seek_delta < window_frames / 2);
  std::size_t keep = w.tokens.size();
  if (timestamps && !failed && result_len > 0) keep = result_len;

  // whisper.cpp leaves a token's timestamp unset when every timestamp was masked (always,
  // without timestamps) and then starts the segment before zero; we start it at the window.
  auto centis = [&](TokenId tid) { return tid < 0 ? seek : seek + kFramesPerTimestamp * (tid - ts_begin); };
  WindowOutcome outcome{seek + seek_delta, {w.tokens.begin(), w.tokens.begin() + static_cast<std::ptrdiff_t>(result_len)}};
  if (keep == 0) return outcome;
  long t0 = centis(w.best_timestamp[0]);
  std::size_t i0 = 0;
  bool has_text = false;
  for (std::size_t i = 0; i < keep; ++i) {
    has_text = has_text || !tok.is_special(w.tokens[i]);
    if (w.tokens[i] > ts_begin) {
      const long t1 = centis(w.tokens[i]);
      if (has_text) builder.add(seek, t0 / 100.0, t1 / 100.0, std::span(w.tokens).subspan(i0, i + 1 - i0), w);
      has_text = false;
      while (i < keep && w.tokens[i] > ts_begin) ++i;
      --i;
      t0 = t1;
      i0 = i + 1;
    }
  }
  if (has_text) builder.add(seek, t0 / 100.0, (seek + seek_delta) / 100.0, std::span(w.tokens).subspan(i0, keep - i0), w);
  return outcome;
}

// Timestamp tokens can point past the end of a short last window (and whisper.cpp's
// no-timestamp segments start before zero): users get times inside the recording, in
// whole milliseconds.
void clamp_to_duration(Transcript& t) {
  auto ms = [](double seconds) { return std::round(seconds * 1000.0) / 1000.0; };
  for (auto& s : t.segments) {
    s.start = ms(std::clamp(s.start, 0.0, t.duration));
    s.end = ms(std::clamp(s.end, s.start, t.duration));
  }
}

bool is_blank(const std::string& text) { return text.find_first_not_of(" \t\n\r") == std::string::npos; }

std::optional<double> last_word_end(std::span<const Segment> segments) {
  for (auto it = segments.rbegin(); it != segments.rend(); ++it)
    if (!it->words.empty()) return it->words.back().end;
  return std::nullopt;
}

bool ends_with_single_timestamp(const text::Tokenizer& tok, const std::vector<TokenId>& tokens) {
  const std::size_t n = tokens.size();
  return n >= 2 && !tok.is_timestamp(tokens[n - 2]) && tok.is_timestamp(tokens[n - 1]);
}

// OpenAI transcribe()'s hallucination-silence step for a window whose segments have words.
decoding::HallucinationDecision hallucination_step(std::span<const Segment> segments, int seek, int segment_size,
                                                   int next_seek, bool single_timestamp_ending,
                                                   double last_speech_timestamp, double threshold, double duration,
                                                   int content_frames) {
  std::vector<decoding::TimedSegment> timed;
  for (const auto& s : segments) timed.push_back({s.start, s.end, s.words});
  decoding::WindowTiming w;
  w.time_offset = frames_to_seconds(seek);
  w.window_end = frames_to_seconds(seek + kWindowFrames);
  w.segment_duration = frames_to_seconds(segment_size);
  w.content_duration = duration;
  w.previous_seek = seek;
  w.segment_size = segment_size;
  w.content_frames = content_frames;
  w.single_timestamp_ending = single_timestamp_ending;
  return decoding::apply_hallucination_threshold(timed, w, next_seek, threshold, last_speech_timestamp);
}

struct Decoded {
  WindowResult result;
  decoding::DecodeQuality quality;
  std::vector<float> temperatures_tried;
};

// OpenAI's decode_with_fallback(): greedy first, then sampling at rising temperatures
// while the result is too repetitive or too unlikely (and the window is not silence).
Decoded decode_with_fallback(const decoding::WindowDecoder& decoder, const text::Tokenizer& tok,
                             const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt,
                             const TranscribeOptions& options, int seek, int frames_left) {
  if (options.temperatures.empty()) throw Error("at least one decoding temperature is needed");
  Decoded decoded;
  for (std::size_t i = 0; i < options.temperatures.size(); ++i) {
    const float t = options.temperatures[i];
    decoded.temperatures_tried.push_back(t);
    // the seed depends on the window, so windows of one file sample differently
    const std::uint64_t seed = options.seed * 1000003u + static_cast<std::uint64_t>(seek);
    if (t > 0.0f) {
      decoded.result = decoder.decode_best_of(audio, prompt, t, options.best_of, seed, options.logits_filter, frames_left);
    } else if (options.beam) {
      decoded.result = decoding::beam_search(decoder.decoder(), tok, decoder.rules(), decoder.initial_tokens(prompt),
                                             decoder.sample_len(), audio, *options.beam, options.logits_filter,
                                             decoder.runner());
    } else {
      decoded.result = decoder.decode(audio, prompt, 0.0f, 0, options.logits_filter, frames_left);
    }
    const auto text = tok.decode(decoded.result.tokens);
    decoded.quality = {decoding::compression_ratio(text), decoded.result.avg_logprob, decoded.result.no_speech_prob};
    if (!decoding::needs_fallback(decoded.quality, options.thresholds)) break;
  }
  return decoded;
}

// The tokens of `hotwords` (" " + the words, as the prompt is encoded), at most `limit`.
std::vector<TokenId> hotword_tokens(const text::Tokenizer& tok, const std::string& hotwords, std::size_t limit) {
  const auto first = hotwords.find_first_not_of(" \t\n");
  if (first == std::string::npos) return {};
  const auto last = hotwords.find_last_not_of(" \t\n");
  auto tokens = tok.encode(" " + hotwords.substr(first, last - first + 1));
  if (tokens.size() > limit) tokens.resize(limit);
  return tokens;
}

// A window's prompt: the hotwords, then as much of the previous text as fits in `limit`
// (its last tokens). Without hotwords, `previous` itself.
std::span<const TokenId> with_hotwords(std::span<const TokenId> hotwords, std::span<const TokenId> previous,
                                       std::size_t limit, std::vector<TokenId>& storage) {
  if (hotwords.empty()) return previous;
  const std::size_t room = limit - hotwords.size();
  const auto kept = previous.last(std::min(room, previous.size()));
  storage.assign(hotwords.begin(), hotwords.end());
  storage.insert(storage.end(), kept.begin(), kept.end());
  return storage;
}

// The window's audio states, kept as the decoder's cross-attention keys and values.
std::shared_ptr<const nn::CrossAttentionCache> encode_window(const Model& model, nn::Runner& runner,
                                                             std::span<const float> mel_window) {
  return runner.encode(model.encoder(), model.decoder(), mel_window);
}

}  // namespace

Model::Model(model::ModelFile file, std::shared_ptr<const nn::WhisperWeights> weights)
    : file_(std::move(file)),
      tokenizer_(file_.vocabulary(), file_.hparams().n_vocab),
      encoder_(weights),
      decoder_(weights) {}

std::shared_ptr<const Model> Model::load(const std::filesystem::path& path, const nn::LoadOptions& options) {
  auto file = model::ModelFile::open(path);
  // every tensor goes into the backend's storage, its bytes dropped as it gets there
  auto weights = nn::WhisperWeights::load_releasing(file, options);
  return std::make_shared<const Model>(std::move(file), std::move(weights));
}

namespace {

Transcript transcribe_all(const Model& model, SampleSource& audio, const TranscribeOptions& options);

// Where a stretch of speech sits in the concatenated audio and in the recording.
struct SpeechChunk {
  std::int64_t concatenated_start = 0;
  std::int64_t original_start = 0;
  std::int64_t length = 0;
};

// A time in the concatenated speech, mapped back to the recording. A time exactly at
// the joint of two chunks belongs to the earlier one when it ends something.
double to_original_time(double seconds, std::span<const SpeechChunk> chunks, bool is_end) {
  const auto sample = static_cast<std::int64_t>(std::llround(seconds * 16000.0));
  const SpeechChunk* chosen = &chunks.front();
  for (const auto& c : chunks) {
    const bool inside = is_end ? sample > c.concatenated_start : sample >= c.concatenated_start;
    if (inside) chosen = &c;
  }
  const std::int64_t offset = std::min(sample - chosen->concatenated_start, chosen->length);
  return static_cast<double>(chosen->original_start + offset) / 16000.0;
}

// Voice activity detection reads the whole recording at once, so this path holds it.
Transcript transcribe_speech_only(const Model& model, SampleSource& audio, const TranscribeOptions& options) {
  audio.rewind();
  const auto samples = read_remaining(audio);
  const auto spans = vad::detect_speech(samples, *options.vad);
  std::vector<float> speech;
  std::vector<SpeechChunk> chunks;
  for (const auto& span : spans) {
    chunks.push_back({static_cast<std::int64_t>(speech.size()), span.start, span.end - span.start});
    speech.insert(speech.end(), samples.begin() + span.start, samples.begin() + span.end);
  }
  Transcript out;
  out.duration = static_cast<double>(samples.size()) / 16000.0;
  out.task = options.decode.task;
  out.language = model.tokenizer().is_multilingual() ? options.decode.language : "en";
  if (speech.empty()) return out;  // nothing to decode

  auto inner = options;
  inner.vad.reset();
  SpanSource speech_source(speech);
  out = transcribe_all(model, speech_source, inner);
  out.duration = static_cast<double>(samples.size()) / 16000.0;
  for (auto& s : out.segments) {
    s.start = to_original_time(s.start, chunks, false);
    s.end = to_original_time(s.end, chunks, true);
    for (auto& w : s.words) {
      w.start = to_original_time(w.start, chunks, false);
      w.end = to_original_time(w.end, chunks, true);
    }
  }
  return out;
}

}  // namespace

bool may_sample(const TranscribeOptions& options) {
  return std::any_of(options.temperatures.begin(), options.temperatures.end(), [](float t) { return t > 0.0f; });
}

std::int64_t decoder_memory_bytes(const Model& model, const TranscribeOptions& options) {
  int sequences = options.beam ? std::max(1, options.beam->beam_size) : 1;
  if (may_sample(options)) sequences = std::max(sequences, options.best_of);
  const auto& decoder = model.decoder();
  const auto positions = decoding::WindowDecoder::max_positions(options.decode, decoder.n_text_ctx());
  return decoder.cross_attention_bytes() + sequences * decoder.sequence_bytes(positions);
}

decoding::LanguageGuess detect_language(const Model& model, SampleSource& audio, nn::Runner* runner) {
  if (!model.tokenizer().is_multilingual()) throw Error("language detection needs a multilingual model");
  nn::Runner& run = runner ? *runner : nn::direct_runner();
  mel::StreamingLogMel mel(audio, model.file().mel_filters(), model.hparams().n_mels, mel::kChunkSamples);
  const int content_frames = static_cast<int>(mel.n_samples() / mel::kHopLength);
  const auto first = encode_window(model, run, window_at(mel, 0, content_frames, Semantics::OpenAI));
  return decoding::detect_language(model.decoder(), model.tokenizer(), *first, run);
}

decoding::LanguageGuess detect_language(const Model& model, std::span<const float> samples, nn::Runner* runner) {
  SpanSource audio(samples);
  return detect_language(model, audio, runner);
}

Transcript transcribe(const Model& model, SampleSource& audio, const TranscribeOptions& options) {
  return options.vad ? transcribe_speech_only(model, audio, options) : transcribe_all(model, audio, options);
}

Transcript transcribe(const Model& model, std::span<const float> samples, const TranscribeOptions& options) {
  SpanSource audio(samples);
  return transcribe(model, audio, options);
}

namespace {

Transcript transcribe_all(const Model& model, SampleSource& audio, const TranscribeOptions& options) {
  nn::Runner& runner = options.runner ? *options.runner : nn::direct_runner();
  const auto semantics = options.decode.semantics;
  const auto& tok = model.tokenizer();
  const int n_mels = model.hparams().n_mels;
  mel::StreamingLogMel mel(audio, model.file().mel_filters(), n_mels, mel::kChunkSamples);
  const std::size_t n_samples = mel.n_samples();

  // Frames that hold audio. whisper.cpp counts only frames whose 400-sample window fits.
  const int content_frames = semantics == Semantics::OpenAI
                                 ? static_cast<int>(n_samples / mel::kHopLength)
                                 : std::max(0, 1 + (static_cast<int>(n_samples) + 200 - 400) / mel::kHopLength);
  // whisper.cpp stops when 100 ms or less are left (its references decode 1 s files).
  const int min_remaining = semantics == Semantics::OpenAI ? 0 : kFramesPerSecond / 10;

  Transcript out;
  out.duration = static_cast<double>(n_samples) / 16000.0;
  out.task = options.decode.task;
  auto decode_options = options.decode;
  if (!tok.is_multilingual()) {
    decode_options.language = "en";
  } else if (decode_options.language.empty() || decode_options.language == "auto") {
    // OpenAI detects the language once, from the first 30 s
    const auto first = encode_window(model, runner, window_at(mel, 0, content_frames, semantics));
    decode_options.language = decoding::detect_language(model.decoder(), tok, *first, runner).code;
  }
  out.language = decode_options.language;
  SegmentBuilder builder(tok, out);
  decoding::WindowDecoder decoder(model.decoder(), tok, decode_options, runner);

  std::vector<TokenId> all_tokens = options.initial_prompt.empty() ? std::vector<TokenId>{}
                                                                   : tok.encode(" " + options.initial_prompt);
  std::size_t prompt_reset_since = 0;
  const auto hotwords = hotword_tokens(tok, options.hotwords, decoder.prompt_limit());
  std::vector<TokenId> window_prompt;
  const auto heads = decoding::alignment_heads(model.hparams());
  double last_speech_timestamp = 0.0;
  int seek = 0;
  while (seek + min_remaining < content_frames) {
    const int segment_size = std::min(kWindowFrames, content_frames - seek);
    const auto cross = encode_window(model, runner, window_at(mel, seek, content_frames, semantics));
    const std::span<const TokenId> previous(all_tokens.data() + prompt_reset_since, all_tokens.size() - prompt_reset_since);
    const auto prompt = with_hotwords(hotwords, previous, decoder.prompt_limit(), window_prompt);
    const auto decoded = decode_with_fallback(decoder, tok, *cross, prompt, options, seek, content_frames - seek);
    const auto& [result, quality, temperatures_tried] = decoded;
    out.window_seeks.push_back(seek);
    const bool silent = decoding::is_silent_window(quality, options.thresholds);
    if (options.on_window)
      options.on_window({seek, segment_size, decoder.initial_tokens(prompt), temperatures_tried, result, silent});
    if (silent) {
      seek += segment_size;
      if (options.progress) options.progress(std::min(frames_to_seconds(seek), out.duration), out.duration);
      continue;
    }

    const std::size_t first_new = out.segments.size();
    auto outcome = semantics == Semantics::WhisperCpp
                             ? whisper_cpp_segments(tok, seek, result, options.decode.timestamps, builder)
                             : options.decode.timestamps ? openai_segments(tok, seek, segment_size, result, builder)
                                                         : whole_window_segment(seek, segment_size, result, builder);
    for (std::size_t i = first_new; i < out.segments.size(); ++i) {
      out.segments[i].temperature = result.temperature;
      out.segments[i].compression_ratio = quality.compression_ratio;
    }
    if (options.word_timestamps && semantics == Semantics::OpenAI) {
      const std::span<Segment> fresh(out.segments.data() + first_new, out.segments.size() - first_new);
      WordTimingInput in{&model.decoder(), &tok, cross.get(), heads, decoder.initial_tokens({}), segment_size,
                         frames_to_seconds(seek), true, &runner};
      if (!options.decode.timestamps) in.sot_sequence.pop_back();  // the alignment adds its own <|notimestamps|>
      in.space_delimited = decoding::is_space_delimited(out.language);
      add_word_timestamps(fresh, in, last_speech_timestamp);
      const bool single_ending = ends_with_single_timestamp(tok, result.tokens);
      if (const auto end = last_word_end(fresh); !single_ending && end && *end > frames_to_seconds(seek)) {
        outcome.next_seek = static_cast<int>(std::nearbyint(*end * kFramesPerSecond));
      }
      if (options.hallucination_silence_threshold) {
        const auto d = hallucination_step(fresh, seek, segment_size, outcome.next_seek, single_ending,
                                          last_speech_timestamp, *options.hallucination_silence_threshold,
                                          out.duration, content_frames);
        out.segments.resize(first_new + d.keep);
        outcome.next_seek = d.seek;
        if (d.skip_window) {
          seek = std::max(d.seek, seek + 1);
          continue;
        }
      }
      if (const auto end = last_word_end(out.segments)) last_speech_timestamp = *end;
    }
    if (semantics == Semantics::OpenAI) {
      // OpenAI blanks instantaneous and empty segments, and conditions on what is left
      outcome.context.clear();
      for (std::size_t i = first_new; i < out.segments.size(); ++i) {
        auto& s = out.segments[i];
        if (s.start == s.end || is_blank(s.text)) {
          s.text.clear();
          s.tokens.clear();
          s.token_logprobs.clear();
          s.words.clear();
        }
        outcome.context.insert(outcome.context.end(), s.tokens.begin(), s.tokens.end());
      }
    }
    all_tokens.insert(all_tokens.end(), outcome.context.begin(), outcome.context.end());
    // a window decoded at a high temperature is a poor prompt for the next one
    if (!options.condition_on_previous_text || result.temperature > 0.5f) prompt_reset_since = all_tokens.size();
    seek = std::max(outcome.next_seek, seek + 1);  // never stall on a window
    if (options.progress) options.progress(std::min(frames_to_seconds(seek), out.duration), out.duration);
  }
  clamp_to_duration(out);
  for (const auto& s : out.segments) out.text += s.text;
  return out;
}

}  // namespace

}  // namespace amanuensis::pipeline
