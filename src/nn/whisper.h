// nn: the Whisper network. Weights are taken from a ModelFile once; the encoder turns
// a 30 s log-mel window into audio states, and the decoder advances token sequences
// against those states, each sequence's self-attention keys/values in the decoder's paged
// KV pool (nn/kv_pool.h), and per-window cross-attention keys/values.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "model/ggml_file.h"
#include "nn/kv_pool.h"

namespace amanuensis::nn {

using TokenId = std::int32_t;

// A weight matrix with its bias (none for Whisper's key projections), packed by the backend.
struct LinearWeights {
  std::unique_ptr<kernels::PackedMatrix> packed;
  std::int64_t rows() const { return packed->rows(); }
};

struct LoadOptions {
  kernels::ComputeOptions compute;  // precision and backend of the matrix products
};

struct NormWeights {
  std::vector<float> gamma;
  std::vector<float> beta;
  kernels::NormParams params() const { return {gamma, beta}; }
};

struct AttentionWeights {
  LinearWeights query, key, value, out;
};

struct BlockWeights {
  NormWeights attn_ln;
  AttentionWeights attn;
  NormWeights cross_attn_ln;  // decoder only
  AttentionWeights cross_attn;
  NormWeights mlp_ln;
  LinearWeights mlp_up;    // mlp.0
  LinearWeights mlp_down;  // mlp.2
};

struct WhisperWeights {
  model::HyperParams hparams;
  std::shared_ptr<const kernels::Backend> backend;  // packed every LinearWeights below
  LinearWeights conv1, conv2;  // rows = out channels, cols = 3 taps x in channels ([tap][channel])
  std::vector<float> encoder_positions;  // n_audio_ctx x d
  std::vector<BlockWeights> encoder_blocks;
  NormWeights encoder_ln_post;
  // the token embedding is read from `logits`, the same matrix (Backend::matrix_row)
  std::int64_t embedding_dim = 0;
  LinearWeights logits;                       // the same matrix as the output projection
  std::vector<float> decoder_positions;       // n_text_ctx x d
  std::vector<BlockWeights> decoder_blocks;
  NormWeights decoder_ln;

  // Converts every tensor of the file to float and hands the matrices to the backend
  // for `options.precision`. Throws Error for a vocabulary-only file.
  static std::shared_ptr<const WhisperWeights> load(const model::ModelFile& file, const LoadOptions& options = {});

  // load(), releasing each tensor of `file` (ModelFile::release_tensor) as soon as the
  // backend holds it, then all of them: the file's bytes and the packed weights are never
  // in memory together (peak RSS of a tiny.en f16 load 243 -> 173 MB). The file keeps
  // its header and vocabulary but cannot be loaded again.
  static std::shared_ptr<const WhisperWeights> load_releasing(model::ModelFile& file, const LoadOptions& options = {});
};

// Encoder output for one window: n_ctx x d audio states.
struct AudioFeatures {
  std::int64_t n_ctx = 0;
  std::int64_t d = 0;
  std::vector<float> states;
};

// Cross-attention keys and values of every decoder layer for one window, computed once
// and stored as IEEE half: every decoder step of every sequence on the window reads them
// all, so their bytes bound the step (18 MB a window for tiny in float, 9 in half). It is
// one entry of the decoder's memory, counted in the KV pool's audio_bytes while it lives:
// Runner::encode hands it out shared, and every sequence decoding the window reads it.
struct CrossAttentionCache {
  std::int64_t n_ctx = 0;
  // per layer, n_ctx x d IEEE halves head by head (kernels::to_halves_by_head)
  std::vector<std::vector<std::uint16_t>> keys, values;
  AudioCharge charge;  // set by Decoder::cross_attention
};

// Raw cross-attention scores (q . k / sqrt(head_dim), before the softmax) of chosen
// decoder heads, for word alignment: one tokens x audio-positions block per head.
struct AttentionCapture {
  std::vector<std::pair<int, int>> heads;  // (decoder layer, head)
  std::vector<std::vector<float>> scores;  // filled by Decoder::forward, in `heads` order
};

// One sequence of a batched decoder step: `token` is appended to `sequence` (at position
// sequence->length()), which attends to the audio in `cross`; the next-token logits
// (n_vocab values) are written to `logits`.
struct SequenceStep {
  TokenId token = 0;
  KvSequence* sequence = nullptr;
  const CrossAttentionCache* cross = nullptr;
  std::span<float> logits;
};

class Encoder {
 public:
  explicit Encoder(std::shared_ptr<const WhisperWeights> weights) : w_(std::move(weights)) {}
  // `mel` is one window, [n_mels][3000] row-major.
  AudioFeatures encode(std::span<const float> mel) const;
  // Several windows as one stack: every product runs once over all their rows (what an
  // accelerator needs to fill its units; on a CPU about the speed of one by one), and
  // attention within each window. A window's states do not depend on the others.
  std::vector<AudioFeatures> encode_stacked(std::span<const std::span<const float>> mels) const;
  const std::shared_ptr<const kernels::Backend>& backend() const { return w_->backend; }

 private:
  void stem(std::span<const float> mel, std::vector<float>& stack) const;

  std::shared_ptr<const WhisperWeights> w_;
};

class Decoder {
 public:
  // Makes the decoder's KV pool (empty: blocks are allocated as sequences grow).
  explicit Decoder(std::shared_ptr<const WhisperWeights> weights);

  CrossAttentionCache cross_attention(const AudioFeatures& audio) const;
  // An empty sequence in this decoder's KV pool; fork() it to branch (beams, best-of).
  KvSequence new_sequence() const { return kv_pool_->new_sequence(); }
  // The pool every sequence of this decoder lives in: its capacity and use.
  const KvPool& kv_pool() const { return *kv_pool_; }
  // The bytes of one window's CrossAttentionCache (n_ctx audio positions; the encoder's
  // n_audio_ctx by default), and of the KV blocks of a sequence of `positions` tokens.
  std::int64_t cross_attention_bytes(std::int64_t n_ctx) const;
  std::int64_t cross_attention_bytes() const { return cross_attention_bytes(w_->hparams.n_audio_ctx); }
  std::int64_t sequence_bytes(std::int64_t positions) const { return kv_pool_->sequence_bytes(positions); }

  // Appends `tokens` to `sequence` (positions length(), length()+1, ...) and returns
  // logits: tokens.size() x n_vocab rows when `all_rows`, else only the last row.
  // Throws Error when the sequence would exceed n_text_ctx.
  std::vector<float> forward(std::span<const TokenId> tokens, KvSequence& sequence, const CrossAttentionCache& cross,
                             bool all_rows = false, AttentionCapture* capture = nullptr) const;

  // Advances several sequences by one token each in one pass over the weights: the
  // matrix products take one row per sequence, self-attention reads each sequence's
  // blocks in place, sequences that share a CrossAttentionCache share its reads. A
  // sequence's logits do not depend on the other sequences of the step. Throws Error,
  // before changing any sequence, when a token is out of range or a sequence is full.
  void step(std::span<const SequenceStep> steps) const;
  // The checks of step() alone.
  void check_step(std::span<const SequenceStep> steps) const;

  int n_vocab() const { return w_->hparams.n_vocab; }
  int n_text_ctx() const { return w_->hparams.n_text_ctx; }
  const std::shared_ptr<const kernels::Backend>& backend() const { return w_->backend; }

 private:
  // The decoder's input row: token embedding plus the position's embedding.
  void embed(TokenId token, std::int64_t position, std::span<float> out) const;
  void self_attention_step(std::span<const SequenceStep> steps, std::size_t layer, std::span<const float> q,
                           std::span<const float> k, std::span<const float> v, std::span<float> out) const;

  std::shared_ptr<const WhisperWeights> w_;
  std::shared_ptr<KvPool> kv_pool_;  // shared with the sequences, which may outlive a copy of the decoder
};

}  // namespace amanuensis::nn
