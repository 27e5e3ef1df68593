#pragma once
// The one engine every command runs on. A Method (convert, monosoup, soups,
// transplant) is a small strategy: on the coordinator (rank 0) it reads
// headers, validates and describes the output; on every rank it computes the
// output tensors it is given. The engine shares the plan, assigns tensors to
// ranks, streams results into the writer and turns any rank's failure into a
// clean collective stop with nothing left at the output path.
#include "soupkit/io/checkpoint.hpp"
#include "soupkit/parallel/communicator.hpp"

#include <nlohmann/json.hpp>

#include <span>
#include <string>
#include <vector>

namespace soupkit {

// What a method plans on the coordinator.
struct MethodPlan {
  OutputSpec output;
  std::vector<double> costs;   // estimated seconds on one rank, per output tensor
  std::vector<double> memory;  // estimated peak bytes on one rank (per grid rank for grid tasks)
  // Tensors computed by a group of ranks together (a ScaLAPACK grid) rather
  // than by one rank; empty means none.
  std::vector<bool> grid;
  // Per output tensor, where its inputs are (CheckpointReader::location),
  // for --dry-run; empty means not given.
  std::vector<std::vector<std::string>> sources;
  nlohmann::json state = nlohmann::json::object();  // method-specific data every rank needs
};

// The contents of an output's carried file: a reader's carried file, copied
// in blocks of kAuxCopyBlockBytes (never held whole), or bytes the method
// made itself (a rewritten config).
struct AuxSource {
  const CheckpointReader* reader = nullptr;  // copy carried file `name` of this reader
  std::string name;
  std::string contents;  // when reader is null
  static AuxSource copy_of(const CheckpointReader& reader, std::string name) { return {&reader, std::move(name), {}}; }
  static AuxSource bytes(std::string contents) { return {nullptr, {}, std::move(contents)}; }
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // Coordinator only: read input headers, validate everything, plan.
  virtual MethodPlan plan() = 0;
  // Every rank, with the coordinator's plan: open inputs for reading.
  virtual void prepare(const MethodPlan& plan) = 0;
  // Owner rank: compute output tensor `index` and write all its rows
  // through `writer` (whole, or row range by row range to bound memory).
  // Returns what the method wants to report about it (or null).
  virtual nlohmann::json compute(std::size_t index, CheckpointWriter& writer) = 0;
  // All ranks of `group`, together, for a tensor the plan marks as a grid
  // task: compute it and write it through `writer` (each rank its own rows).
  // Must fail on all ranks of the group alike (agree before throwing).
  // The group's rank 0 returns the record.
  virtual nlohmann::json compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer);
  // Coordinator: where aux file `index` of the output spec comes from.
  virtual AuxSource aux_contents(std::size_t index) = 0;
  // Coordinator, just before the output is committed: every tensor's record (in
  // output order), to report and summarise.
  virtual void finish(const std::vector<nlohmann::json>& records, double seconds) {
    (void)records;
    (void)seconds;
  }
};

// Assigns tasks to ranks, largest cost first onto the least-loaded rank
// (deterministic for a given cost list and rank count).
std::vector<int> assign_owners(const std::vector<double>& costs, int ranks);

struct RunOptions {
  bool dry_run = false;  // print the plan and stop before writing anything
  // Continue the partial output a killed run left (its journal says which
  // tensors are done; each is verified by checksum). Without a journal,
  // starts from scratch, so a requeued job can always pass it.
  bool resume = false;
};

struct RunResult {
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  double busy_max = 0;          // seconds the busiest rank spent computing and writing
  double load_balance = 1;      // sum of busy time / (ranks x busy_max)
  std::uint64_t peak_rss = 0;   // largest peak resident memory of any rank, bytes
  std::uint64_t base_rss = 0;   // resident memory of that rank before the run started
};

// Runs a method end to end, collectively on `comm`, writing to `out`.
RunResult run_method(const Communicator& comm, Method& method, const fs::path& out, const RunOptions& options = {});

// This process's peak and current resident set sizes, in bytes.
std::uint64_t peak_rss_bytes();
std::uint64_t current_rss_bytes();

// Default --memory-budget: 80% of this node's available memory, shared by
// the ranks on this node (collective on comm).
std::uint64_t default_memory_budget(const Communicator& comm);

}  // namespace soupkit
