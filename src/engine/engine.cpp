#include "soupkit/engine/engine.hpp"

#include "fault_injection.hpp"
#include "soupkit/engine/checksum.hpp"
#include "journal.hpp"
#include "plan_codec.hpp"
#include "plan_table.hpp"
#include "soupkit/util/json_input.hpp"
#include "progress.hpp"
#include "tensor_progress_scope.hpp"
#include "work_channel.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <hdf5.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <ctime>
#include <cstdlib>
#include <set>
#include <chrono>
#include <fstream>
#include <numeric>
#include <optional>

namespace soupkit {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Reports of progress inside a tensor: the coordinator's own are handled
// at once (a little work), a worker's become messages, at most two a
// second (the coordinator may be busy computing and take them late).
constexpr double kOwnReportInterval = 0.1;
constexpr double kWorkerReportInterval = 0.5;

// The tensor this rank is computing, for progress inside it: the scope of
// its reports, and whether the rows it writes count (a tensor of its own;
// on a grid a rank writes only its share).
struct TensorUnderWay {
  TensorProgressScope* scope = nullptr;
  std::size_t index = 0;
  bool count_rows = false;
};

// For the duration of one tensor's computation on this rank: reports go
// to the coordinator's progress through the channel.
class UnderWay {
 public:
  UnderWay(TensorUnderWay& slot, WorkChannel& channel, std::size_t index, bool count_rows, bool is_coordinator)
      : slot_(slot),
        scope_([&channel, index](double fraction) { channel.tensor_progress(index, fraction); },
               std::chrono::duration<double>(is_coordinator ? kOwnReportInterval : kWorkerReportInterval)) {
    slot_ = {&scope_, index, count_rows};
  }
  ~UnderWay() { slot_ = {}; }
  UnderWay(const UnderWay&) = delete;
  UnderWay& operator=(const UnderWay&) = delete;

 private:
  TensorUnderWay& slot_;
  TensorProgressScope scope_;
};


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
      if (verifier[k] == comm.rank() && checksum_written(writer, journaled[k].first) == journaled[k].second)
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
    const auto& sources = plan.tasks[i].sources;
    const std::string from = sources.empty() ? "the input" : sources.front();
    SOUPKIT_INPUT_ERROR_IF(t.shape.size() > H5S_MAX_RANK,
                           "{}: tensor '{}' has {} dimensions, more than the {} an HDF5 output holds (write "
                           ".safetensors or a model directory instead)",
                           from, printable(t.name), t.shape.size(), H5S_MAX_RANK);
  }
}

// soupkit deletes or replaces only what it created: an output (or its
// ".partial" name) that is an input, a directory holding one, or a path
// inside an input model directory would destroy or change an input, even
// with --overwrite.
void check_output_apart_from_inputs(const fs::path& out) {
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(fs::absolute(out, ec), ec);
  if (ec) resolved = out.lexically_normal();
  const fs::path partial = partial_output_path(resolved);
  const auto within = [](const fs::path& inner, const fs::path& outer) {
    const auto [o, i] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
    return o == outer.end() && i != inner.end();
  };
  for (const fs::path& input : opened_checkpoint_paths()) {
    for (const fs::path& target : {resolved, partial}) {
      SOUPKIT_INPUT_ERROR_IF(target == input, "{}: the output is also an input ({}); soupkit never writes over its "
                             "inputs: choose another output path", out.string(), input.string());
      SOUPKIT_INPUT_ERROR_IF(within(input, target), "{}: the output would replace a directory that holds the input "
                             "{}; choose another output path", out.string(), input.string());
      SOUPKIT_INPUT_ERROR_IF(within(target, input) && fs::is_directory(input, ec),
                             "{}: the output is inside the input model directory {}, and writing there changes that "
                             "model; choose a path outside it", out.string(), input.string());
    }
  }
}

// The run's own facts, for the JSON reports' provenance ("run"). Never in
// the output: its bytes are the same for any rank count, host and time.
nlohmann::json run_facts(int ranks) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char started[32] = {};
  std::strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return {{"ranks", ranks}, {"host", std::string(host)}, {"started_utc", std::string(started)}};
}

// 1. The coordinator plans, validates and places every task; nobody does
// heavy work before it says go. Every rank gets the plan; the coordinator
// keeps the tasks' sources (for --dry-run and messages).
MethodPlan share_plan(const Communicator& comm, Method& method, const PlanContext& context) {
  std::string plan_text;
  std::vector<std::vector<std::string>> sources;  // (coordinator only, for --dry-run, like the notes)
  std::vector<std::string> notes;
  on_root(comm, [&] {
    MethodPlan planned = method.plan(context);
    planned.context = context;
    // Every output says what made it (the method's inputs and parameters,
    // and here the version).
    if (!planned.output.provenance.is_object()) planned.output.provenance = nlohmann::json::object();
    planned.output.provenance["soupkit_version"] = SOUPKIT_VERSION;
    SOUPKIT_ERROR_IF(planned.tasks.size() != planned.output.tensors.size(),
                     "internal: {} planned {} tasks for {} output tensors", method.name(), planned.tasks.size(),
                     planned.output.tensors.size());
    check_aux_files(planned.output.aux_files, context.output.string() + ": carried files");
    check_fits_output_format(planned, context.output);
    check_output_apart_from_inputs(context.output);
    place_tasks(planned, context);
    for (auto& task : planned.tasks) {
      sources.push_back(std::move(task.sources));
      notes.push_back(std::move(task.note));
    }
    plan_text = encode_plan(planned);
  });
  MethodPlan plan = decode_plan(comm.broadcast(plan_text));
  for (std::size_t i = 0; i < sources.size(); ++i) {
    plan.tasks[i].sources = std::move(sources[i]);
    plan.tasks[i].note = std::move(notes[i]);
  }
  return plan;
}

// Tasks on one rank are balanced over ranks by their estimated seconds;
// grid tasks load every rank alike, and tasks already done cost nothing.
std::vector<int> owners_of(const MethodPlan& plan, const std::set<std::size_t>& done, int ranks) {
  std::vector<double> costs;
  for (std::size_t i = 0; i < plan.tasks.size(); ++i)
    costs.push_back(plan.tasks[i].on_grid() || done.count(i) ? 0.0 : plan.tasks[i].seconds);
  return assign_owners(costs, ranks);
}

// What a killed run left and this run goes on from: the journal (on the
// coordinator), the writer (every rank) and the tensors the journal lists
// as finished, with their checksums.
struct OpenedOutput {
  std::unique_ptr<Journal> journal;
  std::unique_ptr<CheckpointWriter> writer;
  std::vector<std::pair<std::size_t, std::uint64_t>> journaled;
};

// 2. The coordinator locks the output through its journal and, with
//    --resume, reads which tensors a previous run finished; then every rank
//    opens the output together: a new one, or the one a killed run left.
OpenedOutput open_output(const Communicator& comm, const MethodPlan& plan, const fs::path& out, bool resume) {
  const fs::path partial = partial_output_path(out);
  OpenedOutput opened;
  try {
    std::string finished_text;
    on_root(comm, [&] {
      opened.journal = std::make_unique<Journal>(out, output_fingerprint(plan.output), resume,
                                                 tensor_names(plan.output.tensors));
      check_partial_is_ours(*opened.journal, partial);
      if (!opened.journal->finished().empty() && !fs::exists(partial)) {
        log::warn("{}: {} is gone; starting over", out.string(), partial.string());
        opened.journal->restart(output_fingerprint(plan.output));
      }
      nlohmann::json finished = nlohmann::json::array();
      for (const auto& [i, entry] : opened.journal->finished()) finished.push_back({i, entry.checksum});
      finished_text = finished.dump();
    });
    opened.journaled = nlohmann::json::parse(comm.broadcast(finished_text))
                           .get<std::vector<std::pair<std::size_t, std::uint64_t>>>();
    opened.writer = create_checkpoint_writer(comm, out, plan.output,
                                             opened.journaled.empty() ? WriterMode::Create : WriterMode::Resume);
    on_root(comm, [&] { opened.journal->record_partial(partial); });
  } catch (...) {
    // Nothing was written: leave no journal behind either.
    if (opened.journal && opened.journal->finished().empty()) opened.journal->remove();
    throw;
  }
  return opened;
}

// The tensors an earlier run finished whose bytes pass their checksum; the
// others are forgotten by the journal and computed again.
std::set<std::size_t> resume_verified(const Communicator& comm, OpenedOutput& opened, std::size_t tensors) {
  if (opened.journaled.empty()) return {};
  std::set<std::size_t> done = verify_finished(comm, *opened.writer, opened.journaled);
  on_root(comm, [&] {
    for (const auto& [i, checksum] : opened.journaled)
      if (!done.count(i)) opened.journal->forget(i);
  });
  log::info("resuming: {} of {} tensors already written and verified by checksum{}", done.size(), tensors,
            done.size() < opened.journaled.size()
                ? fmt::format(" ({} failed verification and will be recomputed)", opened.journaled.size() - done.size())
                : "");
  return done;
}

// 4a. A grid task, on every rank of `group`. A failure on any rank is
// agreed over the group before anyone goes on to the checksum's reduction
// (or the next task's collectives): every rank returns the same error.
std::string compute_on_grid(Method& method, std::size_t index, const Communicator& group, CheckpointWriter& writer,
                            WrittenChecksums& checksums, WorkChannel& channel, TensorUnderWay& under_way) {
  const auto t0 = Clock::now();
  nlohmann::json record;
  std::string local;
  try {
    // The group's first rank (the coordinator) reports for the group.
    std::optional<UnderWay> reporting;
    if (group.is_root()) reporting.emplace(under_way, channel, index, false, true);
    record = method.compute_grid(index, group, writer);
  } catch (const std::exception& e) {
    local = e.what();
  }
  try {
    agree_on_failure(group, local);
  } catch (const Error& e) {
    return fmt::format("tensor '{}' (on a {}-rank grid): {}", printable(writer.spec().tensors[index].name),
                       group.size(), e.what());
  }
  if (record.is_object()) record["seconds"] = seconds_since(t0);
  const std::uint64_t checksum = group.sum(checksums.take(index));
  if (group.is_root()) channel.tensor_done(index, checksum, std::move(record));
  return {};
}

// 4b. A task of this rank's own; its error, or empty.
std::string compute_on_rank(Method& method, std::size_t index, int rank, CheckpointWriter& writer,
                            WrittenChecksums& checksums, WorkChannel& channel, TensorUnderWay& under_way) {
  try {
    const auto t0 = Clock::now();
    nlohmann::json record;
    {
      const UnderWay reporting(under_way, channel, index, true, rank == 0);
      record = method.compute(index, writer);
    }
    if (record.is_object()) record["seconds"] = seconds_since(t0);
    channel.tensor_done(index, checksums.take(index), std::move(record));
    return {};
  } catch (const std::exception& e) {
    return fmt::format("rank {}: tensor '{}': {}", rank, printable(writer.spec().tensors[index].name), e.what());
  }
}

// The run's figures, reduced over ranks, and its closing log line.
RunResult summarise(const Communicator& comm, const fs::path& out, const std::vector<TensorInfo>& tensors,
                    Clock::time_point start, double busy, std::uint64_t base_rss) {
  RunResult result;
  result.tensors = tensors.size();
  for (const auto& t : tensors) result.bytes += t.nbytes();
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
            out.string(), result.tensors, human_bytes(result.bytes), result.seconds, result.busy_max,
            100 * result.load_balance, human_bytes(result.peak_rss), human_bytes(static_cast<std::uint64_t>(max_growth)),
            human_bytes(result.base_rss));
  return result;
}

}  // namespace

nlohmann::json Method::compute_grid(std::size_t index, const Communicator&, CheckpointWriter&) {
  throw Error(fmt::format("internal: {} has no distributed computation for tensor {}", name(), index));
}

RunResult run_method(const Communicator& comm, Method& method, const fs::path& out, const RunOptions& options) {
  // Every rank sees the same path, so all refuse alike. Checked before any
  // work: an empty path otherwise fails only at the final rename.
  SOUPKIT_INPUT_ERROR_IF(out.empty(), "the output path is empty");
  const auto start = Clock::now();
  const std::uint64_t base_rss = current_rss_bytes();
  const nlohmann::json run = comm.is_root() ? run_facts(comm.size()) : nlohmann::json();

  const MethodPlan plan = share_plan(
      comm, method, make_plan_context(comm.size(), options.memory_budget, out, fewest_ranks_per_node(comm)));
  const auto& tensors = plan.output.tensors;
  if (options.dry_run) {
    if (comm.is_root()) {
      print_plan(plan, owners_of(plan, {}, comm.size()), comm.size(), out, method.name());
      std::printf("  memory budget %s per rank (--memory-budget; the default is 80%% of the node's available memory, "
                  "or of its cgroup's limit if lower, shared by the node's ranks)\n",
                  human_bytes(options.memory_budget).c_str());
    }
    return {};
  }
  collectively(comm, [&] { method.prepare(plan); });

  OpenedOutput opened = open_output(comm, plan, out, options.resume);
  auto& journal = opened.journal;
  auto& writer = opened.writer;
  std::uint64_t total_bytes = 0;
  for (const auto& t : tensors) total_bytes += t.nbytes();
  log::info("{}: {} tensors, {} -> {} on {} rank{}", method.name(), tensors.size(), human_bytes(total_bytes),
            out.string(), comm.size(), comm.size() == 1 ? "" : "s");
  const std::set<std::size_t> done = resume_verified(comm, opened, tensors.size());

  // 3. Grid tasks on all ranks together, then each rank's own, largest first.
  const std::vector<int> owner = owners_of(plan, done, comm.size());
  std::vector<std::size_t> grid_tasks, mine;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (done.count(i)) continue;
    if (plan.tasks[i].on_grid())
      grid_tasks.push_back(i);
    else if (owner[i] == comm.rank())
      mine.push_back(i);
  }
  std::stable_sort(mine.begin(), mine.end(),
                   [&](std::size_t a, std::size_t b) { return plan.tasks[a].seconds > plan.tasks[b].seconds; });

  // The coordinator's view of finished tensors: journal, records, progress.
  std::uint64_t done_bytes = 0;
  for (auto i : done) done_bytes += tensors[i].nbytes();
  // Only the coordinator hears of every tensor: only it shows progress.
  Progress progress(method.name(), tensors.size(), total_bytes,
                    comm.is_root() ? options.progress : ProgressMode::None, options.progress_interval);
  progress.skip(done.size(), done_bytes);
  std::vector<nlohmann::json> records(comm.is_root() ? tensors.size() : 0);
  if (journal)
    for (const auto& [i, entry] : journal->finished()) records[i] = entry.record;
  const long kill_after = fault_kill_after();
  long journaled_now = 0;
  WorkChannel channel(comm, [&](std::size_t i, std::uint64_t checksum, nlohmann::json record) {
    journal->record(i, tensors[i].name, checksum, record);
    records.at(i) = std::move(record);
    progress.advance(i, tensors[i].nbytes(), tensors[i].name);
    if (kill_after > 0 && ++journaled_now == kill_after) std::raise(SIGKILL);
  }, [&](std::size_t i, double fraction) { progress.partial(i, tensors[i].nbytes(), fraction, tensors[i].name); });
  std::string error;
  TensorUnderWay under_way;
  WrittenChecksums checksums(*writer, [&](std::size_t i, std::uint64_t rows) {
    if (under_way.scope && under_way.count_rows && under_way.index == i)
      under_way.scope->rows_written(rows, row_count(tensors[i]));
  });
  const auto busy_start = Clock::now();
  if (!grid_tasks.empty()) {
    const Communicator group = comm.split(0, comm.rank());
    for (auto i : grid_tasks)
      if (!(error = compute_on_grid(method, i, group, *writer, checksums, channel, under_way)).empty()) break;
  }
  for (auto i : mine) {
    if (!error.empty() || channel.stop_requested()) break;  // this rank, or another, failed: stop now
    if (!(error = compute_on_rank(method, i, comm.rank(), *writer, checksums, channel, under_way)).empty()) channel.failed();
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

  // 4. The report, before the commit: records read back from a journal are
  //    input, and if one is unusable the run must fail with no output.
  if (error.empty() && comm.is_root() && !channel.stop_requested()) {
    nlohmann::json provenance = plan.output.provenance;
    provenance["run"] = run;
    method.set_provenance(std::move(provenance));
    error = finish_method(method, records, seconds_since(start), opened.journaled.empty() ? nullptr : journal.get());
  }

  // 5. Commit only if every rank succeeded. A reported error (bad input,
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
  return summarise(comm, out, tensors, start, busy, base_rss);
}

}  // namespace soupkit
