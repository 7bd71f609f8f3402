#include "kernels/onednn/onednn_backend.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/cpu_features.h"
#include "common/error.h"
#include "kernels/cpu/amx_bf16.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/int8_panels.h"
#include "kernels/cpu/panel_matrix.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/onednn/attention_tiles.h"
#include "kernels/onednn/context.h"
#include "kernels/onednn/int8_linear.h"

namespace amanuensis::kernels::onednn {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// A matmul primitive for one (m, epilogue) of a slice, and its scratchpad size.
struct Primitive {
  dnnl::matmul matmul;
  std::size_t scratchpad_bytes = 0;
  bool fused = true;  // false: the epilogue is applied after the primitive
  // GELU by cpu::gelu_fast on the stored result: oneDNN's erf post-op in its AMX/brgemm
  // kernels costs several times the product itself (20 ms for 1500 x 384 x 1536)
  bool gelu_after = false;
};

// Output features [first, first + rows) of a matrix, packed on their own so threads can
// share out a product with few input rows (decoder steps) by output features.
struct Slice {
  std::int64_t first = 0, rows = 0;
  dnnl::memory::desc weights_md;
  dnnl::memory weights;
  dnnl::memory bias;  // empty when the layer has none

  mutable std::mutex mutex;
  mutable std::map<std::pair<std::int64_t, int>, std::shared_ptr<const Primitive>> primitives;
};

// RowsHint::Few matrices skip oneDNN, whose result for a row may depend on how many
// rows come with it: their weights are a cpu::PanelMatrix, in their stored precision.

class OnednnMatrix final : public PackedMatrix {
 public:
  OnednnMatrix(std::int64_t rows, std::int64_t cols) : PackedMatrix(rows, cols) {}
  dt src_type = dt::f32;
  bool has_bias = false;
  std::vector<std::unique_ptr<Slice>> slices;
  // Few: the panels, read by plain_linear (in int8, its block codes instead)
  std::optional<cpu::PanelMatrix> plain;
  std::optional<cpu::Int8PanelMatrix> plain_int8;
  std::vector<float> bias;
  // Many in int8
  std::optional<Int8Weights> int8;
  // Many in bf16 on AMX tiles (with `bias`)
  std::optional<cpu::amx::Bf16Panels> tiles;
};

// The product of m rows against a slice, writing into rows of the full output (stride n).
dnnl::matmul::primitive_desc matmul_pd(const OnednnMatrix& w, const Slice& s, std::int64_t m,
                                       const dnnl::memory::desc& weights_md, const dnnl::primitive_attr& attr,
                                       bool strided_dst = true) {
  const dnnl::memory::desc src({m, w.cols()}, w.src_type, tag::ab);
  const dnnl::memory::desc dst = strided_dst ? dnnl::memory::desc({m, s.rows}, dt::f32, {w.rows(), 1})
                                             : dnnl::memory::desc({m, s.rows}, dt::f32, tag::ab);
  if (w.has_bias) {
    const dnnl::memory::desc bias({1, s.rows}, dt::f32, tag::ab);
    return {dnnl::matmul::desc(src, weights_md, bias, dst), attr, cpu_engine()};
  }
  return {dnnl::matmul::desc(src, weights_md, dst), attr, cpu_engine()};
}

dnnl::primitive_attr make_attr(Epilogue e) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops po;
  if (e == Epilogue::Gelu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  if (e == Epilogue::Accumulate) po.append_sum(1.0f);
  attr.set_post_ops(po);
  return attr;
}

bool is_reference_impl(const dnnl::matmul::primitive_desc& pd) {
  return std::string(pd.impl_info_str()).find("ref") != std::string::npos;
}

std::shared_ptr<const Primitive> primitive_for(const OnednnMatrix& w, const Slice& s, std::int64_t m, Epilogue e) {
  const auto key = std::make_pair(m, static_cast<int>(e));
  std::lock_guard lock(s.mutex);
  if (auto it = s.primitives.find(key); it != s.primitives.end()) return it->second;
  auto p = std::make_shared<Primitive>();
  if (e == Epilogue::Gelu && w.src_type == dt::bf16) {
    p->gelu_after = true;
    e = Epilogue::Store;
  }
  try {
    auto pd = matmul_pd(w, s, m, s.weights_md, make_attr(e));
    p->matmul = dnnl::matmul(pd);
    p->scratchpad_bytes = pd.scratchpad_desc().get_size();
  } catch (const dnnl::error&) {
    auto pd = matmul_pd(w, s, m, s.weights_md, make_attr(Epilogue::Store), /*strided_dst=*/false);
    p->matmul = dnnl::matmul(pd);
    p->scratchpad_bytes = pd.scratchpad_desc().get_size();
    p->fused = false;
  }
  s.primitives.emplace(key, p);
  return p;
}

std::string isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::sse41: return "sse41";
    default: return "isa " + std::to_string(static_cast<int>(isa));
  }
}

// Attention with at most this many queries (beams or candidates of one window in a decoder
// step) reads keys and values once for all of them, query by query in a fixed order.
constexpr std::int64_t kFewQueries = 16;

class OnednnBackend final : public Backend {
 public:
  explicit OnednnBackend(Precision p)
      : precision_(p), windows_in_int8_(p == Precision::Int8 && onednn_has_int8_dot()) {}

  // "onednn-bf16+amx" where the window work runs on our AMX tiles (cpu/amx_bf16.h)
  std::string name() const override {
    return "onednn-" + std::string(precision_name(precision_)) + (uses_tiles() ? "+amx" : "");
  }
  Precision precision() const override { return precision_; }

  std::string kernels() const override {
    const char* window_arithmetic = precision_ == Precision::Int8 && !windows_in_int8_
                                        ? "fp32 (int8 needs VNNI)"
                                        : precision_name(precision_).data();
    const std::string windows = uses_tiles() ? "amx-bf16 tiles (ours)"
                                             : "onednn " + isa_name(dnnl::get_effective_cpu_isa()) + " " +
                                                   window_arithmetic;
    const bool int8 = precision_ == Precision::Int8;
    const auto lanes = int8 ? cpu::Int8PanelMatrix::widest_panel_width() : cpu::PanelMatrix::widest_panel_width();
    const char* isa = lanes == 16 ? (int8 ? "avx512_vnni" : "avx512") : cpu_features().avx2 ? "avx2" : "portable";
    return "windows: " + windows + "; steps: " + (int8 ? "int8 blocks, " : "stored-precision panels, ") +
           std::to_string(lanes) + " lanes (" + isa + ")";
  }

  std::unique_ptr<PackedMatrix> pack(const StoredMatrix& weights, std::vector<float> bias, RowsHint hint,
                                     WeightRole role) const override {
    check_pack_sizes(weights, bias);
    const auto [rows, cols] = weights.shape;
    auto w = std::make_unique<OnednnMatrix>(rows, cols);
    if (hint == RowsHint::Few) {
      // int8: q8_0's blocks (a q8_0 file's own codes), a quarter of the bytes of f32 and
      // half of f16 for each decoder step to read, multiplied as int8 (steps_in_int8 says
      // which). Bf16: the stored weights, more precise than bf16 products, and steps are
      // bound by reading them.
      if (precision_ == Precision::Int8 && steps_in_int8(weights, role))
        w->plain_int8.emplace(cpu::quantize_blocks_int8(weights));
      else
        w->plain.emplace(weights);
      w->bias = std::move(bias);
      return w;
    }
    const std::vector<float> values = cpu::to_floats(weights);
    if (windows_in_int8_ && role == WeightRole::Linear) {
      w->int8.emplace(values, weights.shape, std::move(bias));
      return w;
    }
    if (uses_tiles()) {
      w->tiles.emplace(values, rows, cols);
      w->bias = std::move(bias);
      return w;
    }
    single_threaded_onednn();
    w->src_type = precision_ == Precision::Bf16 ? dt::bf16 : dt::f32;
    w->has_bias = !bias.empty();
    // fp32: slices of ~256 output features, at most 16, multiples of 16 wide. bf16: one
    // slice (the engine's brgemm kernels block the whole matrix better themselves)
    const std::int64_t n_slices =
        precision_ == Precision::Bf16 ? 1 : std::clamp<std::int64_t>((rows + 255) / 256, 1, 16);
    const std::int64_t width = ((rows + n_slices - 1) / n_slices + 15) / 16 * 16;
    for (std::int64_t first = 0; first < rows; first += width) {
      auto s = std::make_unique<Slice>();
      s->first = first;
      s->rows = std::min(width, rows - first);
      // the layout the primitive picks for a large product; smaller m reuse it
      const dnnl::memory::desc any({cols, s->rows}, w->src_type, tag::any);
      s->weights_md = matmul_pd(*w, *s, 256, any, make_attr(Epilogue::Store)).weights_desc();
      s->weights = dnnl::memory(s->weights_md, cpu_engine());
      // PyTorch's rows x cols row-major weight is oneDNN's K x N matrix in "ba" order
      dnnl::memory plain({{cols, s->rows}, dt::f32, tag::ba}, cpu_engine(), const_cast<float*>(values.data()) + first * cols);
      dnnl::reorder(plain, s->weights).execute(thread_stream(), plain, s->weights);
      if (w->has_bias) {
        s->bias = dnnl::memory({{1, s->rows}, dt::f32, tag::ab}, cpu_engine());
        std::memcpy(s->bias.get_data_handle(), bias.data() + first, s->rows * sizeof(float));
      }
      w->slices.push_back(std::move(s));
    }
    thread_stream().wait();
    return w;
  }

  void matrix_row(const PackedMatrix& packed, std::int64_t row, std::span<float> out) const override {
    const auto& w = static_cast<const OnednnMatrix&>(packed);
    if (w.plain_int8) return w.plain_int8->row(row, out);
    if (!w.plain) throw InternalError("matrix_row needs a matrix packed with RowsHint::Few");
    w.plain->row(row, out);
  }

  void linear(std::span<const float> x, std::int64_t m, const PackedMatrix& packed, std::span<float> y,
              Epilogue epilogue) const override {
    const auto& w = static_cast<const OnednnMatrix&>(packed);
    if (static_cast<std::int64_t>(x.size()) < m * w.cols() || static_cast<std::int64_t>(y.size()) < m * w.rows())
      throw InternalError("linear called with mismatched sizes");
    if (m == 0) return;
    if (w.plain || w.plain_int8) {
      plain_linear(x, m, w, y, epilogue);
      return;
    }
    if (w.int8) {
      w.int8->linear(x.data(), m, y.data(), epilogue);
      return;
    }
    if (w.tiles) {
      tile_linear(x, m, w, y, epilogue);
      return;
    }
    const void* src = x.data();
    std::size_t src_row_bytes = w.cols() * sizeof(float);
    thread_local std::vector<std::uint16_t> x_bf16;
    if (w.src_type == dt::bf16) {
      x_bf16.resize(static_cast<std::size_t>(m * w.cols()));
      convert_to_bf16(x.data(), x_bf16.data(), m * w.cols());
      src = x_bf16.data();
      src_row_bytes = w.cols() * sizeof(std::uint16_t);
    }
    // items: row chunks (one per thread for long inputs) x slices
    const int threads = cpu::thread_count();
    const std::int64_t row_chunks = m >= 64 ? threads : 1;
    const auto n_slices = static_cast<std::int64_t>(w.slices.size());
    const double flops = 2.0 * m * w.rows() * w.cols();
    maybe_parallel(row_chunks * n_slices, flops, [&](std::int64_t begin, std::int64_t end) {
      single_threaded_onednn();
      for (std::int64_t item = begin; item < end; ++item) {
        const std::int64_t chunk = item / n_slices;
        const Slice& s = *w.slices[item % n_slices];
        const std::int64_t r0 = m * chunk / row_chunks, r1 = m * (chunk + 1) / row_chunks;
        if (r0 < r1) run(w, s, static_cast<const std::uint8_t*>(src) + r0 * src_row_bytes, r1 - r0,
                         y.data() + r0 * w.rows() + s.first, epilogue);
      }
    });
  }

  void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k, std::span<const float> v,
                 std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                 std::span<float> out) const override {
    const std::int64_t hd = d / n_head;
    if (n_q <= kFewQueries) {
      // decoder steps: one or a few queries, where a GEMM call costs more than it does and
      // its rounding could depend on how many queries were batched
      maybe_parallel(n_head, 4.0 * n_q * n_kv * d, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t h = begin; h < end; ++h)
          cpu::attention_head_few_queries(q.data() + h * hd, n_q, k.data() + h * hd, v.data() + h * hd, n_kv, d, hd,
                                          causal_offset, out.data() + h * hd);
      });
      return;
    }
    // attention over a fixed set of keys (encoder windows, the audio of cross-attention)
    // in tiles on oneDNN's matmul kernels, with keys and values reordered once per head:
    // one pair of primitives per key count; twice dnnl_sgemm's speed in float32, which
    // repacks the keys for every tile. Bf16 in bf16; int8 in float32 (u8 probabilities
    // and int8 keys doubled the logit error of int8 linear layers and flipped greedy
    // tokens of clear margin in the conformance suite). Causal prompt passes, whose key
    // count changes with every prompt, stay on sgemm.
    // On AMX, our tile kernels (oneDNN's ran at a third of the engine's rate here).
    if (causal_offset < 0 && hd == cpu::amx::kHeadSize && uses_tiles()) {
      tile_attention(q, n_q, k, v, n_kv, n_head, d, out);
      return;
    }
    if (causal_offset < 0) {
      const auto element = precision_ == Precision::Bf16 ? TileElement::Bf16 : TileElement::F32;
      attention_in_tiles(element, q.data(), n_q, k.data(), v.data(), n_kv, n_head, d, causal_offset, out.data());
      return;
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // a tile of queries of one head against all its keys: at most kTile x n_kv scores
    constexpr std::int64_t kTile = 64;
    const std::int64_t tiles = (n_q + kTile - 1) / kTile;
    const double flops = 4.0 * n_q * n_kv * d;
    maybe_parallel(tiles * n_head, flops, [&](std::int64_t begin, std::int64_t end) {
      single_threaded_onednn();
      thread_local std::vector<float> scores;
      for (std::int64_t item = begin; item < end; ++item) {
        const std::int64_t h = item / tiles;
        const std::int64_t i0 = (item % tiles) * kTile;
        const std::int64_t rows = std::min(kTile, n_q - i0);
        // keys any query of the tile may see
        const std::int64_t n_vis = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + i0 + rows);
        scores.resize(static_cast<std::size_t>(rows * n_vis));
        dnnl_sgemm('N', 'T', rows, n_vis, hd, scale, q.data() + i0 * d + h * hd, d, k.data() + h * hd, d, 0.0f,
                   scores.data(), n_vis);
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t visible = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + i0 + r + 1);
          cpu::softmax_fast(scores.data() + r * n_vis, visible, n_vis);
        }
        dnnl_sgemm('N', 'N', rows, hd, n_vis, 1.0f, scores.data(), n_vis, v.data() + h * hd, d, 0.0f,
                   out.data() + i0 * d + h * hd, d);
      }
    });
  }

  // Decoder steps read a sequence's blocks in place, with the arithmetic of attention()'s
  // few-query path; more queries (prompt passes) gather them and take attention().
  void attention_paged(std::span<const float> q, std::int64_t n_q, std::span<const KvBlockView> blocks,
                       std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                       std::span<float> out) const override {
    if (n_q > kFewQueries) return Backend::attention_paged(q, n_q, blocks, n_kv, n_head, d, causal_offset, out);
    thread_local std::vector<cpu::KvRows> storage;
    cpu::kv_rows(blocks, n_kv, d, storage);
    // a span, not the thread_local itself: the pool's threads must read this thread's rows
    const std::span<const cpu::KvRows> rows = storage;
    const std::int64_t hd = d / n_head;
    maybe_parallel(n_head, 4.0 * n_q * n_kv * d, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t h = begin; h < end; ++h)
        cpu::attention_head_few_queries_paged(q.data() + h * hd, n_q, rows, h * hd, d, hd, causal_offset,
                                              out.data() + h * hd);
    });
  }

  void attention_f16kv(std::span<const float> q, std::int64_t n_q, std::span<const std::uint16_t> k,
                       std::span<const std::uint16_t> v, std::int64_t n_kv, int n_head, std::int64_t d,
                       std::int64_t causal_offset, std::span<float> out) const override {
    if (n_q > kFewQueries) return Backend::attention_f16kv(q, n_q, k, v, n_kv, n_head, d, causal_offset, out);
    const std::int64_t hd = d / n_head;
    maybe_parallel(n_head, 4.0 * n_q * n_kv * d, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t h = begin; h < end; ++h)
        cpu::attention_head_few_queries_f16(q.data() + h * hd, n_q, d, k.data() + h * n_kv * hd, v.data() + h * n_kv * hd,
                                            n_kv, hd, hd, causal_offset, out.data() + h * hd);
    });
  }

  void norm_linear(std::span<const float> x, std::int64_t rows, const NormParams& ln,
                   std::span<const PackedMatrix* const> weights, std::span<const std::span<float>> outs) const override {
    const bool blocked = std::all_of(weights.begin(), weights.end(), [](const PackedMatrix* w) {
      return runs_in_bf16_blocks(static_cast<const OnednnMatrix&>(*w));
    });
    if (!blocked || weights.size() != outs.size()) return Backend::norm_linear(x, rows, ln, weights, outs);
    double flops = 0;
    for (const auto* w : weights) flops += 2.0 * rows * w->rows() * w->cols();
    in_row_blocks(rows, flops, [&](std::int64_t r0, std::int64_t n) {
      const std::uint16_t* normed = normalised_bf16(x.data() + r0 * ln.gamma.size(), n, ln);
      for (std::size_t i = 0; i < weights.size(); ++i) {
        const auto& w = static_cast<const OnednnMatrix&>(*weights[i]);
        run_bf16_rows(w, normed, n, outs[i].data() + r0 * w.rows(), Epilogue::Store);
      }
    });
  }

  void feed_forward(std::span<float> x, std::int64_t rows, const NormParams& ln, const PackedMatrix& up_matrix,
                    const PackedMatrix& down_matrix) const override {
    const auto& up = static_cast<const OnednnMatrix&>(up_matrix);
    const auto& down = static_cast<const OnednnMatrix&>(down_matrix);
    if (!runs_in_bf16_blocks(up) || !runs_in_bf16_blocks(down)) return Backend::feed_forward(x, rows, ln, up, down);
    const std::int64_t d = down.rows(), width = up.rows();
    in_row_blocks(rows, 4.0 * rows * d * width, [&](std::int64_t r0, std::int64_t n) {
      thread_local std::vector<float> hidden;
      thread_local std::vector<std::uint16_t> hidden_bf16;
      hidden_bf16.resize(static_cast<std::size_t>(n * width));
      const std::uint16_t* normed = normalised_bf16(x.data() + r0 * d, n, ln);
      if (up.tiles) {  // GELU and the rounding to bf16 as the tiles' results are written
        cpu::amx::product(normed, n, d, *up.tiles, up.bias, cpu::amx::Finish::Gelu,
                          {.bf16 = hidden_bf16.data(), .ld = width});
      } else {
        hidden.resize(hidden_bf16.size());
        run(up, *up.slices.front(), normed, n, hidden.data(), Epilogue::Gelu);
        convert_to_bf16(hidden.data(), hidden_bf16.data(), n * width);
      }
      run_bf16_rows(down, hidden_bf16.data(), n, x.data() + r0 * d, Epilogue::Accumulate);
    });
  }

  void layer_norm(std::span<float> x, std::int64_t rows, std::span<const float> gamma,
                  std::span<const float> beta) const override {
    const auto d = static_cast<std::int64_t>(gamma.size());
    maybe_parallel(rows, 10.0 * rows * d, [&](std::int64_t begin, std::int64_t end) {
      cpu::layer_norm_fast(x.data() + begin * d, end - begin, d, gamma.data(), beta.data());
    });
  }

 private:
  // Work items: output features (whole panels at every panel width), taken by whichever
  // thread is free (an element's chain of products is the same on any thread and in any
  // item width). One row: eight panels, so that each input's weights feed eight chains
  // of fused multiply-adds at once; more rows hold more accumulators per panel, four.
  // Rows go through in chunks whose products fit a small buffer; an item's weights stay
  // in cache for all the chunks.
  static constexpr std::int64_t kItemFeatures = 8 * cpu::PanelMatrix::kMaxPanelWidth;
  static constexpr std::int64_t kChunkRows = 64;
  static std::int64_t item_features(std::int64_t m) { return m == 1 ? kItemFeatures : kItemFeatures / 2; }

  // Rows per block of norm_linear() and feed_forward(): a block's normalised input, its
  // products and the hidden activations (128 x 1536 floats for tiny) stay in a core's L2
  // between the steps instead of streaming whole windows through memory at each.
  static constexpr std::int64_t kBlockRows = 128;

  // Whether bf16 window work runs on our AMX kernels (cpu/amx_bf16.h) rather than oneDNN's.
  bool uses_tiles() const { return precision_ == Precision::Bf16 && cpu::amx::available(); }

  // Window products in bf16 on AMX tiles or one oneDNN slice: what norm_linear() and
  // feed_forward() run block by block (other matrices take the default, op by op).
  static bool runs_in_bf16_blocks(const OnednnMatrix& w) {
    return w.tiles || (!w.plain && !w.int8 && w.src_type == dt::bf16 && w.slices.size() == 1);
  }

  static cpu::amx::Finish tile_finish(Epilogue e) {
    switch (e) {
      case Epilogue::Gelu: return cpu::amx::Finish::Gelu;
      case Epilogue::Accumulate: return cpu::amx::Finish::Accumulate;
      case Epilogue::Store: break;
    }
    return cpu::amx::Finish::Store;
  }

  // rows [0, n) of bf16 input (w.cols() each) against a matrix runs_in_bf16_blocks() takes.
  static void run_bf16_rows(const OnednnMatrix& w, const std::uint16_t* src, std::int64_t n, float* dst, Epilogue e) {
    if (w.tiles) {
      cpu::amx::product(src, n, w.cols(), *w.tiles, w.bias, tile_finish(e), {.f32 = dst, .ld = w.rows()});
      return;
    }
    run(w, *w.slices.front(), src, n, dst, e);
  }

  // Queries per work item of tile_attention(): a head's keys and values stay in L2 for
  // eight blocks of 32 queries.
  static constexpr std::int64_t kQueryGroup = 256;

  // Attention over a window on AMX tiles: every head's keys and values packed once, then
  // items of (head, group of queries) taken by whichever thread is free.
  static void tile_attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k,
                             std::span<const float> v, std::int64_t n_kv, int n_head, std::int64_t d,
                             std::span<float> out) {
    const std::int64_t hd = d / n_head, elements = cpu::amx::packed_head_elements(n_kv);
    thread_local std::vector<std::uint16_t> storage;
    storage.resize(static_cast<std::size_t>(2 * n_head * elements));
    std::uint16_t* packed = storage.data();  // the pool's threads use this thread's buffer
    maybe_parallel_each(n_head, 4.0 * n_kv * d, [&](std::int64_t h) {
      cpu::amx::pack_head(k.data() + h * hd, v.data() + h * hd, n_kv, d, packed + 2 * h * elements,
                          packed + (2 * h + 1) * elements);
    });
    const std::int64_t groups = (n_q + kQueryGroup - 1) / kQueryGroup;
    maybe_parallel_each(n_head * groups, 4.0 * n_q * n_kv * d, [&](std::int64_t item) {
      const std::int64_t h = item / groups, q0 = (item % groups) * kQueryGroup;
      cpu::amx::attend(q.data() + q0 * d + h * hd, std::min(kQueryGroup, n_q - q0), d, packed + 2 * h * elements,
                       packed + (2 * h + 1) * elements, n_kv, out.data() + q0 * d + h * hd);
    });
  }

  // Rows per work item of tile_linear(): two blocks of the tiles.
  static constexpr std::int64_t kTileItemRows = 2 * cpu::amx::kBlock;

  // A window product on AMX tiles: items of rows taken by whichever thread is free, each
  // rounding its own rows of the input to bf16 first.
  static void tile_linear(std::span<const float> x, std::int64_t m, const OnednnMatrix& w, std::span<float> y,
                          Epilogue epilogue) {
    const std::int64_t k = w.cols(), n = w.rows();
    const std::int64_t items = (m + kTileItemRows - 1) / kTileItemRows;
    const auto item = [&](std::int64_t i) {
      const std::int64_t r0 = i * kTileItemRows, r1 = std::min(m, r0 + kTileItemRows);
      thread_local std::vector<std::uint16_t> x_bf16;
      x_bf16.resize(static_cast<std::size_t>((r1 - r0) * k));
      convert_to_bf16(x.data() + r0 * k, x_bf16.data(), (r1 - r0) * k);
      cpu::amx::product(x_bf16.data(), r1 - r0, k, *w.tiles, w.bias, tile_finish(epilogue),
                        {.f32 = y.data() + r0 * n, .ld = n});
    };
    maybe_parallel_each(items, 2.0 * m * n * k, item);
  }

  // fn(first row, rows) for blocks of kBlockRows, shared out over the pool's threads.
  static void in_row_blocks(std::int64_t rows, double flops, const std::function<void(std::int64_t, std::int64_t)>& fn) {
    const std::int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
    const auto block = [&](std::int64_t b) {
      single_threaded_onednn();
      fn(b * kBlockRows, std::min(kBlockRows, rows - b * kBlockRows));
    };
    maybe_parallel_each(blocks, flops, block);  // a block's result is the same on any thread
  }

  // Rows [0, n) of x layer-normalised and rounded to bf16, in a buffer of this thread.
  static const std::uint16_t* normalised_bf16(const float* x, std::int64_t n, const NormParams& ln) {
    const auto d = static_cast<std::int64_t>(ln.gamma.size());
    thread_local std::vector<float> normed;
    thread_local std::vector<std::uint16_t> normed_bf16;
    normed.assign(x, x + n * d);
    normed_bf16.resize(normed.size());
    cpu::layer_norm_fast(normed.data(), n, d, ln.gamma.data(), ln.beta.data());
    convert_to_bf16(normed.data(), normed_bf16.data(), n * d);
    return normed_bf16.data();
  }

  static void plain_linear(std::span<const float> x, std::int64_t m, const OnednnMatrix& w, std::span<float> y,
                           Epilogue epilogue) {
    const std::int64_t width = item_features(m), items = (w.rows() + width - 1) / width;
    // int8: the rows quantized once, here, for every item (the pool's threads read them)
    thread_local cpu::QuantizedRows quantized;
    if (w.plain_int8) quantized.assign(x.data(), m, w.cols());
    const cpu::QuantizedRows& rows = quantized;
    const auto item = [&](std::int64_t i) {
      if (w.plain_int8)
        int8_item(rows, w, y, epilogue, i * width, width);
      else
        plain_item(x, m, w, y, epilogue, i * width, width);
    };
    maybe_parallel_each(items, plain_work(m, w), item);
  }

  // The work of a plain product in flops, for whether to wake the pool: a step of a few
  // rows is bound by the weight bytes it streams, not by its multiplies, so a byte counts
  // as twenty flops. Then a tiny decoder's 384 x 384 products (147 KB in int8 blocks, 295 KB
  // in halves) run on every thread: on one thread they were read at about half the memory
  // bandwidth (measured on Zen 4, 2 threads: 2.5-2.9 ms a token in fp32 before, 2.0-2.2 after).
  static double plain_work(std::int64_t m, const OnednnMatrix& w) {
    constexpr double kFlopsPerWeightByte = 20.0;
    const std::size_t bytes = w.plain_int8 ? w.plain_int8->bytes() : w.plain->bytes();
    return std::max(2.0 * m * w.rows() * w.cols(), kFlopsPerWeightByte * static_cast<double>(bytes));
  }

  // Output features [c0, c0 + width) of every row.
  static void plain_item(std::span<const float> x, std::int64_t m, const OnednnMatrix& w, std::span<float> y,
                         Epilogue epilogue, std::int64_t c0, std::int64_t width) {
    const std::int64_t n = w.rows(), k = w.cols(), c1 = std::min(n, c0 + width);
    thread_local std::vector<float> acc;
    acc.resize(static_cast<std::size_t>(kChunkRows * width));
    for (std::int64_t r0 = 0; r0 < m; r0 += kChunkRows) {
      const std::int64_t rows = std::min(kChunkRows, m - r0);
      w.plain->product(x.data() + r0 * k, rows, c0, c1, acc.data(), width);
      finish_rows(acc.data(), width, rows, w, c0, c1, y.data() + r0 * n, epilogue);
    }
  }

  // plain_item for int8 blocks; the products of all rows at once (x.m x width floats).
  static void int8_item(const cpu::QuantizedRows& x, const OnednnMatrix& w, std::span<float> y, Epilogue epilogue,
                        std::int64_t c0, std::int64_t width) {
    const std::int64_t n = w.rows(), c1 = std::min(n, c0 + width);
    thread_local std::vector<float> acc;
    acc.resize(static_cast<std::size_t>(x.m * width));
    w.plain_int8->product(x, c0, c1, acc.data(), width);
    finish_rows(acc.data(), width, x.m, w, c0, c1, y.data(), epilogue);
  }

  // Bias, then the epilogue, on the raw products of a chunk of rows: elementwise steps,
  // the same for every row.
  static void finish_rows(const float* acc, std::int64_t lda, std::int64_t rows, const OnednnMatrix& w,
                          std::int64_t c0, std::int64_t c1, float* y, Epilogue epilogue) {
    const std::int64_t n = w.rows(), width = c1 - c0;
    const float* b = w.bias.empty() ? nullptr : w.bias.data() + c0;
    for (std::int64_t r = 0; r < rows; ++r) {
      float* yr = y + r * n + c0;
      const float* ar = acc + r * lda;
      for (std::int64_t c = 0; c < width; ++c) {
        const float v = ar[c] + (b ? b[c] : 0.0f);
        yr[c] = epilogue == Epilogue::Accumulate ? yr[c] + v : v;
      }
      if (epilogue == Epilogue::Gelu) cpu::gelu({yr, static_cast<std::size_t>(width)});
    }
  }

  // rows [.., +m) of the input against one slice; dst points at the slice's first column.
  static void run(const OnednnMatrix& w, const Slice& s, const void* src_ptr, std::int64_t m, float* dst_ptr,
                  Epilogue epilogue) {
    const auto prim = primitive_for(w, s, m, epilogue);
    thread_local std::vector<std::uint8_t> scratchpad;
    thread_local std::vector<float> unfused;
    if (scratchpad.size() < prim->scratchpad_bytes) scratchpad.resize(prim->scratchpad_bytes);
    auto& eng = cpu_engine();
    float* out = dst_ptr;
    dnnl::memory::desc dst_md({m, s.rows}, dt::f32, {w.rows(), 1});
    if (!prim->fused) {
      unfused.resize(static_cast<std::size_t>(m * s.rows));
      out = unfused.data();
      dst_md = dnnl::memory::desc({m, s.rows}, dt::f32, tag::ab);
    }
    dnnl::memory src({{m, w.cols()}, w.src_type, tag::ab}, eng, const_cast<void*>(src_ptr));
    dnnl::memory dst(dst_md, eng, out);
    dnnl::memory scratch({{static_cast<std::int64_t>(prim->scratchpad_bytes)}, dt::u8, tag::a}, eng, scratchpad.data());
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src},
                                               {DNNL_ARG_WEIGHTS, s.weights},
                                               {DNNL_ARG_DST, dst},
                                               {DNNL_ARG_SCRATCHPAD, scratch}};
    if (w.has_bias) args.emplace(DNNL_ARG_BIAS, s.bias);
    prim->matmul.execute(thread_stream(), args);
    thread_stream().wait();
    if (prim->gelu_after)
      for (std::int64_t r = 0; r < m; ++r) cpu::gelu_fast(dst_ptr + r * w.rows(), s.rows);
    if (!prim->fused) {
      for (std::int64_t r = 0; r < m; ++r) {
        float* y = dst_ptr + r * w.rows();
        const float* t = unfused.data() + r * s.rows;
        if (epilogue == Epilogue::Accumulate) {
          for (std::int64_t c = 0; c < s.rows; ++c) y[c] += t[c];
        } else {
          std::copy(t, t + s.rows, y);
          if (epilogue == Epilogue::Gelu) cpu::gelu({y, static_cast<std::size_t>(s.rows)});
        }
      }
    }
  }

  Precision precision_;
  // Int8 window products run on oneDNN's int8 matmul only with dot-product instructions:
  // its AVX2 kernels add pairs of u8 x s8 products into saturating int16 (vpmaddubsw), and
  // with 8-bit weights they saturated (0.78 off where 0.2 is allowed in the unit tests,
  // dozens of conformance cases failed); 7-bit weights, as oneDNN's guide suggests, flipped
  // greedy tokens of reference margin 1.42 (the kit allows flips up to 1.0) and were only 5%
  // faster than fp32 (tiny encoder 208-245 against 220-261 ms under --max-isa avx2). So
  // there the windows stay fp32; decoder steps still take int8 blocks (exact on AVX2).
  bool windows_in_int8_;
};

// Packs a small matrix and compares a product with plain float arithmetic, so a CPU
// where oneDNN would take a broken or reference path for this precision is not used.
bool self_test(const OnednnBackend& backend) {
  constexpr std::int64_t m = 5, k = 48, n = 24;
  std::vector<float> w(n * k), b(n), x(m * k), y(m * n);
  for (std::int64_t i = 0; i < n * k; ++i) w[i] = static_cast<float>((i * 7 % 13) - 6) / 8.0f;
  for (std::int64_t i = 0; i < n; ++i) b[i] = static_cast<float>(i % 5) - 2.0f;
  for (std::int64_t i = 0; i < m * k; ++i) x[i] = static_cast<float>((i * 5 % 11) - 5) / 4.0f;
  const auto packed = backend.pack(stored_floats(w, {n, k}), b, RowsHint::Many, WeightRole::Linear);
  {
    const auto& w = static_cast<const OnednnMatrix&>(*packed);
    // AMX tiles: kernels of our own, checked by the product below
    if (!w.tiles && (w.int8 ? !w.int8->optimised()
                            : is_reference_impl(matmul_pd(w, *w.slices[0], 256, w.slices[0]->weights_md,
                                                          make_attr(Epilogue::Store)))))
      return false;
  }
  backend.linear(x, m, *packed, y, Epilogue::Store);
  // these values are exact in bf16, so fp32 and bf16 must agree closely; int8 codes are
  // within half a step of each value (1/254 of a row's largest)
  const double relative = backend.precision() == Precision::Int8 ? 2e-2 : 1e-3;
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t c = 0; c < n; ++c) {
      double expect = b[c], magnitude = 1.0;
      for (std::int64_t i = 0; i < k; ++i) {
        expect += static_cast<double>(x[r * k + i]) * w[c * k + i];
        magnitude += std::abs(static_cast<double>(x[r * k + i]) * w[c * k + i]);
      }
      if (std::abs(expect - y[r * n + c]) > relative * magnitude) return false;
    }
  return true;
}

}  // namespace

std::shared_ptr<const Backend> make_backend(Precision p) {
  p = resolve(p);
  try {
    auto backend = std::make_shared<OnednnBackend>(p);
    if (!self_test(*backend)) return nullptr;
    return backend;
  } catch (const dnnl::error&) {
    return nullptr;
  }
}

}  // namespace amanuensis::kernels::onednn
