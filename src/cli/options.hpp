#pragma once
// Shared option handling for the sub-commands (boost::program_options).
#include "soupkit/engine/engine.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"
#include "soupkit/io/tensor.hpp"

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace soupkit::cli {

namespace po = boost::program_options;

// Adds --log-level/--quiet/--help to a command's options.
inline void add_common_options(po::options_description& desc) {
  desc.add_options()("help,h", "show this help")("quiet,q", "print errors only (and progress, if --progress bar or lines is given)")(
      "log-level", po::value<std::string>()->default_value("info"), "debug, info, warning, error or quiet");
}

// Parses `args` against `desc` (+ positionals). Returns nullopt after
// printing help on rank 0 when --help was given. Throws InputError on
// malformed options, naming the command.
inline std::optional<po::variables_map> parse(const std::string& command, const std::vector<std::string>& args,
                                              const po::options_description& desc,
                                              const po::positional_options_description& positional, int rank,
                                              const std::string& usage) {
  po::variables_map vm;
  try {
    // No guessing: boost would take --rescal for --rescale (an unambiguous
    // prefix); an option is named in full or refused.
    const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    po::store(po::command_line_parser(args).options(desc).positional(positional).style(style).run(), vm);
    // --help wins over missing required options, so check it before notify().
    if (vm.count("help")) {
      if (rank == 0) std::cout << "usage: " << usage << "\n\n" << desc << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw InputError(fmt::format("{}: {} (see 'soupkit {} --help')", command, e.what(), command));
  }
  log::configure(rank, vm.count("quiet") ? log::Level::Error : log::parse_level(vm["log-level"].as<std::string>()));
  return vm;
}

// A number option's value with its default, which --help prints in its
// shortest form (0.8, not boost's 0.80000000000000004).
inline po::typed_value<double>* number_value(double default_value) {
  return po::value<double>()->default_value(default_value, fmt::format("{}", default_value));
}

// "0.5" -> 0.5: the whole text must be a number (inf and nan included).
inline std::optional<double> parse_number(const std::string& text) {
  double value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// "a,b,c" -> {"a", "b", "c"} (an empty item stays, for its parser to refuse).
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  for (std::size_t start = 0;;) {
    const auto end = std::min(text.find(',', start), text.size());
    items.push_back(text.substr(start, end - start));
    if (end == text.size()) return items;
    start = end + 1;
  }
}

// --NAME "0.5,0.25,1" -> numbers; InputError naming the option and the bad item.
inline std::vector<double> number_list(const std::string& name, const std::string& text) {
  std::vector<double> numbers;
  for (const auto& item : split_list(text)) {
    const auto value = parse_number(item);
    SOUPKIT_INPUT_ERROR_IF(!value, "--{}: '{}' is not a number (expected a comma-separated list such as 0.5,0.3,0.2)",
                           name, item);
    numbers.push_back(*value);
  }
  return numbers;
}

inline std::uint64_t size_option(const po::variables_map& vm, const char* name) {
  const auto text = vm[name].as<std::string>();
  const auto bytes = parse_size(text);
  SOUPKIT_INPUT_ERROR_IF(!bytes || *bytes == 0, "--{}: cannot read '{}' as a size (for example 5GB, 500MiB)", name, text);
  return *bytes;
}

// An output path option: an empty one is refused before any work (greedy
// soup would otherwise evaluate every candidate first, beside "").
inline std::string output_option(const po::variables_map& vm, const char* name) {
  auto path = vm[name].as<std::string>();
  SOUPKIT_INPUT_ERROR_IF(path.empty(), "--{}: the output path is empty", name);
  return path;
}

// A floating-point dtype option (F64, F32, F16, BF16), if given.
inline std::optional<DType> float_dtype_option(const po::variables_map& vm, const char* name) {
  if (!vm.count(name)) return std::nullopt;
  const auto text = vm[name].as<std::string>();
  const auto dtype = parse_dtype(text);
  SOUPKIT_INPUT_ERROR_IF(!dtype || !is_float_arith(*dtype), "--{}: '{}' is not one of F64, F32, F16, BF16", name, text);
  return dtype;
}

// Options every engine command shares.
inline void add_engine_options(po::options_description& desc) {
  desc.add_options()("dry-run", "print the plan (tensors, bytes, estimated time and peak memory per rank) and exit")(
      "memory-budget", po::value<std::string>(),
      "memory one rank may use, e.g. 8GB (default: 80% of the node's available memory, shared by its ranks)")(
      "resume", "continue the partial output of an interrupted run of the same job (finished tensors are verified by "
                "checksum and kept); starts from scratch when there is nothing to resume")(
      "progress", po::value<std::string>()->default_value("auto"),
      "auto, bar, lines or none: a redrawn bar (percentage, rate, ETA), a line every --progress-interval seconds "
      "(batch logs), or nothing; auto: a bar when stderr reaches a terminal (also under mpirun), else lines, none "
      "with --quiet")(
      "progress-interval", number_value(5), "seconds between progress lines");
}

struct EngineSettings {
  RunOptions run;
};

// Collective (the default budget looks at every node).
inline EngineSettings engine_settings(const po::variables_map& vm, const Communicator& comm) {
  EngineSettings s;
  s.run.dry_run = vm.count("dry-run") > 0;
  s.run.resume = vm.count("resume") > 0;
  s.run.memory_budget = vm.count("memory-budget") ? size_option(vm, "memory-budget") : default_memory_budget(comm);
  const auto& progress = vm["progress"].as<std::string>();
  const auto mode = parse_progress_mode(progress);
  SOUPKIT_INPUT_ERROR_IF(!mode, "--progress: '{}' is not one of auto, bar, lines, none", progress);
  s.run.progress = *mode;
  s.run.progress_interval = vm["progress-interval"].as<double>();
  SOUPKIT_INPUT_ERROR_IF(!(s.run.progress_interval > 0 && s.run.progress_interval <= 86400),
                         "--progress-interval: {} is not a number of seconds between 0 and 86400 (exclusive of 0)",
                         s.run.progress_interval);
  return s;
}

}  // namespace soupkit::cli
