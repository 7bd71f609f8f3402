// Microbenchmarks of the compute backends on Whisper's shapes: the linear layers of
// tiny (d 384) and base (d 512) over a 1500-frame window and for one decoder token,
// tiny's decoder layers and logits for 1..64 token rows at once (continuous batching),
// and encoder self-attention / decoder cross-attention. Run with --benchmark_format=json.
// Each benchmark is registered once per available backend (reference-fp32, onednn-fp32,
// onednn-bf16 where the CPU has it); counters report GFLOP/s, and items/s for linear
// layers counts input rows (so 1 / items_per_second is the cost of one row).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

namespace {

using namespace amanuensis;

std::vector<float> random_values(std::size_t n, unsigned seed, float scale = 0.1f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// `few`: packed for decoder steps, with weights exactly representable in f16 (as an f16
// model file's are), so backends may use their few-rows form.
void BM_linear(benchmark::State& state, std::shared_ptr<const kernels::Backend> backend, std::int64_t m,
               std::int64_t k, std::int64_t n, kernels::Epilogue epilogue, bool few) {
  auto values = random_values(n * k, 1);
  if (few)
    for (auto& v : values) v = kernels::cpu::half_to_float(kernels::cpu::float_to_half(v));
  const auto w = backend->pack(kernels::stored_floats(values, {n, k}), random_values(n, 2),
                               few ? kernels::RowsHint::Few : kernels::RowsHint::Many);
  const auto x = random_values(m * k, 3, 1.0f);
  std::vector<float> y(m * n);
  for (auto _ : state) {
    backend->linear(x, m, *w, y, epilogue);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * k * n, benchmark::Counter::kIsIterationInvariantRate,
                                                  benchmark::Counter::kIs1000);
  state.SetItemsProcessed(state.iterations() * m);
}

void BM_attention(benchmark::State& state, std::shared_ptr<const kernels::Backend> backend, std::int64_t n_q,
                  std::int64_t n_kv, int n_head, std::int64_t d) {
  const auto q = random_values(n_q * d, 4, 1.0f), k = random_values(n_kv * d, 5, 1.0f), v = random_values(n_kv * d, 6, 1.0f);
  std::vector<float> out(n_q * d);
  for (auto _ : state) {
    backend->attention(q, n_q, k, v, n_kv, n_head, d, -1, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * n_q * n_kv * d, benchmark::Counter::kIsIterationInvariantRate,
                                                  benchmark::Counter::kIs1000);
}

std::vector<std::shared_ptr<const kernels::Backend>> backends() {
  std::vector<std::shared_ptr<const kernels::Backend>> list{kernels::make_reference_backend(kernels::Precision::Fp32)};
  std::map<std::string, bool> seen{{list[0]->name(), true}};
  for (auto p : {kernels::Precision::Fp32, kernels::Precision::Bf16, kernels::Precision::Int8}) {
    if (p == kernels::Precision::Bf16 && !kernels::cpu_has_native_bf16()) continue;
    auto b = kernels::make_backend({.precision = p});
    if (!seen[b->name()]) {
      seen[b->name()] = true;
      list.push_back(b);
    }
  }
  return list;
}

// A decoder step of continuous batching: one row per sequence, m = 1..64, through
// matrices packed for few rows with f16-exact weights (an f16 model's decoder). Named
// few_m<m>_<n>x<k> (n output features of k inputs).
void register_batched_decoder(const std::shared_ptr<const kernels::Backend>& backend, const std::string& prefix) {
  struct Matrix {
    std::int64_t n, k;
  };
  for (const Matrix w : {Matrix{384, 384}, Matrix{1536, 384}, Matrix{384, 1536}, Matrix{51864, 384}})
    for (const std::int64_t m : {1, 4, 16, 32, 64}) {
      const std::string name = prefix + "few_m" + std::to_string(m) + "_" + std::to_string(w.n) + "x" + std::to_string(w.k);
      benchmark::RegisterBenchmark(name.c_str(), BM_linear, backend, m, w.k, w.n, kernels::Epilogue::Store, true)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
}

void register_all() {
  struct Shape {
    const char* model;
    std::int64_t d;
    int heads;
  };
  for (const auto& backend : backends()) {
    const std::string b = backend->name();
    for (const Shape s : {Shape{"tiny", 384, 6}, Shape{"base", 512, 8}}) {
      const std::string p = b + "/" + s.model + "/";
      const std::int64_t d = s.d, f = 4 * s.d;
      auto reg_linear = [&](const std::string& name, std::int64_t m, std::int64_t k, std::int64_t n, kernels::Epilogue e) {
        benchmark::RegisterBenchmark((p + name).c_str(), BM_linear, backend, m, k, n, e, m <= 4)->Unit(benchmark::kMillisecond)->UseRealTime();
      };
      reg_linear("linear_1500x" + std::to_string(d) + "x" + std::to_string(d), 1500, d, d, kernels::Epilogue::Store);
      reg_linear("linear_1500x" + std::to_string(d) + "x" + std::to_string(f) + "_gelu", 1500, d, f, kernels::Epilogue::Gelu);
      reg_linear("linear_1500x" + std::to_string(f) + "x" + std::to_string(d) + "_acc", 1500, f, d, kernels::Epilogue::Accumulate);
      reg_linear("linear_1x" + std::to_string(d) + "x" + std::to_string(f), 1, d, f, kernels::Epilogue::Gelu);
      reg_linear("logits_1x" + std::to_string(d) + "x51864", 1, d, 51864, kernels::Epilogue::Store);
      if (s.d == 384) register_batched_decoder(backend, p);
      benchmark::RegisterBenchmark((p + "attention_enc_1500x1500").c_str(), BM_attention, backend, 1500, 1500, s.heads, d)
          ->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark((p + "attention_cross_1x1500").c_str(), BM_attention, backend, 1, 1500, s.heads, d)
          ->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
