#include "common/cpu_features.h"

#include <array>
#include <atomic>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "common/error.h"

namespace amanuensis {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.amd = __builtin_cpu_is("amd");
  f.avx = __builtin_cpu_supports("avx");
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  // cpuid for the bits some compilers' __builtin_cpu_supports cannot name (clang 14:
  // f16c, avxvnni, amx-*): leaf 1 ECX 29; leaf 7.0 EDX 22, 24, 25; leaf 7.1 EAX 4. The OS
  // enables their register state with AVX's, but for AMX's tiles (checked in XCR0; the
  // kernel's permission to use them is asked in amx_bf16.cpp)
  unsigned a = 0, b = 0, c = 0, d = 0;
  bool os_saves_tiles = false;  // XCR0 bits 17 and 18: the OS keeps the tile state
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    f.f16c = f.avx && ((c >> 29) & 1u);
    if ((c >> 27) & 1u) {  // OSXSAVE: xgetbv may run
      unsigned lo = 0, hi = 0;
      asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      os_saves_tiles = (lo & 0x60000u) == 0x60000u;
    }
  }
  if (os_saves_tiles && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.amx_bf16 = (d >> 22) & 1u;
    f.amx_tile = (d >> 24) & 1u;
    f.amx_int8 = (d >> 25) & 1u;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx_vnni = f.avx2 && ((a >> 4) & 1u);
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return f;
}

CpuFeatures capped(CpuFeatures f, IsaCap cap) {
  if (cap < IsaCap::Native) f.amx_tile = f.amx_bf16 = f.amx_int8 = false;
  if (cap < IsaCap::Avx512) f.avx512f = f.avx512bw = f.avx512vl = f.avx512vnni = f.avx512bf16 = f.avx_vnni = false;
  if (cap < IsaCap::Avx2) f.avx = f.avx2 = f.fma = f.f16c = false;
  return f;
}

// One table per cap, built once: a kernel's dispatch reads an entry, nothing more.
const std::array<CpuFeatures, 4>& levels() {
  static const std::array<CpuFeatures, 4> table = [] {
    const CpuFeatures found = detect();
    return std::array<CpuFeatures, 4>{capped(found, IsaCap::Baseline), capped(found, IsaCap::Avx2),
                                      capped(found, IsaCap::Avx512), found};
  }();
  return table;
}

std::atomic<IsaCap> current_cap{IsaCap::Native};

}  // namespace

std::vector<std::string> CpuFeatures::names() const {
  std::vector<std::string> out;
  const std::pair<bool, const char*> all[] = {
      {avx, "avx"},         {avx2, "avx2"},           {fma, "fma"},           {f16c, "f16c"},
      {avx512f, "avx512f"}, {avx512bw, "avx512bw"},   {avx512vl, "avx512vl"}, {avx512vnni, "avx512vnni"},
      {avx_vnni, "avxvnni"}, {avx512bf16, "avx512bf16"}, {amx_tile, "amx-tile"}, {amx_bf16, "amx-bf16"},
      {amx_int8, "amx-int8"}};
  for (const auto& [present, name] : all)
    if (present) out.emplace_back(name);
  return out;
}

const CpuFeatures& cpu_features() { return levels()[static_cast<std::size_t>(current_cap.load(std::memory_order_relaxed))]; }

void set_isa_cap(IsaCap cap) { current_cap.store(cap, std::memory_order_relaxed); }

IsaCap isa_cap() { return current_cap.load(std::memory_order_relaxed); }

IsaCap parse_isa_cap(std::string_view name) {
  if (name == "native") return IsaCap::Native;
  if (name == "avx512") return IsaCap::Avx512;
  if (name == "avx2") return IsaCap::Avx2;
  if (name == "baseline") return IsaCap::Baseline;
  throw Error("unknown instruction-set cap '" + std::string(name) + "' (use native, avx512, avx2 or baseline)");
}

std::string_view isa_cap_name(IsaCap cap) {
  switch (cap) {
    case IsaCap::Baseline: return "baseline";
    case IsaCap::Avx2: return "avx2";
    case IsaCap::Avx512: return "avx512";
    case IsaCap::Native: return "native";
  }
  return "?";
}

}  // namespace amanuensis
