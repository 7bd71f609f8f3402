// kernels/cpu: vectorised elementwise helpers for the optimised backends (a polynomial
// exp accurate to a few ulp, softmax built on it). Cloned for AVX-512 / AVX2 at load.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/cpu/ops.h"

namespace amanuensis::kernels::cpu {

// Softmax of row[0, n) in place; row[n, n_zero) is set to 0 (masked positions).
void softmax_fast(float* row, std::int64_t n, std::int64_t n_zero);

// One head of scaled dot-product attention for a few queries (decoder steps) against
// many keys: each key and value row is read once for all the queries, which matters when
// the keys are a window's 1500 audio positions. q, k, v and out rows are `stride` floats
// apart, the head's `hd` values at the start of each row. Query i sees keys
// [0, n_kv) when causal_offset < 0, else [0, causal_offset + i]. Each query's result is
// computed the same way whatever n_q is, so batching queries changes no bit.
void attention_head_few_queries(const float* q, std::int64_t n_q, const float* k, const float* v, std::int64_t n_kv,
                                std::int64_t stride, std::int64_t hd, std::int64_t causal_offset, float* out);

// The same over keys and values in blocks (a decoder sequence's paged KV cache): keys
// [0, n_kv) are the rows of `blocks` in order, the head's values starting `column` floats
// into each row. The same arithmetic in the same order as over contiguous rows.
void attention_head_few_queries_paged(const float* q, std::int64_t n_q, std::span<const KvRows> blocks,
                                      std::int64_t column, std::int64_t stride, std::int64_t hd,
                                      std::int64_t causal_offset, float* out);

// The same with keys and values stored as IEEE half (a window's cross-attention keys
// and values: half the bytes a decoder step reads), widened to float as they are read;
// the arithmetic is the float version's. q and out rows are q_stride floats apart, key
// and value rows kv_stride halves (hd where each head's rows lie together).
void attention_head_few_queries_f16(const float* q, std::int64_t n_q, std::int64_t q_stride, const std::uint16_t* k,
                                    const std::uint16_t* v, std::int64_t n_kv, std::int64_t kv_stride, std::int64_t hd,
                                    std::int64_t causal_offset, float* out);

// Whether this CPU has AVX2, FMA and F16C (both machine kinds the project runs on do).
bool have_avx2_fma_f16c();

// vzeroupper where the CPU has AVX: marks the upper halves of the vector registers clean,
// so that this thread's legacy-SSE code (everything built for baseline x86-64, libm's
// std::exp included) runs without the SSE/AVX transition penalty. A server request's
// thread woke from each decoder step with them dirty on an AMX Xeon, and its logit rules
// took 1.0 s instead of 0.07 s for 90 tokens (pipeline::BatchedCompute calls this).
void clear_upper_vector_state();

// Bulk IEEE half conversion (F16C where the CPU has it), rounding to nearest even.
void floats_to_halves(const float* x, std::uint16_t* y, std::int64_t n);
void halves_to_floats(const std::uint16_t* x, float* y, std::int64_t n);

// y[i] = exp(x[i]) for x <= 88; inputs below -87.3 give 0 (flushed).
void exp_fast(const float* x, float* y, std::int64_t n);

// log(sum of exp(x[i])) over a row of n finite or -inf values (-inf when all are): the
// normaliser of a row of logits. Each exponential of x[i] - max in float (relative
// error below 2e-7; below -87.3 flushed to 0, 4e-38 of the largest term), summed in double.
double log_sum_exp(const float* x, std::int64_t n);

// Exact GELU, x * Phi(x), in place, through a vectorised erfc (Numerical Recipes'
// Chebyshev fit, relative error below 1.2e-7 everywhere, so no cancellation for negative
// x): what cpu::gelu computes with std::erf, several times faster.
void gelu_fast(float* x, std::int64_t n);

// Layer norm of each of `rows` rows of x (length d) in place, eps 1e-5, with float
// sums in 16 fixed lanes (the same bits for a row whatever the other rows are).
void layer_norm_fast(float* x, std::int64_t rows, std::int64_t d, const float* gamma, const float* beta);

// The numerators of a softmax, rounded to bf16: probs[j] = bf16(exp(row[j] - max)) for
// j < n, 0 for j in [n, n_zero). Returns their sum, by which the caller divides whatever
// it computes from them. exp is only as exact as bf16 needs (relative error below 1e-5).
float softmax_numerators_bf16(const float* row, std::int64_t n, std::int64_t n_zero, std::uint16_t* probs);

}  // namespace amanuensis::kernels::cpu
