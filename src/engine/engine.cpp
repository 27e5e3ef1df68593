#include "soupkit/engine.hpp"

#include "soupkit/error.hpp"
#include "soupkit/log.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>

namespace soupkit {
namespace {

nlohmann::json plan_to_json(const MethodPlan& plan) {
  return {{"output", plan.output.to_json()}, {"costs", plan.costs}, {"state", plan.state}};
}

MethodPlan plan_from_json(const nlohmann::json& j) {
  return {OutputSpec::from_json(j.at("output")), j.at("costs").get<std::vector<double>>(), j.at("state")};
}

}  // namespace

std::vector<int> assign_owners(const std::vector<double>& costs, int ranks) {
  std::vector<std::size_t> order(costs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(ranks), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (auto i : order) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += costs[i];
  }
  return owner;
}

RunResult run_method(const Communicator& comm, Method& method, const fs::path& out) {
  const auto start = std::chrono::steady_clock::now();

  // 1. The coordinator plans and validates; nobody does heavy work before it says go.
  std::string plan_text;
  on_root(comm, [&] { plan_text = plan_to_json(method.plan()).dump(); });
  const MethodPlan plan = plan_from_json(nlohmann::json::parse(comm.broadcast(plan_text)));
  const auto& tensors = plan.output.tensors;
  SOUPKIT_ERROR_IF(plan.costs.size() != tensors.size(), "internal: plan has {} costs for {} tensors", plan.costs.size(),
                   tensors.size());
  collectively(comm, [&] { method.prepare(plan); });

  // 2. Every rank creates the output together.
  auto writer = create_checkpoint_writer(comm, out, plan.output);
  const std::vector<int> owner = assign_owners(plan.costs, comm.size());
  std::uint64_t total_bytes = 0;
  for (const auto& t : tensors) total_bytes += t.nbytes();
  log::info("{}: {} tensors, {} -> {} on {} rank{}", method.name(), tensors.size(), human_bytes(total_bytes),
            out.string(), comm.size(), comm.size() == 1 ? "" : "s");

  // 3. Each rank computes and writes the tensors it owns, largest first.
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (owner[i] == comm.rank()) mine.push_back(i);
  std::stable_sort(mine.begin(), mine.end(), [&](std::size_t a, std::size_t b) { return plan.costs[a] > plan.costs[b]; });
  std::string error;
  std::vector<std::byte> buffer;
  std::size_t done = 0;
  for (auto i : mine) {
    try {
      buffer.resize(tensors[i].nbytes());
      method.compute(i, buffer);
      writer->write(i, buffer);
      ++done;
      log::debug("[rank {}] {} done ({}/{})", comm.rank(), tensors[i].name, done, mine.size());
    } catch (const std::exception& e) {
      error = fmt::format("rank {}: tensor '{}': {}", comm.rank(), tensors[i].name, e.what());
      break;
    }
  }
  buffer = {};
  if (error.empty() && comm.is_root()) {
    try {
      for (std::size_t a = 0; a < plan.output.aux_files.size(); ++a) writer->write_aux(a, method.aux_contents(a));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // 4. Commit only if every rank succeeded.
  try {
    agree_on_failure(comm, error);
  } catch (...) {
    writer->discard();
    throw;
  }
  writer->commit();

  RunResult result;
  result.tensors = tensors.size();
  result.bytes = total_bytes;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log::info("wrote {} ({} tensors, {}) in {:.2f} s", out.string(), result.tensors, human_bytes(total_bytes),
            result.seconds);
  if (const auto s = method.summary(); !s.empty()) log::info("{}", s);
  return result;
}

}  // namespace soupkit
