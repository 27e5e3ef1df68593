#pragma once
// What --dry-run prints: the plan per rank, without touching the output.
#include "soupkit/engine/engine.hpp"

#include <string>
#include <vector>

namespace soupkit {

// The tensors' indices in natural order of their names ("h.2" before
// "h.10": runs of digits compare as numbers), the order --dry-run lists them.
std::vector<std::size_t> natural_order(const std::vector<TensorInfo>& tensors);
// `owner`: the rank of each task placed on one rank (assign_owners).
void print_plan(const MethodPlan& plan, const std::vector<int>& owner, int ranks, const fs::path& out,
                const std::string& method);

}  // namespace soupkit
