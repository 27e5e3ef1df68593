#include "soupkit/methods/carried_files.hpp"

#include "soupkit/util/log.hpp"

namespace soupkit {

std::vector<AuxFileInfo> carried_files(const CheckpointReader& source, const fs::path& output) {
  auto files = source.aux_files();
  if (output_kind(output) == OutputKind::SafetensorsFile && !files.empty()) {
    log::warn("{}: a single .safetensors file cannot hold {} non-weight file(s) of {} (config, tokenizer); "
              "write to a directory to keep them",
              output.string(), files.size(), source.path().string());
    files.clear();
  }
  return files;
}

}  // namespace soupkit
