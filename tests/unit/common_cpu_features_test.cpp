// The instruction-set cap: its names, and that each cap only ever removes extensions.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "common/cpu_features.h"
#include "common/error.h"

namespace amanuensis {
namespace {

// Puts the cap back as the test binary started (it may run under AMANUENSIS_TEST_MAX_ISA).
class CapGuard {
 public:
  CapGuard() : saved_(isa_cap()) {}
  ~CapGuard() { set_isa_cap(saved_); }

 private:
  IsaCap saved_;
};

bool has(const CpuFeatures& f, const std::string& name) {
  const auto names = f.names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST(CpuFeatures, CapNamesRoundTrip) {
  for (IsaCap cap : {IsaCap::Baseline, IsaCap::Avx2, IsaCap::Avx512, IsaCap::Native})
    EXPECT_EQ(parse_isa_cap(isa_cap_name(cap)), cap);
  try {
    parse_isa_cap("avx3");
    FAIL() << "an unknown cap was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("avx3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("native, avx512, avx2 or baseline"), std::string::npos) << e.what();
  }
}

TEST(CpuFeatures, EachCapRemovesWhatIsAboveIt) {
  CapGuard guard;
  set_isa_cap(IsaCap::Native);
  const CpuFeatures native = cpu_features();
  set_isa_cap(IsaCap::Avx512);
  EXPECT_FALSE(cpu_features().amx_bf16 || cpu_features().amx_int8 || cpu_features().amx_tile);
  EXPECT_EQ(cpu_features().avx512f, native.avx512f);
  EXPECT_EQ(cpu_features().avx512bf16, native.avx512bf16);
  set_isa_cap(IsaCap::Avx2);
  EXPECT_FALSE(cpu_features().avx512f || cpu_features().avx512bw || cpu_features().avx512vnni ||
               cpu_features().avx512bf16 || cpu_features().avx_vnni || cpu_features().amx_bf16);
  EXPECT_EQ(cpu_features().avx2_fma_f16c(), native.avx2_fma_f16c());
  for (const auto& name : cpu_features().names()) EXPECT_EQ(name.find("avx512"), std::string::npos) << name;
  set_isa_cap(IsaCap::Baseline);
  EXPECT_TRUE(cpu_features().names().empty());
  EXPECT_FALSE(cpu_features().avx2_fma_f16c());
  EXPECT_EQ(cpu_features().amd, native.amd);  // the vendor is not an extension
  set_isa_cap(IsaCap::Native);
  EXPECT_EQ(cpu_features().names(), native.names());
  // every name the CPU itself reports at a cap is one it reports uncapped
  for (IsaCap cap : {IsaCap::Baseline, IsaCap::Avx2, IsaCap::Avx512}) {
    set_isa_cap(cap);
    for (const auto& name : cpu_features().names()) EXPECT_TRUE(has(native, name)) << name;
  }
}

}  // namespace
}  // namespace amanuensis
