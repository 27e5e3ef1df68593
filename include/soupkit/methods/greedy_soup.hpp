#pragma once
// `soupkit soup greedy`: the greedy soup of Wortsman et al. (2022), driven by
// the user's evaluator. Ingredients are sorted by held-out score, best
// first; the soup starts with the best, and each next ingredient is kept if
// the uniform soup with it scores at least as well as the best so far (or
// strictly better with `strictly_greater`). Every candidate is an ordinary
// uniform SoupMethod run on the engine (all ranks), written to a temporary
// model directory; the evaluator runs on rank 0 and its score is shared.
// Scores are cached in a JSON log so an interrupted run resumes without
// evaluating anything twice. See docs/soups.md.
#include "soupkit/methods/soup.hpp"

namespace soupkit {

struct GreedyOptions {
  // Ingredients, output, dtype, accumulator, shard size, overwrite and chunk
  // size of every candidate and of the final soup (its weights are ignored).
  SoupOptions soup;
  std::string eval_cmd;                   // contains {model}
  std::optional<fs::path> scores_file;    // JSON: ingredient path -> score
  bool strictly_greater = false;          // --accept greater
  std::optional<fs::path> log_file;       // --log
  std::uint64_t memory_budget = ~0ull;    // per rank, for every soup it writes
  ProgressMode progress = ProgressMode::Auto;  // --progress, for every soup it writes
  double progress_interval = 5;
  bool resume = false;                    // reuse the scores cached in log_file
  bool keep_candidates = false;           // keep <out>.greedy-work/
};

struct GreedyResult {
  std::vector<std::size_t> soup;  // indices into options.soup.ingredients, in the order added
  double best_score = 0;
};

// Collective on comm. Throws on every rank on failure, leaving nothing at the
// output path (the log, if any, keeps the scores measured so far).
GreedyResult run_greedy_soup(const Communicator& comm, const GreedyOptions& options);

// Reads a --scores file: one finite number per ingredient, keyed by the path
// as given or any spelling of the same file. InputError naming the file and
// the ingredient otherwise.
std::vector<double> read_scores_file(const fs::path& file, const std::vector<fs::path>& ingredients);

}  // namespace soupkit
