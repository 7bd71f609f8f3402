#include "kernels/onednn/attention_tiles.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/fast_math.h"
#include "kernels/onednn/context.h"

namespace amanuensis::kernels::onednn {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using dims = dnnl::memory::dims;

// Queries per tile: 128 x 1500 float scores (750 KB) stay in a core's L2 with their bf16
// probabilities, and the tile is tall enough for the engine's 16-row blocks.
constexpr std::int64_t kTile = 128;

// The two products of a tile of kTile queries of one head: scores = q_h k_h^T and
// out_h = p v_h. Every tile has kTile rows (the last padded with zero queries), so one
// pair of primitives per key count serves every call.
struct TileProducts {
  std::shared_ptr<const Matmul> scores, values;
};

const PrimitiveCache<Matmul>& matmuls() {
  static const PrimitiveCache<Matmul> cache;
  return cache;
}

dt data_type(TileElement e) { return e == TileElement::Bf16 ? dt::bf16 : dt::f32; }
std::int64_t element_bytes(TileElement e) { return e == TileElement::Bf16 ? 2 : 4; }

TileProducts tile_products(TileElement element, std::int64_t hd, std::int64_t n_kv) {
  const std::int64_t rows = kTile;
  const dt type = data_type(element);
  const dnnl::primitive_attr attr;
  // dense operands only: oneDNN 2.6 takes its AMX/brgemm kernels for nothing else
  const dnnl::memory::desc q_md({rows, hd}, type, tag::ab);
  const dnnl::memory::desc scores_md({rows, n_kv}, dt::f32, tag::ab);
  const dnnl::memory::desc probs_md({rows, n_kv}, type, tag::ab);
  const dnnl::memory::desc out_md({rows, hd}, dt::f32, tag::ab);
  const dnnl::memory::desc keys_md({hd, n_kv}, type, tag::any), values_md({n_kv, hd}, type, tag::any);
  const std::int64_t e = static_cast<std::int64_t>(element);
  TileProducts t;
  t.scores = matmuls().get({0, e, hd, n_kv}, [&] { return make_matmul(q_md, keys_md, scores_md, nullptr, attr); });
  t.values = matmuls().get({1, e, hd, n_kv}, [&] { return make_matmul(probs_md, values_md, out_md, nullptr, attr); });
  return t;
}

// Float32 keys or values of one head (rows of `d` values, the head's `hd` at the start),
// as k^T (hd x n_kv) or v (n_kv x hd), into `to`'s layout and element type.
void reorder_head(const float* from, std::int64_t n_kv, std::int64_t hd, std::int64_t d, bool transpose,
                  const dnnl::memory& to) {
  static const PrimitiveCache<dnnl::reorder> reorders;
  const dnnl::memory::desc from_md = transpose ? dnnl::memory::desc({hd, n_kv}, dt::f32, dims{1, d})
                                               : dnnl::memory::desc({n_kv, hd}, dt::f32, dims{d, 1});
  const auto reorder = reorders.get({transpose ? 1 : 0, n_kv, hd, d, static_cast<std::int64_t>(to.get_desc().data_type())}, [&] {
    return std::make_shared<dnnl::reorder>(dnnl::reorder::primitive_desc(cpu_engine(), from_md, cpu_engine(),
                                                                         to.get_desc()));
  });
  dnnl::memory src(from_md, cpu_engine(), const_cast<float*>(from));
  reorder->execute(thread_stream(), src, const_cast<dnnl::memory&>(to));
  thread_stream().wait();
}

// Softmax of the rows of a tile's scores (the first `rows` of kTile; the padding rows get
// zero weights) into the second product's operand, which is `scores` itself in float32.
// Returns each row's factor for the product's result (1 / sum in bf16, 1 in float32).
const std::vector<float>& tile_softmax(TileElement element, std::vector<float>& scores, std::int64_t i0,
                                       std::int64_t rows, std::int64_t n_kv, std::int64_t causal_offset,
                                       std::vector<std::uint16_t>& probs) {
  thread_local std::vector<float> factors;
  factors.assign(static_cast<std::size_t>(rows), 1.0f);
  if (element == TileElement::Bf16) {
    probs.resize(static_cast<std::size_t>(kTile * n_kv));
    std::fill(probs.begin() + rows * n_kv, probs.end(), std::uint16_t{0});
  } else {
    std::fill(scores.begin() + rows * n_kv, scores.end(), 0.0f);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t visible = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + i0 + r + 1);
    float* row = scores.data() + r * n_kv;
    if (element == TileElement::Bf16) {
      factors[r] = 1.0f / cpu::softmax_numerators_bf16(row, visible, n_kv, probs.data() + r * n_kv);
    } else {
      cpu::softmax_fast(row, visible, n_kv);
    }
  }
  return factors;
}

// The queries [i0, i0 + rows) of head h (rows <= kTile); q_head holds the head's queries
// padded to whole tiles, in the products' element type.
void attend_tile(TileElement element, const TileProducts& p, const std::uint8_t* q_head, std::int64_t i0,
                 std::int64_t rows, std::int64_t h, std::int64_t hd, std::int64_t d, const dnnl::memory& keys,
                 const dnnl::memory& values, std::int64_t n_kv, std::int64_t causal_offset, float* out) {
  thread_local std::vector<float> scores, tile_out;
  thread_local std::vector<std::uint16_t> probs;
  scores.resize(static_cast<std::size_t>(kTile * n_kv));
  tile_out.resize(static_cast<std::size_t>(kTile * hd));
  auto& eng = cpu_engine();
  const dt type = data_type(element);
  dnnl::memory q_mem({{kTile, hd}, type, tag::ab}, eng, const_cast<std::uint8_t*>(q_head + i0 * hd * element_bytes(element)));
  dnnl::memory s_mem({{kTile, n_kv}, dt::f32, tag::ab}, eng, scores.data());
  p.scores->execute(q_mem, keys, s_mem);
  const auto& factors = tile_softmax(element, scores, i0, rows, n_kv, causal_offset, probs);
  void* operand = element == TileElement::Bf16 ? static_cast<void*>(probs.data()) : static_cast<void*>(scores.data());
  dnnl::memory p_mem({{kTile, n_kv}, type, tag::ab}, eng, operand);
  dnnl::memory o_mem({{kTile, hd}, dt::f32, tag::ab}, eng, tile_out.data());
  p.values->execute(p_mem, values, o_mem);
  float* o = out + i0 * d + h * hd;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < hd; ++j) o[r * d + j] = tile_out[r * hd + j] * factors[r];
}

// The queries in the products' element type, head by head (each padded to whole tiles
// with zeros), scaled by 1/sqrt(hd) first (exact for Whisper's head size of 64). The
// pool's threads see their own thread_local buffers: the caller passes the pointer on.
std::uint8_t* queries_by_head(TileElement element, const float* q, std::int64_t n_q, std::int64_t n_padded,
                              int n_head, std::int64_t hd, std::int64_t d) {
  thread_local std::vector<std::uint8_t> buffer;
  const std::int64_t bytes = element_bytes(element);
  buffer.assign(static_cast<std::size_t>(n_padded * d * bytes), 0);
  std::uint8_t* base = buffer.data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  maybe_parallel(n_q, 1.0 * n_q * d * 10, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      for (std::int64_t h = 0; h < n_head; ++h) {
        const float* from = q + i * d + h * hd;
        std::uint8_t* to = base + (h * n_padded + i) * hd * bytes;
        if (element == TileElement::Bf16) {
          convert_to_bf16(from, reinterpret_cast<std::uint16_t*>(to), hd, scale);
        } else {
          auto* f = reinterpret_cast<float*>(to);
          for (std::int64_t c = 0; c < hd; ++c) f[c] = from[c] * scale;
        }
      }
  });
  return base;
}

}  // namespace

void attention_in_tiles(TileElement element, const float* q, std::int64_t n_q, const float* k, const float* v,
                        std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset, float* out) {
  const std::int64_t hd = d / n_head;
  const TileProducts products = tile_products(element, hd, n_kv);
  const std::int64_t tiles = (n_q + kTile - 1) / kTile, n_padded = tiles * kTile;
  const std::uint8_t* queries = queries_by_head(element, q, n_q, n_padded, n_head, hd, d);

  // every head's keys and values in the engine's layout, in one buffer kept per thread
  const std::size_t keys_bytes = products.scores->weights_md.get_size();
  const std::size_t values_bytes = products.values->weights_md.get_size();
  thread_local std::vector<std::uint8_t> operands;
  operands.resize((keys_bytes + values_bytes) * static_cast<std::size_t>(n_head));
  std::vector<dnnl::memory> keys, values;
  for (int h = 0; h < n_head; ++h) {
    std::uint8_t* base = operands.data() + (keys_bytes + values_bytes) * static_cast<std::size_t>(h);
    keys.emplace_back(products.scores->weights_md, cpu_engine(), base);
    values.emplace_back(products.values->weights_md, cpu_engine(), base + keys_bytes);
  }
  maybe_parallel(n_head, 4.0 * n_kv * d, [&](std::int64_t begin, std::int64_t end) {
    single_threaded_onednn();
    for (std::int64_t h = begin; h < end; ++h) {
      reorder_head(k + h * hd, n_kv, hd, d, /*transpose=*/true, keys[h]);
      reorder_head(v + h * hd, n_kv, hd, d, /*transpose=*/false, values[h]);
    }
  });

  maybe_parallel(tiles * n_head, 4.0 * n_q * n_kv * d, [&](std::int64_t begin, std::int64_t end) {
    single_threaded_onednn();
    for (std::int64_t item = begin; item < end; ++item) {
      const std::int64_t h = item / tiles, i0 = (item % tiles) * kTile;
      attend_tile(element, products, queries + h * n_padded * hd * element_bytes(element), i0, std::min(kTile, n_q - i0),
                  h, hd, d, keys[h], values[h], n_kv, causal_offset, out);
    }
  });
}

}  // namespace amanuensis::kernels::onednn
