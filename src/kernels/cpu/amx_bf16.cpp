#include "kernels/cpu/amx_bf16.h"

#if defined(__x86_64__) && defined(__linux__)
#define AMANUENSIS_AMX 1
#include "kernels/cpu/intrinsics.h"
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "common/cpu_features.h"
#include "common/error.h"
#include "common/fp16.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/vector_math.h"

namespace amanuensis::kernels::cpu::amx {
namespace {

std::int64_t round_up(std::int64_t n, std::int64_t to) { return (n + to - 1) / to * to; }

#if AMANUENSIS_AMX
// The lanes of a 16-float vector that hold the first n of the values left (all for n >= 16).
__mmask16 first_lanes(std::int64_t n) {
  return n >= 16 ? __mmask16{0xffff} : n <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << n) - 1);
}
#endif

// Tile elements: 16 rows of 32 bf16 (64 bytes).
constexpr std::int64_t kTileRows = 16;
constexpr std::int64_t kTileElements = kTileRows * 32;

// Keys per step of the attention's online softmax: eight tiles of keys, four steps of the values.
constexpr std::int64_t kChunk = 128;

#if AMANUENSIS_AMX
#define AMANUENSIS_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

// The tile registers are an extended state Linux hands out on request only.
bool os_grants_tiles() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Palette 1 with all eight tiles 16 rows of 64 bytes: every kernel here uses that shape.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t bytes_per_row[16] = {};
  std::uint8_t rows[16] = {};
};

const TileConfig& tile_config() {
  static const TileConfig config = [] {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.bytes_per_row[t] = 64;
      c.rows[t] = kTileRows;
    }
    return c;
  }();
  return config;
}

// The tile shape, loaded on this thread for one kernel call: oneDNN's AMX kernels load
// their own shapes on the same threads, so none is assumed to survive between calls;
// released after, so a thread between calls carries no tile state through switches.
class TileScope {
 public:
  AMANUENSIS_AMX_TARGET TileScope() { _tile_loadconfig(&tile_config()); }
  AMANUENSIS_AMX_TARGET ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// y[i] = bf16(x[i] * scale), nearest even.
AMANUENSIS_AMX_TARGET void to_bf16_row(const float* x, std::uint16_t* y, std::int64_t n, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  for (std::int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = first_lanes(n - i);
    const __m512 values = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + i), s);
    _mm256_mask_storeu_epi16(y + i, lanes, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(values)));
  }
}

// Bias and finish on one panel's raw products (acc: `rows` rows of 32 floats) into the
// output's columns [col0, col0 + cols) (cols <= 32) of rows [row0, row0 + rows).
AMANUENSIS_AMX_TARGET void finish_panel(const float* acc, std::int64_t rows, std::int64_t row0, std::int64_t col0,
                                        std::int64_t cols, std::span<const float> bias, Finish finish,
                                        const ProductOut& out) {
  const __mmask16 low = first_lanes(cols), high = first_lanes(cols - 16);
  const __m512 bias_low = bias.empty() ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(low, bias.data() + col0);
  const __m512 bias_high = bias.empty() ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(high, bias.data() + col0 + 16);
  for (std::int64_t r = 0; r < rows; ++r) {
    __m512 v0 = _mm512_add_ps(_mm512_load_ps(acc + r * kBlock), bias_low);
    __m512 v1 = _mm512_add_ps(_mm512_load_ps(acc + r * kBlock + 16), bias_high);
    if (finish == Finish::Gelu) {
      v0 = gelu16(v0);
      v1 = gelu16(v1);
    }
    const std::int64_t at = (row0 + r) * out.ld + col0;
    if (out.bf16 != nullptr) {
      const __mmask32 both = static_cast<__mmask32>(low) | (static_cast<__mmask32>(high) << 16);
      _mm512_mask_storeu_epi16(out.bf16 + at, both, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v1, v0)));
      continue;
    }
    float* y = out.f32 + at;
    if (finish == Finish::Accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(low, y));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(high, y + 16));
    }
    _mm512_mask_storeu_ps(y, low, v0);
    _mm512_mask_storeu_ps(y + 16, high, v1);
  }
}

// A panel's raw products waiting for their finish, which is done a few rows at a time
// between the next panel's tile products: the vector units work (GELU costs about as
// much as the products) while the tiles do.
struct PendingFinish {
  const float* acc = nullptr;  // null: none pending
  std::int64_t rows = 0, row0 = 0, col0 = 0, cols = 0, done = 0;

  AMANUENSIS_AMX_TARGET void advance(std::int64_t upto, std::span<const float> bias, Finish finish,
                                     const ProductOut& out) {
    if (acc == nullptr || upto <= done) return;
    upto = std::min(upto, rows);
    finish_panel(acc + done * kBlock, upto - done, row0 + done, col0, cols, bias, finish, out);
    done = upto;
  }
};

// Raw products of one block of 32 input rows (`block`, rows ld elements apart, whole
// steps of inputs) against one panel into acc (32 rows of 32 floats), finishing the
// pending panel's rows along the way.
AMANUENSIS_AMX_TARGET void block_panel_products(const std::uint16_t* block, std::int64_t ld, const std::uint16_t* panel,
                                                std::int64_t steps, float* acc, PendingFinish& pending,
                                                std::span<const float> bias, Finish finish, const ProductOut& out) {
  const std::int64_t row_bytes = ld * 2;
  constexpr std::int64_t acc_bytes = kBlock * sizeof(float);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (std::int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, block + s * kBlock, row_bytes);
    _tile_loadd(5, block + kTileRows * ld + s * kBlock, row_bytes);
    _tile_loadd(6, panel + s * kPanelStep, 64);
    _tile_loadd(7, panel + s * kPanelStep + kTileElements, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    pending.advance((s + 1) * pending.rows / steps, bias, finish, out);
  }
  pending.advance(pending.rows, bias, finish, out);
  asm volatile("" ::: "memory");  // the tile stores below must not pass the finish's reads
  _tile_stored(0, acc, acc_bytes);
  _tile_stored(1, acc + 16, acc_bytes);
  _tile_stored(2, acc + kTileRows * kBlock, acc_bytes);
  _tile_stored(3, acc + kTileRows * kBlock + 16, acc_bytes);
}

// Block by block of 32 input rows, each block (in L1) against every panel of weights in
// turn (streamed from L2 in whole kilobytes), each panel's results finished during the
// next panel's products.
AMANUENSIS_AMX_TARGET void product_tiles(const std::uint16_t* a, std::int64_t m, std::int64_t lda,
                                         const Bf16Panels& w, std::span<const float> bias, Finish finish,
                                         const ProductOut& out) {
  const TileScope tiles;
  const std::int64_t k = w.cols(), padded_k = w.steps() * kBlock;
  alignas(64) float acc[2][kBlock * kBlock];  // the panel being multiplied, the one being finished
  thread_local std::vector<std::uint16_t> padded;
  PendingFinish pending;
  for (std::int64_t m0 = 0; m0 < m; m0 += kBlock) {
    const std::int64_t rows = std::min(kBlock, m - m0);
    const std::uint16_t* block = a + m0 * lda;
    std::int64_t ld = lda;
    if (rows < kBlock || k != padded_k) {
      // a last block of fewer rows, or inputs short of a whole step: a zero-padded copy,
      // so that no tile reads past the caller's rows
      padded.assign(static_cast<std::size_t>(kBlock * padded_k), 0);
      for (std::int64_t r = 0; r < rows; ++r)
        std::memcpy(padded.data() + r * padded_k, block + r * lda, static_cast<std::size_t>(k) * 2);
      block = padded.data();
      ld = padded_k;
    }
    for (std::int64_t p = 0; p < w.panels(); ++p) {
      asm volatile("" ::: "memory");  // the tile loads are asm the compiler cannot see read
      float* results = acc[p % 2];
      block_panel_products(block, ld, w.panel(p), w.steps(), results, pending, bias, finish, out);
      asm volatile("" ::: "memory");
      pending = {results, rows, m0, p * kBlock, std::min(kBlock, w.rows() - p * kBlock), 0};
    }
  }
  pending.advance(pending.rows, bias, finish, out);
}

// One head's keys in the scores' second-operand layout: per 16 keys, the two steps of 32
// features (16 x 32 elements each); and values in the second product's: per step of 32
// keys, four tiles of 16 features. Zero from n_kv to n_pad.
AMANUENSIS_AMX_TARGET void pack_head_tiles(const float* k, const float* v, std::int64_t n_kv, std::int64_t n_pad,
                                     std::int64_t stride, std::uint16_t* keys, std::uint16_t* values) {
  std::memset(keys, 0, static_cast<std::size_t>(n_pad * kHeadSize) * 2);
  std::memset(values, 0, static_cast<std::size_t>(n_pad * kHeadSize) * 2);
  alignas(64) std::uint16_t row[kHeadSize];
  for (std::int64_t j = 0; j < n_kv; ++j) {
    to_bf16_row(k + j * stride, row, kHeadSize, 1.0f);
    // feature pair f of key j: tile (j / 16, f / 16), row f % 16, column j % 16
    std::uint16_t* key_tiles = keys + (j / 16) * 2 * kTileElements + (j % 16) * 2;
    for (std::int64_t f = 0; f < kHeadSize / 2; ++f)
      std::memcpy(key_tiles + (f / 16) * kTileElements + (f % 16) * 32, row + 2 * f, 2 * sizeof(std::uint16_t));
    to_bf16_row(v + j * stride, row, kHeadSize, 1.0f);
    // key j of its step's pair (j % 32) / 2, half j % 2, for each feature's column
    std::uint16_t* value_tiles = values + (j / 32) * 4 * kTileElements + ((j % 32) / 2) * 32 + j % 2;
    for (std::int64_t f = 0; f < kHeadSize; ++f) value_tiles[(f / 16) * kTileElements + (f % 16) * 2] = row[f];
  }
}

// Scores of 32 queries (q: 32 rows of kHeadSize bf16) against one chunk of keys (its
// key tiles): 32 x kChunk floats. Sixteen queries at a time against four key tiles: four
// sums in flight hide the tile products' latency.
AMANUENSIS_AMX_TARGET void chunk_scores(const std::uint16_t* q, const std::uint16_t* keys, float* scores) {
  constexpr std::int64_t row_bytes = kHeadSize * 2, score_bytes = kChunk * sizeof(float);
  for (std::int64_t half = 0; half < 2; ++half) {
    const std::uint16_t* queries = q + half * kTileRows * kHeadSize;
    _tile_loadd(6, queries, row_bytes);
    _tile_loadd(7, queries + kBlock, row_bytes);
    for (std::int64_t t = 0; t < kChunk / 16; t += 4) {
      const std::uint16_t* b = keys + t * 2 * kTileElements;
      float* rows = scores + half * kTileRows * kChunk + t * 16;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      // key tile j's two steps of features into tiles 4 and 5, its scores into tile `sum`
      // (tile numbers are immediates of the instructions: no loop variable can name one)
#define AMANUENSIS_KEY_TILE_SCORES(sum, j)                    \
  _tile_loadd(4, b + 2 * (j) * kTileElements, 64);            \
  _tile_loadd(5, b + (2 * (j) + 1) * kTileElements, 64);      \
  _tile_dpbf16ps(sum, 6, 4);                                  \
  _tile_dpbf16ps(sum, 7, 5)
      AMANUENSIS_KEY_TILE_SCORES(0, 0);
      AMANUENSIS_KEY_TILE_SCORES(1, 1);
      AMANUENSIS_KEY_TILE_SCORES(2, 2);
      AMANUENSIS_KEY_TILE_SCORES(3, 3);
#undef AMANUENSIS_KEY_TILE_SCORES
      _tile_stored(0, rows, score_bytes);
      _tile_stored(1, rows + 16, score_bytes);
      _tile_stored(2, rows + 32, score_bytes);
      _tile_stored(3, rows + 48, score_bytes);
    }
  }
}

// The weighted values of one chunk: 32 rows of kChunk bf16 probabilities against the
// chunk's values (two steps of 32 keys), 32 x kHeadSize floats.
AMANUENSIS_AMX_TARGET void chunk_values(const std::uint16_t* probs, const std::uint16_t* values, float* out) {
  constexpr std::int64_t prob_bytes = kChunk * 2, out_bytes = kHeadSize * sizeof(float);
  for (std::int64_t half = 0; half < 2; ++half) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (std::int64_t s = 0; s < kChunk / kBlock; ++s) {
      const std::uint16_t* b = values + (s * 4 + 2 * half) * kTileElements;
      _tile_loadd(4, probs + s * kBlock, prob_bytes);
      _tile_loadd(5, probs + kTileRows * kChunk + s * kBlock, prob_bytes);
      _tile_loadd(6, b, 64);
      _tile_loadd(7, b + kTileElements, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    float* o = out + half * kBlock;
    _tile_stored(0, o, out_bytes);
    _tile_stored(1, o + 16, out_bytes);
    _tile_stored(2, o + kTileRows * kHeadSize, out_bytes);
    _tile_stored(3, o + kTileRows * kHeadSize + 16, out_bytes);
  }
}

// A block of 32 queries' running softmax: each row's largest score so far, the float
// sum of its numerators, and its weighted values (relative to that largest score).
struct RunningSoftmax {
  float max[kBlock];
  float sum[kBlock];
  alignas(64) float weighted[kBlock * kHeadSize];

  void reset() {
    std::fill_n(max, kBlock, -INFINITY);
    std::fill_n(sum, kBlock, 0.0f);
    std::fill_n(weighted, kBlock * kHeadSize, 0.0f);
  }
};

// Rows [0, rows) of a chunk's scores (`valid` real keys) into bf16 numerators relative to
// each row's new largest score; returns through `rescale` what the row's earlier sums
// must be multiplied by (1 when the largest did not change).
AMANUENSIS_AMX_TARGET void chunk_softmax(const float* scores, std::int64_t rows, std::int64_t valid,
                                         RunningSoftmax& running, std::uint16_t* probs, float* rescale) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = scores + r * kChunk;
    __mmask16 lanes[kChunk / 16];
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (std::int64_t t = 0; t < kChunk / 16; ++t) {
      lanes[t] = first_lanes(valid - t * 16);
      m = _mm512_mask_max_ps(m, lanes[t], m, _mm512_loadu_ps(row + t * 16));
    }
    const float largest = std::max(running.max[r], _mm512_reduce_max_ps(m));
    rescale[r] = largest == running.max[r] ? 1.0f : std::exp(running.max[r] - largest);
    running.max[r] = largest;
    const __m512 shift = _mm512_set1_ps(largest);
    __m512 sum = _mm512_setzero_ps();
    for (std::int64_t t = 0; t < kChunk / 16; ++t) {
      const __m512 e = _mm512_maskz_mov_ps(lanes[t], exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(row + t * 16), shift)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(probs + r * kChunk + t * 16), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(e)));
      sum = _mm512_add_ps(sum, e);
    }
    running.sum[r] = running.sum[r] * rescale[r] + _mm512_reduce_add_ps(sum);
  }
}

// weighted = weighted * rescale + chunk, row by row.
AMANUENSIS_AMX_TARGET void accumulate_chunk(RunningSoftmax& running, const float* chunk, const float* rescale,
                                            std::int64_t rows) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const __m512 factor = _mm512_set1_ps(rescale[r]);
    float* w = running.weighted + r * kHeadSize;
    for (std::int64_t f = 0; f < kHeadSize; f += 16)
      _mm512_storeu_ps(w + f, _mm512_fmadd_ps(_mm512_loadu_ps(w + f), factor, _mm512_loadu_ps(chunk + r * kHeadSize + f)));
  }
}

// Queries [q0, q0 + rows) of one head (rows <= 32) over the packed keys and values, chunk
// by chunk with a running softmax: a chunk's scores, numerators and weighted values stay
// in L1, and the keys and values are read once per block. The tiles and the vector units
// work on neighbouring chunks at once: the next chunk's scores are issued before this
// chunk's softmax, and the last chunk's weighted values are added while this one's are
// multiplied (double buffers for both).
AMANUENSIS_AMX_TARGET void attend_block(const float* q, std::int64_t rows, std::int64_t stride,
                                        const std::uint16_t* keys, const std::uint16_t* values, std::int64_t n_kv,
                                        float* out) {
  alignas(64) std::uint16_t queries[kBlock * kHeadSize] = {};
  alignas(64) float scores[2][kBlock * kChunk];
  alignas(64) std::uint16_t probs[kBlock * kChunk] = {};  // rows past `rows` stay zero
  alignas(64) float weighted[2][kBlock * kHeadSize];
  float rescale[2][kBlock];
  RunningSoftmax running;
  running.reset();
  for (std::int64_t r = 0; r < rows; ++r)
    to_bf16_row(q + r * stride, queries + r * kHeadSize, kHeadSize, 0.125f);  // 1/sqrt(64), exact
  asm volatile("" ::: "memory");  // the tile loads are asm the compiler cannot see read
  chunk_scores(queries, keys, scores[0]);
  const std::int64_t chunks = (n_kv + kChunk - 1) / kChunk;
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t c0 = c * kChunk;
    if (c + 1 < chunks) chunk_scores(queries, keys + (c0 + kChunk) * kHeadSize, scores[(c + 1) % 2]);
    chunk_softmax(scores[c % 2], rows, std::min(kChunk, n_kv - c0), running, probs, rescale[c % 2]);
    asm volatile("" ::: "memory");
    chunk_values(probs, values + c0 * kHeadSize, weighted[c % 2]);
    if (c > 0) accumulate_chunk(running, weighted[(c - 1) % 2], rescale[(c - 1) % 2], rows);
  }
  accumulate_chunk(running, weighted[(chunks - 1) % 2], rescale[(chunks - 1) % 2], rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float factor = 1.0f / running.sum[r];
    for (std::int64_t f = 0; f < kHeadSize; ++f) out[r * stride + f] = running.weighted[r * kHeadSize + f] * factor;
  }
}

AMANUENSIS_AMX_TARGET void attend_tiles(const float* q, std::int64_t n_q, std::int64_t stride,
                                        const std::uint16_t* keys, const std::uint16_t* values, std::int64_t n_kv,
                                        float* out) {
  const TileScope tiles;
  for (std::int64_t q0 = 0; q0 < n_q; q0 += kBlock)
    attend_block(q + q0 * stride, std::min(kBlock, n_q - q0), stride, keys, values, n_kv, out + q0 * stride);
}
#endif

void require_tiles() {
  if (!available()) throw InternalError("AMX-BF16 kernel called on a CPU or system without AMX-BF16 tiles");
}

}  // namespace

bool available() {
#if AMANUENSIS_AMX
  const CpuFeatures& f = cpu_features();
  if (!(f.amx_bf16 && f.amx_tile && f.avx512bf16 && f.avx512_core())) return false;
  static const bool granted = os_grants_tiles();  // asks the kernel once
  return granted;
#else
  return false;
#endif
}

void Bf16Panels::Free::operator()(std::uint16_t* p) const { std::free(p); }

Bf16Panels::Bf16Panels(std::span<const float> values, std::int64_t rows, std::int64_t cols)
    : rows_(rows), cols_(cols), steps_((cols + kBlock - 1) / kBlock), panels_((rows + kBlock - 1) / kBlock) {
  if (static_cast<std::int64_t>(values.size()) != rows * cols) throw InternalError("Bf16Panels: size mismatch");
  const auto elements = static_cast<std::size_t>(panels_ * steps_ * kPanelStep);
  data_.reset(static_cast<std::uint16_t*>(std::aligned_alloc(64, round_up(static_cast<std::int64_t>(elements) * 2, 64))));
  if (!data_) throw std::bad_alloc();
  std::memset(data_.get(), 0, elements * 2);
  for (std::int64_t f = 0; f < rows; ++f) {
    // feature f: panel f / 32, tile (f % 32) / 16, column f % 16 of each tile row
    std::uint16_t* to = data_.get() + (f / kBlock) * steps_ * kPanelStep + ((f % kBlock) / 16) * kTileElements + (f % 16) * 2;
    for (std::int64_t i = 0; i < cols; ++i)
      to[(i / kBlock) * kPanelStep + ((i % kBlock) / 2) * 32 + i % 2] = float_to_bf16_bits(values[f * cols + i]);
  }
}

void product(const std::uint16_t* a, std::int64_t m, std::int64_t lda, const Bf16Panels& w,
             std::span<const float> bias, Finish finish, const ProductOut& out) {
  require_tiles();
  if ((out.f32 == nullptr) == (out.bf16 == nullptr) || (out.bf16 != nullptr && finish == Finish::Accumulate) ||
      (!bias.empty() && static_cast<std::int64_t>(bias.size()) != w.rows()))
    throw InternalError("amx::product: bad output or bias");
#if AMANUENSIS_AMX
  if (m > 0) product_tiles(a, m, lda, w, bias, finish, out);
#endif
}

void round_to_bf16(const float* x, std::uint16_t* y, std::int64_t n, float scale) {
  require_tiles();
#if AMANUENSIS_AMX
  to_bf16_row(x, y, n, scale);
#endif
}

std::int64_t packed_head_elements(std::int64_t n_kv) { return round_up(n_kv, kChunk) * kHeadSize; }

void pack_head(const float* k, const float* v, std::int64_t n_kv, std::int64_t stride, std::uint16_t* keys,
               std::uint16_t* values) {
  require_tiles();
#if AMANUENSIS_AMX
  pack_head_tiles(k, v, n_kv, round_up(n_kv, kChunk), stride, keys, values);
#endif
}

void attend(const float* q, std::int64_t n_q, std::int64_t stride, const std::uint16_t* keys,
            const std::uint16_t* values, std::int64_t n_kv, float* out) {
  require_tiles();
#if AMANUENSIS_AMX
  if (n_q > 0 && n_kv > 0) attend_tiles(q, n_q, stride, keys, values, n_kv, out);
#endif
}

void attention_head(const float* q, std::int64_t n_q, const float* k, const float* v, std::int64_t n_kv,
                    std::int64_t stride, float* out) {
  thread_local std::vector<std::uint16_t> keys, values;
  keys.resize(static_cast<std::size_t>(packed_head_elements(n_kv)));
  values.resize(keys.size());
  pack_head(k, v, n_kv, stride, keys.data(), values.data());
  attend(q, n_q, stride, keys.data(), values.data(), n_kv, out);
}

}  // namespace amanuensis::kernels::cpu::amx
