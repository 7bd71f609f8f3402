// cli: how the model is computed (--precision, --threads, --max-isa, and AMANUENSIS_BACKEND for comparisons),
// read here once and passed down as options: library code reads no environment.
#pragma once

#include "cli/args.h"
#include "nn/whisper.h"

namespace amanuensis::cli {

// --precision auto|fp32|bf16 (default auto); the environment variable
// AMANUENSIS_BACKEND=reference|onednn forces a backend (default: the best one).
nn::LoadOptions load_options(const Args& args);

// --threads N, when given: between 1 and 4 x the cores (more only oversubscribes the
// machine, and thousands exhaust the process table), then the compute pool's size.
void apply_thread_flag(const Args& args);

// --max-isa native|avx512|avx2|baseline, when given: the most the kernels may use (before
// any model loads), so an AVX-512 machine can run and time the paths of an AVX2-only one.
void apply_isa_flag(const Args& args);

}  // namespace amanuensis::cli
