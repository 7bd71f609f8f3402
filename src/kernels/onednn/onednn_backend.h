// kernels/onednn: a Backend on oneDNN. Weights are reordered once into the layout the
// matmul primitive prefers (fp32, bf16, or int8 codes with scales: int8_linear.h); linear
// layers are matmul primitives with bias and fused GELU / residual-sum post-ops; attention
// is blocked per head (a tile of queries against all keys: two matmul primitives over keys
// and values reordered once per head, attention_tiles.h; sgemm for causal prompt passes),
// so the full n x n score matrix of all heads never exists. Threads: the kernels/cpu pool shares
// out row blocks x output-feature slices (the slices let a product of few rows use every
// thread); each oneDNN call inside runs single-threaded. Matrices packed RowsHint::Few
// (decoder steps, batched or not) skip oneDNN: one copy of the weights, f16 (when exact)
// or f32 in panels of 8 output features, and a register-blocked AVX2/FMA kernel that
// computes every output element in one fixed order, so a row's result does not depend on
// the other rows (see backend.h).
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace amanuensis::kernels::onednn {

// A oneDNN backend for `p` (Fp32, Bf16 or Int8), or nullptr when this CPU cannot run that
// precision through oneDNN's optimised matmul (checked with a small self-test).
std::shared_ptr<const Backend> make_backend(Precision p);

}  // namespace amanuensis::kernels::onednn
