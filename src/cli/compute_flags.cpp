#include "cli/compute_flags.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/cpu_features.h"
#include "common/error.h"
#include "kernels/cpu/thread_pool.h"

namespace amanuensis::cli {

nn::LoadOptions load_options(const Args& args) {
  nn::LoadOptions o;
  o.compute.precision = kernels::parse_precision(args.get_or("precision", "auto"));
  const char* backend = std::getenv("AMANUENSIS_BACKEND");
  o.compute.backend = kernels::parse_backend_kind(backend ? backend : "");
  return o;
}

void apply_thread_flag(const Args& args) {
  if (!args.get("threads")) return;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int n = args.get_int("threads", 0);
  if (n < 1 || n > 4 * cores)
    throw Error("--threads must be between 1 and " + std::to_string(4 * cores) + " (this machine has " +
                std::to_string(cores) + " cores)");
  kernels::cpu::set_thread_count(n);
}

void apply_isa_flag(const Args& args) {
  if (const auto cap = args.get("max-isa")) {
    try {
      set_isa_cap(parse_isa_cap(*cap));
    } catch (const Error& e) {
      throw Error(std::string("--max-isa: ") + e.what());
    }
  }
}

}  // namespace amanuensis::cli
