#include "commands.hpp"
#include "options.hpp"
#include "soupkit/methods/example.hpp"

namespace soupkit::cli {
namespace {

constexpr const char* kUsage = "soupkit example DIR";

po::options_description named_options() {
  po::options_description desc;
  desc.add_options()("seed", po::value<std::uint64_t>()->default_value(2026), "random seed")(
      "shard-size", po::value<std::string>()->default_value("64KiB"), "shard size (small, so the example is sharded)")(
      "overwrite", "replace existing example models");
  add_common_options(desc);
  return desc;
}

int run(const Communicator& comm, const Args& args) {
  po::options_description desc("example options");
  desc.add_options()("dir", po::value<std::string>()->required(), "directory to write base/ and finetuned/ into");
  desc.add(named_options());
  po::positional_options_description pos;
  pos.add("dir", 1);
  const auto vm = parse("example", args, desc, pos, comm.rank(), kUsage);
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

}  // namespace

Command example_command() {
  return {.name = "example",
          .summary = "write the built-in example model pair (DIR/base, DIR/finetuned)",
          .usage = kUsage,
          .run = run,
          .options = named_options};
}

}  // namespace soupkit::cli
