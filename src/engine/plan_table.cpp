// --dry-run's table of a placed plan.
#include "plan_table.hpp"

#include "soupkit/util/message_text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <numeric>

namespace soupkit {

void print_plan(const MethodPlan& plan, const std::vector<int>& owner, int ranks, const fs::path& out,
                const std::string& method) {
  const auto& tensors = plan.output.tensors;
  std::vector<double> seconds(static_cast<std::size_t>(ranks), 0.0), memory(static_cast<std::size_t>(ranks), 0.0);
  std::vector<std::size_t> count(static_cast<std::size_t>(ranks), 0);
  std::uint64_t bytes = 0;
  std::size_t grid_tasks = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    bytes += tensors[i].nbytes();
    const TaskPlan& task = plan.tasks[i];
    if (task.on_grid()) {
      ++grid_tasks;
      for (int r = 0; r < ranks; ++r) {
        seconds[r] += task.seconds / ranks;
        memory[r] = std::max(memory[r], task.planned_bytes());
      }
      continue;
    }
    const auto r = static_cast<std::size_t>(owner[i]);
    seconds[r] += task.seconds;
    memory[r] = std::max(memory[r], task.planned_bytes());
    ++count[r];
  }
  std::printf("plan: %s -> %s\n", method.c_str(), out.c_str());
  std::printf("  %-40s %-6s %-18s %5s %9s %10s  %s\n", "tensor", "dtype", "shape", "rank", "est. s", "est. mem",
              "inputs");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    std::string inputs;
    const TaskPlan& task = plan.tasks[i];
    const auto& s = task.sources;
    for (std::size_t k = 0; k < s.size() && k < 2; ++k) inputs += (k ? ", " : "") + s[k];
    if (s.size() > 2) inputs += fmt::format(" (+{} more)", s.size() - 2);
    std::printf("  %-40s %-6s %-18s %5s %9.3f %10s  %s\n", tensors[i].name.c_str(),
                std::string(dtype_name(tensors[i].dtype)).c_str(), shape_string(tensors[i].shape).c_str(),
                task.on_grid() ? "grid" : std::to_string(owner[i]).c_str(), task.seconds,
                human_bytes(static_cast<std::uint64_t>(task.planned_bytes())).c_str(), inputs.c_str());
  }
  std::printf("  %zu tensors, %s, %zu on a %d-rank grid\n", tensors.size(), human_bytes(bytes).c_str(), grid_tasks, ranks);
  std::printf("  %-6s %10s %14s %16s\n", "rank", "tensors", "est. seconds", "est. peak memory");
  for (int r = 0; r < ranks; ++r)
    std::printf("  %-6d %10zu %14.2f %16s\n", r, count[r] + grid_tasks, seconds[r],
                human_bytes(static_cast<std::uint64_t>(memory[r])).c_str());
  const double longest = *std::max_element(seconds.begin(), seconds.end());
  std::printf("  estimated wall time %.2f s (load balance %.0f%%)\n", longest,
              longest > 0 ? 100 * std::accumulate(seconds.begin(), seconds.end(), 0.0) / (ranks * longest) : 100.0);
  std::fflush(stdout);
}

}  // namespace soupkit
