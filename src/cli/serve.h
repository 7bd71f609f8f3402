// cli: `amanuensis serve`, the HTTP transcription server (src/server).
#pragma once

#include <string>
#include <vector>

namespace amanuensis::cli {

extern const char* const kServeUsage;

// args: everything after "serve". Returns the exit status (0 after a graceful stop).
int run_serve(const std::vector<std::string>& args);

}  // namespace amanuensis::cli
