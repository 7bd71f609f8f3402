// kernels/cpu: <immintrin.h> for the hand-vectorised kernels, without the "uninitialized"
// warnings GCC 12 reports from inside its own AVX-512 intrinsics (the undefined vectors
// they start from; GCC bug 105593).
#pragma once

#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
