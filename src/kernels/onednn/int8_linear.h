// kernels/onednn: the products of a window's rows in int8 (Precision::Int8): weights
// quantized once per output feature (cpu::quantize_matrix_int8) and reordered into the
// layout oneDNN's int8 matmul asks for, so it runs its VNNI / AMX-INT8 kernels (AVX2 ones
// elsewhere); each product quantizes its input rows, gets int32 sums scaled per output
// feature from the primitive, and finishes rows itself (row scale, bias, GELU or the
// residual sum): the arithmetic of cpu::int8_linear_reference.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace amanuensis::kernels::onednn {

class Int8Weights {
 public:
  // `values`: the matrix as float, rows x cols; `bias` empty or one per row.
  Int8Weights(std::span<const float> values, MatrixShape shape, std::vector<float> bias);

  // y (m x rows) <- epilogue(x (m x cols) W^T + b), on the kernels' thread pool.
  void linear(const float* x, std::int64_t m, float* y, Epilogue epilogue) const;

  // Whether oneDNN chose an optimised kernel (not its reference loops) for this matrix.
  bool optimised() const;

 private:
  struct Primitive;
  std::shared_ptr<const Primitive> primitive_for(std::int64_t m) const;
  void run_rows(const float* x, std::int64_t m, float* y, Epilogue epilogue) const;

  MatrixShape shape_;
  std::vector<float> scales_;  // per output feature
  std::vector<float> bias_;
  dnnl::memory::desc weights_md_;
  dnnl::memory weights_;
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<std::int64_t, std::shared_ptr<const Primitive>>> primitives_;
};

}  // namespace amanuensis::kernels::onednn
