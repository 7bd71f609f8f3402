// kernels/cpu: the AVX-512 exponential of softmax numerators, shared by the kernels that
// round them to bf16 (fast_math's softmax, the AMX attention's online softmax).
#pragma once

#include "kernels/cpu/intrinsics.h"

#if defined(__x86_64__)
namespace amanuensis::kernels::cpu {

// exp(x) for x <= 0 to the precision bf16 keeps: 2^n exp(r), |r| <= ln2/2, exp(r) by a
// degree-4 polynomial (relative error below 4e-6, against bf16's 4e-3), 2^n by vscalefps
// (which also flushes very negative inputs to zero).
__attribute__((target("avx512f"))) inline __m512 exp_nonpositive16(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945309f), x);
  __m512 p = _mm512_set1_ps(1.0f / 24.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace amanuensis::kernels::cpu
#endif
