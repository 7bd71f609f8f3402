// kernels/cpu: AVX-512 functions on sixteen lanes for kernels whose results are rounded
// to bf16 (fast_math's softmax numerators, the AMX kernels' softmax and GELU), inline so
// that they sit inside those kernels' loops.
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

// GELU, x Phi(x), with Phi(x) * 2 = erfc(-x / sqrt 2): erfc(z) = t exp(-z^2 + poly(t)),
// t = 1 / (1 + z / 2), z = |x| / sqrt 2 (Numerical Recipes' Chebyshev fit, the one of
// cpu::gelu_fast), with the exponential above: relative error below 1e-5, for results
// rounded to bf16 (4e-3).
__attribute__((target("avx512f"))) inline __m512 gelu16(__m512 v) {
  constexpr float kPoly[] = {0.17087277f,  -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                             -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f,  -1.26551223f};
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678118654752f));
  // 1 / (1 + z/2) by the reciprocal estimate and one Newton step (relative error near
  // 1e-7): a division costs more than the rest of the function
  const __m512 d = _mm512_fmadd_ps(half, z, one), estimate = _mm512_rcp14_ps(d);
  const __m512 t = _mm512_mul_ps(estimate, _mm512_fnmadd_ps(d, estimate, _mm512_set1_ps(2.0f)));
  __m512 p = _mm512_set1_ps(kPoly[0]);
  for (int k = 1; k < 10; ++k) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(kPoly[k]));
  const __m512 erfc = _mm512_mul_ps(t, exp_nonpositive16(_mm512_fnmadd_ps(z, z, p)));
  const __mmask16 positive = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
  const __m512 phi2 = _mm512_mask_sub_ps(erfc, positive, _mm512_set1_ps(2.0f), erfc);
  return _mm512_mul_ps(_mm512_mul_ps(half, v), phi2);
}

}  // namespace amanuensis::kernels::cpu
#endif
