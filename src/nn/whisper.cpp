#include "nn/whisper.h"

#include <cmath>
#include <string>

#include "common/error.h"

namespace amanuensis::nn {
namespace {

namespace cpu = kernels::cpu;

LinearWeights linear_weights(const model::ModelFile& f, const std::string& prefix, bool has_bias = true) {
  LinearWeights l;
  l.weight = cpu::to_dense_matrix(f.tensor(prefix + ".weight"));
  if (has_bias) l.bias = cpu::to_float_vector(f.tensor(prefix + ".bias"));
  return l;
}

NormWeights norm_weights(const model::ModelFile& f, const std::string& prefix) {
  return {cpu::to_float_vector(f.tensor(prefix + ".weight")), cpu::to_float_vector(f.tensor(prefix + ".bias"))};
}

AttentionWeights attention_weights(const model::ModelFile& f, const std::string& prefix) {
  return {linear_weights(f, prefix + ".query"), linear_weights(f, prefix + ".key", false),
          linear_weights(f, prefix + ".value"), linear_weights(f, prefix + ".out")};
}

BlockWeights block_weights(const model::ModelFile& f, const std::string& prefix, bool cross) {
  BlockWeights b;
  b.attn_ln = norm_weights(f, prefix + ".attn_ln");
  b.attn = attention_weights(f, prefix + ".attn");
  if (cross) {
    b.cross_attn_ln = norm_weights(f, prefix + ".cross_attn_ln");
    b.cross_attn = attention_weights(f, prefix + ".cross_attn");
  }
  b.mlp_ln = norm_weights(f, prefix + ".mlp_ln");
  b.mlp_up = linear_weights(f, prefix + ".mlp.0");
  b.mlp_down = linear_weights(f, prefix + ".mlp.2");
  return b;
}


// Shapes used by every block: x is n x d.
struct Scratch {
  std::vector<float> normed, q, k, v, attended, hidden;
};

// x += out_proj(attention(LN(x) queries against keys/values))
void self_attention_sublayer(std::vector<float>& x, std::int64_t n, std::int64_t d, int n_head,
                             const NormWeights& ln, const AttentionWeights& a, Scratch& s) {
  s.normed = x;
  cpu::layer_norm(s.normed, n, ln.gamma, ln.beta);
  s.q.resize(n * d);
  s.k.resize(n * d);
  s.v.resize(n * d);
  s.attended.resize(n * d);
  cpu::linear(s.normed, n, a.query.weight, a.query.bias, s.q);
  cpu::linear(s.normed, n, a.key.weight, {}, s.k);
  cpu::linear(s.normed, n, a.value.weight, a.value.bias, s.v);
  cpu::attention(s.q, n, s.k, s.v, n, n_head, d, -1, s.attended);
  std::vector<float> projected(n * d);
  cpu::linear(s.attended, n, a.out.weight, a.out.bias, projected);
  cpu::add_in_place(x, projected);
}

void mlp_sublayer(std::vector<float>& x, std::int64_t n, std::int64_t d, const BlockWeights& b, Scratch& s) {
  s.normed = x;
  cpu::layer_norm(s.normed, n, b.mlp_ln.gamma, b.mlp_ln.beta);
  s.hidden.resize(n * b.mlp_up.weight.rows);
  cpu::linear(s.normed, n, b.mlp_up.weight, b.mlp_up.bias, s.hidden);
  cpu::gelu(s.hidden);
  std::vector<float> projected(n * d);
  cpu::linear(s.hidden, n, b.mlp_down.weight, b.mlp_down.bias, projected);
  cpu::add_in_place(x, projected);
}

// Conv1d with kernel 3 and padding 1 over time-major input (n_in frames x channels),
// as an im2col product; returns n_out frames x out channels, GELU applied.
std::vector<float> conv3_gelu(std::span<const float> input, std::int64_t n_in, std::int64_t channels, int stride,
                              const cpu::DenseMatrix& kernel, std::span<const float> bias) {
  const std::int64_t n_out = (n_in + 2 - 3) / stride + 1;
  const std::int64_t patch = channels * 3;  // kernel row layout: [channel][tap]
  std::vector<float> columns(n_out * patch, 0.0f);
  for (std::int64_t t = 0; t < n_out; ++t) {
    float* col = columns.data() + t * patch;
    for (int tap = 0; tap < 3; ++tap) {
      const std::int64_t src = t * stride + tap - 1;
      if (src < 0 || src >= n_in) continue;
      const float* in = input.data() + src * channels;
      for (std::int64_t c = 0; c < channels; ++c) col[c * 3 + tap] = in[c];
    }
  }
  std::vector<float> out(n_out * kernel.rows);
  cpu::linear(columns, n_out, kernel, bias, out);
  cpu::gelu(out);
  return out;
}

// Scores of the captured heads of one layer: q . k / sqrt(head_dim) over all audio positions.
void capture_scores(AttentionCapture& capture, int layer, std::span<const float> q, std::int64_t n,
                    const CrossAttentionCache& cross, std::size_t cache_layer, int n_head, std::int64_t d) {
  const std::int64_t hd = d / n_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (std::size_t i = 0; i < capture.heads.size(); ++i) {
    const auto [want_layer, head] = capture.heads[i];
    if (want_layer != layer || head < 0 || head >= n_head) continue;
    auto& out = capture.scores[i];
    out.resize(static_cast<std::size_t>(n * cross.n_ctx));
    const float* keys = cross.keys[cache_layer].data();
    for (std::int64_t t = 0; t < n; ++t)
      for (std::int64_t a = 0; a < cross.n_ctx; ++a) {
        float dot = 0.0f;
        for (std::int64_t j = 0; j < hd; ++j) dot += q[t * d + head * hd + j] * keys[a * d + head * hd + j];
        out[t * cross.n_ctx + a] = dot * scale;
      }
  }
}

}  // namespace

std::shared_ptr<const WhisperWeights> WhisperWeights::load(const model::ModelFile& f) {
  if (f.tensors().empty()) {
    throw Error(f.path().string() + " holds only a vocabulary (no tensors); it cannot transcribe");
  }
  auto w = std::make_shared<WhisperWeights>();
  const auto& hp = f.hparams();
  w->hparams = hp;
  w->conv1 = cpu::to_dense_matrix(f.tensor("encoder.conv1.weight"));
  w->conv1_bias = cpu::to_float_vector(f.tensor("encoder.conv1.bias"));
  w->conv2 = cpu::to_dense_matrix(f.tensor("encoder.conv2.weight"));
  w->conv2_bias = cpu::to_float_vector(f.tensor("encoder.conv2.bias"));
  w->encoder_positions = cpu::to_float_vector(f.tensor("encoder.positional_embedding"));
  for (int i = 0; i < hp.n_audio_layer; ++i)
    w->encoder_blocks.push_back(block_weights(f, "encoder.blocks." + std::to_string(i), false));
  w->encoder_ln_post = norm_weights(f, "encoder.ln_post");
  w->token_embedding = cpu::to_dense_matrix(f.tensor("decoder.token_embedding.weight"));
  w->decoder_positions = cpu::to_float_vector(f.tensor("decoder.positional_embedding"));
  for (int i = 0; i < hp.n_text_layer; ++i)
    w->decoder_blocks.push_back(block_weights(f, "decoder.blocks." + std::to_string(i), true));
  w->decoder_ln = norm_weights(f, "decoder.ln");
  return w;
}

AudioFeatures Encoder::encode(std::span<const float> mel) const {
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

  auto h1 = conv3_gelu(frames, n_frames, hp.n_mels, 1, w_->conv1, w_->conv1_bias);
  auto x = conv3_gelu(h1, n_frames, d, 2, w_->conv2, w_->conv2_bias);
  const std::int64_t n = hp.n_audio_ctx;  // 1500, or fewer for a reduced audio context
  x.resize(n * d);
  cpu::add_in_place(x, {w_->encoder_positions.data(), static_cast<std::size_t>(n * d)});

  Scratch s;
  for (const auto& block : w_->encoder_blocks) {
    self_attention_sublayer(x, n, d, hp.n_audio_head, block.attn_ln, block.attn, s);
    mlp_sublayer(x, n, d, block, s);
  }
  cpu::layer_norm(x, n, w_->encoder_ln_post.gamma, w_->encoder_ln_post.beta);
  return {n, d, std::move(x)};
}

CrossAttentionCache Decoder::cross_attention(const AudioFeatures& audio) const {
  CrossAttentionCache cache;
  cache.n_ctx = audio.n_ctx;
  for (const auto& block : w_->decoder_blocks) {
    std::vector<float> k(audio.n_ctx * audio.d), v(audio.n_ctx * audio.d);
    cpu::linear(audio.states, audio.n_ctx, block.cross_attn.key.weight, {}, k);
    cpu::linear(audio.states, audio.n_ctx, block.cross_attn.value.weight, block.cross_attn.value.bias, v);
    cache.keys.push_back(std::move(k));
    cache.values.push_back(std::move(v));
  }
  return cache;
}

KvCache Decoder::new_cache() const {
  const auto& hp = w_->hparams;
  KvCache cache;
  const auto size = static_cast<std::size_t>(hp.n_text_ctx) * hp.n_text_state;
  cache.keys.assign(hp.n_text_layer, std::vector<float>(size));
  cache.values.assign(hp.n_text_layer, std::vector<float>(size));
  return cache;
}

std::vector<float> Decoder::forward(std::span<const TokenId> tokens, KvCache& cache, const CrossAttentionCache& cross,
                                    bool all_rows, AttentionCapture* capture) const {
  if (capture) capture->scores.assign(capture->heads.size(), {});
  const auto& hp = w_->hparams;
  const std::int64_t n = static_cast<std::int64_t>(tokens.size()), d = hp.n_text_state;
  const std::int64_t n_past = cache.n_past;
  if (n == 0) throw Error("decoder called with no tokens");
  if (n_past + n > hp.n_text_ctx) {
    throw Error("token sequence of " + std::to_string(n_past + n) + " exceeds the model's text context of " +
                std::to_string(hp.n_text_ctx));
  }
  std::vector<float> x(n * d);
  for (std::int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) throw Error("token id " + std::to_string(tokens[i]) + " out of range");
    auto emb = w_->token_embedding.row(tokens[i]);
    const float* pos = w_->decoder_positions.data() + (n_past + i) * d;
    for (std::int64_t j = 0; j < d; ++j) x[i * d + j] = emb[j] + pos[j];
  }

  Scratch s;
  std::vector<float> projected(n * d);
  for (std::size_t layer = 0; layer < w_->decoder_blocks.size(); ++layer) {
    const auto& block = w_->decoder_blocks[layer];
    // masked self-attention over the cache plus the new tokens
    s.normed = x;
    cpu::layer_norm(s.normed, n, block.attn_ln.gamma, block.attn_ln.beta);
    s.q.resize(n * d);
    s.attended.resize(n * d);
    cpu::linear(s.normed, n, block.attn.query.weight, block.attn.query.bias, s.q);
    std::span<float> k_new(cache.keys[layer].data() + n_past * d, n * d);
    std::span<float> v_new(cache.values[layer].data() + n_past * d, n * d);
    cpu::linear(s.normed, n, block.attn.key.weight, {}, k_new);
    cpu::linear(s.normed, n, block.attn.value.weight, block.attn.value.bias, v_new);
    cpu::attention(s.q, n, cache.keys[layer], cache.values[layer], n_past + n, hp.n_text_head, d, n_past, s.attended);
    cpu::linear(s.attended, n, block.attn.out.weight, block.attn.out.bias, projected);
    cpu::add_in_place(x, projected);

    // cross-attention against the window's audio
    s.normed = x;
    cpu::layer_norm(s.normed, n, block.cross_attn_ln.gamma, block.cross_attn_ln.beta);
    cpu::linear(s.normed, n, block.cross_attn.query.weight, block.cross_attn.query.bias, s.q);
    cpu::attention(s.q, n, cross.keys[layer], cross.values[layer], cross.n_ctx, hp.n_text_head, d, -1, s.attended);
    if (capture) capture_scores(*capture, static_cast<int>(layer), s.q, n, cross, layer, hp.n_text_head, d);
    cpu::linear(s.attended, n, block.cross_attn.out.weight, block.cross_attn.out.bias, projected);
    cpu::add_in_place(x, projected);

    mlp_sublayer(x, n, d, block, s);
  }
  cache.n_past = n_past + n;

  cpu::layer_norm(x, n, w_->decoder_ln.gamma, w_->decoder_ln.beta);
  const std::int64_t first_row = all_rows ? 0 : n - 1;
  const std::int64_t rows = n - first_row;
  std::vector<float> logits(rows * hp.n_vocab);
  cpu::linear({x.data() + first_row * d, static_cast<std::size_t>(rows * d)}, rows, w_->token_embedding, {}, logits);
  return logits;
}

}  // namespace amanuensis::nn
