#pragma once
// What --dry-run prints: the plan per rank, without touching the output.
#include "soupkit/engine/engine.hpp"

#include <string>
#include <vector>

namespace soupkit {

// `owner`: the rank of each task placed on one rank (assign_owners).
void print_plan(const MethodPlan& plan, const std::vector<int>& owner, int ranks, const fs::path& out,
                const std::string& method);

}  // namespace soupkit
