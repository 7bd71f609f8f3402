// cli: `amanuensis bench`: times the stages of transcription (mel, encoder, decoder per
// token, end to end) on a model with real or synthetic audio; prints a table or JSON.
#pragma once

#include <string>
#include <vector>

namespace amanuensis::cli {

// `args` are the words after "bench". Returns the process exit status; throws
// amanuensis::Error for bad options or files.
int run_bench(const std::vector<std::string>& args);

extern const char* const kBenchUsage;

}  // namespace amanuensis::cli
