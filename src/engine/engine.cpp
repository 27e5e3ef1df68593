#include "soupkit/engine/engine.hpp"

#include "journal.hpp"
#include "soupkit/util/json_input.hpp"
#include "progress.hpp"
#include "work_channel.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <hdf5.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <set>
#include <chrono>
#include <fstream>
#include <numeric>

namespace soupkit {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

nlohmann::json plan_to_json(const MethodPlan& plan) {
  // Sources are for --dry-run on the coordinator only: not broadcast.
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

// Fault injection for the kill-and-resume tests: SOUPKIT_FAULT_KILL_AFTER=N
// makes the coordinator kill itself (SIGKILL, like an OOM kill or a node
// loss) right after journaling its N-th tensor of this run.
long fault_kill_after() {
  const char* text = std::getenv("SOUPKIT_FAULT_KILL_AFTER");
  return text ? std::strtol(text, nullptr, 10) : 0;
}

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
  std::printf("  %-40s %-6s %-18s %5s %9s %10s  %s\n", "tensor", "dtype", "shape", "rank", "est. s", "est. mem",
              "inputs");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    std::string inputs;
    if (i < plan.sources.size()) {
      const auto& s = plan.sources[i];
      for (std::size_t k = 0; k < s.size() && k < 2; ++k) inputs += (k ? ", " : "") + s[k];
      if (s.size() > 2) inputs += fmt::format(" (+{} more)", s.size() - 2);
    }
    std::printf("  %-40s %-6s %-18s %5s %9.3f %10s  %s\n", tensors[i].name.c_str(),
                std::string(dtype_name(tensors[i].dtype)).c_str(), shape_string(tensors[i].shape).c_str(),
                plan.grid[i] ? "grid" : std::to_string(owner[i]).c_str(), plan.costs[i],
                human_bytes(static_cast<std::uint64_t>(plan.memory[i])).c_str(), inputs.c_str());
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
  const Communicator node_comm = comm.split_shared();
  // Every rank of a node sees the same figure; take the smallest across all
  // nodes so the plan (made on rank 0) is safe everywhere.
  const double share = 0.8 * static_cast<double>(available) / node_comm.size();
  return static_cast<std::uint64_t>(-comm.max(-share));
}

namespace {

// The identity of a job's output for its journal: everything that decides
// the output's bytes (tensors, dtypes, shapes, metadata, method parameters
// and sources, aux files, shard size), not how it is run.
std::string output_fingerprint(const OutputSpec& spec) {
  nlohmann::json j = spec.to_json();
  j.erase("overwrite");
  return fingerprint_of(j);
}

// --resume: every rank re-reads a share of the journaled tensors from the
// partial output and checks their checksums. Returns, on all ranks, the
// indices that passed.
std::set<std::size_t> verify_finished(const Communicator& comm, CheckpointWriter& writer,
                                      const std::vector<std::pair<std::size_t, std::uint64_t>>& journaled) {
  std::vector<double> bytes;
  for (const auto& [i, checksum] : journaled) bytes.push_back(static_cast<double>(writer.spec().tensors[i].nbytes()));
  const std::vector<int> verifier = assign_owners(bytes, comm.size());
  std::vector<std::size_t> good;
  std::string error;
  try {
    for (std::size_t k = 0; k < journaled.size(); ++k)
      if (verifier[k] == comm.rank() && writer.checksum_written(journaled[k].first) == journaled[k].second)
        good.push_back(journaled[k].first);
  } catch (const std::exception& e) {
    error = e.what();
  }
  agree_on_failure(comm, error);
  std::set<std::size_t> passed;
  for (const auto& part : comm.gather(nlohmann::json(good).dump()))
    for (const auto& i : nlohmann::json::parse(part)) passed.insert(i.get<std::size_t>());
  const auto all = nlohmann::json::parse(comm.broadcast(nlohmann::json(passed).dump()));
  return all.get<std::set<std::size_t>>();
}

std::vector<std::string> tensor_names(const std::vector<TensorInfo>& tensors) {
  std::vector<std::string> names;
  for (const auto& t : tensors) names.push_back(t.name);
  return names;
}

// soupkit removes or resumes a partial output only if it can prove it made
// it: the journal beside it names it. Anything else at that path is the
// user's (or an unrelated program's).
void check_partial_is_ours(const Journal& journal, const fs::path& partial) {
  std::error_code ec;
  SOUPKIT_INPUT_ERROR_IF(fs::symlink_status(partial, ec).type() != fs::file_type::not_found &&
                             !journal.owns_partial(partial),
                         "{} exists but soupkit did not create it (no soupkit journal beside it names it); move it "
                         "away or choose another output",
                         partial.string());
}

// Method::finish on the coordinator; its error message, or empty. A
// journal is named when records came from it (`resumed_from`).
std::string finish_method(Method& method, const std::vector<nlohmann::json>& records, double seconds,
                          const Journal* resumed_from) {
  try {
    method.finish(records, seconds);
  } catch (const nlohmann::json::exception& e) {
    if (!resumed_from) return e.what();
    return fmt::format("{}: a journaled tensor record is unusable ({}); run without --resume to start over",
                       resumed_from->path().string(), json_error_text(e));
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// Writes aux file `index` of the output from its source, a block at a time:
// a carried file of any size costs one block of memory.
void write_aux_file(CheckpointWriter& writer, std::size_t index, const AuxSource& source) {
  const AuxFileInfo& info = writer.spec().aux_files.at(index);
  if (!source.reader) {
    SOUPKIT_ERROR_IF(source.contents.size() != info.size, "{}: file '{}': {} bytes planned, {} made",
                     writer.path().string(), printable(info.name), info.size, source.contents.size());
    writer.write_aux(index, source.contents);
    return;
  }
  std::vector<std::byte> block(std::min(info.size, kAuxCopyBlockBytes));
  std::uint64_t offset = 0;
  do {
    const auto bytes = static_cast<std::size_t>(std::min<std::uint64_t>(block.size(), info.size - offset));
    const auto span = std::span(block).first(bytes);
    source.reader->read_aux_block(source.name, offset, span);
    writer.write_aux_block(index, offset, span);
    offset += span.size();
  } while (offset < info.size);
}

// HDF5 holds at most 32 dimensions (H5S_MAX_RANK); a deeper tensor would
// fail only when its dataset is created, naming the output, not the input.
void check_fits_output_format(const MethodPlan& plan, const fs::path& out) {
  if (output_kind(out) != OutputKind::Hdf5File) return;
  for (std::size_t i = 0; i < plan.output.tensors.size(); ++i) {
    const TensorInfo& t = plan.output.tensors[i];
    const std::string from = i < plan.sources.size() && !plan.sources[i].empty() ? plan.sources[i][0] : "the input";
    SOUPKIT_INPUT_ERROR_IF(t.shape.size() > H5S_MAX_RANK,
                           "{}: tensor '{}' has {} dimensions, more than the {} an HDF5 output holds (write "
                           ".safetensors or a model directory instead)",
                           from, printable(t.name), t.shape.size(), H5S_MAX_RANK);
  }
}

}  // namespace

RunResult run_method(const Communicator& comm, Method& method, const fs::path& out, const RunOptions& options) {
  // Every rank sees the same path, so all refuse alike. Checked before any
  // work: an empty path otherwise fails only at the final rename.
  SOUPKIT_INPUT_ERROR_IF(out.empty(), "the output path is empty");
  const auto start = Clock::now();
  const std::uint64_t base_rss = current_rss_bytes();

  // 1. The coordinator plans and validates; nobody does heavy work before it says go.
  std::string plan_text;
  std::vector<std::vector<std::string>> sources;
  on_root(comm, [&] {
    MethodPlan planned = method.plan();
    check_aux_files(planned.output.aux_files, out.string() + ": carried files");
    check_fits_output_format(planned, out);
    sources = std::move(planned.sources);
    plan_text = plan_to_json(planned).dump();
  });
  MethodPlan plan = plan_from_json(nlohmann::json::parse(comm.broadcast(plan_text)));
  plan.sources = std::move(sources);
  const auto& tensors = plan.output.tensors;

  // Grid tasks load every rank alike; the rest are balanced over ranks.
  std::vector<double> single_costs = plan.costs;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (plan.grid[i]) single_costs[i] = 0;
  if (options.dry_run) {
    if (comm.is_root()) print_plan(plan, assign_owners(single_costs, comm.size()), comm.size(), out, method.name());
    return {};
  }
  const fs::path partial = partial_output_path(out);
  collectively(comm, [&] { method.prepare(plan); });

  // 2. The coordinator locks the output through its journal and, with
  //    --resume, reads which tensors a previous run finished.
  std::unique_ptr<Journal> journal;
  nlohmann::json journaled_json;  // [[tensor, checksum], ...] finished by an earlier run
  std::unique_ptr<CheckpointWriter> writer;
  try {
    std::string finished_text;
    on_root(comm, [&] {
      journal = std::make_unique<Journal>(out, output_fingerprint(plan.output), options.resume, tensor_names(tensors));
      check_partial_is_ours(*journal, partial);
      if (!journal->finished().empty() && !fs::exists(partial)) {
        log::warn("{}: {} is gone; starting over", out.string(), partial.string());
        journal->restart(output_fingerprint(plan.output));
      }
      nlohmann::json finished = nlohmann::json::array();
      for (const auto& [i, entry] : journal->finished()) finished.push_back({i, entry.checksum});
      finished_text = finished.dump();
    });
    journaled_json = nlohmann::json::parse(comm.broadcast(finished_text));
    // 3. Every rank opens the output together: a new one, or the one a killed run left.
    writer = create_checkpoint_writer(comm, out, plan.output,
                                      journaled_json.empty() ? WriterMode::Create : WriterMode::Resume);
    on_root(comm, [&] { journal->record_partial(partial); });
  } catch (...) {
    // Nothing was written: leave no journal behind either.
    if (journal && journal->finished().empty()) journal->remove();
    throw;
  }
  const auto journaled = journaled_json.get<std::vector<std::pair<std::size_t, std::uint64_t>>>();
  std::uint64_t total_bytes = 0;
  for (const auto& t : tensors) total_bytes += t.nbytes();
  log::info("{}: {} tensors, {} -> {} on {} rank{}", method.name(), tensors.size(), human_bytes(total_bytes),
            out.string(), comm.size(), comm.size() == 1 ? "" : "s");
  std::set<std::size_t> done;
  if (!journaled.empty()) {
    done = verify_finished(comm, *writer, journaled);
    on_root(comm, [&] {
      for (const auto& [i, checksum] : journaled)
        if (!done.count(i)) journal->forget(i);
    });
    log::info("resuming: {} of {} tensors already written and verified by checksum{}", done.size(), tensors.size(),
              done.size() < journaled.size()
                  ? fmt::format(" ({} failed verification and will be recomputed)", journaled.size() - done.size())
                  : "");
  }

  // 4. Each rank computes and writes the tensors it owns, largest first.
  std::vector<double> remaining_costs = single_costs;
  for (auto i : done) remaining_costs[i] = 0;
  const std::vector<int> owner = assign_owners(remaining_costs, comm.size());
  std::vector<std::size_t> grid_tasks, mine;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (done.count(i)) continue;
    if (plan.grid[i])
      grid_tasks.push_back(i);
    else if (owner[i] == comm.rank())
      mine.push_back(i);
  }
  std::stable_sort(mine.begin(), mine.end(), [&](std::size_t a, std::size_t b) { return plan.costs[a] > plan.costs[b]; });

  // The coordinator's view of finished tensors: journal, records, progress.
  std::uint64_t done_bytes = 0;
  for (auto i : done) done_bytes += tensors[i].nbytes();
  Progress progress(method.name(), tensors.size(), total_bytes);
  progress.skip(done.size(), done_bytes);
  std::vector<nlohmann::json> records(comm.is_root() ? tensors.size() : 0);
  if (journal)
    for (const auto& [i, entry] : journal->finished()) records[i] = entry.record;
  const long kill_after = fault_kill_after();
  long journaled_now = 0;
  WorkChannel channel(comm, [&](std::size_t i, std::uint64_t checksum, nlohmann::json record) {
    journal->record(i, tensors[i].name, checksum, record);
    records.at(i) = std::move(record);
    progress.advance(tensors[i].nbytes(), tensors[i].name);
    if (kill_after > 0 && ++journaled_now == kill_after) std::raise(SIGKILL);
  });
  std::string error;
  const auto busy_start = Clock::now();
  if (!grid_tasks.empty()) {
    // 4a. The largest matrices: all ranks together on a process grid.
    const Communicator group = comm.split(0, comm.rank());
    for (auto i : grid_tasks) {
      try {
        const auto t0 = Clock::now();
        nlohmann::json record = method.compute_grid(i, group, *writer);
        if (record.is_object()) record["seconds"] = seconds_since(t0);
        const std::uint64_t checksum = group.sum(writer->take_checksum(i));
        if (group.is_root()) channel.tensor_done(i, checksum, std::move(record));
      } catch (const std::exception& e) {
        error = fmt::format("rank {}: tensor '{}' (on a {}-rank grid): {}", comm.rank(), printable(tensors[i].name),
                            group.size(),
                            e.what());
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
        channel.tensor_done(i, writer->take_checksum(i), std::move(record));
      } catch (const std::exception& e) {
        error = fmt::format("rank {}: tensor '{}': {}", comm.rank(), printable(tensors[i].name), e.what());
        channel.failed();
        break;
      }
    }
  }
  if (error.empty() && comm.is_root() && !channel.stop_requested()) {
    try {
      for (std::size_t a = 0; a < plan.output.aux_files.size(); ++a) write_aux_file(*writer, a, method.aux_contents(a));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  const double busy = seconds_since(busy_start);
  channel.rank_finished();
  if (error.empty() && !channel.error().empty()) error = "rank 0 (coordinator): " + channel.error();
  if (comm.is_root()) progress.finish();

  // 5. The report, before the commit: records read back from a journal are
  //    input, and if one is unusable the run must fail with no output.
  if (error.empty() && comm.is_root() && !channel.stop_requested())
    error = finish_method(method, records, seconds_since(start), journaled.empty() ? nullptr : journal.get());

  // 6. Commit only if every rank succeeded. A reported error (bad input,
  //    I/O failure) discards the partial output: --resume is for runs that
  //    were killed (time limit, node loss), whose error needs no fixing and
  //    whose journal is therefore still there.
  try {
    agree_on_failure(comm, error);
    writer->commit();
  } catch (...) {
    writer->discard();
    if (journal) journal->remove();
    throw;
  }
  on_root(comm, [&] { journal->remove(); });

  RunResult result;
  result.tensors = tensors.size();
  result.bytes = total_bytes;
  result.seconds = seconds_since(start);
  // Load balance: sum of busy time over ranks / (ranks x the slowest); 1 = perfect.
  result.busy_max = comm.max(busy);
  result.load_balance = result.busy_max > 0 ? comm.sum(busy) / (comm.size() * result.busy_max) : 1.0;
  // Memory: the rank with the largest growth over its starting footprint.
  // (getrusage's peak covers the whole process: a later run in the same
  // process, like a greedy soup's, may start above its own peak: no growth.)
  const double growth = std::max(0.0, static_cast<double>(peak_rss_bytes()) - static_cast<double>(base_rss));
  const double max_growth = comm.max(growth);
  result.peak_rss = static_cast<std::uint64_t>(comm.max(static_cast<double>(peak_rss_bytes())));
  result.base_rss = static_cast<std::uint64_t>(result.peak_rss - max_growth);
  log::info("wrote {} ({} tensors, {}) in {:.2f} s; busiest rank {:.2f} s, load balance {:.0f}%, peak memory {} "
            "(+{} over the {} at start)",
            out.string(), result.tensors, human_bytes(total_bytes), result.seconds, result.busy_max,
            100 * result.load_balance, human_bytes(result.peak_rss), human_bytes(static_cast<std::uint64_t>(max_growth)),
            human_bytes(result.base_rss));
  return result;
}

}  // namespace soupkit
