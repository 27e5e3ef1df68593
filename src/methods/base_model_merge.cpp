#include "soupkit/methods/base_model_merge.hpp"

#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace soupkit {

std::vector<std::size_t> BaseModelMerge::others(const Inputs& in) const {
  const std::size_t base = base_index().value();
  if (!in.at(base)) {
    const auto given = std::find_if(in.begin(), in.end(), [](const TensorInfo* t) { return t != nullptr; });
    throw InputError(fmt::format("{}: tensor '{}' does not come from the base model {} (mergekit: 'Base model tensor "
                                 "not found'): make the base a source of every slice",
                                 name(), given == in.end() ? std::string("?") : (*given)->name, model_name(base)));
  }
  std::vector<std::size_t> out;
  for (std::size_t k = 0; k < in.size(); ++k)
    if (k != base && in[k]) out.push_back(k);
  return out;
}

void BaseModelMerge::write_base(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(base_index().value(), in, first, count, values_);
    write_rows(index, out, first, count, values_, writer);
  }
}

}  // namespace soupkit
