#include "cli/compute_flags.h"

#include <cstdlib>

namespace amanuensis::cli {

nn::LoadOptions load_options(const Args& args) {
  nn::LoadOptions o;
  o.compute.precision = kernels::parse_precision(args.get_or("precision", "auto"));
  const char* backend = std::getenv("AMANUENSIS_BACKEND");
  o.compute.backend = kernels::parse_backend_kind(backend ? backend : "");
  return o;
}

}  // namespace amanuensis::cli
