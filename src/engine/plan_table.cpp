// --dry-run's table of a placed plan.
#include "plan_table.hpp"

#include "soupkit/util/message_text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <numeric>

namespace soupkit {
namespace {

// "h.2" before "h.10": runs of digits compare as numbers.
bool natural_less(const std::string& a, const std::string& b) {
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      std::size_t i2 = i, j2 = j;
      while (i2 < a.size() && a[i2] == '0') ++i2;
      while (j2 < b.size() && b[j2] == '0') ++j2;
      std::size_t ie = i2, je = j2;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      if (ie - i2 != je - j2) return ie - i2 < je - j2;
      const int c = a.compare(i2, ie - i2, b, j2, je - j2);
      if (c != 0) return c < 0;
      i = ie, j = je;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i, ++j;
  }
  return a.size() - i < b.size() - j;
}

}  // namespace

std::vector<std::size_t> natural_order(const std::vector<TensorInfo>& tensors) {
  std::vector<std::size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t x, std::size_t y) { return natural_less(tensors[x].name, tensors[y].name); });
  return order;
}

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
  // Long names widen the column (up to a point: a hostile name is cut, not a page wide).
  int width = 6;
  for (const auto& t : tensors) width = std::max(width, static_cast<int>(std::min<std::size_t>(t.name.size(), 96)));
  bool notes = false;
  for (const auto& task : plan.tasks) notes = notes || !task.note.empty();
  std::printf("  %-*s %-6s %-18s %5s %9s %10s  %s%s\n", width, "tensor", "dtype", "shape", "rank", "est. s", "est. mem",
              notes ? "what, " : "", "inputs");
  for (const std::size_t i : natural_order(tensors)) {
    std::string inputs;
    const TaskPlan& task = plan.tasks[i];
    const auto& s = task.sources;
    for (std::size_t k = 0; k < s.size() && k < 2; ++k) inputs += (k ? ", " : "") + s[k];
    if (s.size() > 2) inputs += fmt::format(" (+{} more)", s.size() - 2);
    if (notes) inputs = (task.note.empty() ? "-" : task.note) + ", " + inputs;
    std::printf("  %-*s %-6s %-18s %5s %9.3f %10s  %s\n", width, printable(excerpt(tensors[i].name, 96)).c_str(),
                std::string(dtype_name(tensors[i].dtype)).c_str(), shape_string(tensors[i].shape).c_str(),
                task.on_grid() ? "grid" : std::to_string(owner[i]).c_str(), task.seconds,
                human_bytes(static_cast<std::uint64_t>(task.planned_bytes())).c_str(), inputs.c_str());
  }
  if (grid_tasks)
    std::printf("  rank \"grid\": computed by all %d ranks together on a ScaLAPACK process grid, each holding a "
                "share of the matrix (est. mem is per rank)\n", ranks);
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
