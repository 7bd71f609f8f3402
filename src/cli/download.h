// cli: `amanuensis download NAME...`: fetches official ggml models into the model cache
// (model/catalog.h) over HTTP or HTTPS, checks their SHA-1, resumes an interrupted download
// and renames the file into place only when it is complete and verified.
#pragma once

#include <string>
#include <vector>

namespace amanuensis::cli {

extern const char* const kDownloadUsage;

int run_download(const std::vector<std::string>& argv);

}  // namespace amanuensis::cli
