// The command of a merge method of the family (method_registry.hpp),
// generated from its spec:
//   soupkit <name> [--base B] --out OUT [--<param> V ...] [--<list> V1,V2,...] MODEL...
// a global parameter is --<name> (snake_case as kebab-case), a per-model one
// a comma-separated list under its list option, one value per model; in a
// job file they are parameters.<name> and models[].parameters.<name>.
#include "commands.hpp"
#include "job_file.hpp"
#include "options.hpp"
#include "soupkit/methods/method_registry.hpp"
#include "soupkit/util/message_text.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

namespace soupkit::cli {
namespace {

std::string option_name(const MethodParameter& p) {
  if (p.per_model) return p.list_option;
  std::string name = p.name;
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

std::string upper(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

std::string usage(const MergeMethodSpec& spec) {
  const char* base = spec.base == BaseRole::Required ? " --base BASE" : spec.base == BaseRole::Optional ? " [--base BASE]" : "";
  std::string text = "soupkit " + spec.name + base + " --out OUT";
  for (const auto& p : spec.parameters) {
    const std::string value = p.kind == ParameterKind::Bool ? "true|false" : upper(p.name);
    const std::string option = p.per_model ? fmt::format("--{} {}1,{}2,...", option_name(p), value, value)
                                           : fmt::format("--{} {}", option_name(p), value);
    text += p.default_value ? " [" + option + "]" : " " + option;  // a required one without brackets
  }
  return text + " MODEL...";
}

std::string default_text(const MethodParameter& p) {
  return p.default_value ? "default " + parameter_text(*p.default_value) : "required";
}

// What a merge takes besides its inputs and parameters, on the command
// line and after a job file alike.
void add_run_options(const MergeMethodSpec& spec, po::options_description& desc) {
  const char* as = spec.base == BaseRole::Required ? "as the base" : "as the base, else the first model";
  desc.add_options()("out-dtype", po::value<std::string>(),
                     fmt::format("write floating-point tensors as F64, F32, F16 or BF16 (default: {})", as).c_str())(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output");
  if (spec.uses_random_seed)
    desc.add_options()("random-seed", po::value<std::string>()->default_value("0"),
                       "seed of the random drops (the same seed gives the same bytes on any rank count)");
  add_engine_options(desc);
  add_common_options(desc);
}

po::options_description named_options(const MergeMethodSpec& spec) {
  po::options_description desc;
  if (spec.base == BaseRole::Required) desc.add_options()("base", po::value<std::string>()->required(), "base checkpoint");
  if (spec.base == BaseRole::Optional) desc.add_options()("base", po::value<std::string>(), "base checkpoint (optional)");
  desc.add_options()("out", po::value<std::string>()->required(), "output: .safetensors, .h5, or a directory");
  for (const auto& p : spec.parameters) {
    const std::string kind = p.kind == ParameterKind::Bool ? ": true or false" : "";
    const std::string help = p.per_model ? fmt::format("{}{}; one per model, comma-separated ({} each)", p.help, kind,
                                                       default_text(p))
                                         : fmt::format("{}{} ({})", p.help, kind, default_text(p));
    desc.add_options()(option_name(p).c_str(), po::value<std::string>(), help.c_str());
  }
  add_run_options(spec, desc);
  return desc;
}

std::optional<ParameterValue> parse_value(ParameterKind kind, const std::string& text) {
  switch (kind) {
    case ParameterKind::Number: {
      const auto value = parse_number(text);
      if (!value || !std::isfinite(*value)) return std::nullopt;
      return *value;
    }
    case ParameterKind::Bool: {
      // YAML's spellings too, as a job file gives them (true, True, yes, on, ...).
      std::string lower = text;
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (lower == "true" || lower == "yes" || lower == "on") return true;
      if (lower == "false" || lower == "no" || lower == "off") return false;
      return std::nullopt;
    }
    case ParameterKind::Size: {
      std::uint64_t value = 0;
      const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
      return value;
    }
  }
  return std::nullopt;
}

const char* expected(ParameterKind kind) {
  switch (kind) {
    case ParameterKind::Number: return "a finite number";
    case ParameterKind::Bool: return "true or false";
    case ParameterKind::Size: return "a whole number >= 0";
  }
  return "";
}

ParameterValue value_of(const MethodParameter& p, const std::string& text) {
  const auto value = parse_value(p.kind, text);
  SOUPKIT_INPUT_ERROR_IF(!value, "--{}: '{}' is not {}{}", option_name(p), excerpt(text), expected(p.kind),
                         p.per_model ? " (expected a comma-separated list, one per model)" : "");
  return *value;
}

// The command line's parameters as settings (scalars): a global parameter
// given, and each model's value of a per-model list; the rest resolve to
// their defaults (a required one must be given).
ParameterSources command_line_parameters(const MergeMethodSpec& spec, const po::variables_map& vm,
                                         std::size_t listed) {
  ParameterSources sources;
  sources.per_model.resize(listed);
  for (const auto& p : spec.parameters) {
    const std::string option = option_name(p);
    const bool given = vm.count(option) > 0;
    SOUPKIT_INPUT_ERROR_IF(!given && !p.default_value, "--{} is required ({}{})", option, p.help,
                           p.per_model ? ": one per model, comma-separated" : "");
    if (!given) continue;
    if (!p.per_model) {
      sources.global.emplace(p.name, ParameterSetting::scalar(value_of(p, vm[option].as<std::string>())));
      continue;
    }
    const auto items = split_list(vm[option].as<std::string>());
    SOUPKIT_INPUT_ERROR_IF(items.size() != listed, "--{}: {} values for {} models", option, items.size(), listed);
    for (std::size_t i = 0; i < listed; ++i)
      sources.per_model[i].emplace(p.name, ParameterSetting::scalar(value_of(p, items[i])));
  }
  return sources;
}

std::uint64_t seed_option(const po::variables_map& vm) {
  const std::string text = vm["random-seed"].as<std::string>();
  const auto value = parse_value(ParameterKind::Size, text);
  SOUPKIT_INPUT_ERROR_IF(!value, "--random-seed: '{}' is not a whole number >= 0", excerpt(text));
  return std::get<std::uint64_t>(*value);
}

// The options after the inputs (both paths): output dtype, shards, engine.
int run_merge(const MergeMethodSpec& spec, const Communicator& comm, MergeInputs in, const po::variables_map& vm) {
  if (const auto dtype = float_dtype_option(vm, "out-dtype")) in.out_dtype = dtype;
  in.shard_size = size_option(vm, "shard-size");
  in.overwrite = in.overwrite || vm.count("overwrite") > 0;
  if (spec.uses_random_seed) in.random_seed = seed_option(vm);
  const auto engine = engine_settings(vm, comm);
  const auto method = spec.build(spec, in);
  run_method(comm, *method, in.output, engine.run);
  return 0;
}

int run(const MergeMethodSpec& spec, const Communicator& comm, const Args& args) {
  po::options_description desc(spec.name + " options");
  desc.add_options()("models", po::value<std::vector<std::string>>()->required(), "checkpoints to merge (MODEL...)");
  desc.add(named_options(spec));
  po::positional_options_description pos;
  pos.add("models", -1);
  const auto vm = parse(spec.name, args, desc, pos, comm.rank(), usage(spec));
  if (!vm) return 0;
  MergeInputs in;
  for (const auto& p : (*vm)["models"].as<std::vector<std::string>>()) in.models.emplace_back(p);
  in.parameters = command_line_parameters(spec, *vm, in.models.size());
  for (std::size_t i = 0; i < in.models.size(); ++i)
    in.parameters.model_names.push_back(fmt::format("model {} ({})", i + 1, in.models[i].string()));
  if (vm->count("base")) add_base_model((*vm)["base"].as<std::string>(), "the base", in);
  in.output = output_option(*vm, "out");
  return run_merge(spec, comm, std::move(in), *vm);
}

int run_job(const MergeMethodSpec& spec, const Communicator& comm, MergeInputs in, const Args& args) {
  po::options_description desc(spec.name + " options after a job file");
  add_run_options(spec, desc);
  const auto vm = parse("run", args, desc, {}, comm.rank(), "soupkit run JOB.yaml [OUT] [OPTION...]");
  if (!vm) return 0;
  return run_merge(spec, comm, std::move(in), *vm);
}

}  // namespace

Command method_command(const MergeMethodSpec& spec) {
  return {.name = spec.name,
          .summary = spec.summary,
          .usage = usage(spec),
          .run = [&spec](const Communicator& comm, const Args& args) { return run(spec, comm, args); },
          .options = [&spec] { return named_options(spec); },
          .merge_methods = spec.merge_methods,
          .run_merge = [&spec](const Communicator& comm, const MergeInputs& in, const Args& args) {
            return run_job(spec, comm, in, args);
          },
          .merge_spec = &spec};
}

}  // namespace soupkit::cli
