#include "commands.hpp"
#include "options.hpp"
#include "soupkit/methods/transplant.hpp"

#include <algorithm>

namespace soupkit::cli {

int cmd_transplant(const Communicator& comm, const Args& args) {
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
  const auto vm = parse("transplant", args, desc, {}, comm.rank(),
                        "soupkit transplant --base BASE_DIR --donor DONOR_DIR --out OUT_DIR [--k 64] "
                        "[--pad-to-multiple-of N] [--report report.json]");
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

}  // namespace soupkit::cli
