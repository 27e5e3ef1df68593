#include "commands.hpp"
#include "job_file.hpp"
#include "options.hpp"
#include "soupkit/methods/evaluator.hpp"
#include "soupkit/methods/greedy_soup.hpp"
#include "soupkit/methods/soup.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>

namespace soupkit::cli {
namespace {

constexpr const char* kUsage =
    "soupkit soup uniform --out OUT [--weights w1,w2,...] MODEL...\n"
    "       soupkit soup greedy --out OUT --eval-cmd 'CMD {model}' [--scores scores.json] [--log greedy.json "
    "[--resume]] MODEL...";

// Options of one mode given to the other are mistakes, not silently ignored.
void refuse(const po::variables_map& vm, const std::string& mode, std::initializer_list<const char*> names) {
  for (const char* name : names)
    SOUPKIT_INPUT_ERROR_IF(vm.count(name), "soup {}: --{} is not an option of this mode", mode, name);
}

po::options_description named_options() {
  po::options_description desc;
  desc.add_options()("out", po::value<std::string>()->required(), "output: .safetensors, .h5, or a directory")(
      "weights", po::value<std::string>(), "uniform: comma-separated weights, one per ingredient (normalised by their sum)")(
      "out-dtype", po::value<std::string>(), "write floating-point tensors as F64, F32, F16 or BF16 (default: as the first ingredient)")(
      "accumulate", po::value<std::string>()->default_value("F64"), "accumulator precision, F64 or F32")(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output")(
      "eval-cmd", po::value<std::string>(), "greedy: evaluator command; {model} is replaced by a checkpoint directory")(
      "scores", po::value<std::string>(), "greedy: JSON file mapping each ingredient's path to its held-out score")(
      "accept", po::value<std::string>()->default_value("greater-or-equal"),
      "greedy: keep an ingredient if the candidate's score is greater-or-equal (the paper) or greater than the best")(
      "log", po::value<std::string>(), "greedy: JSON log of every step, also the cache of scores for --resume")(
      "keep-candidates", "greedy: keep the candidate directories in OUT.greedy-work/");
  add_engine_options(desc);
  add_common_options(desc);
  return desc;
}

int run(const Communicator& comm, const Args& args) {
  po::options_description desc("soup options");
  desc.add_options()("mode", po::value<std::string>()->required(), "uniform (also weighted) or greedy")(
      "ingredients", po::value<std::vector<std::string>>()->required(), "ingredient checkpoints");
  desc.add(named_options());
  po::positional_options_description pos;
  pos.add("mode", 1).add("ingredients", -1);
  const auto vm = parse("soup", args, desc, pos, comm.rank(), kUsage);
  if (!vm) return 0;

  const auto mode = (*vm)["mode"].as<std::string>();
  SOUPKIT_INPUT_ERROR_IF(mode != "uniform" && mode != "greedy", "soup: mode '{}' is not uniform or greedy", mode);
  SoupOptions soup;
  for (const auto& p : (*vm)["ingredients"].as<std::vector<std::string>>()) soup.ingredients.emplace_back(p);
  soup.output = output_option(*vm, "out");
  soup.out_dtype = float_dtype_option(*vm, "out-dtype");
  const auto accumulate = float_dtype_option(*vm, "accumulate");
  SOUPKIT_INPUT_ERROR_IF(*accumulate != DType::F64 && *accumulate != DType::F32, "--accumulate: '{}' is not F64 or F32",
                         (*vm)["accumulate"].as<std::string>());
  soup.accumulate = *accumulate;
  soup.shard_size = size_option(*vm, "shard-size");
  soup.overwrite = vm->count("overwrite") > 0;
  const auto engine = engine_settings(*vm, comm);

  if (mode == "uniform") {
    refuse(*vm, mode, {"eval-cmd", "scores", "log", "keep-candidates"});
    soup.weights = normalise_weights(vm->count("weights") ? number_list("weights", (*vm)["weights"].as<std::string>())
                                                          : std::vector<double>{},
                                     soup.ingredients.size());
    SoupMethod method(soup);
    run_method(comm, method, soup.output, engine.run);
    return 0;
  }

  refuse(*vm, mode, {"weights"});
  SOUPKIT_INPUT_ERROR_IF(!vm->count("eval-cmd"), "soup greedy: --eval-cmd is required (see 'soupkit soup --help')");
  SOUPKIT_INPUT_ERROR_IF(engine.run.dry_run, "soup greedy: --dry-run is not supported (candidates depend on scores); "
                                             "try 'soup uniform --dry-run' with the same ingredients");
  GreedyOptions greedy;
  soup.weights = normalise_weights({}, soup.ingredients.size());
  greedy.soup = soup;
  greedy.eval_cmd = (*vm)["eval-cmd"].as<std::string>();
  check_eval_command(greedy.eval_cmd);
  if (vm->count("scores")) greedy.scores_file = (*vm)["scores"].as<std::string>();
  const auto accept = (*vm)["accept"].as<std::string>();
  SOUPKIT_INPUT_ERROR_IF(accept != "greater-or-equal" && accept != "greater",
                         "--accept: '{}' is not greater-or-equal or greater", accept);
  greedy.strictly_greater = accept == "greater";
  if (vm->count("log")) greedy.log_file = (*vm)["log"].as<std::string>();
  // --resume (an engine option): reuse the scores in --log, evaluating
  // nothing twice, and resume the final write.
  greedy.resume = engine.run.resume;
  greedy.memory_budget = engine.run.memory_budget;
  greedy.progress = engine.run.progress;
  greedy.progress_interval = engine.run.progress_interval;
  greedy.keep_candidates = vm->count("keep-candidates") > 0;
  run_greedy_soup(comm, greedy);
  return 0;
}

// A soup job (model_soup, uniform_soup, greedy_soup): the weighted average
// of its ingredients, models[].parameters.weight -> --weights. (mergekit's
// `linear` is its own method, src/methods/linear.cpp.)
void translate(JobInput& job, JobCommand& out) {
  out.positional.push_back(job.merge_method() == "greedy_soup" ? "greedy" : "uniform");
  const auto& models = job.models();
  job.need(!models.empty(), "models (the ingredients)");
  if (const auto& base = job.base_model())
    job.refuse(*base, "a soup averages its models only; list every ingredient under models");
  std::vector<const JobValue*> weights;
  for (std::size_t i = 0; i < models.size(); ++i) weights.push_back(job.model_parameter(i, "weight"));
  const bool weighted = std::any_of(weights.begin(), weights.end(), [](const JobValue* w) { return w != nullptr; });
  std::string list;
  for (std::size_t i = 0; i < models.size(); ++i) {
    SOUPKIT_INPUT_ERROR_IF(weighted && !weights[i], "{}: {}: every model needs a weight once one has it", job.source(),
                           excerpt(models[i].path));
    if (weighted) list += (i ? "," : "") + weights[i]->text;
    out.positional.push_back(models[i].path);
  }
  if (weighted) out.option("weights", list);
  job.add_output_options(out);
  if (const auto& dtype = job.dtype()) out.option("accumulate", dtype->text);
}

}  // namespace

Command soup_command() {
  return {.name = "soup",
          .summary = "model soups: the (weighted) mean of models, or a greedy soup kept by an evaluator's scores",
          .usage = kUsage,
          .run = run,
          .options = named_options,
          .merge_methods = {"model_soup", "uniform_soup", "greedy_soup"},
          .translate = translate};
}

}  // namespace soupkit::cli
