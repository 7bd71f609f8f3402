#include "kernels/backend.h"

#include <algorithm>
#include <string>

#include "common/cpu_features.h"
#include "common/error.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/int8.h"

#ifdef AMANUENSIS_HAVE_ONEDNN
#include "kernels/onednn/onednn_backend.h"
#endif

namespace amanuensis::kernels {
namespace {

}  // namespace

Precision parse_precision(std::string_view name) {
  if (name == "auto") return Precision::Auto;
  if (name == "fp32" || name == "f32") return Precision::Fp32;
  if (name == "bf16") return Precision::Bf16;
  if (name == "int8") return Precision::Int8;
  throw Error("unknown precision '" + std::string(name) + "' (use auto, fp32, bf16 or int8)");
}

std::string_view precision_name(Precision p) {
  switch (p) {
    case Precision::Auto: return "auto";
    case Precision::Fp32: return "fp32";
    case Precision::Bf16: return "bf16";
    case Precision::Int8: return "int8";
  }
  return "?";
}

bool cpu_has_native_bf16() { return cpu_features().avx512bf16 || cpu_features().amx_bf16; }

bool cpu_runs_bf16_fast() {
  const CpuFeatures& f = cpu_features();
  return f.amx_bf16 || (f.amd && f.avx512bf16);
}

bool cpu_has_int8_dot() {
  const CpuFeatures& f = cpu_features();
  return f.avx512vnni || f.avx_vnni || f.amx_int8;
}

void check_pack_sizes(const StoredMatrix& weights, std::span<const float> bias) {
  const auto [rows, cols] = weights.shape;
  const bool blocks_fit = !is_block_quantized(weights.dtype) || cols % kQuantBlock == 0;
  if (rows <= 0 || cols <= 0 || !blocks_fit || weights.bytes.size() != dtype_bytes(weights.dtype, rows * cols) ||
      (!bias.empty() && static_cast<std::int64_t>(bias.size()) != rows))
    throw InternalError("pack called with mismatched sizes");
}

void gather_kv_blocks(std::span<const KvBlockView> blocks, std::int64_t n_kv, std::int64_t d,
                      std::vector<float>& keys, std::vector<float>& values) {
  keys.resize(static_cast<std::size_t>(n_kv * d));
  values.resize(static_cast<std::size_t>(n_kv * d));
  std::int64_t at = 0;  // floats copied so far
  for (const auto& block : blocks) {
    if (at == n_kv * d) break;
    if (block.keys.size() != block.values.size() || block.keys.size() % static_cast<std::size_t>(d) != 0)
      throw InternalError("a KV block of mismatched or partial rows");
    const auto n = std::min<std::int64_t>(static_cast<std::int64_t>(block.keys.size()), n_kv * d - at);
    std::copy_n(block.keys.data(), n, keys.data() + at);
    std::copy_n(block.values.data(), n, values.data() + at);
    at += n;
  }
  if (at != n_kv * d) throw InternalError("KV blocks hold fewer positions than attention was asked for");
}

void Backend::attention_paged(std::span<const float> q, std::int64_t n_q, std::span<const KvBlockView> blocks,
                              std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                              std::span<float> out) const {
  thread_local std::vector<float> k, v;
  gather_kv_blocks(blocks, n_kv, d, k, v);
  attention(q, n_q, k, v, n_kv, n_head, d, causal_offset, out);
}

void Backend::attention_f16kv(std::span<const float> q, std::int64_t n_q, std::span<const std::uint16_t> k,
                              std::span<const std::uint16_t> v, std::int64_t n_kv, int n_head, std::int64_t d,
                              std::int64_t causal_offset, std::span<float> out) const {
  thread_local std::vector<float> k32, v32;
  k32.resize(static_cast<std::size_t>(n_kv * d));
  v32.resize(static_cast<std::size_t>(n_kv * d));
  from_halves_by_head(k.first(static_cast<std::size_t>(n_kv * d)), n_kv, n_head, k32);
  from_halves_by_head(v.first(static_cast<std::size_t>(n_kv * d)), n_kv, n_head, v32);
  attention(q, n_q, k32, v32, n_kv, n_head, d, causal_offset, out);
}

void Backend::norm_linear(std::span<const float> x, std::int64_t rows, const NormParams& ln,
                          std::span<const PackedMatrix* const> weights, std::span<const std::span<float>> outs) const {
  if (weights.size() != outs.size()) throw InternalError("norm_linear needs one output per matrix");
  thread_local std::vector<float> normed;
  normed.assign(x.begin(), x.begin() + rows * static_cast<std::int64_t>(ln.gamma.size()));
  layer_norm(normed, rows, ln.gamma, ln.beta);
  for (std::size_t i = 0; i < weights.size(); ++i) linear(normed, rows, *weights[i], outs[i]);
}

void Backend::feed_forward(std::span<float> x, std::int64_t rows, const NormParams& ln, const PackedMatrix& up,
                           const PackedMatrix& down) const {
  thread_local std::vector<float> normed, hidden;
  normed.assign(x.begin(), x.begin() + rows * static_cast<std::int64_t>(ln.gamma.size()));
  layer_norm(normed, rows, ln.gamma, ln.beta);
  hidden.resize(static_cast<std::size_t>(rows * up.rows()));
  linear(normed, rows, up, hidden, Epilogue::Gelu);
  linear(hidden, rows, down, x, Epilogue::Accumulate);
}

bool steps_in_int8(const StoredMatrix& weights, WeightRole role) {
  if (!cpu::fits_int8_blocks(weights.shape)) return false;
  return role == WeightRole::Linear || (role == WeightRole::Embedding && is_block_quantized(weights.dtype));
}

Precision resolve(Precision p, WeightFormat weights) {
  if (p != Precision::Auto) return p;
  if (cpu_runs_bf16_fast()) return Precision::Bf16;
  if (weights == WeightFormat::Quantized && cpu_has_int8_dot()) return Precision::Int8;
  return Precision::Fp32;
}

BackendKind parse_backend_kind(std::string_view name) {
  if (name.empty() || name == "best") return BackendKind::Best;
  if (name == "reference") return BackendKind::Reference;
  if (name == "onednn") return BackendKind::Onednn;
  throw Error("unknown backend '" + std::string(name) + "' (use best, reference or onednn)");
}

std::shared_ptr<const Backend> make_backend(const ComputeOptions& options) {
  const Precision p = resolve(options.precision, options.weights);
  if (options.backend == BackendKind::Reference) return make_reference_backend(p);
  const bool forced = options.backend == BackendKind::Onednn;
#ifdef AMANUENSIS_HAVE_ONEDNN
  // bf16 through oneDNN only where the CPU does it natively; elsewhere it would run
  // oneDNN's reference loops, slower than the emulation below. int8 runs everywhere
  // (oneDNN has AVX2 int8 kernels; its self-test refuses a reference path).
  if (p != Precision::Bf16 || cpu_has_native_bf16()) {
    if (auto b = onednn::make_backend(p)) return b;
  }
  if (forced) throw Error("the oneDNN backend cannot run " + std::string(precision_name(p)) + " on this CPU");
#else
  if (forced) throw Error("this build has no oneDNN backend");
#endif
  return make_reference_backend(p);
}

}  // namespace amanuensis::kernels
