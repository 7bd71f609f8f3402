// kernels/onednn: scaled dot-product attention of many queries (encoder windows, prompt
// passes) on the matrix engine: per head, tiles of queries are multiplied with the keys
// in bf16 (AMX or AVX512_BF16 through oneDNN's matmul), softmax is taken in float32 and
// rounded to bf16, and the probabilities are multiplied with the values in bf16, so only
// a tile x keys block of scores ever exists. Accumulation is float32 throughout.
#pragma once

#include <cstdint>

namespace amanuensis::kernels::onednn {

// Same contract as Backend::attention: q n_q x d, k and v n_kv x d (head h in columns
// [h*hd, (h+1)*hd)), out n_q x d; query i sees keys [0, n_kv) when causal_offset < 0,
// else [0, causal_offset + i].
void attention_many_bf16(const float* q, std::int64_t n_q, const float* k, const float* v, std::int64_t n_kv,
                         int n_head, std::int64_t d, std::int64_t causal_offset, float* out);

}  // namespace amanuensis::kernels::onednn
