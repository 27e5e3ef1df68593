#include "soupkit/engine.hpp"

#include "progress.hpp"
#include "soupkit/error.hpp"
#include "soupkit/log.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>

namespace soupkit {
namespace {

nlohmann::json plan_to_json(const MethodPlan& plan) {
  return {{"output", plan.output.to_json()}, {"costs", plan.costs}, {"grid", plan.grid}, {"state", plan.state}};
}

MethodPlan plan_from_json(const nlohmann::json& j) {
  MethodPlan plan;
  plan.output = OutputSpec::from_json(j.at("output"));
  plan.costs = j.at("costs").get<std::vector<double>>();
  plan.grid = j.at("grid").get<std::vector<bool>>();
  plan.state = j.at("state");
  if (plan.grid.empty()) plan.grid.assign(plan.costs.size(), false);
  return plan;
}

// Workers tell the coordinator about each finished tensor (for progress) and
// then that they are done, with or without an error, so the coordinator
// never waits for a message that will not come.
constexpr int kProgressTag = 7001;
constexpr long long kRankFinished = -1;

class ProgressChannel {
 public:
  ProgressChannel(const Communicator& comm, const std::vector<TensorInfo>& tensors, Progress* progress)
      : comm_(comm), tensors_(tensors), progress_(progress) {}

  // Any rank: tensor `index` is done.
  void tensor_done(std::size_t index) {
    if (comm_.is_root()) {
      progress_->advance(tensors_[index].nbytes(), tensors_[index].name);
      poll();
    } else {
      send(static_cast<long long>(index));
    }
  }

  // Any rank, once: no more tensors from this rank. On the coordinator,
  // waits for every other rank to say the same.
  void rank_finished() {
    if (!comm_.is_root()) {
      send(kRankFinished);
      MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
      return;
    }
    while (finished_ranks_ < comm_.size() - 1) receive_one(true);
    progress_->finish();
  }

 private:
  void send(long long value) {
    messages_.push_back(std::make_unique<long long>(value));
    requests_.emplace_back();
    MPI_Isend(messages_.back().get(), 1, MPI_LONG_LONG, 0, kProgressTag, comm_.get(), &requests_.back());
  }
  void poll() {
    while (receive_one(false)) {
    }
  }
  bool receive_one(bool block) {
    int flag = 1;
    MPI_Status status;
    if (!block) MPI_Iprobe(MPI_ANY_SOURCE, kProgressTag, comm_.get(), &flag, &status);
    if (!flag) return false;
    long long value = 0;
    MPI_Recv(&value, 1, MPI_LONG_LONG, MPI_ANY_SOURCE, kProgressTag, comm_.get(), MPI_STATUS_IGNORE);
    if (value == kRankFinished)
      ++finished_ranks_;
    else
      progress_->advance(tensors_[static_cast<std::size_t>(value)].nbytes(), tensors_[static_cast<std::size_t>(value)].name);
    return true;
  }

  const Communicator& comm_;
  const std::vector<TensorInfo>& tensors_;
  Progress* progress_;
  std::vector<std::unique_ptr<long long>> messages_;
  std::vector<MPI_Request> requests_;
  int finished_ranks_ = 0;
};

}  // namespace

nlohmann::json Method::compute_grid(std::size_t index, const Communicator&, CheckpointWriter&) {
  throw Error(fmt::format("internal: {} has no distributed computation for tensor {}", name(), index));
}

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
  SOUPKIT_ERROR_IF(plan.costs.size() != tensors.size() || plan.grid.size() != tensors.size(),
                   "internal: plan has {} costs and {} grid flags for {} tensors", plan.costs.size(), plan.grid.size(),
                   tensors.size());
  collectively(comm, [&] { method.prepare(plan); });

  // 2. Every rank creates the output together.
  auto writer = create_checkpoint_writer(comm, out, plan.output);
  // Grid tasks load every rank alike; the rest are balanced over ranks.
  std::vector<double> single_costs = plan.costs;
  std::vector<std::size_t> grid_tasks;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (plan.grid[i]) {
      grid_tasks.push_back(i);
      single_costs[i] = 0;
    }
  const std::vector<int> owner = assign_owners(single_costs, comm.size());
  std::uint64_t total_bytes = 0;
  for (const auto& t : tensors) total_bytes += t.nbytes();
  log::info("{}: {} tensors, {} -> {} on {} rank{}", method.name(), tensors.size(), human_bytes(total_bytes),
            out.string(), comm.size(), comm.size() == 1 ? "" : "s");

  // 3. Each rank computes and writes the tensors it owns, largest first.
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (!plan.grid[i] && owner[i] == comm.rank()) mine.push_back(i);
  std::stable_sort(mine.begin(), mine.end(), [&](std::size_t a, std::size_t b) { return plan.costs[a] > plan.costs[b]; });
  Progress progress(method.name(), tensors.size(), total_bytes);
  ProgressChannel channel(comm, tensors, &progress);
  std::string error;
  nlohmann::json records = nlohmann::json::array();
  const auto busy_start = std::chrono::steady_clock::now();
  double waiting = 0;  // time the coordinator spends waiting for others, not working
  if (!grid_tasks.empty()) {
    // 3a. The largest matrices: all ranks together on a process grid.
    const Communicator group = comm.split(0, comm.rank());
    for (auto i : grid_tasks) {
      try {
        const auto t0 = std::chrono::steady_clock::now();
        nlohmann::json record = method.compute_grid(i, group, *writer);
        if (record.is_object())
          record["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (group.is_root()) {
          records.push_back({i, std::move(record)});
          channel.tensor_done(i);
        }
      } catch (const std::exception& e) {
        error = fmt::format("tensor '{}' (on a {}-rank grid): {}", tensors[i].name, group.size(), e.what());
        break;
      }
    }
  }
  if (error.empty()) {
    std::vector<std::byte> buffer;
    for (auto i : mine) {
      try {
        const auto t0 = std::chrono::steady_clock::now();
        buffer.resize(tensors[i].nbytes());
        nlohmann::json record = method.compute(i, buffer);
        writer->write(i, buffer);
        if (record.is_object())
          record["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        records.push_back({i, std::move(record)});
        channel.tensor_done(i);
      } catch (const std::exception& e) {
        error = fmt::format("rank {}: tensor '{}': {}", comm.rank(), tensors[i].name, e.what());
        break;
      }
    }
  }
  if (error.empty() && comm.is_root()) {
    try {
      for (std::size_t a = 0; a < plan.output.aux_files.size(); ++a) writer->write_aux(a, method.aux_contents(a));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  const double busy = std::chrono::duration<double>(std::chrono::steady_clock::now() - busy_start).count();
  {
    const auto wait_start = std::chrono::steady_clock::now();
    channel.rank_finished();
    waiting = std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
  }
  (void)waiting;

  // 4. Commit only if every rank succeeded.
  try {
    agree_on_failure(comm, error);
  } catch (...) {
    writer->discard();
    throw;
  }
  writer->commit();
  const auto parts = comm.gather(records.dump());
  // Load balance: sum of busy time over ranks x the slowest (1.0 = perfect).
  const double busy_max = comm.max(busy), busy_sum = comm.sum(busy);

  RunResult result;
  result.tensors = tensors.size();
  result.bytes = total_bytes;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.busy_max = busy_max;
  result.load_balance = busy_max > 0 ? busy_sum / (comm.size() * busy_max) : 1.0;
  log::info("wrote {} ({} tensors, {}) in {:.2f} s; compute {:.2f} s on the busiest rank, load balance {:.0f}%",
            out.string(), result.tensors, human_bytes(total_bytes), result.seconds, busy_max, 100 * result.load_balance);
  on_root(comm, [&] {
    std::vector<nlohmann::json> by_tensor(tensors.size());
    for (const auto& part : parts)
      for (const auto& entry : nlohmann::json::parse(part)) by_tensor.at(entry[0].get<std::size_t>()) = entry[1];
    method.finish(by_tensor, result.seconds);
  });
  return result;
}

}  // namespace soupkit
