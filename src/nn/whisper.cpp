#include "nn/whisper.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/error.h"

namespace amanuensis::nn {
namespace {

using kernels::Backend;
using kernels::Epilogue;

using kernels::RowsHint;

kernels::DType dtype_of(model::TensorType t) {
  using kernels::DType;
  using model::TensorType;
  switch (t) {
    case TensorType::F32: return DType::F32;
    case TensorType::F16: return DType::F16;
    case TensorType::Q8_0: return DType::Q8_0;
    case TensorType::Q5_0: return DType::Q5_0;
    case TensorType::Q5_1: return DType::Q5_1;
    case TensorType::Q4_0: return DType::Q4_0;
    case TensorType::Q4_1: return DType::Q4_1;
  }
  throw InternalError("a tensor type the model reader accepted has no dtype");
}

// A tensor of the file as a matrix: PyTorch's first dimension against all the others.
kernels::StoredMatrix stored(const model::TensorView& t) { return {dtype_of(t.type), {t.rows(), t.cols()}, t.data}; }

std::vector<float> floats(const model::TensorView& t) {
  std::vector<float> v(static_cast<std::size_t>(t.elements()));
  kernels::to_floats(dtype_of(t.type), t.data, v);
  return v;
}

// The file's tensors as the loader takes them: once a tensor's values are packed or
// copied, done() lets a releasing load (WhisperWeights::load_releasing) drop its bytes.
class TensorSource {
 public:
  TensorSource(const model::ModelFile& file, model::ModelFile* releasing) : file_(file), releasing_(releasing) {}
  const model::TensorView& operator[](const std::string& name) const { return file_.tensor(name); }
  void done(const std::string& name) const {
    if (releasing_) releasing_->release_tensor(name);
  }
  // A small tensor (norms, biases, positions) as float, released at once.
  std::vector<float> floats(const std::string& name) const {
    auto values = nn::floats(file_.tensor(name));
    done(name);
    return values;
  }

 private:
  const model::ModelFile& file_;
  model::ModelFile* releasing_;
};

LinearWeights linear_weights(const Backend& backend, const TensorSource& src, const std::string& prefix,
                             bool has_bias = true, RowsHint hint = RowsHint::Many) {
  std::vector<float> bias;
  if (has_bias) bias = src.floats(prefix + ".bias");
  LinearWeights w{backend.pack(stored(src[prefix + ".weight"]), std::move(bias), hint)};
  src.done(prefix + ".weight");
  return w;
}

// A conv1d kernel of width 3, stored [out][channel][tap], packed as a matrix whose
// columns are [tap][channel]: then each tap of an im2col row is one contiguous input frame.
LinearWeights conv_weights(const Backend& backend, const TensorSource& src, const std::string& prefix) {
  auto bias = src.floats(prefix + ".bias");
  const auto& tensor = src[prefix + ".weight"];
  const kernels::MatrixShape shape{tensor.rows(), tensor.cols()};
  const std::vector<float> values = src.floats(prefix + ".weight");
  const std::int64_t channels = shape.cols / 3;
  std::vector<float> by_tap(values.size());
  for (std::int64_t o = 0; o < shape.rows; ++o)
    for (std::int64_t c = 0; c < channels; ++c)
      for (std::int64_t tap = 0; tap < 3; ++tap)
        by_tap[o * shape.cols + tap * channels + c] = values[o * shape.cols + c * 3 + tap];
  return {backend.pack(kernels::stored_floats(by_tap, shape), std::move(bias), kernels::RowsHint::Many,
                       kernels::WeightRole::Stem)};
}

NormWeights norm_weights(const TensorSource& src, const std::string& prefix) {
  return {src.floats(prefix + ".weight"), src.floats(prefix + ".bias")};
}

// `kv_hint`: keys/values of cross-attention are computed once per window from all frames.
AttentionWeights attention_weights(const Backend& b, const TensorSource& src, const std::string& prefix,
                                   RowsHint hint, RowsHint kv_hint) {
  return {linear_weights(b, src, prefix + ".query", true, hint), linear_weights(b, src, prefix + ".key", false, kv_hint),
          linear_weights(b, src, prefix + ".value", true, kv_hint), linear_weights(b, src, prefix + ".out", true, hint)};
}

// Decoder blocks (`decoder`) run a few token rows at a time; encoder blocks a whole window.
BlockWeights block_weights(const Backend& backend, const TensorSource& src, const std::string& prefix, bool decoder) {
  const RowsHint hint = decoder ? RowsHint::Few : RowsHint::Many;
  BlockWeights b;
  b.attn_ln = norm_weights(src, prefix + ".attn_ln");
  b.attn = attention_weights(backend, src, prefix + ".attn", hint, hint);
  if (decoder) {
    b.cross_attn_ln = norm_weights(src, prefix + ".cross_attn_ln");
    b.cross_attn = attention_weights(backend, src, prefix + ".cross_attn", hint, RowsHint::Many);
  }
  b.mlp_ln = norm_weights(src, prefix + ".mlp_ln");
  b.mlp_up = linear_weights(backend, src, prefix + ".mlp.0", true, hint);
  b.mlp_down = linear_weights(backend, src, prefix + ".mlp.2", true, hint);
  return b;
}

// Shapes used by every block: x is n x d.
struct Scratch {
  std::vector<float> normed, q, k, v, attended;
};

// x += out_proj(attention(LN(x) queries against keys/values)) for `windows` windows of n
// positions stacked in x: the products take every row at once, attention stays within
// each window.
void self_attention_sublayer(const Backend& be, std::vector<float>& x, std::int64_t windows, std::int64_t n,
                             std::int64_t d, int n_head, const NormWeights& ln, const AttentionWeights& a, Scratch& s) {
  const std::int64_t rows = windows * n;
  s.q.resize(rows * d);
  s.k.resize(rows * d);
  s.v.resize(rows * d);
  s.attended.resize(rows * d);
  const kernels::PackedMatrix* const qkv[] = {a.query.packed.get(), a.key.packed.get(), a.value.packed.get()};
  const std::span<float> outs[] = {s.q, s.k, s.v};
  be.norm_linear(x, rows, ln.params(), qkv, outs);
  const auto size = static_cast<std::size_t>(n * d);
  for (std::int64_t w = 0; w < windows; ++w) {
    const std::size_t at = static_cast<std::size_t>(w) * size;
    be.attention(std::span<const float>(s.q).subspan(at, size), n, std::span<const float>(s.k).subspan(at, size),
                 std::span<const float>(s.v).subspan(at, size), n, n_head, d, -1,
                 std::span<float>(s.attended).subspan(at, size));
  }
  be.linear(s.attended, rows, *a.out.packed, x, Epilogue::Accumulate);
}

// x += mlp.2(gelu(mlp.0(LN(x))))
void mlp_sublayer(const Backend& be, std::vector<float>& x, std::int64_t n, const BlockWeights& b) {
  be.feed_forward(x, n, b.mlp_ln.params(), *b.mlp_up.packed, *b.mlp_down.packed);
}

// Conv1d with kernel 3 and padding 1 over time-major input (n_in frames x channels),
// as an im2col product; returns n_out frames x out channels, GELU applied.
std::vector<float> conv3_gelu(const Backend& be, std::span<const float> input, std::int64_t n_in,
                              std::int64_t channels, int stride, const LinearWeights& kernel) {
  const std::int64_t n_out = (n_in + 2 - 3) / stride + 1;
  const std::int64_t patch = channels * 3;  // kernel columns: [tap][channel] (conv_weights)
  thread_local std::vector<float> columns;  // megabytes a window: kept, not faulted in anew
  columns.resize(static_cast<std::size_t>(n_out * patch));
  for (std::int64_t t = 0; t < n_out; ++t) {
    float* col = columns.data() + t * patch;
    for (int tap = 0; tap < 3; ++tap) {
      const std::int64_t src = t * stride + tap - 1;
      float* to = col + tap * channels;
      if (src < 0 || src >= n_in) {
        std::fill_n(to, channels, 0.0f);
      } else {
        std::copy_n(input.data() + src * channels, channels, to);
      }
    }
  }
  std::vector<float> out(n_out * kernel.rows());
  be.linear(columns, n_out, *kernel.packed, out, Epilogue::Gelu);
  return out;
}

// Scores of the captured heads of one layer: q . k / sqrt(head_dim) over all audio positions.
// NaN or infinite logits come from damaged weights (or non-finite input): decoding them
// would pick token 0 forever or fail deep in the rules, so the user is told here.
void check_finite(std::span<const float> logits) {
  bool finite = true;
  for (float v : logits) finite &= std::isfinite(v);  // no early exit: vectorises
  if (!finite)
    throw Error("the model produced NaN or infinite logits: its weights are damaged (or the audio was not finite)");
}

void capture_scores(AttentionCapture& capture, int layer, std::span<const float> q, std::int64_t n,
                    const CrossAttentionCache& cross, std::size_t cache_layer, int n_head, std::int64_t d) {
  const std::int64_t hd = d / n_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (std::size_t i = 0; i < capture.heads.size(); ++i) {
    const auto [want_layer, head] = capture.heads[i];
    if (want_layer != layer || head < 0 || head >= n_head) continue;
    auto& out = capture.scores[i];
    out.resize(static_cast<std::size_t>(n * cross.n_ctx));
    const std::uint16_t* keys = cross.keys[cache_layer].data();
    std::vector<float> key(static_cast<std::size_t>(hd));
    for (std::int64_t a = 0; a < cross.n_ctx; ++a) {
      kernels::from_halves({keys + (head * cross.n_ctx + a) * hd, static_cast<std::size_t>(hd)}, key);
      for (std::int64_t t = 0; t < n; ++t) {
        float dot = 0.0f;
        for (std::int64_t j = 0; j < hd; ++j) dot += q[t * d + head * hd + j] * key[j];
        out[t * cross.n_ctx + a] = dot * scale;
      }
    }
  }
}

}  // namespace

namespace {

std::shared_ptr<const WhisperWeights> load_weights(const TensorSource& src, const model::ModelFile& f,
                                                   const LoadOptions& options) {
  if (f.tensors().empty()) {
    throw Error(f.path().string() + " holds only a vocabulary (no tensors); it cannot transcribe");
  }
  auto w = std::make_shared<WhisperWeights>();
  const auto& hp = f.hparams();
  w->hparams = hp;
  kernels::ComputeOptions compute = options.compute;
  compute.weights = model::is_quantized(hp.weight_type()) ? kernels::WeightFormat::Quantized : kernels::WeightFormat::Float;
  w->backend = kernels::make_backend(compute);
  const Backend& be = *w->backend;
  w->conv1 = conv_weights(be, src, "encoder.conv1");
  w->conv2 = conv_weights(be, src, "encoder.conv2");
  w->encoder_positions = src.floats("encoder.positional_embedding");
  for (int i = 0; i < hp.n_audio_layer; ++i)
    w->encoder_blocks.push_back(block_weights(be, src, "encoder.blocks." + std::to_string(i), false));
  w->encoder_ln_post = norm_weights(src, "encoder.ln_post");
  {
    // the output projection, which is also the token embedding (Decoder::embed)
    const std::string name = "decoder.token_embedding.weight";
    w->embedding_dim = src[name].cols();
    w->logits = {be.pack(stored(src[name]), {}, RowsHint::Few, kernels::WeightRole::Embedding)};
    src.done(name);
  }
  w->decoder_positions = src.floats("decoder.positional_embedding");
  for (int i = 0; i < hp.n_text_layer; ++i)
    w->decoder_blocks.push_back(block_weights(be, src, "decoder.blocks." + std::to_string(i), true));
  w->decoder_ln = norm_weights(src, "decoder.ln");
  return w;
}

}  // namespace

std::shared_ptr<const WhisperWeights> WhisperWeights::load(const model::ModelFile& f, const LoadOptions& options) {
  return load_weights(TensorSource(f, nullptr), f, options);
}

std::shared_ptr<const WhisperWeights> WhisperWeights::load_releasing(model::ModelFile& f, const LoadOptions& options) {
  auto weights = load_weights(TensorSource(f, &f), f, options);
  f.release_tensors();
  return weights;
}

// The convolution stem of one window with the positions added: n_audio_ctx x d states,
// appended to `stack`.
void Encoder::stem(std::span<const float> mel, std::vector<float>& stack) const {
  const auto& hp = w_->hparams;
  const std::int64_t n_frames = 3000, d = hp.n_audio_state;
  if (static_cast<std::int64_t>(mel.size()) != hp.n_mels * n_frames) {
    throw Error("encoder input must be " + std::to_string(hp.n_mels) + " x 3000 mel values, got " +
                std::to_string(mel.size()));
  }
  // mel arrives band-major; the convolutions work time-major
  std::vector<float> frames(n_frames * hp.n_mels);
  for (std::int64_t b = 0; b < hp.n_mels; ++b)
    for (std::int64_t t = 0; t < n_frames; ++t) frames[t * hp.n_mels + b] = mel[b * n_frames + t];

  const Backend& be = *w_->backend;
  const auto h1 = conv3_gelu(be, frames, n_frames, hp.n_mels, 1, w_->conv1);
  const auto x = conv3_gelu(be, h1, n_frames, d, 2, w_->conv2);
  const std::int64_t n = hp.n_audio_ctx;  // 1500, or fewer for a reduced audio context
  const std::size_t at = stack.size();
  stack.insert(stack.end(), x.begin(), x.begin() + n * d);
  for (std::int64_t i = 0; i < n * d; ++i) stack[at + i] += w_->encoder_positions[i];
}

AudioFeatures Encoder::encode(std::span<const float> mel) const {
  const std::span<const float> one[] = {mel};
  return std::move(encode_stacked(one).front());
}

std::vector<AudioFeatures> Encoder::encode_stacked(std::span<const std::span<const float>> mels) const {
  const auto& hp = w_->hparams;
  const std::int64_t n = hp.n_audio_ctx, d = hp.n_audio_state;
  const auto windows = static_cast<std::int64_t>(mels.size());
  std::vector<float> x;
  x.reserve(static_cast<std::size_t>(windows * n * d));
  for (const auto mel : mels) stem(mel, x);

  const Backend& be = *w_->backend;
  // kept per thread: a window's activations are megabytes, and fresh pages cost faults
  thread_local Scratch s;
  for (const auto& block : w_->encoder_blocks) {
    self_attention_sublayer(be, x, windows, n, d, hp.n_audio_head, block.attn_ln, block.attn, s);
    mlp_sublayer(be, x, windows * n, block);
  }
  be.layer_norm(x, windows * n, w_->encoder_ln_post.gamma, w_->encoder_ln_post.beta);
  std::vector<AudioFeatures> out;
  if (windows == 1) {  // the CLI's and a lone request's case: no copy of the states
    out.push_back({n, d, std::move(x)});
    return out;
  }
  for (std::int64_t w = 0; w < windows; ++w) {
    const auto first = x.begin() + w * n * d;
    out.push_back({n, d, std::vector<float>(first, first + n * d)});
  }
  return out;
}

CrossAttentionCache Decoder::cross_attention(const AudioFeatures& audio) const {
  const Backend& be = *w_->backend;
  CrossAttentionCache cache;
  cache.n_ctx = audio.n_ctx;
  const std::int64_t size = audio.n_ctx * audio.d;
  thread_local std::vector<float> k, v;  // a window's float products, megabytes: kept
  k.resize(static_cast<std::size_t>(size));
  v.resize(static_cast<std::size_t>(size));
  for (const auto& block : w_->decoder_blocks) {
    be.linear(audio.states, audio.n_ctx, *block.cross_attn.key.packed, k);
    be.linear(audio.states, audio.n_ctx, *block.cross_attn.value.packed, v);
    auto& k16 = cache.keys.emplace_back(static_cast<std::size_t>(size));
    auto& v16 = cache.values.emplace_back(static_cast<std::size_t>(size));
    kernels::to_halves_by_head(k, audio.n_ctx, w_->hparams.n_text_head, k16);
    kernels::to_halves_by_head(v, audio.n_ctx, w_->hparams.n_text_head, v16);
  }
  cache.charge = kv_pool_->charge_audio(cross_attention_bytes(audio.n_ctx));
  return cache;
}

std::int64_t Decoder::cross_attention_bytes(std::int64_t n_ctx) const {
  const auto& hp = w_->hparams;
  return std::int64_t{2} * hp.n_text_layer * n_ctx * hp.n_text_state * static_cast<std::int64_t>(sizeof(std::uint16_t));
}

Decoder::Decoder(std::shared_ptr<const WhisperWeights> weights)
    : w_(std::move(weights)),
      kv_pool_(KvPool::create(w_->hparams.n_text_layer, w_->hparams.n_text_state, w_->hparams.n_text_ctx)) {}

void Decoder::embed(TokenId token, std::int64_t position, std::span<float> out) const {
  const std::int64_t d = w_->embedding_dim;
  w_->backend->matrix_row(*w_->logits.packed, token, out.subspan(0, d));
  const float* pos = w_->decoder_positions.data() + position * d;
  for (std::int64_t j = 0; j < d; ++j) out[j] += pos[j];
}

namespace {

// Rows [0, n) of `keys` and `values` (n x d each) into positions first, first + 1, ... of
// `layer` of a prepared sequence.
void store_rows(KvSequence& sequence, int layer, std::int64_t first, std::int64_t n, std::int64_t d,
                std::span<const float> keys, std::span<const float> values) {
  const auto row_bytes = static_cast<std::size_t>(d) * sizeof(float);
  for (std::int64_t i = 0; i < n; ++i) {
    std::memcpy(sequence.keys(layer, first + i).data(), keys.data() + i * d, row_bytes);
    std::memcpy(sequence.values(layer, first + i).data(), values.data() + i * d, row_bytes);
  }
}

}  // namespace

std::vector<float> Decoder::forward(std::span<const TokenId> tokens, KvSequence& sequence,
                                    const CrossAttentionCache& cross, bool all_rows, AttentionCapture* capture) const {
  if (capture) capture->scores.assign(capture->heads.size(), {});
  const auto& hp = w_->hparams;
  const std::int64_t n = static_cast<std::int64_t>(tokens.size()), d = hp.n_text_state;
  const std::int64_t n_past = sequence.length();
  if (sequence.pool() != kv_pool_.get()) throw InternalError("a KV sequence that is not of this decoder's pool");
  if (n == 0) throw Error("decoder called with no tokens");
  if (n_past + n > hp.n_text_ctx) {
    throw Error("token sequence of " + std::to_string(n_past + n) + " exceeds the model's text context of " +
                std::to_string(hp.n_text_ctx));
  }
  std::vector<float> x(n * d);
  for (std::int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) throw Error("token id " + std::to_string(tokens[i]) + " out of range");
    embed(tokens[i], n_past + i, {x.data() + i * d, static_cast<std::size_t>(d)});
  }
  sequence.prepare(n);

  const Backend& be = *w_->backend;
  const std::int64_t total = n_past + n;
  Scratch s;  // s.k and s.v: the sequence's keys and values gathered, positions [0, total)
  s.k.resize(total * d);
  s.v.resize(total * d);
  for (std::size_t layer = 0; layer < w_->decoder_blocks.size(); ++layer) {
    const auto& block = w_->decoder_blocks[layer];
    // masked self-attention over the cache plus the new tokens
    s.normed = x;
    be.layer_norm(s.normed, n, block.attn_ln.gamma, block.attn_ln.beta);
    s.q.resize(n * d);
    s.attended.resize(n * d);
    be.linear(s.normed, n, *block.attn.query.packed, s.q);
    const int l = static_cast<int>(layer);
    sequence.gather(l, n_past, s.k, s.v);
    std::span<float> k_new(s.k.data() + n_past * d, n * d);
    std::span<float> v_new(s.v.data() + n_past * d, n * d);
    be.linear(s.normed, n, *block.attn.key.packed, k_new);
    be.linear(s.normed, n, *block.attn.value.packed, v_new);
    store_rows(sequence, l, n_past, n, d, k_new, v_new);
    // a prompt pass attends from many positions: over the gathered rows, as one call
    be.attention(s.q, n, s.k, s.v, total, hp.n_text_head, d, n_past, s.attended);
    be.linear(s.attended, n, *block.attn.out.packed, x, Epilogue::Accumulate);

    // cross-attention against the window's audio
    s.normed = x;
    be.layer_norm(s.normed, n, block.cross_attn_ln.gamma, block.cross_attn_ln.beta);
    be.linear(s.normed, n, *block.cross_attn.query.packed, s.q);
    be.attention_f16kv(s.q, n, cross.keys[layer], cross.values[layer], cross.n_ctx, hp.n_text_head, d, -1, s.attended);
    if (capture) capture_scores(*capture, static_cast<int>(layer), s.q, n, cross, layer, hp.n_text_head, d);
    be.linear(s.attended, n, *block.cross_attn.out.packed, x, Epilogue::Accumulate);

    mlp_sublayer(be, x, n, block);
  }
  sequence.commit(n);

  be.layer_norm(x, n, w_->decoder_ln.gamma, w_->decoder_ln.beta);
  const std::int64_t first_row = all_rows ? 0 : n - 1;
  const std::int64_t rows = n - first_row;
  std::vector<float> logits(rows * hp.n_vocab);
  be.linear({x.data() + first_row * d, static_cast<std::size_t>(rows * d)}, rows, *w_->logits.packed, logits);
  check_finite(logits);
  return logits;
}

void Decoder::check_step(std::span<const SequenceStep> steps) const {
  const auto& hp = w_->hparams;
  std::vector<const KvSequence*> sequences;
  for (const auto& step : steps) sequences.push_back(step.sequence);
  std::sort(sequences.begin(), sequences.end());
  if (std::adjacent_find(sequences.begin(), sequences.end()) != sequences.end())
    throw InternalError("one KV sequence appears twice in a decoder step");
  for (const auto& step : steps) {
    if (!step.sequence || !step.cross || step.logits.size() < static_cast<std::size_t>(hp.n_vocab))
      throw InternalError("a decoder step needs a sequence, audio and room for the logits");
    if (step.sequence->pool() != kv_pool_.get())
      throw InternalError("a KV sequence that is not of this decoder's pool in a decoder step");
    if (step.token < 0 || step.token >= hp.n_vocab) throw Error("token id " + std::to_string(step.token) + " out of range");
    if (step.sequence->length() + 1 > hp.n_text_ctx) {
      throw Error("token sequence of " + std::to_string(step.sequence->length() + 1) +
                  " exceeds the model's text context of " + std::to_string(hp.n_text_ctx));
    }
  }
}

namespace {

// Sequences of a step that attend to the same audio, in order of first appearance.
std::vector<std::vector<std::size_t>> group_by_audio(std::span<const SequenceStep> steps) {
  std::vector<std::vector<std::size_t>> groups;
  std::vector<const CrossAttentionCache*> keys;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const auto at = std::find(keys.begin(), keys.end(), steps[i].cross);
    if (at == keys.end()) {
      keys.push_back(steps[i].cross);
      groups.push_back({i});
    } else {
      groups[static_cast<std::size_t>(at - keys.begin())].push_back(i);
    }
  }
  return groups;
}

void copy_rows(std::span<const float> from, std::span<const std::size_t> rows, std::int64_t d, std::span<float> to,
               bool gather) {
  for (std::size_t j = 0; j < rows.size(); ++j) {
    const float* src = gather ? from.data() + rows[j] * d : from.data() + j * d;
    float* dst = gather ? to.data() + j * d : to.data() + rows[j] * d;
    std::memcpy(dst, src, static_cast<std::size_t>(d) * sizeof(float));
  }
}

}  // namespace

// Each sequence's new key and value (row i of k and v) into its next position, then its
// query (row i of q) over its blocks, read in place: a step copies no earlier position.
void Decoder::self_attention_step(std::span<const SequenceStep> steps, std::size_t layer, std::span<const float> q,
                                  std::span<const float> k, std::span<const float> v, std::span<float> out) const {
  const auto& hp = w_->hparams;
  const std::int64_t d = hp.n_text_state;
  const int l = static_cast<int>(layer);
  thread_local std::vector<kernels::KvBlockView> blocks;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    KvSequence& sequence = *steps[i].sequence;
    const std::int64_t n_past = sequence.length();
    const auto row = [&](auto span) { return span.subspan(i * static_cast<std::size_t>(d), static_cast<std::size_t>(d)); };
    store_rows(sequence, l, n_past, 1, d, row(k), row(v));
    sequence.blocks(l, n_past + 1, blocks);
    w_->backend->attention_paged(row(q), 1, blocks, n_past + 1, hp.n_text_head, d, n_past, row(out));
  }
}

void Decoder::step(std::span<const SequenceStep> steps) const {
  check_step(steps);
  if (steps.empty()) return;
  for (const auto& step : steps) step.sequence->prepare(1);
  const auto& hp = w_->hparams;
  const auto m = static_cast<std::int64_t>(steps.size());
  const std::int64_t d = hp.n_text_state;
  // kept per thread: a step runs per token, and fresh megabyte buffers cost page faults
  thread_local std::vector<float> x, group_q, group_out, logits;
  thread_local Scratch s;
  x.resize(m * d);
  for (std::int64_t i = 0; i < m; ++i)
    embed(steps[i].token, steps[i].sequence->length(), {x.data() + i * d, static_cast<std::size_t>(d)});
  const auto groups = group_by_audio(steps);

  const Backend& be = *w_->backend;
  for (std::size_t layer = 0; layer < w_->decoder_blocks.size(); ++layer) {
    const auto& block = w_->decoder_blocks[layer];
    // masked self-attention: each sequence over its own keys and values
    s.normed = x;
    be.layer_norm(s.normed, m, block.attn_ln.gamma, block.attn_ln.beta);
    s.q.resize(m * d);
    s.k.resize(m * d);
    s.v.resize(m * d);
    s.attended.resize(m * d);
    be.linear(s.normed, m, *block.attn.query.packed, s.q);
    be.linear(s.normed, m, *block.attn.key.packed, s.k);
    be.linear(s.normed, m, *block.attn.value.packed, s.v);
    self_attention_step(steps, layer, s.q, s.k, s.v, s.attended);
    be.linear(s.attended, m, *block.attn.out.packed, x, Epilogue::Accumulate);

    // cross-attention: the queries of sequences with the same audio in one call
    s.normed = x;
    be.layer_norm(s.normed, m, block.cross_attn_ln.gamma, block.cross_attn_ln.beta);
    be.linear(s.normed, m, *block.cross_attn.query.packed, s.q);
    for (const auto& group : groups) {
      const CrossAttentionCache& cross = *steps[group.front()].cross;
      const auto rows = static_cast<std::int64_t>(group.size());
      group_q.resize(rows * d);
      group_out.resize(rows * d);
      copy_rows(s.q, group, d, group_q, /*gather=*/true);
      be.attention_f16kv(group_q, rows, cross.keys[layer], cross.values[layer], cross.n_ctx, hp.n_text_head, d, -1,
                         group_out);
      copy_rows(group_out, group, d, s.attended, /*gather=*/false);
    }
    be.linear(s.attended, m, *block.cross_attn.out.packed, x, Epilogue::Accumulate);

    mlp_sublayer(be, x, m, block);
  }
  for (const auto& step : steps) step.sequence->commit(1);

  be.layer_norm(x, m, w_->decoder_ln.gamma, w_->decoder_ln.beta);
  logits.resize(m * hp.n_vocab);
  be.linear(x, m, *w_->logits.packed, logits);
  check_finite(logits);
  for (std::int64_t i = 0; i < m; ++i)
    std::copy_n(logits.data() + i * hp.n_vocab, hp.n_vocab, steps[i].logits.data());
}

}  // namespace amanuensis::nn
