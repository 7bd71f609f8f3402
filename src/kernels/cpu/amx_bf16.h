// kernels/cpu: window products and window attention on the AMX-BF16 tile engine (Intel
// Xeon since Sapphire Rapids), written with the tile instructions themselves: bf16
// operands, float32 sums. On this project's AMX Xeon (2 cores) oneDNN 2.6's AMX brgemm
// matmuls ran the encoder's shapes at 200-380 GFLOP/s a core, where tile loops over
// operands in cache run at 850-1100: the oneDNN backend's bf16 window work takes these
// where available(), and oneDNN everywhere else.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

namespace amanuensis::kernels::cpu::amx {

// Whether this CPU has AMX-BF16 (and AVX512_BF16 for the conversions) and the system
// lets this process use the tile registers (Linux asks for them once: arch_prctl
// ARCH_REQ_XCOMP_PERM). Nothing below may run where this is false.
bool available();

// y[i] = bf16(x[i] * scale), rounded to nearest even (x finite).
void round_to_bf16(const float* x, std::uint16_t* y, std::int64_t n, float scale = 1.0f);

// Elements of one step of a panel: two 16 x 32 tiles (16 features each, 32 inputs as
// 16 pairs), the tiles' second operand for 32 inputs of 32 features.
inline constexpr std::int64_t kPanelStep = 2 * 16 * 32;

// Rows (output features) and inputs are padded with zeros to this.
inline constexpr std::int64_t kBlock = 32;

// A weight matrix, `rows` output features of `cols` inputs (PyTorch layout), rounded to
// bf16 (nearest even) in the tiles' second-operand layout: panels of 32 features, each a
// run of steps of 32 inputs (kPanelStep elements each), padding zero.
class Bf16Panels {
 public:
  Bf16Panels(std::span<const float> values, std::int64_t rows, std::int64_t cols);
  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  std::int64_t steps() const { return steps_; }
  std::int64_t panels() const { return panels_; }
  const std::uint16_t* panel(std::int64_t p) const { return data_.get() + p * steps_ * kPanelStep; }

 private:
  struct Free {
    void operator()(std::uint16_t* p) const;
  };
  std::int64_t rows_, cols_, steps_, panels_;
  std::unique_ptr<std::uint16_t[], Free> data_;
};

// What happens to a product r = a W^T + bias before it is written.
enum class Finish {
  Store,       // out = r
  Gelu,        // out = gelu(r)   (cpu::gelu_fast)
  Accumulate,  // out += r        (float output only)
};

// Where products go: rows `ld` elements apart, either float or bf16 (exactly one set).
struct ProductOut {
  float* f32 = nullptr;
  std::uint16_t* bf16 = nullptr;
  std::int64_t ld = 0;
};

// out rows [0, m) <- finish(a W^T + bias), a: m rows of w.cols() bf16 values, lda
// elements apart; bias: empty or w.rows() values. One thread; the caller shares out rows.
void product(const std::uint16_t* a, std::int64_t m, std::int64_t lda, const Bf16Panels& w,
             std::span<const float> bias, Finish finish, const ProductOut& out);

// Head sizes the attention below takes (every Whisper model's).
inline constexpr std::int64_t kHeadSize = 64;

// Elements of one head's keys, and as many of its values, as pack_head() lays them out.
std::int64_t packed_head_elements(std::int64_t n_kv);

// One head's keys and values (n_kv rows `stride` floats apart, kHeadSize values at the
// start of each) rounded to bf16 into the layouts attend() reads (packed_head_elements()
// each): done once per head, then shared by every thread attending with it.
void pack_head(const float* k, const float* v, std::int64_t n_kv, std::int64_t stride, std::uint16_t* keys,
               std::uint16_t* values);

// Scaled dot-product attention of queries [0, n_q) of one head over all n_kv packed keys
// (no mask): q and out rows are `stride` floats apart with the head's kHeadSize values at
// the start of each. Queries are scaled by 1/8 and rounded to bf16; scores in float32,
// softmax numerators rounded to bf16 against each row's running largest score, their
// weighted values summed in float32 and divided by the numerators' float sum. Keys are
// taken 128 at a time, 32 queries at a time (never the whole matrix). One thread.
void attend(const float* q, std::int64_t n_q, std::int64_t stride, const std::uint16_t* keys,
            const std::uint16_t* values, std::int64_t n_kv, float* out);

// pack_head() and attend() of one head on this thread.
void attention_head(const float* q, std::int64_t n_q, const float* k, const float* v, std::int64_t n_kv,
                    std::int64_t stride, float* out);

}  // namespace amanuensis::kernels::cpu::amx
