// kernels/cpu: vectorised elementwise helpers for the optimised backends (a polynomial
// exp accurate to a few ulp, softmax built on it). Cloned for AVX-512 / AVX2 at load.
#pragma once

#include <cstdint>

namespace amanuensis::kernels::cpu {

// Softmax of row[0, n) in place; row[n, n_zero) is set to 0 (masked positions).
void softmax_fast(float* row, std::int64_t n, std::int64_t n_zero);

// y[i] = exp(x[i]) for x <= 88; inputs below -87.3 give 0 (flushed).
void exp_fast(const float* x, float* y, std::int64_t n);

}  // namespace amanuensis::kernels::cpu
