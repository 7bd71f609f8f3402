// Linked into every test binary: AMANUENSIS_TEST_MAX_ISA=avx2|avx512|baseline caps the
// kernels before the first test runs (tests/CMakeLists.txt runs the kernel, mel and
// conformance tests again under caps, so an AVX-512 machine also checks the paths an
// AVX2-only one takes, and any machine the portable loops). Test code reads the variable;
// the library never does.
#include <cstdio>
#include <cstdlib>

#include "common/cpu_features.h"

namespace {

const bool capped = [] {
  const char* cap = std::getenv("AMANUENSIS_TEST_MAX_ISA");
  if (cap == nullptr || *cap == '\0') return false;
  amanuensis::set_isa_cap(amanuensis::parse_isa_cap(cap));
  std::fprintf(stderr, "note: kernels capped at %s (AMANUENSIS_TEST_MAX_ISA)\n", cap);
  return true;
}();

}  // namespace
