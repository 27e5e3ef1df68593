#pragma once
// The non-weight files (config, tokenizer, ...) an output carries from one
// of its inputs.
#include "soupkit/io/checkpoint.hpp"

#include <vector>

namespace soupkit {

// `source`'s carried files, or none (with a warning naming both) when
// `output` is a single .safetensors file, which cannot hold them.
std::vector<AuxFileInfo> carried_files(const CheckpointReader& source, const fs::path& output);

}  // namespace soupkit
