// kernels/onednn: what every oneDNN-backed kernel of this folder shares: the CPU engine, a
// stream per thread, how oneDNN is kept single-threaded inside our pool, the bf16
// conversion of activations, and a cache of matmul primitives by shape.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

namespace amanuensis::kernels::onednn {

dnnl::engine& cpu_engine();
dnnl::stream& thread_stream();

// oneDNN runs single-threaded inside each of our pool's threads (its OpenMP team would
// spin against them, and falls apart when the machine is oversubscribed).
void single_threaded_onednn();

// y[i] = bf16(x[i] * scale), rounded to nearest even (the activations are finite).
void convert_to_bf16(const float* x, std::uint16_t* y, std::int64_t n, float scale = 1.0f);

// Runs fn(begin, end) over [0, n) on the pool when the job (`flops`) is worth waking it for.
void maybe_parallel(std::int64_t n, double flops, const std::function<void(std::int64_t, std::int64_t)>& fn);

// Whether oneDNN's int8 products use dot-product instructions (AVX_VNNI, AVX512_VNNI or
// AMX-INT8) under the instruction set it runs (its own cap included: ONEDNN_MAX_CPU_ISA).
bool onednn_has_int8_dot();

// fn(i) for each i in [0, n), on the pool item by item (cpu::parallel_for_each: whichever
// thread is free takes the next) when the job is worth waking it for, else in order here.
void maybe_parallel_each(std::int64_t n, double flops, const std::function<void(std::int64_t)>& fn);

// A ready matmul and the scratchpad it needs (user-managed: one primitive may run on
// several threads at once, each with its own scratchpad).
struct Matmul {
  dnnl::matmul primitive;
  dnnl::memory::desc weights_md;  // the layout the weights must be reordered into
  std::size_t scratchpad_bytes = 0;

  // Runs on this thread's stream and waits; `bias` may be null.
  void execute(const dnnl::memory& src, const dnnl::memory& weights, const dnnl::memory& dst,
               const dnnl::memory* bias = nullptr) const;
};

// src (m x k, given layout) times weights (k x n, in the layout the primitive prefers,
// or `weights_md` when given) into dst (m x n, given layout), with `attr`'s post-ops.
std::shared_ptr<const Matmul> make_matmul(const dnnl::memory::desc& src, const dnnl::memory::desc& weights,
                                          const dnnl::memory::desc& dst, const dnnl::memory::desc* bias,
                                          const dnnl::primitive_attr& attr);

// Primitives (Matmul, dnnl::reorder) by a key of plain numbers (shape, strides, kind),
// made once and shared by every thread.
template <typename T>
class PrimitiveCache {
 public:
  using Key = std::vector<std::int64_t>;
  std::shared_ptr<const T> get(const Key& key, const std::function<std::shared_ptr<const T>()>& make) const {
    {
      std::lock_guard lock(mutex_);
      if (auto it = primitives_.find(key); it != primitives_.end()) return it->second;
    }
    auto made = make();  // outside the lock: making a primitive takes milliseconds
    std::lock_guard lock(mutex_);
    return primitives_.emplace(key, std::move(made)).first->second;
  }

 private:
  mutable std::mutex mutex_;
  mutable std::map<Key, std::shared_ptr<const T>> primitives_;
};

}  // namespace amanuensis::kernels::onednn
