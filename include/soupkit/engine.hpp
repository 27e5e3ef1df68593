#pragma once
// The one engine every command runs on. A Method (convert, monosoup, soups,
// transplant) is a small strategy: on the coordinator (rank 0) it reads
// headers, validates and describes the output; on every rank it computes the
// output tensors it is given. The engine shares the plan, assigns tensors to
// ranks, streams results into the writer and turns any rank's failure into a
// clean collective stop with nothing left at the output path.
#include "soupkit/checkpoint.hpp"
#include "soupkit/communicator.hpp"

#include <nlohmann/json.hpp>

#include <span>
#include <string>
#include <vector>

namespace soupkit {

// What a method plans on the coordinator.
struct MethodPlan {
  OutputSpec output;
  std::vector<double> costs;                     // estimated cost per output tensor (seconds-ish units)
  // Tensors computed by a group of ranks together (a ScaLAPACK grid) rather
  // than by one rank; empty means none.
  std::vector<bool> grid;
  nlohmann::json state = nlohmann::json::object();  // method-specific data every rank needs
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // Coordinator only: read input headers, validate everything, plan.
  virtual MethodPlan plan() = 0;
  // Every rank, with the coordinator's plan: open inputs for reading.
  virtual void prepare(const MethodPlan& plan) = 0;
  // Owner rank: compute output tensor `index` into `out` (exactly its
  // bytes). Returns what the method wants to report about it (or null).
  virtual nlohmann::json compute(std::size_t index, std::span<std::byte> out) = 0;
  // All ranks of `group`, together, for a tensor the plan marks as a grid
  // task: compute it and write it through `writer` (each rank its own rows).
  // Must fail on all ranks of the group alike (agree before throwing).
  // The group's rank 0 returns the record.
  virtual nlohmann::json compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer);
  // Coordinator: contents of aux file `index` of the output spec.
  virtual std::string aux_contents(std::size_t index) = 0;
  // Coordinator, after the output is committed: every tensor's record (in
  // output order), to report and summarise.
  virtual void finish(const std::vector<nlohmann::json>& records, double seconds) {
    (void)records;
    (void)seconds;
  }
};

// Assigns tasks to ranks, largest cost first onto the least-loaded rank
// (deterministic for a given cost list and rank count).
std::vector<int> assign_owners(const std::vector<double>& costs, int ranks);

struct RunResult {
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  double busy_max = 0;       // seconds the busiest rank spent computing and writing
  double load_balance = 1;   // sum of busy time / (ranks x busy_max)
};

// Runs a method end to end, collectively on `comm`, writing to `out`.
RunResult run_method(const Communicator& comm, Method& method, const fs::path& out);

}  // namespace soupkit
