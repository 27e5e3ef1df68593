#include "soupkit/engine.hpp"

#include "progress.hpp"
#include "soupkit/error.hpp"
#include "soupkit/log.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <numeric>

namespace soupkit {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

nlohmann::json plan_to_json(const MethodPlan& plan) {
  return {{"output", plan.output.to_json()}, {"costs", plan.costs}, {"memory", plan.memory},
          {"grid", plan.grid},               {"state", plan.state}};
}

MethodPlan plan_from_json(const nlohmann::json& j) {
  MethodPlan plan;
  plan.output = OutputSpec::from_json(j.at("output"));
  plan.costs = j.at("costs").get<std::vector<double>>();
  plan.memory = j.at("memory").get<std::vector<double>>();
  plan.grid = j.at("grid").get<std::vector<bool>>();
  plan.state = j.at("state");
  const std::size_t n = plan.output.tensors.size();
  if (plan.grid.empty()) plan.grid.assign(n, false);
  if (plan.memory.empty())
    for (const auto& t : plan.output.tensors) plan.memory.push_back(static_cast<double>(t.nbytes()));
  SOUPKIT_ERROR_IF(plan.costs.size() != n || plan.grid.size() != n || plan.memory.size() != n,
                   "internal: plan has {} costs, {} memory estimates and {} grid flags for {} tensors",
                   plan.costs.size(), plan.memory.size(), plan.grid.size(), n);
  return plan;
}

// Messages between workers and the coordinator while tensors are computed,
// on a communicator of their own (so nothing left over can reach another
// run): each finished tensor (for progress), a failure, and "this rank is
// done". When any rank fails, the coordinator tells every rank to stop after
// its current tensor, so a failure stops the job promptly.
constexpr int kWorkerTag = 7001;
constexpr int kStopTag = 7002;
constexpr long long kRankFinished = -1;
constexpr long long kRankFailed = -2;

class WorkChannel {
 public:
  WorkChannel(const Communicator& comm, const std::vector<TensorInfo>& tensors, Progress* progress)
      : comm_(comm.split(0, comm.rank())), tensors_(tensors), progress_(progress) {}

  ~WorkChannel() {
    if (!requests_.empty()) MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }

  // Any rank: tensor `index` is done.
  void tensor_done(std::size_t index) {
    if (comm_.is_root()) {
      advance(index);
      poll();
    } else {
      send(0, kWorkerTag, static_cast<long long>(index));
    }
  }

  // Any rank: this rank failed (and will stop).
  void failed() {
    if (comm_.is_root())
      stop_everyone();
    else
      send(0, kWorkerTag, kRankFailed);
  }

  // Should this rank stop before its next tensor?
  bool stop_requested() {
    if (comm_.is_root()) {
      poll();
      return stopping_;
    }
    if (!stopping_) {
      int flag = 0;
      MPI_Iprobe(0, kStopTag, comm_.get(), &flag, MPI_STATUS_IGNORE);
      if (flag) {
        long long value = 0;
        MPI_Recv(&value, 1, MPI_LONG_LONG, 0, kStopTag, comm_.get(), MPI_STATUS_IGNORE);
        stopping_ = true;
      }
    }
    return stopping_;
  }

  // Any rank, once: no more tensors from this rank. On the coordinator,
  // waits for every other rank to say the same.
  void rank_finished() {
    if (!comm_.is_root()) {
      send(0, kWorkerTag, kRankFinished);
      return;
    }
    while (finished_ranks_ < comm_.size() - 1) receive_one(true);
    progress_->finish();
  }

 private:
  void send(int to, int tag, long long value) {
    messages_.push_back(std::make_unique<long long>(value));
    requests_.emplace_back();
    MPI_Isend(messages_.back().get(), 1, MPI_LONG_LONG, to, tag, comm_.get(), &requests_.back());
  }
  void advance(std::size_t index) { progress_->advance(tensors_[index].nbytes(), tensors_[index].name); }
  void stop_everyone() {
    if (stopping_) return;
    stopping_ = true;
    for (int r = 1; r < comm_.size(); ++r) send(r, kStopTag, 1);
  }
  void poll() {
    while (receive_one(false)) {
    }
  }
  bool receive_one(bool block) {
    int flag = 1;
    if (!block) MPI_Iprobe(MPI_ANY_SOURCE, kWorkerTag, comm_.get(), &flag, MPI_STATUS_IGNORE);
    if (!flag) return false;
    long long value = 0;
    MPI_Recv(&value, 1, MPI_LONG_LONG, MPI_ANY_SOURCE, kWorkerTag, comm_.get(), MPI_STATUS_IGNORE);
    if (value == kRankFinished)
      ++finished_ranks_;
    else if (value == kRankFailed)
      stop_everyone();
    else
      advance(static_cast<std::size_t>(value));
    return true;
  }

  Communicator comm_;
  const std::vector<TensorInfo>& tensors_;
  Progress* progress_;
  std::vector<std::unique_ptr<long long>> messages_;
  std::vector<MPI_Request> requests_;
  int finished_ranks_ = 0;
  bool stopping_ = false;
};

// What --dry-run prints: the plan per rank, without touching the output.
void print_plan(const MethodPlan& plan, const std::vector<int>& owner, int ranks, const fs::path& out,
                const std::string& method) {
  const auto& tensors = plan.output.tensors;
  std::vector<double> seconds(static_cast<std::size_t>(ranks), 0.0), memory(static_cast<std::size_t>(ranks), 0.0);
  std::vector<std::size_t> count(static_cast<std::size_t>(ranks), 0);
  std::uint64_t bytes = 0;
  std::size_t grid_tasks = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    bytes += tensors[i].nbytes();
    if (plan.grid[i]) {
      ++grid_tasks;
      for (int r = 0; r < ranks; ++r) {
        seconds[r] += plan.costs[i] / ranks;
        memory[r] = std::max(memory[r], plan.memory[i]);
      }
      continue;
    }
    const auto r = static_cast<std::size_t>(owner[i]);
    seconds[r] += plan.costs[i];
    memory[r] = std::max(memory[r], plan.memory[i]);
    ++count[r];
  }
  std::printf("plan: %s -> %s\n", method.c_str(), out.c_str());
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

std::uint64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
}

std::uint64_t current_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

std::uint64_t default_memory_budget(const Communicator& comm) {
  std::uint64_t available = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    std::uint64_t kib = 0;
    std::string unit;
    meminfo >> kib >> unit;
    if (key == "MemAvailable:") available = kib * 1024;
  }
  if (available == 0) available = static_cast<std::uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(comm.get(), MPI_COMM_TYPE_SHARED, comm.rank(), MPI_INFO_NULL, &node);
  const Communicator node_comm = Communicator::adopt(node);
  // Every rank of a node sees the same figure; take the smallest across all
  // nodes so the plan (made on rank 0) is safe everywhere.
  const double share = 0.8 * static_cast<double>(available) / node_comm.size();
  return static_cast<std::uint64_t>(-comm.max(-share));
}

RunResult run_method(const Communicator& comm, Method& method, const fs::path& out, const RunOptions& options) {
  const auto start = Clock::now();
  const std::uint64_t base_rss = current_rss_bytes();

  // 1. The coordinator plans and validates; nobody does heavy work before it says go.
  std::string plan_text;
  on_root(comm, [&] { plan_text = plan_to_json(method.plan()).dump(); });
  const MethodPlan plan = plan_from_json(nlohmann::json::parse(comm.broadcast(plan_text)));
  const auto& tensors = plan.output.tensors;

  // Grid tasks load every rank alike; the rest are balanced over ranks.
  std::vector<double> single_costs = plan.costs;
  std::vector<std::size_t> grid_tasks;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (plan.grid[i]) {
      grid_tasks.push_back(i);
      single_costs[i] = 0;
    }
  const std::vector<int> owner = assign_owners(single_costs, comm.size());
  if (options.dry_run) {
    if (comm.is_root()) print_plan(plan, owner, comm.size(), out, method.name());
    return {};
  }
  collectively(comm, [&] { method.prepare(plan); });

  // 2. Every rank creates the output together.
  auto writer = create_checkpoint_writer(comm, out, plan.output);
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
  WorkChannel channel(comm, tensors, &progress);
  std::string error;
  nlohmann::json records = nlohmann::json::array();
  const auto busy_start = Clock::now();
  if (!grid_tasks.empty()) {
    // 3a. The largest matrices: all ranks together on a process grid.
    const Communicator group = comm.split(0, comm.rank());
    for (auto i : grid_tasks) {
      try {
        const auto t0 = Clock::now();
        nlohmann::json record = method.compute_grid(i, group, *writer);
        if (record.is_object()) record["seconds"] = seconds_since(t0);
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
    for (auto i : mine) {
      if (channel.stop_requested()) break;  // another rank failed: stop now
      try {
        const auto t0 = Clock::now();
        nlohmann::json record = method.compute(i, *writer);
        if (record.is_object()) record["seconds"] = seconds_since(t0);
        records.push_back({i, std::move(record)});
        channel.tensor_done(i);
      } catch (const std::exception& e) {
        error = fmt::format("rank {}: tensor '{}': {}", comm.rank(), tensors[i].name, e.what());
        channel.failed();
        break;
      }
    }
  }
  if (error.empty() && comm.is_root() && !channel.stop_requested()) {
    try {
      for (std::size_t a = 0; a < plan.output.aux_files.size(); ++a) writer->write_aux(a, method.aux_contents(a));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  const double busy = seconds_since(busy_start);
  channel.rank_finished();

  // 4. Commit only if every rank succeeded.
  try {
    agree_on_failure(comm, error);
  } catch (...) {
    writer->discard();
    throw;
  }
  writer->commit();
  const auto parts = comm.gather(records.dump());

  RunResult result;
  result.tensors = tensors.size();
  result.bytes = total_bytes;
  result.seconds = seconds_since(start);
  // Load balance: sum of busy time over ranks / (ranks x the slowest); 1 = perfect.
  result.busy_max = comm.max(busy);
  result.load_balance = result.busy_max > 0 ? comm.sum(busy) / (comm.size() * result.busy_max) : 1.0;
  // Memory: the rank with the largest growth over its starting footprint.
  const double growth = static_cast<double>(peak_rss_bytes()) - static_cast<double>(base_rss);
  const double max_growth = comm.max(growth);
  result.peak_rss = static_cast<std::uint64_t>(comm.max(static_cast<double>(peak_rss_bytes())));
  result.base_rss = static_cast<std::uint64_t>(result.peak_rss - max_growth);
  log::info("wrote {} ({} tensors, {}) in {:.2f} s; busiest rank {:.2f} s, load balance {:.0f}%, peak memory {} "
            "(+{} over the {} at start)",
            out.string(), result.tensors, human_bytes(total_bytes), result.seconds, result.busy_max,
            100 * result.load_balance, human_bytes(result.peak_rss), human_bytes(static_cast<std::uint64_t>(max_growth)),
            human_bytes(result.base_rss));
  on_root(comm, [&] {
    std::vector<nlohmann::json> by_tensor(tensors.size());
    for (const auto& part : parts)
      for (const auto& entry : nlohmann::json::parse(part)) by_tensor.at(entry[0].get<std::size_t>()) = entry[1];
    method.finish(by_tensor, result.seconds);
  });
  return result;
}

}  // namespace soupkit
