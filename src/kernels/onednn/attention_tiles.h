// kernels/onednn: scaled dot-product attention of many queries over a fixed set of keys
// (encoder windows, prompt passes against a window's audio) on oneDNN's matmul kernels:
// per head, the keys and values are reordered once into the layout the primitives ask
// for, and tiles of queries are multiplied with them (the same two primitives for every
// tile), in float32 or in bf16 (AMX or AVX512_BF16). Softmax is taken in float32 between
// the two products (its numerators rounded to bf16 for the second one in bf16), so only a
// tile x keys block of scores ever exists. Accumulation is float32 throughout.
#pragma once

#include <cstdint>

namespace amanuensis::kernels::onednn {

// The element type of the products' operands.
enum class TileElement { F32, Bf16 };

// Same contract as Backend::attention: q n_q x d, k and v n_kv x d (head h in columns
// [h*hd, (h+1)*hd)), out n_q x d; query i sees keys [0, n_kv) when causal_offset < 0,
// else [0, causal_offset + i].
void attention_in_tiles(TileElement element, const float* q, std::int64_t n_q, const float* k, const float* v,
                        std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset, float* out);

}  // namespace amanuensis::kernels::onednn
