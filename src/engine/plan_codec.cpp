#include "plan_codec.hpp"

#include "soupkit/util/error.hpp"

namespace soupkit {

std::string encode_plan(const MethodPlan& plan) {
  nlohmann::json tasks = nlohmann::json::array();
  for (const TaskPlan& t : plan.tasks)
    tasks.push_back({t.seconds, t.peak_bytes, t.grid_peak_bytes, t.wants_grid, t.on_grid()});
  const PlanContext& c = plan.context;
  const nlohmann::json context = {c.ranks, c.memory_budget, c.chunk_bytes, c.output.string(), c.ranks_per_node};
  return nlohmann::json{{"output", plan.output.to_json()}, {"tasks", tasks}, {"context", context}, {"state", plan.state}}
      .dump();
}

MethodPlan decode_plan(const std::string& text) {
  const auto j = nlohmann::json::parse(text);
  MethodPlan plan;
  plan.output = OutputSpec::from_json(j.at("output"));
  for (const auto& t : j.at("tasks")) {
    TaskPlan task;
    task.seconds = t.at(0).get<double>();
    task.peak_bytes = t.at(1).get<double>();
    task.grid_peak_bytes = t.at(2).get<double>();
    task.wants_grid = t.at(3).get<bool>();
    task.placement = t.at(4).get<bool>() ? Placement::Grid : Placement::Rank;
    plan.tasks.push_back(std::move(task));
  }
  const auto& c = j.at("context");
  plan.context = {c.at(0).get<int>(), c.at(1).get<std::uint64_t>(), c.at(2).get<std::uint64_t>(),
                  c.at(3).get<std::string>(), c.at(4).get<int>()};
  plan.state = j.at("state").get<std::string>();
  SOUPKIT_ERROR_IF(plan.tasks.size() != plan.output.tensors.size(), "internal: plan has {} tasks for {} tensors",
                   plan.tasks.size(), plan.output.tensors.size());
  return plan;
}

}  // namespace soupkit
