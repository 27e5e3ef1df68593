#include "soupkit/methods/greedy_soup.hpp"

#include "soupkit/io/side_file.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/log.hpp"
#include "soupkit/util/message_text.hpp"
#include "soupkit/methods/evaluator.hpp"
#include "soupkit/engine/output_lock.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <set>

namespace soupkit {
namespace {

using nlohmann::json;

constexpr const char* kWorkMarker = ".soupkit-greedy-work";

fs::path same_file_key(const fs::path& p) {
  std::error_code ec;
  auto canonical = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? p.lexically_normal() : canonical;
}

// Beside OUT ("out/" and "out" alike: never inside it).
fs::path work_directory(fs::path out) {
  if (!out.has_filename()) out = out.parent_path();
  return out.string() + ".greedy-work";
}

// Waits for rank 0 without spinning: the evaluator (which may launch its
// own parallel job) gets the CPUs while the other ranks sleep.
void idle_barrier(const Communicator& comm) {
  PendingBarrier barrier = comm.start_barrier();
  while (!barrier.test()) usleep(20000);
}

// Runs `score` on rank 0 only; every rank gets its result or its error.
template <class Body>
double on_root_score(const Communicator& comm, Body&& score) {
  double value = 0;
  std::string error;
  if (comm.is_root()) {
    try {
      value = score();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  idle_barrier(comm);
  agree_on_failure(comm, error);
  return json::parse(comm.broadcast(json(value).dump())).get<double>();
}

// Rank 0's JSON document on every rank.
json broadcast_json(const Communicator& comm, const json& j) { return json::parse(comm.broadcast(j.dump())); }

// The greedy run's record: every score it measured, every step. Written
// after each evaluation (atomically), so an interrupted run can resume.
class GreedyLog {
 public:
  explicit GreedyLog(const GreedyOptions& options) : options_(options) {
    doc_ = {{"method", "greedy-soup"},
            {"eval_cmd", options.eval_cmd},
            {"accept", options.strictly_greater ? "greater" : "greater-or-equal"},
            {"inputs", json::array()},
            {"ingredients", json::array()},
            {"order", json::array()},
            {"steps", json::array()},
            {"soup", json::array()},
            {"complete", false}};
    for (const auto& p : options.soup.ingredients) doc_["inputs"].push_back(p.string());
  }

  // Rank 0: the scores cached by an earlier run of the same soup.
  void load_cache(const fs::path& file) {
    if (!fs::exists(file)) {
      // Like the engine's --resume: nothing to resume means a first run
      // (a requeued Slurm job always passes --resume).
      log::info("--resume: no log {} yet; starting from scratch", file.string());
      return;
    }
    const json old = parse_untrusted_json(read_text_file(file), "--resume: " + file.string());
    try {
      const auto had = old.at("inputs").get<std::vector<std::string>>();
      const auto have = doc_.at("inputs").get<std::vector<std::string>>();
      SOUPKIT_INPUT_ERROR_IF(had != have,
                             "--resume: {} is the log of a soup of other ingredients ({}); this run has {}",
                             file.string(), json_excerpt(had), json_excerpt(have));
      for (const auto& e : old.at("ingredients"))
        cache_[ingredient_key(e.at("path").get<std::string>())] = e.at("score").get<double>();
      for (const auto& step : old.at("steps"))
        cache_[step.at("candidate").dump()] = step.at("candidate_score").get<double>();
      if (old.value("eval_cmd", "") != options_.eval_cmd)
        log::warn("--resume: {} was made with --eval-cmd '{}'; reusing its scores with '{}'", file.string(),
                  excerpt(old.value("eval_cmd", "")), options_.eval_cmd);
    } catch (const json::exception& e) {
      throw InputError(fmt::format("--resume: {} is not a greedy soup log: {}", file.string(), json_error_text(e)));
    }
  }

  static std::string ingredient_key(const std::string& path) { return json(path).dump(); }
  static std::string candidate_key(const json& paths) { return paths.dump(); }
  const double* cached(const std::string& key) const {
    const auto it = cache_.find(key);
    return it == cache_.end() ? nullptr : &it->second;
  }
  json& doc() { return doc_; }
  const json& doc() const { return doc_; }
  void set_cache(std::map<std::string, double> cache) { cache_ = std::move(cache); }
  const std::map<std::string, double>& cache() const { return cache_; }

  // Rank 0: an existing --log is resumed from or replaced only if it is a
  // greedy soup log (not, say, an ingredient's config.json).
  void check_replaceable() const {
    if (!options_.log_file) return;
    check_side_file_replaceable(*options_.log_file, "--log", "soupkit greedy soup log", [](const json& doc) {
      return doc.is_object() && doc.contains("method") && doc["method"] == "greedy-soup";
    });
  }

  // Rank 0: write the log (to a new temporary name, then rename).
  void save() const {
    if (options_.log_file) write_side_file(*options_.log_file, doc_.dump(2) + "\n");
  }

 private:
  const GreedyOptions& options_;
  json doc_;
  std::map<std::string, double> cache_;
};

class GreedyRun {
 public:
  GreedyRun(const Communicator& comm, const GreedyOptions& options)
      : comm_(comm), options_(options), log_(options),
        work_(work_directory(options.soup.output)) {}

  GreedyResult run() {
    // Candidates and evaluations: a SIGTERM/SIGINT stops the evaluator's
    // whole process group and fails the run cleanly (work directory and
    // lock removed). The final write is an ordinary engine run again: a
    // kill there leaves a journal and a partial output for --resume.
    std::optional<TerminationGuard> termination_guard(std::in_place);
    setup();
    const auto& ing = options_.soup.ingredients;
    std::vector<double> scores(ing.size());
    for (std::size_t i = 0; i < ing.size(); ++i) scores[i] = ingredient_score(i);

    // Best first; ties keep the command-line order.
    std::vector<std::size_t> order(ing.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
    for (auto i : order) log_.doc()["order"].push_back(ing[i].string());

    GreedyResult result{{order[0]}, scores[order[0]]};
    record_step(order[0], scores[order[0]], {order[0]}, scores[order[0]], true, result.best_score);
    for (std::size_t k = 1; k < order.size(); ++k) {
      std::vector<std::size_t> candidate = result.soup;
      candidate.push_back(order[k]);
      const double score = candidate_score(candidate, k);
      const bool kept = options_.strictly_greater ? score > result.best_score : score >= result.best_score;
      if (kept) {
        result.soup = candidate;
        result.best_score = score;
      }
      record_step(order[k], scores[order[k]], candidate, score, kept, result.best_score);
      log::info("greedy soup: step {}: {} (score {}) -> candidate of {} scores {}: {}", k, ing[order[k]].string(),
                scores[order[k]], candidate.size(), score, kept ? "kept" : "dropped");
    }

    // The final soup, on the engine, to the real output.
    SoupOptions final_soup = options_.soup;
    final_soup.ingredients.clear();
    for (auto i : result.soup) final_soup.ingredients.push_back(ing[i]);
    final_soup.weights = normalise_weights({}, final_soup.ingredients.size());
    final_soup.aux_source = ing[0];
    final_soup.label = "greedy soup";
    SoupMethod method(final_soup);
    agree_not_terminated("before writing the final soup");
    remove_work_directory();
    termination_guard.reset();
    // The final write resumes like any engine run (a requeued job).
    RunOptions final_run;
    final_run.resume = options_.resume;
    final_run.memory_budget = options_.memory_budget;
    final_run.progress = options_.progress;
    final_run.progress_interval = options_.progress_interval;
    run_method(comm_, method, options_.soup.output, final_run);

    log_.doc()["soup"] = paths(result.soup);
    log_.doc()["best_score"] = result.best_score;
    log_.doc()["complete"] = true;
    on_root(comm_, [&] { log_.save(); });
    cleanup();
    log::info("greedy soup: {} of {} ingredients kept, score {}; wrote {}", result.soup.size(), ing.size(),
              result.best_score, options_.soup.output.string());
    return result;
  }

  // Removes the work directory after a failure too (unless asked to keep it).
  void cleanup() {
    if (!comm_.is_root()) return;
    remove_work_directory();
    if (lock_) lock_->remove();
  }

 private:
  void remove_work_directory() {
    if (!comm_.is_root() || options_.keep_candidates || !created_work_) return;
    std::error_code ec;
    fs::remove_all(work_, ec);
    created_work_ = false;
  }

  // Collective: fails on every rank if any rank was told to terminate.
  void agree_not_terminated(const std::string& during) {
    std::string error = termination_message(during);
    agree_on_failure(comm_, error);
  }

  void setup() {
    std::vector<double> file_scores;
    on_root(comm_, [&] {
      const auto& out = options_.soup.output;
      // The output is ours for the whole run, candidates and all: a second
      // greedy soup on it would delete our work directory.
      fs::path lock_file = out;
      while (lock_file.has_relative_path() && !lock_file.has_filename()) lock_file = lock_file.parent_path();
      lock_file += ".greedy.lock";
      lock_ = std::make_unique<OutputLock>(lock_file, out, json{{"soupkit_lock", 1}});
      lock_->write_owner();
      SOUPKIT_INPUT_ERROR_IF(fs::exists(out) && !options_.soup.overwrite,
                             "{} already exists (use --overwrite to replace it)", out.string());
      log_.check_replaceable();
      // Ingredient headers now, so a mismatch stops the run before any evaluation.
      SoupOptions all = options_.soup;
      all.output = work_ / "check";
      SoupMethod(all).plan(make_plan_context(comm_.size(), options_.memory_budget, all.output));
      if (options_.scores_file) file_scores = read_scores_file(*options_.scores_file, options_.soup.ingredients);
      if (options_.resume) log_.load_cache(*options_.log_file);
      if (fs::exists(work_)) {
        SOUPKIT_INPUT_ERROR_IF(!fs::exists(work_ / kWorkMarker),
                               "{} exists and is not soupkit's greedy work directory: move it away", work_.string());
        fs::remove_all(work_);
      }
      fs::create_directories(work_);
      created_work_ = true;
      write_text_file(work_ / kWorkMarker, "soupkit greedy soup candidates; removed at the end of the run\n");
    });
    file_scores = broadcast_json(comm_, file_scores).get<std::vector<double>>();
    json cache = log_.cache();
    log_.set_cache(broadcast_json(comm_, cache).get<std::map<std::string, double>>());
    for (std::size_t i = 0; i < file_scores.size(); ++i)
      file_scores_[GreedyLog::ingredient_key(options_.soup.ingredients[i].string())] = file_scores[i];
  }

  json paths(const std::vector<std::size_t>& indices) const {
    json list = json::array();
    for (auto i : indices) list.push_back(options_.soup.ingredients[i].string());
    return list;
  }

  double ingredient_score(std::size_t i) {
    const auto& path = options_.soup.ingredients[i];
    const auto key = GreedyLog::ingredient_key(path.string());
    std::string source;
    double score = 0;
    if (auto it = file_scores_.find(key); it != file_scores_.end()) {
      score = it->second;
      source = "scores file";
    } else if (const double* cached = log_.cached(key)) {
      score = *cached;
      source = "log";
    } else {
      // A model directory is evaluated as it is; any other checkpoint is
      // first written as one (with the first ingredient's config files).
      fs::path model = path;
      if (!fs::is_directory(path)) model = materialise({i}, fmt::format("ingredient-{}", i + 1));
      score = on_root_score(comm_, [&] { return run_evaluator(options_.eval_cmd, model); });
      source = "evaluator";
      discard(model, path);
    }
    log::info("greedy soup: ingredient {} ({}) scores {} ({})", i + 1, path.string(), score, source);
    log_.doc()["ingredients"].push_back({{"path", path.string()}, {"score", score}, {"source", source}});
    on_root(comm_, [&] { log_.save(); });
    return score;
  }

  double candidate_score(const std::vector<std::size_t>& candidate, std::size_t step) {
    const auto key = GreedyLog::candidate_key(paths(candidate));
    if (const double* cached = log_.cached(key)) {
      log::info("greedy soup: step {}: candidate score {} from the log", step, *cached);
      return *cached;
    }
    const fs::path model = materialise(candidate, fmt::format("candidate-{}", step));
    const double score = on_root_score(comm_, [&] { return run_evaluator(options_.eval_cmd, model); });
    discard(model, {});
    return score;
  }

  // The uniform soup of `indices`, as a model directory in the work directory.
  fs::path materialise(const std::vector<std::size_t>& indices, const std::string& name) {
    SoupOptions soup = options_.soup;
    soup.ingredients.clear();
    for (auto i : indices) soup.ingredients.push_back(options_.soup.ingredients[i]);
    soup.weights = normalise_weights({}, indices.size());
    soup.output = work_ / name;
    soup.aux_source = options_.soup.ingredients[0];
    soup.overwrite = true;
    if (indices.size() == 1) soup.out_dtype.reset();  // an ingredient is evaluated as it is
    soup.label = fmt::format("greedy {}", name);
    SoupMethod method(soup);
    RunOptions run;
    run.memory_budget = options_.memory_budget;
    run.progress = options_.progress;
    run.progress_interval = options_.progress_interval;
    run_method(comm_, method, soup.output, run);
    agree_not_terminated(fmt::format("while writing the greedy soup's {}", name));
    return soup.output;
  }

  // Candidates are removed once scored, so the work directory holds one at a time.
  void discard(const fs::path& model, const fs::path& ingredient) {
    if (options_.keep_candidates || model == ingredient || !comm_.is_root()) return;
    std::error_code ec;
    fs::remove_all(model, ec);
  }

  void record_step(std::size_t ingredient, double ingredient_score, const std::vector<std::size_t>& candidate,
                   double candidate_score, bool kept, double best) {
    auto& steps = log_.doc()["steps"];
    steps.push_back({{"step", steps.size()},
                     {"ingredient", options_.soup.ingredients[ingredient].string()},
                     {"ingredient_score", ingredient_score},
                     {"candidate", paths(candidate)},
                     {"candidate_score", candidate_score},
                     {"kept", kept},
                     {"best_score", best}});
    on_root(comm_, [&] { log_.save(); });
  }

  const Communicator& comm_;
  const GreedyOptions& options_;
  GreedyLog log_;
  fs::path work_;
  std::map<std::string, double> file_scores_;
  bool created_work_ = false;  // rank 0: the work directory is ours to remove
  std::unique_ptr<OutputLock> lock_;  // rank 0: held from setup to cleanup
};

}  // namespace

std::vector<double> read_scores_file(const fs::path& file, const std::vector<fs::path>& ingredients) {
  const json doc = parse_untrusted_json(read_text_file(file), "--scores " + file.string());
  SOUPKIT_INPUT_ERROR_IF(!doc.is_object(), "--scores {}: expected a JSON object mapping each ingredient's path to its "
                                           "score, found {}", file.string(), doc.type_name());
  // Keys may spell a path differently from the command line ("./a" vs "a").
  std::map<fs::path, std::pair<std::string, const json*>> by_file;
  for (const auto& [key, value] : doc.items()) {
    by_file[same_file_key(key)] = {key, &value};
  }
  std::vector<double> scores;
  std::set<std::string> used;
  for (std::size_t i = 0; i < ingredients.size(); ++i) {
    const auto& p = ingredients[i];
    const json* value = doc.contains(p.string()) ? &doc.at(p.string()) : nullptr;
    std::string key = p.string();
    if (!value) {
      const auto it = by_file.find(same_file_key(p));
      if (it != by_file.end()) std::tie(key, value) = it->second;
    }
    SOUPKIT_INPUT_ERROR_IF(!value, "--scores {}: no score for ingredient {} ({})", file.string(), i + 1, p.string());
    SOUPKIT_INPUT_ERROR_IF(!value->is_number() || !std::isfinite(value->get<double>()),
                           "--scores {}: the score of '{}' is not a finite number: {}", file.string(), excerpt(key),
                           json_excerpt(*value));
    scores.push_back(value->get<double>());
    used.insert(key);
  }
  for (const auto& [key, value] : doc.items())
    if (!used.count(key)) log::warn("--scores {}: '{}' is not one of the ingredients; ignored", file.string(), excerpt(key));
  return scores;
}

GreedyResult run_greedy_soup(const Communicator& comm, const GreedyOptions& options) {
  check_eval_command(options.eval_cmd);
  warn_if_placeholder_quoted(options.eval_cmd);
  if (options.resume && !options.log_file)
    log::warn("--resume without --log: no scores are cached, so greedy evaluation starts from scratch "
              "(pass --log to make a greedy soup resumable)");
  GreedyRun run(comm, options);
  try {
    return run.run();
  } catch (...) {
    run.cleanup();
    throw;
  }
}

}  // namespace soupkit
