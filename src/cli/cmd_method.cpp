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
  std::string text = "soupkit " + spec.name + (spec.needs_base ? " --base BASE" : "") + " --out OUT";
  for (const auto& p : spec.parameters) {
    const std::string value = p.kind == ParameterKind::Bool ? "true|false" : upper(p.name);
    text += p.per_model ? fmt::format(" [--{} {}1,{}2,...]", option_name(p), value, value)
                        : fmt::format(" [--{} {}]", option_name(p), value);
  }
  return text + " MODEL...";
}

po::options_description named_options(const MergeMethodSpec& spec) {
  po::options_description desc;
  if (spec.needs_base) desc.add_options()("base", po::value<std::string>()->required(), "base checkpoint");
  desc.add_options()("out", po::value<std::string>()->required(), "output: .safetensors, .h5, or a directory");
  for (const auto& p : spec.parameters) {
    const std::string kind = p.kind == ParameterKind::Bool ? ": true or false" : "";
    const std::string help =
        p.per_model ? fmt::format("{}{}; one per model, comma-separated (default {} each)", p.help, kind,
                                  parameter_text(p.default_value))
                    : fmt::format("{}{} (default {})", p.help, kind, parameter_text(p.default_value));
    desc.add_options()(option_name(p).c_str(), po::value<std::string>(), help.c_str());
  }
  desc.add_options()("out-dtype", po::value<std::string>(),
                     spec.needs_base ? "write floating-point tensors as F64, F32, F16 or BF16 (default: as the base)"
                                     : "write floating-point tensors as F64, F32, F16 or BF16 (default: as the first model)")(
      "shard-size", po::value<std::string>()->default_value("5GB"), "largest shard of a directory output")(
      "overwrite", "replace an existing output");
  add_engine_options(desc);
  add_common_options(desc);
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

// Every parameter's value (defaults filled in), per model and global.
void read_parameters(const MergeMethodSpec& spec, const po::variables_map& vm, MergeInputs& in) {
  in.per_model.resize(in.models.size());
  for (const auto& p : spec.parameters) {
    const std::string option = option_name(p);
    const bool given = vm.count(option) > 0;
    if (!p.per_model) {
      in.global.set(p.name, given ? value_of(p, vm[option].as<std::string>()) : p.default_value);
      continue;
    }
    const auto items = given ? split_list(vm[option].as<std::string>()) : std::vector<std::string>{};
    SOUPKIT_INPUT_ERROR_IF(given && items.size() != in.models.size(), "--{}: {} values for {} models", option,
                           items.size(), in.models.size());
    for (std::size_t i = 0; i < in.models.size(); ++i)
      in.per_model[i].set(p.name, given ? value_of(p, items[i]) : p.default_value);
  }
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
  if (spec.needs_base) in.base = (*vm)["base"].as<std::string>();
  for (const auto& p : (*vm)["models"].as<std::vector<std::string>>()) in.models.emplace_back(p);
  read_parameters(spec, *vm, in);
  in.output = output_option(*vm, "out");
  in.out_dtype = float_dtype_option(*vm, "out-dtype");
  in.shard_size = size_option(*vm, "shard-size");
  in.overwrite = vm->count("overwrite") > 0;
  const auto engine = engine_settings(*vm, comm);
  const auto method = spec.build(in);
  run_method(comm, *method, in.output, engine.run);
  return 0;
}

// base_model -> --base; models -> MODEL...; models[i].parameters.<name> of
// a per-model parameter -> its list option (the default for a model that
// does not give it); global parameters come through `parameters`, checked
// against the options above.
void translate(const MergeMethodSpec& spec, JobInput& job, JobCommand& out) {
  if (spec.needs_base) {
    const auto& base = job.base_model();
    job.need(base && !base->text.empty(), "base_model");
    out.option("base", base->text);
  }
  const auto& models = job.models();
  job.need(!models.empty(), "models");
  for (const auto& p : spec.parameters) {
    if (!p.per_model) continue;
    std::vector<std::string> values;
    bool given = false;
    for (std::size_t i = 0; i < models.size(); ++i) {
      const JobValue* value = job.model_parameter(i, p.name);
      if (value && value->text.find(',') != std::string::npos) job.refuse(*value, "one value per model, not a list");
      given = given || value;
      values.push_back(value ? value->text : parameter_text(p.default_value));
    }
    if (given) out.option(p.list_option, fmt::format("{}", fmt::join(values, ",")));
  }
  for (const auto& m : models) out.positional.push_back(m.path);
  job.add_output_options(out);
}

}  // namespace

Command method_command(const MergeMethodSpec& spec) {
  return {.name = spec.name,
          .summary = spec.summary,
          .usage = usage(spec),
          .run = [&spec](const Communicator& comm, const Args& args) { return run(spec, comm, args); },
          .options = [&spec] { return named_options(spec); },
          .merge_methods = spec.merge_methods,
          .translate = [&spec](JobInput& job, JobCommand& out) { translate(spec, job, out); }};
}

}  // namespace soupkit::cli
