#include "kernels/onednn/context.h"

#include <omp.h>

#include <bit>
#include <unordered_map>

#include "common/cpu_features.h"
#include "common/fp16.h"
#include "kernels/cpu/amx_bf16.h"
#include "kernels/cpu/thread_pool.h"

namespace amanuensis::kernels::onednn {

namespace {

// The instruction sets oneDNN may use under the process's cap (common/cpu_features.h).
// oneDNN takes its cap once, before its first primitive; a cap set later leaves it as it
// was, and kernels() then names the instruction set it really uses.
void cap_onednn_isa() {
  dnnl::cpu_isa isa = dnnl::cpu_isa::all;
  switch (isa_cap()) {
    case IsaCap::Baseline: isa = dnnl::cpu_isa::sse41; break;
    case IsaCap::Avx2: isa = dnnl::cpu_isa::avx2; break;
    case IsaCap::Avx512: isa = dnnl::cpu_isa::avx512_core_bf16; break;
    case IsaCap::Native: return;
  }
  try {
    dnnl::set_max_cpu_isa(isa);
  } catch (const dnnl::error&) {
    // already fixed (an earlier primitive, or ONEDNN_MAX_CPU_ISA): keep what it has
  }
}

}  // namespace

dnnl::engine& cpu_engine() {
  static dnnl::engine engine = [] {
    cap_onednn_isa();
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return engine;
}

bool onednn_has_int8_dot() {
  cpu_engine();  // the cap first: the instruction set is fixed by the first query
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41:
    case dnnl::cpu_isa::avx:
    case dnnl::cpu_isa::avx2:
    case dnnl::cpu_isa::avx512_core: return false;
    default: return true;
  }
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

void single_threaded_onednn() {
  thread_local bool done = false;
  if (!done) {
    omp_set_num_threads(1);
    done = true;
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void convert_to_bf16(const float* x, std::uint16_t* y, std::int64_t n, float scale) {
  if (cpu::amx::available()) return cpu::amx::round_to_bf16(x, y, n, scale);  // the same bits, vectorised
  for (std::int64_t i = 0; i < n; ++i) y[i] = float_to_bf16_bits(x[i] * scale);
}

void maybe_parallel(std::int64_t n, double flops, const std::function<void(std::int64_t, std::int64_t)>& fn) {
  if (n > 1 && flops >= 2e6 && cpu::thread_count() > 1) {
    cpu::parallel_for(n, 2, fn);
  } else {
    fn(0, n);
  }
}

void maybe_parallel_each(std::int64_t n, double flops, const std::function<void(std::int64_t)>& fn) {
  if (n > 1 && flops >= 2e6 && cpu::thread_count() > 1) {
    cpu::parallel_for_each(n, fn);
  } else {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
  }
}

void Matmul::execute(const dnnl::memory& src, const dnnl::memory& weights, const dnnl::memory& dst,
                     const dnnl::memory* bias) const {
  thread_local std::vector<std::uint8_t> scratchpad;
  if (scratchpad.size() < scratchpad_bytes) scratchpad.resize(scratchpad_bytes);
  dnnl::memory scratch({{static_cast<std::int64_t>(scratchpad_bytes)}, dnnl::memory::data_type::u8,
                        dnnl::memory::format_tag::a},
                       cpu_engine(), scratchpad.data());
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}};
  if (bias) args.emplace(DNNL_ARG_BIAS, *bias);
  primitive.execute(thread_stream(), args);
  thread_stream().wait();
}

std::shared_ptr<const Matmul> make_matmul(const dnnl::memory::desc& src, const dnnl::memory::desc& weights,
                                          const dnnl::memory::desc& dst, const dnnl::memory::desc* bias,
                                          const dnnl::primitive_attr& attr) {
  dnnl::primitive_attr with_scratchpad = attr;
  with_scratchpad.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto desc = bias ? dnnl::matmul::desc(src, weights, *bias, dst) : dnnl::matmul::desc(src, weights, dst);
  const dnnl::matmul::primitive_desc pd(desc, with_scratchpad, cpu_engine());
  auto m = std::make_shared<Matmul>();
  m->primitive = dnnl::matmul(pd);
  m->weights_md = pd.weights_desc();
  m->scratchpad_bytes = pd.scratchpad_desc().get_size();
  return m;
}

}  // namespace amanuensis::kernels::onednn
