#include "commands.hpp"
#include "options.hpp"
#include "soupkit/methods/convert.hpp"

#include <algorithm>

namespace soupkit::cli {

int cmd_convert(const Communicator& comm, const Args& args) {
  po::options_description desc("convert options");
  desc.add_options()("input", po::value<std::string>()->required(), "input checkpoint")(
      "output", po::value<std::string>()->required(), "output: .safetensors, .h5, or a directory")(
      "dtype", po::value<std::string>(), "cast floating-point tensors to F32, F16, BF16 or F64 (round to nearest even)")(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output");
  add_engine_options(desc);
  add_common_options(desc);
  po::positional_options_description pos;
  pos.add("input", 1).add("output", 1);
  const auto vm = parse("convert", args, desc, pos, comm.rank(), "soupkit convert IN OUT [--dtype D] [--shard-size 5GB]");
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

}  // namespace soupkit::cli
