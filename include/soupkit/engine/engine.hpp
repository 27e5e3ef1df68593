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

#include <optional>
#include <span>
#include <optional>
#include <string>
#include <vector>

namespace soupkit {

// What the engine tells a method when it plans: the run's shape and the
// memory policy every method follows.
struct PlanContext {
  int ranks = 1;
  std::uint64_t memory_budget = ~0ull;  // bytes one rank may use
  // The largest block (bytes) a method reads, converts or writes at once
  // when it streams a tensor in row ranges (at least one row): the engine's
  // one chunk-size rule, chunk_bytes_for(memory_budget). A method may use
  // less, never more.
  std::uint64_t chunk_bytes = 64ull << 20;
  fs::path output;
  // The fewest ranks any node of the job has (fewest_ranks_per_node): a
  // method holding data once per node in shared memory (transplant's
  // dictionary) counts 1/ranks_per_node of it per rank, the tightest share.
  int ranks_per_node = 1;
};

// The engine's rule: an eighth of the budget (a streaming method holds a
// few blocks at once), between 64 KiB and 64 MiB (larger blocks gain
// nothing in throughput; docs/benchmarks.md).
std::uint64_t chunk_bytes_for(std::uint64_t memory_budget);
PlanContext make_plan_context(int ranks, std::uint64_t memory_budget, const fs::path& output, int ranks_per_node = 1);

// Where an output tensor is computed: by one rank, or by all ranks together
// on a process grid (ScaLAPACK, or any split of one tensor's work).
enum class Placement { Rank, Grid };

// A method's plan for one output tensor; the engine places it.
struct TaskPlan {
  double seconds = 0;      // estimated on one rank (only ratios matter: the schedule balances them)
  double peak_bytes = 0;   // estimated peak memory of the one rank computing it alone
  // Estimated peak per rank when all ranks compute it together; negative
  // when the method has no grid computation for this tensor.
  double grid_peak_bytes = -1;
  // The method asks for the grid (its own speed rule, or a user option); the
  // engine also moves a task there when peak_bytes is over the budget.
  bool wants_grid = false;
  // What the user can do when it does not fit, for the refusal's message
  // (empty: the engine's, which depends on where the task was placed).
  std::string advice;
  // Where its inputs are (CheckpointReader::location), for --dry-run.
  std::vector<std::string> sources;
  // What --dry-run says the method will do with it, when not the obvious
  // ("kept: missing from the base"); coordinator only.
  std::string note;

  Placement placement = Placement::Rank;  // decided by the engine (place_tasks)
  bool on_grid() const { return placement == Placement::Grid; }
  // The memory the engine holds the task to where it is placed.
  double planned_bytes() const { return on_grid() ? grid_peak_bytes : peak_bytes; }
};

// What a method plans on the coordinator: the output, one task per output
// tensor (same order), and its own state for every rank, a typed struct
// that serialises itself with nlohmann's to_json/from_json (e.g. by
// NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE).
struct MethodPlan {
  OutputSpec output;
  std::vector<TaskPlan> tasks;
  PlanContext context;         // what plan() was given (set by the engine; prepare() reads it on every rank)
  std::string state = "null";  // the serialised state (set_state)

  template <class State>
  void set_state(const State& value) {
    state = nlohmann::json(value).dump();
  }
  template <class State>
  State get_state() const {
    return nlohmann::json::parse(state).get<State>();
  }
};

// The engine's memory policy on a plan: every task goes where it fits (to
// the grid when the method asks or it is over the budget on one rank), and
// a task that fits nowhere is refused (InputError) with the method's advice.
void place_tasks(MethodPlan& plan, const PlanContext& context);

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
  // Coordinator only: read input headers, validate everything, plan within
  // the context's memory policy.
  virtual MethodPlan plan(const PlanContext& context) = 0;
  // Every rank, with the coordinator's plan: open inputs for reading.
  virtual void prepare(const MethodPlan& plan) = 0;
  // Owner rank: compute output tensor `index` and write all its rows
  // through `writer` (whole, or row range by row range to bound memory).
  // Returns what the method wants to report about it (or null).
  virtual nlohmann::json compute(std::size_t index, CheckpointWriter& writer) = 0;
  // All ranks of `group`, together, for a tensor placed on the grid:
  // compute it and write it through `writer` (each rank its own rows). The
  // group's rank 0 returns the record. The engine agrees on a failure over
  // the group before anyone goes on; inside, a method agrees (collectively,
  // agree_on_failure) before each collective step that a failure on one
  // rank could leave the others waiting in.
  virtual nlohmann::json compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer);
  // Coordinator: where aux file `index` of the output spec comes from.
  virtual AuxSource aux_contents(std::size_t index) = 0;
  // Coordinator, just before the output is committed: every tensor's record (in
  // output order), to report and summarise.
  virtual void finish(const std::vector<nlohmann::json>& records, double seconds) {
    (void)records;
    (void)seconds;
  }
  // Set by the engine on the coordinator just before finish(): the
  // output's provenance as planned, with the soupkit version, and the run
  // ("run": ranks, host, start time; never in the output, whose bytes do
  // not depend on them), for the method's JSON report.
  void set_provenance(nlohmann::json provenance) { provenance_ = std::move(provenance); }

 protected:
  // The provenance for a JSON report of a run that took `seconds`.
  nlohmann::json report_provenance(double seconds) const {
    nlohmann::json p = provenance_;
    if (p.is_object()) p["run"]["seconds"] = seconds;
    return p;
  }

 private:
  nlohmann::json provenance_ = nlohmann::json::object();
};

// Assigns tasks to ranks, largest cost first onto the least-loaded rank
// (deterministic for a given cost list and rank count).
std::vector<int> assign_owners(const std::vector<double>& costs, int ranks);

// How the coordinator shows progress (--progress): auto = a bar when the
// user's terminal shows stderr, lines otherwise, nothing when the log level
// is above info (--quiet); bar and lines are shown whatever the log level.
enum class ProgressMode { Auto, Bar, Lines, None };
// "auto", "bar", "lines", "none"; nullopt for anything else.
std::optional<ProgressMode> parse_progress_mode(const std::string& text);

struct RunOptions {
  // Bytes one rank may use (--memory-budget; default_memory_budget).
  std::uint64_t memory_budget = ~0ull;
  bool dry_run = false;  // print the plan and stop before writing anything
  // Continue the partial output a killed run left (its journal says which
  // tensors are done; each is verified by checksum). Without a journal,
  // starts from scratch, so a requeued job can always pass it.
  bool resume = false;
  ProgressMode progress = ProgressMode::Auto;
  double progress_interval = 5;  // seconds between progress lines (--progress lines)
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
// the ranks on this node (collective on comm). Available means the smaller
// of /proc/meminfo's MemAvailable and the memory limit of this process's
// cgroup (Slurm's --mem, a container's limit), as cgroup_memory_limit finds it.
std::uint64_t default_memory_budget(const Communicator& comm);
// Collective: the fewest ranks that share a node (MPI_COMM_TYPE_SHARED), over all nodes of `comm`.
int fewest_ranks_per_node(const Communicator& comm);

// The tightest memory limit on the cgroup a process is in (v2 memory.max or
// v1 memory.limit_in_bytes, of its cgroup and every ancestor), read from
// `proc_self_cgroup` (the /proc/self/cgroup text) under `cgroup_root`
// (/sys/fs/cgroup). nullopt when no limit is set or none can be read.
std::optional<std::uint64_t> cgroup_memory_limit(const std::string& proc_self_cgroup, const fs::path& cgroup_root);

}  // namespace soupkit
