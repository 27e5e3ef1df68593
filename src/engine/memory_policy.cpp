// The engine's memory policy: one chunk-size rule for every method, and
// where each task goes so that no rank exceeds --memory-budget.
#include "soupkit/engine/engine.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>

namespace soupkit {

std::uint64_t chunk_bytes_for(std::uint64_t memory_budget) {
  return std::clamp<std::uint64_t>(memory_budget / 8, 64ull << 10, 64ull << 20);
}

PlanContext make_plan_context(int ranks, std::uint64_t memory_budget, const fs::path& output, int ranks_per_node) {
  return {ranks, memory_budget, chunk_bytes_for(memory_budget), output, ranks_per_node};
}

void place_tasks(MethodPlan& plan, const PlanContext& context) {
  const auto& tensors = plan.output.tensors;
  SOUPKIT_ERROR_IF(plan.tasks.size() != tensors.size(), "internal: {} tasks planned for {} output tensors",
                   plan.tasks.size(), tensors.size());
  const double budget = static_cast<double>(context.memory_budget);
  std::size_t moved = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    TaskPlan& task = plan.tasks[i];
    const bool has_grid = task.grid_peak_bytes >= 0;
    SOUPKIT_ERROR_IF(task.wants_grid && !has_grid, "internal: tensor '{}' asks for a grid it has no computation for",
                     printable(tensors[i].name));
    const bool over = task.peak_bytes > budget;
    task.placement = task.wants_grid || (over && has_grid) ? Placement::Grid : Placement::Rank;
    if (over && !task.wants_grid && has_grid) ++moved;
    if (task.planned_bytes() <= budget) continue;
    const std::string from = task.sources.empty() ? context.output.string() : task.sources.front();
    // More ranks shrink a grid task's share; a task of one rank only needs more memory.
    const std::string advice = !task.advice.empty() ? task.advice
                               : task.on_grid()     ? "run on more ranks or raise --memory-budget"
                                                    : "raise --memory-budget (one rank computes this tensor)";
    throw InputError(fmt::format("{}: tensor '{}' {} needs about {} per rank {}, over the memory budget of {}: {}",
                                 from, printable(tensors[i].name), shape_string(tensors[i].shape),
                                 human_bytes(static_cast<std::uint64_t>(task.planned_bytes())),
                                 task.on_grid() ? fmt::format("on a {}-rank grid", context.ranks) : "on one rank",
                                 human_bytes(context.memory_budget), advice));
  }
  if (moved)
    log::info("{} tensor{} over the memory budget of {} per rank go{} to a {}-rank grid", moved, moved == 1 ? "" : "s",
              human_bytes(context.memory_budget), moved == 1 ? "es" : "", context.ranks);
}

}  // namespace soupkit
