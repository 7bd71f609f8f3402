// kernels: the compute backend seam. The network hands every weight matrix to a Backend
// once at load, as the file stores it ("pack": keep the blocks, convert, reorder,
// upload, whatever the backend wants; kernels/tensor.h), then asks
// that backend to run the dense work on it (linear layers with fused epilogues,
// attention, layer norm). Backends live beside each other (kernels/cpu: fp32 reference,
// kernels/onednn: oneDNN matmul, a GPU backend would be one more folder); nn only sees
// this header.
//
// Activations are host float32 arrays for now (row-major, one row per time step). A
// decoder sequence's self-attention keys and values live in blocks of a paged pool (nn's
// KvPool); attention_paged() reads them where they are.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/tensor.h"

namespace amanuensis::kernels {

// Arithmetic of the matrix products. Accumulation is float32 for Fp32 and Bf16; Bf16
// rounds weights and activations to bfloat16 before multiplying (what AVX512_BF16 / AMX
// do). Int8 multiplies int8 codes with int32 sums in a window's products (RowsHint::Many,
// but for the convolution stem: WeightRole): weights get one scale per output feature,
// input rows one scale per row, found as each product runs (the engine computes a window's
// products in float32 instead where the CPU has no int8 dot products: onednn_backend.cpp
// says why; the reference backend keeps int8 everywhere). Decoder steps (RowsHint::Few)
// in Int8 take q8_0's arithmetic instead (cpu/int8.h: a scale per block of 32 on both
// sides, finer than one per row, which cost tokens in the conformance suite), for the
// matrices steps_in_int8 names; the others, and every Few matrix in Fp32 and Bf16, stay
// as stored: the steps are bound by reading them.
enum class Precision { Auto, Fp32, Bf16, Int8 };

// "auto", "fp32", "bf16", "int8"; anything else throws amanuensis::Error.
Precision parse_precision(std::string_view name);
std::string_view precision_name(Precision p);

// These three read common/cpu_features.h, so they answer for the CPU under the process's
// instruction-set cap.

// Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX-BF16).
bool cpu_has_native_bf16();

// Whether bf16 products measure faster than float32 ones here: with the matrix engine's
// bf16 tiles (AMX-BF16), or AVX512_BF16 on AMD's cores (Zen 5: the tiny encoder in bf16
// took 0.6x its float32 time). AVX512_BF16 on a Xeon without AMX ran oneDNN's bf16
// products at about half its float32 rate.
bool cpu_runs_bf16_fast();

// Whether it has int8 dot-product instructions (AVX512_VNNI, AVX_VNNI or AMX-INT8), where
// int8 products run at several times the float32 rate (3.3x measured with AVX512_VNNI).
bool cpu_has_int8_dot();

// Which weights a model stores, for what Auto picks.
enum class WeightFormat { Float, Quantized };

// What Auto means: Bf16 where bf16 runs fast (cpu_runs_bf16_fast: the matrix engine,
// several times the float32 rate; bf16 has its own tolerance, see tests/conformance), for
// quantized models too (on an AMX Xeon their encoder took 116 ms in bf16 against 143 in
// int8 for tiny.en q8_0, 177 against 257 for base.en); else Int8 for quantized models
// where the CPU has int8 dot products (their weights are int8 codes already; the
// conformance suite holds int8 to the quantized tolerance); else Fp32. Any other
// precision is returned unchanged.
Precision resolve(Precision p, WeightFormat weights = WeightFormat::Float);

// Which implementation computes: the best one available (oneDNN where it runs the
// precision natively), or one forced by name for comparisons and tests.
enum class BackendKind { Best, Reference, Onednn };

// "best" (or ""), "reference", "onednn"; anything else throws amanuensis::Error.
BackendKind parse_backend_kind(std::string_view name);

// How a model's weights are computed with: passed down from the command line.
struct ComputeOptions {
  Precision precision = Precision::Auto;
  BackendKind backend = BackendKind::Best;
  WeightFormat weights = WeightFormat::Float;  // set by the model loader, for Auto
};

// A weight matrix in a backend's own storage: `rows` output features of `cols` inputs
// (PyTorch layout), with its optional bias. Only the backend that made it can use it.
class PackedMatrix {
 public:
  virtual ~PackedMatrix() = default;
  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }

 protected:
  PackedMatrix(std::int64_t rows, std::int64_t cols) : rows_(rows), cols_(cols) {}

 private:
  std::int64_t rows_, cols_;
};

// What a linear layer does with its result r = x W^T + b.
enum class Epilogue {
  Store,       // y = r
  Gelu,        // y = gelu(r)   (exact, erf-based)
  Accumulate,  // y += r        (residual connections)
};

// How many input rows a matrix will mostly be multiplied with: Few for decoder steps
// (one row per sequence, up to a few dozen sequences batched together; memory-bound:
// every weight read once per step), Many for whole windows.
// Few also promises determinism per row: each row of linear()'s result with a Few
// matrix is bitwise the same whatever m is, whatever the other rows hold and however
// many threads share the work, so a sequence decodes to the same tokens alone or batched.
enum class RowsHint { Many, Few };

// What a matrix is for, where a precision treats them differently: Int8 keeps the
// convolution stem over the log-mel input (Stem) in float32, as CTranslate2 keeps
// Whisper's convolutions in float: quantizing the input that everything else depends on
// cost more accuracy than every other layer together in the conformance suite, for
// about 5% of the encoder's arithmetic.
// Int8 also keeps a float file's token embedding (Embedding: the decoder's output
// projection, read back row by row) as stored: see steps_in_int8.
enum class WeightRole { Linear, Stem, Embedding };

// Whether Int8 multiplies this decoder-step matrix as int8 blocks: its rows are whole
// blocks, and it is a linear layer or the embedding of a quantized file (its own codes).
// q8_0 codes for a float file's embedding raised the largest teacher-forced logit error
// (micro.en-f16 on jfk) from 1.15 to 1.71 and flipped a greedy token of margin 1.02.
bool steps_in_int8(const StoredMatrix& weights, WeightRole role);

// Keys and values of consecutive positions, one block of a paged KV cache: rows x d
// floats each, row-major like attention()'s k and v (head h in columns [h*hd, (h+1)*hd)).
struct KvBlockView {
  std::span<const float> keys, values;
};

// A layer norm's scale and shift (d values each).
struct NormParams {
  std::span<const float> gamma, beta;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // For logs and benchmarks, e.g. "onednn-fp32".
  virtual std::string name() const = 0;
  virtual Precision precision() const = 0;
  // Which kernels run a window's products and a decoder step's, as chosen for this CPU
  // (for /health and bench --json), e.g. "windows: onednn avx512_core_vnni int8; steps:
  // int8 blocks, 16 lanes (avx512_vnni)". By default the name.
  virtual std::string kernels() const { return name(); }

  // Takes a weight matrix as stored (read during the call only) and its bias (empty, or
  // one value per row).
  virtual std::unique_ptr<PackedMatrix> pack(const StoredMatrix& weights, std::vector<float> bias,
                                             RowsHint hint = RowsHint::Many,
                                             WeightRole role = WeightRole::Linear) const = 0;

  // Row `row` of a matrix packed with RowsHint::Few, as float (out: w.cols() values,
  // exactly the stored values): the token
  // embedding lookup from the output projection, which Whisper ties to it, so that the
  // embedding needs no copy of its own.
  virtual void matrix_row(const PackedMatrix& w, std::int64_t row, std::span<float> out) const = 0;

  // y (m x w.rows()) <- epilogue(x (m x w.cols()) W^T + b).
  virtual void linear(std::span<const float> x, std::int64_t m, const PackedMatrix& w, std::span<float> y,
                      Epilogue epilogue = Epilogue::Store) const = 0;

  // Multi-head scaled dot-product attention for one batch item.
  // q: n_q x d; k, v: n_kv x d (head h in columns [h*hd, (h+1)*hd)); out: n_q x d.
  // Query i sees keys [0, n_kv) when causal_offset < 0, else [0, causal_offset + i].
  virtual void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k,
                         std::span<const float> v, std::int64_t n_kv, int n_head, std::int64_t d,
                         std::int64_t causal_offset, std::span<float> out) const = 0;

  // attention() over keys and values kept in blocks: positions [0, n_kv) are the rows of
  // `blocks` in order (block i's rows follow block i - 1's). The result is bitwise what
  // attention() gives for the same rows made contiguous. By default the rows are gathered
  // and passed to attention(); a backend reads the blocks in place where it can (decoder
  // steps, whose few queries would otherwise copy the whole sequence every layer).
  virtual void attention_paged(std::span<const float> q, std::int64_t n_q, std::span<const KvBlockView> blocks,
                               std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                               std::span<float> out) const;

  // attention() with k and v stored as IEEE half (a window's cross-attention keys and
  // values: half the bytes each decoder step reads), head by head (to_halves_by_head,
  // kernels/tensor.h): each head's rows lie together, so a step streams them in order
  // instead of reading a head's slice of every row. By default widened to float rows and
  // passed to attention(); a backend may read the halves directly.
  virtual void attention_f16kv(std::span<const float> q, std::int64_t n_q, std::span<const std::uint16_t> k,
                               std::span<const std::uint16_t> v, std::int64_t n_kv, int n_head, std::int64_t d,
                               std::int64_t causal_offset, std::span<float> out) const;

  // Normalises each of `rows` rows of x (length gamma.size()) in place, eps 1e-5.
  virtual void layer_norm(std::span<float> x, std::int64_t rows, std::span<const float> gamma,
                          std::span<const float> beta) const = 0;

  // outs[i] (rows x weights[i]->rows()) <- LN(x) W_i^T + b_i for each matrix, with x left
  // as it is: the products that share one normalised input (a block's query, key and
  // value). By default layer_norm() on a copy, then linear() for each; a backend may run
  // it in blocks of rows that stay in cache, normalising and converting each row once.
  virtual void norm_linear(std::span<const float> x, std::int64_t rows, const NormParams& ln,
                           std::span<const PackedMatrix* const> weights, std::span<const std::span<float>> outs) const;

  // x (rows x up.cols()) += down(gelu(up(LN(x)))): a block's feed-forward sublayer. By
  // default layer_norm() and linear(); a backend may run it in blocks of rows, so that the
  // hidden activations (4d wide) never leave the cache.
  virtual void feed_forward(std::span<float> x, std::int64_t rows, const NormParams& ln, const PackedMatrix& up,
                            const PackedMatrix& down) const;
};

// Throws for a pack() call whose bytes do not hold rows x cols values of its dtype (block
// types: cols a multiple of 32) or whose bias is neither empty nor `rows` long: the
// check every backend's pack() starts with.
void check_pack_sizes(const StoredMatrix& weights, std::span<const float> bias);

// Positions [0, n_kv) of `blocks` copied into contiguous n_kv x d rows (keys and values
// resized to fit): attention_paged()'s default, and a backend's path for many queries.
// Throws InternalError when the blocks hold fewer rows or are not whole rows.
void gather_kv_blocks(std::span<const KvBlockView> blocks, std::int64_t n_kv, std::int64_t d,
                      std::vector<float>& keys, std::vector<float>& values);

// The backend for `options` (precision Auto as resolve()): for Best, oneDNN when it is
// built in and can run that precision on this CPU, else the reference backend (which
// emulates bf16 and int8). Throws Error when a forced backend cannot run here.
std::shared_ptr<const Backend> make_backend(const ComputeOptions& options = {});

// The reference backend alone (float32 loops of kernels/cpu, bf16 and int8 by emulation).
std::shared_ptr<const Backend> make_reference_backend(Precision p);

}  // namespace amanuensis::kernels
