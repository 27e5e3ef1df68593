#include "commands.hpp"
#include "job_file.hpp"
#include "options.hpp"
#include "soupkit/methods/transplant.hpp"

#include <algorithm>

namespace soupkit::cli {
namespace {

constexpr const char* kUsage =
    "soupkit transplant --base BASE_DIR --donor DONOR_DIR --out OUT_DIR [--k 64] "
    "[--pad-to-multiple-of N] [--report report.json]";

po::options_description named_options() {
  po::options_description desc("transplant options");
  desc.add_options()("base", po::value<std::string>()->required(), "model that gets the new tokenizer (a model directory)")(
      "donor", po::value<std::string>()->required(), "model whose tokenizer it gets (a model directory)")(
      "out", po::value<std::string>()->required(), "output: a directory (or .h5)")(
      "k", po::value<int>()->default_value(64), "atoms (shared tokens) per approximated token")(
      "pad-to-multiple-of", po::value<std::int64_t>()->default_value(1),
      "pad the new vocabulary's rows to a multiple of this (zero rows)")(
      "embed-name", po::value<std::string>()->default_value(""), "the base's input embedding tensor (default: found)")(
      "lm-head-name", po::value<std::string>()->default_value(""),
      "the base's output matrix (default: found; none = tied embeddings)")(
      "donor-embed-name", po::value<std::string>(), "the donor's input embedding (default: as --embed-name)")(
      "donor-lm-head-name", po::value<std::string>(), "the donor's output matrix (default: as --lm-head-name)")(
      "report", po::value<std::string>(), "write a JSON report (token counts, fit residuals) here")(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output");
  add_engine_options(desc);
  add_common_options(desc);
  return desc;
}

int run(const Communicator& comm, const Args& args) {
  const auto vm = parse("transplant", args, named_options(), {}, comm.rank(), kUsage);
  if (!vm) return 0;
  TransplantOptions options;
  options.base = (*vm)["base"].as<std::string>();
  options.donor = (*vm)["donor"].as<std::string>();
  options.output = output_option(*vm, "out");
  options.k = (*vm)["k"].as<int>();
  SOUPKIT_INPUT_ERROR_IF(options.k < 1 || options.k > 4096, "--k: {} is not in [1, 4096]", options.k);
  options.pad_to_multiple_of = (*vm)["pad-to-multiple-of"].as<std::int64_t>();
  SOUPKIT_INPUT_ERROR_IF(options.pad_to_multiple_of < 1 || options.pad_to_multiple_of > (1 << 20),
                         "--pad-to-multiple-of: {} is not in [1, 1048576]", options.pad_to_multiple_of);
  options.embed_name = (*vm)["embed-name"].as<std::string>();
  options.lm_head_name = (*vm)["lm-head-name"].as<std::string>();
  options.donor_embed_name = vm->count("donor-embed-name") ? (*vm)["donor-embed-name"].as<std::string>() : options.embed_name;
  options.donor_lm_head_name =
      vm->count("donor-lm-head-name") ? (*vm)["donor-lm-head-name"].as<std::string>() : options.lm_head_name;
  if (vm->count("report")) options.report = (*vm)["report"].as<std::string>();
  options.shard_size = size_option(*vm, "shard-size");
  options.overwrite = vm->count("overwrite") > 0;
  const auto engine = engine_settings(*vm, comm);
  TransplantMethod method(options);
  run_method(comm, method, options.output, engine.run);
  return 0;
}

// base_model: BASE, tokenizer_source: DONOR (mergekit's key for where the
// tokenizer comes from) -> --base BASE --donor DONOR. No models, no out_dtype.
void translate(JobInput& job, JobCommand& out) {
  const auto& base = job.base_model();
  const auto& donor = job.tokenizer_source();
  job.need(base && !base->text.empty() && donor, "base_model and tokenizer_source (the donor model directory)");
  out.option("base", base->text);
  out.option("donor", donor->text);
  if (const auto& path = job.out_path()) out.option("out", path->text);
}

}  // namespace

Command transplant_command() {
  return {.name = "transplant",
          .summary = "give BASE the DONOR's tokenizer (new embedding rows by OMP)",
          .usage = kUsage,
          .run = run,
          .options = named_options,
          .merge_methods = {"transplant", "tokenizer_transplant"},
          .translate = translate};
}

}  // namespace soupkit::cli
