// cli: `amanuensis loadtest`, a load generator for `amanuensis serve` (or any server with
// OpenAI's audio API): throughput, latency percentiles and errors per concurrency level.
#pragma once

#include <string>
#include <vector>

namespace amanuensis::cli {

extern const char* const kLoadtestUsage;

// args: everything after "loadtest". Returns 0; 1 with --fail-on-unexpected when a request
// got another answer than its file calls for; 2 for bad usage.
int run_loadtest(const std::vector<std::string>& args);

}  // namespace amanuensis::cli
