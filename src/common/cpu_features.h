// common: the instruction-set extensions of this CPU that the kernels may use, detected
// once, and a process-wide cap below them (like oneDNN's max ISA): with the cap at avx2 an
// AVX-512 machine runs, tests and times the paths of an AVX2-only one. Every run-time
// choice of a kernel reads cpu_features(), never the CPU directly (but for GCC's
// target_clones loops, which pick their version from the CPU when the program starts).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace amanuensis {

// The most a process lets its kernels use, lowest first.
enum class IsaCap {
  Baseline,  // no AVX: the portable loops
  Avx2,      // AVX2, FMA and F16C (an AMD Zen 3 class machine)
  Avx512,    // also AVX-512 with VNNI and BF16, but no AMX tiles
  Native,    // whatever the CPU has (the default)
};

struct CpuFeatures {
  bool amd = false;
  bool avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
  bool avx_vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;

  bool avx2_fma_f16c() const { return avx2 && fma && f16c; }
  // AVX-512 F/BW/VL (and AVX2/FMA/F16C beneath), what every 16-lane kernel needs
  bool avx512_core() const { return avx512f && avx512bw && avx512vl && avx2_fma_f16c(); }
  // The extensions present, as lscpu and GCC spell them: "avx2", "avx512vnni", "amx-bf16"...
  std::vector<std::string> names() const;
};

// This CPU's extensions less those above the cap.
const CpuFeatures& cpu_features();

// Sets the cap for the whole process: before the first model loads (the command line's
// --max-isa, a test binary's start), since a matrix packed under a higher cap may need what
// a lower one removes (AMX tiles refuse to run without it), and oneDNN takes its cap once.
void set_isa_cap(IsaCap cap);
IsaCap isa_cap();

// "native", "avx512", "avx2" or "baseline"; anything else throws amanuensis::Error.
IsaCap parse_isa_cap(std::string_view name);
std::string_view isa_cap_name(IsaCap cap);

}  // namespace amanuensis
