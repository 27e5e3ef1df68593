#include "commands.hpp"
#include "job_file.hpp"
#include "options.hpp"
#include "soupkit/methods/monosoup.hpp"

namespace soupkit::cli {
namespace {

constexpr const char* kUsage =
    "soupkit monosoup --base W0 --finetuned W1 --out OUT [--mode effective-rank|variance] "
    "[--variance-threshold R] [--min-rel-update T] [--report report.json] [--strict]";

po::options_description named_options() {
  po::options_description desc("monosoup options");
  desc.add_options()("base", po::value<std::string>()->required(), "pretrained checkpoint W0")(
      "finetuned", po::value<std::string>()->required(), "fine-tuned checkpoint W1: a model, BASE+ADAPTER, or a LoRA adapter directory (of --base)")(
      "out", po::value<std::string>()->required(), "output: .safetensors, .h5, or a directory")(
      "mode", po::value<std::string>()->default_value("effective-rank"), "effective-rank or variance")(
      "variance-threshold", number_value(0.8), "energy fraction R for --mode variance")(
      "min-rel-update", number_value(1e-6), "keep W1 where ||W1-W0||/||W0|| is below this")(
      "report", po::value<std::string>(), "write a JSON report of every tensor here")(
      "strict", "missing tensors and shape/dtype mismatches are errors, not warnings")(
      "out-dtype", po::value<std::string>(), "write floating-point tensors as F64, F32, F16 or BF16 (default: as W1)")(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output")(
      "materialise-adapter", "a LoRA adapter's W1 = W0 + s B A is reweighted as a dense matrix, not by its low-rank SVD")(
      "scalapack-min-dim", po::value<std::int64_t>()->default_value(0),
      "matrices whose smaller side is at least this use ScaLAPACK on a grid of all ranks (0: automatic)");
  add_engine_options(desc);
  add_common_options(desc);
  return desc;
}

int run(const Communicator& comm, const Args& args) {
  const auto vm = parse("monosoup", args, named_options(), {}, comm.rank(), kUsage);
  if (!vm) return 0;
  MonosoupOptions options;
  options.base = (*vm)["base"].as<std::string>();
  options.finetuned = (*vm)["finetuned"].as<std::string>();
  // A LoRA adapter alone is the update of --base: --base+ADAPTER.
  if (is_adapter_directory(options.finetuned)) options.finetuned = options.base.string() + "+" + options.finetuned.string();
  options.output = output_option(*vm, "out");
  const auto mode = (*vm)["mode"].as<std::string>();
  SOUPKIT_INPUT_ERROR_IF(mode != "effective-rank" && mode != "variance",
                         "--mode: '{}' is not effective-rank or variance", mode);
  options.mode = mode == "variance" ? MonosoupMode::Variance : MonosoupMode::EffectiveRank;
  options.variance_threshold = (*vm)["variance-threshold"].as<double>();
  SOUPKIT_INPUT_ERROR_IF(!(options.variance_threshold > 0 && options.variance_threshold <= 1),
                         "--variance-threshold: {} is not in (0, 1]", options.variance_threshold);
  options.min_rel_update = (*vm)["min-rel-update"].as<double>();
  SOUPKIT_INPUT_ERROR_IF(!(options.min_rel_update >= 0), "--min-rel-update: {} is negative", options.min_rel_update);
  if (vm->count("report")) options.report = (*vm)["report"].as<std::string>();
  options.strict = vm->count("strict") > 0;
  options.out_dtype = float_dtype_option(*vm, "out-dtype");
  options.shard_size = size_option(*vm, "shard-size");
  options.overwrite = vm->count("overwrite") > 0;
  options.materialise_adapter = vm->count("materialise-adapter") > 0;
  options.scalapack_min_dim = (*vm)["scalapack-min-dim"].as<std::int64_t>();
  SOUPKIT_INPUT_ERROR_IF(options.scalapack_min_dim < 0, "--scalapack-min-dim: {} is negative", options.scalapack_min_dim);
  const auto engine = engine_settings(*vm, comm);
  MonosoupMethod method(options);
  run_method(comm, method, options.output, engine.run);
  return 0;
}

// base_model: W0, models: [W1] -> --base W0 --finetuned W1.
void translate(JobInput& job, JobCommand& out) {
  const auto& base = job.base_model();
  const auto& models = job.models();
  job.need(base && !base->text.empty() && models.size() == 1,
           "base_model and exactly one entry in models (the fine-tuned model)");
  out.option("base", base->text);
  out.option("finetuned", models[0].path);
  job.add_output_options(out);
}

}  // namespace

Command monosoup_command() {
  return {.name = "monosoup",
          .summary = "MonoSoup: reweight a fine-tuned model's update by its singular spectrum",
          .usage = kUsage,
          .run = run,
          .options = named_options,
          .merge_methods = {"monosoup"},
          .translate = translate};
}

}  // namespace soupkit::cli
