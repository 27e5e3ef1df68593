#include "commands.hpp"
#include "options.hpp"
#include "soupkit/methods/example.hpp"

namespace soupkit::cli {

int cmd_example(const Communicator& comm, const Args& args) {
  po::options_description desc("example options");
  desc.add_options()("dir", po::value<std::string>()->required(), "directory to write base/ and finetuned/ into")(
      "seed", po::value<std::uint64_t>()->default_value(2026), "random seed")(
      "shard-size", po::value<std::string>()->default_value("64KiB"), "shard size (small, so the example is sharded)")(
      "overwrite", "replace existing example models");
  add_common_options(desc);
  po::positional_options_description pos;
  pos.add("dir", 1);
  const auto vm = parse("example", args, desc, pos, comm.rank(), "soupkit example DIR");
  if (!vm) return 0;
  const fs::path dir = (*vm)["dir"].as<std::string>();
  for (bool finetuned : {false, true}) {
    ExampleOptions options;
    options.seed = (*vm)["seed"].as<std::uint64_t>();
    options.finetuned = finetuned;
    options.shard_size = size_option(*vm, "shard-size");
    options.overwrite = vm->count("overwrite") > 0;
    ExampleMethod method(options);
    run_method(comm, method, dir / (finetuned ? "finetuned" : "base"));
  }
  return 0;
}

}  // namespace soupkit::cli
