#include "commands.hpp"
#include "options.hpp"
#include "soupkit/io/checkpoint.hpp"

#include <fmt/ranges.h>

#include <cstdio>
#include <map>

namespace soupkit::cli {
namespace {

nlohmann::json inspect_json(const CheckpointReader& r) {
  nlohmann::json tensors = nlohmann::json::array();
  std::uint64_t bytes = 0, params = 0;
  std::map<std::string, std::uint64_t> by_dtype;
  for (const auto& t : r.tensors()) {
    tensors.push_back({{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.nbytes()}});
    bytes += t.nbytes();
    params += t.numel();
    by_dtype[std::string(dtype_name(t.dtype))] += t.numel();
  }
  nlohmann::json files = nlohmann::json::array();
  for (const auto& a : r.aux_files()) files.push_back({{"name", a.name}, {"bytes", a.size}});
  return {{"path", r.path().string()},
          {"format", r.format_name()},
          {"tensors", tensors},
          {"metadata", r.metadata()},
          {"files", files},
          {"totals", {{"tensors", r.tensors().size()}, {"parameters", params}, {"bytes", bytes}, {"parameters_by_dtype", by_dtype}}}};
}

void print_table(const nlohmann::json& j) {
  std::size_t width = 4;
  for (const auto& t : j["tensors"]) width = std::max(width, t["name"].get<std::string>().size());
  width = std::min<std::size_t>(width, 80);
  fmt::print("{} ({})\n", j["path"].get<std::string>(), j["format"].get<std::string>());
  fmt::print("{:<{}}  {:<7}  {:<22}  {:>12}\n", "name", width, "dtype", "shape", "size");
  for (const auto& t : j["tensors"])
    fmt::print("{:<{}}  {:<7}  {:<22}  {:>12}\n", t["name"].get<std::string>(), width, t["dtype"].get<std::string>(),
               shape_string(t["shape"].get<Shape>()), human_bytes(t["bytes"].get<std::uint64_t>()));
  const auto& totals = j["totals"];
  std::vector<std::string> per_dtype;
  for (const auto& [d, n] : totals["parameters_by_dtype"].items()) per_dtype.push_back(fmt::format("{} {}", d, n.get<std::uint64_t>()));
  fmt::print("total: {} tensors, {} parameters ({}), {}\n", totals["tensors"].get<std::size_t>(),
             totals["parameters"].get<std::uint64_t>(), fmt::join(per_dtype, ", "),
             human_bytes(totals["bytes"].get<std::uint64_t>()));
  if (!j["files"].empty()) {
    std::vector<std::string> names;
    for (const auto& f : j["files"]) names.push_back(f["name"].get<std::string>());
    fmt::print("files: {}\n", fmt::join(names, ", "));
  }
  std::fflush(stdout);
}

constexpr const char* kUsage = "soupkit inspect PATH [--json]";

po::options_description named_options() {
  po::options_description desc;
  desc.add_options()("json", "print JSON");
  add_common_options(desc);
  return desc;
}

int run(const Communicator& comm, const Args& args) {
  po::options_description desc("inspect options");
  desc.add_options()("path", po::value<std::string>()->required(), "checkpoint to inspect");
  desc.add(named_options());
  po::positional_options_description pos;
  pos.add("path", 1);
  const auto vm = parse("inspect", args, desc, pos, comm.rank(), kUsage);
  if (!vm) return 0;
  // Headers only, on one rank: nothing here is worth distributing.
  on_root(comm, [&] {
    const auto reader = open_checkpoint((*vm)["path"].as<std::string>());
    const auto j = inspect_json(*reader);
    if (vm->count("json")) {
      fmt::print("{}\n", j.dump(2));
      std::fflush(stdout);
    } else {
      print_table(j);
    }
  });
  return 0;
}

}  // namespace

Command inspect_command() {
  return {.name = "inspect",
          .summary = "list a checkpoint's tensors",
          .usage = kUsage,
          .run = run,
          .options = named_options};
}

}  // namespace soupkit::cli
