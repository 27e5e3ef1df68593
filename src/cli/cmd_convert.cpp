#include "commands.hpp"
#include "job_file.hpp"
#include "options.hpp"
#include "soupkit/methods/convert.hpp"

#include <algorithm>

namespace soupkit::cli {
namespace {

constexpr const char* kUsage = "soupkit convert IN OUT [--dtype D] [--shard-size 5GB]";

po::options_description named_options() {
  po::options_description desc;
  desc.add_options()("dtype", po::value<std::string>(),
                     "cast floating-point tensors to F32, F16, BF16 or F64 (round to nearest even)")(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output");
  add_engine_options(desc);
  add_common_options(desc);
  return desc;
}

int run(const Communicator& comm, const Args& args) {
  po::options_description desc("convert options");
  desc.add_options()("input", po::value<std::string>()->required(), "input checkpoint")(
      "output", po::value<std::string>()->required(), "output: .safetensors, .h5, or a directory");
  desc.add(named_options());
  po::positional_options_description pos;
  pos.add("input", 1).add("output", 1);
  const auto vm = parse("convert", args, desc, pos, comm.rank(), kUsage);
  if (!vm) return 0;

  ConvertOptions options;
  options.input = (*vm)["input"].as<std::string>();
  options.output = output_option(*vm, "output");
  options.shard_size = size_option(*vm, "shard-size");
  options.overwrite = vm->count("overwrite") > 0;
  options.dtype = float_dtype_option(*vm, "dtype");
  const auto engine = engine_settings(*vm, comm);
  ConvertMethod method(options);
  run_method(comm, method, options.output, engine.run);
  return 0;
}

// models: [IN], out_path: OUT, out_dtype: D -> IN OUT --dtype D.
void translate(JobInput& job, JobCommand& out) {
  const auto& models = job.models();
  job.need(models.size() == 1, "exactly one entry in models (the checkpoint to convert)");
  out.positional.push_back(models[0].path);
  if (const auto& path = job.out_path()) out.positional.push_back(path->text);
  if (const auto& dtype = job.out_dtype()) out.option("dtype", dtype->text);
}

}  // namespace

Command convert_command() {
  return {.name = "convert",
          .summary = "convert a checkpoint between safetensors, model directories and HDF5",
          .usage = kUsage,
          .run = run,
          .options = named_options,
          .merge_methods = {"convert"},
          .translate = translate};
}

}  // namespace soupkit::cli
