#include "job_file.hpp"

#include "yaml_input.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/io/file.hpp"
#include "soupkit/util/message_text.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

namespace soupkit::cli {
namespace {

// merge_method -> soupkit command (and its leading positional words).
// mergekit's "linear" is the weighted average, which is a (weighted) soup.
const std::map<std::string, std::vector<std::string>>& methods() {
  static const std::map<std::string, std::vector<std::string>> m = {
      {"monosoup", {"monosoup"}},
      {"linear", {"soup", "uniform"}},
      {"model_soup", {"soup", "uniform"}},
      {"uniform_soup", {"soup", "uniform"}},
      {"greedy_soup", {"soup", "greedy"}},
      {"transplant", {"transplant"}},
      {"tokenizer_transplant", {"transplant"}},
      {"convert", {"convert"}},
  };
  return m;
}

const std::set<std::string> kTopLevelKeys = {"merge_method", "base_model", "models",    "parameters",
                                             "dtype",        "out_dtype",  "out_path",  "tokenizer_source"};

// mergekit spells dtypes as torch does; soupkit as safetensors does.
std::string dtype_option(const std::string& source, const std::string& key, const std::string& value) {
  static const std::map<std::string, std::string> names = {
      {"float32", "F32"}, {"float", "F32"}, {"fp32", "F32"}, {"float16", "F16"}, {"half", "F16"}, {"fp16", "F16"},
      {"bfloat16", "BF16"}, {"bf16", "BF16"}, {"float64", "F64"}, {"double", "F64"},
      {"F32", "F32"}, {"F16", "F16"}, {"BF16", "BF16"}, {"F64", "F64"}};
  const auto it = names.find(value);
  SOUPKIT_INPUT_ERROR_IF(it == names.end(), "{}: {}: '{}' is not a dtype (float32, float16, bfloat16, float64)", source,
                         key, excerpt(value));
  return it->second;
}

// A mapping's key: a plain name (YAML also allows lists and maps as keys).
std::string key_name(const YAML::Node& key, const std::string& source, const std::string& parent) {
  SOUPKIT_INPUT_ERROR_IF(!key.IsScalar(), "{}: {}: a key that is not a name ({})", source, parent, line_of(key));
  return key.Scalar();
}

std::string scalar(const YAML::Node& node, const std::string& source, const std::string& key) {
  SOUPKIT_INPUT_ERROR_IF(!node.IsScalar(), "{}: {}: expected a single value (line {})", source, key, node.Mark().line + 1);
  return node.Scalar();
}

// parameters: {snake_or_kebab_key: value} -> --kebab-key value. true is a
// bare flag, false leaves it out, a list becomes a comma-separated value.
void add_parameters(const YAML::Node& params, const std::string& source, JobCommand& out) {
  if (!params) return;
  SOUPKIT_INPUT_ERROR_IF(!params.IsMap(), "{}: parameters: expected a mapping of option names to values (line {})",
                         source, params.Mark().line + 1);
  std::set<std::string> seen;
  for (const auto& kv : params) {
    const std::string name = key_name(kv.first, source, "parameters");
    const std::string where = "parameters." + excerpt(name);
    // The key becomes "--key": only a plain option name ("out=x" or "-x" would
    // smuggle in another option or value).
    SOUPKIT_INPUT_ERROR_IF(name.empty() || name.front() == '-' ||
                               name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_-") != std::string::npos,
                           "{}: {}: not an option name (lowercase letters, digits, '_' and '-') ({})", source, where,
                           line_of(kv.first));
    std::string key = name;
    std::replace(key.begin(), key.end(), '_', '-');
    // Distinct YAML keys may still name one option ("out_dtype", "out-dtype").
    SOUPKIT_INPUT_ERROR_IF(!seen.insert(key).second, "{}: {}: given twice ({})", source, where, line_of(kv.first));
    const YAML::Node& value = kv.second;
    if (value.IsSequence()) {
      std::string joined;
      for (const auto& item : value) {
        if (!joined.empty()) joined += ',';
        joined += scalar(item, source, where);
      }
      out.option(key, joined);
      continue;
    }
    const std::string text = scalar(value, source, where);
    // YAML's booleans (true, True, yes, on, ...): a bare flag, or nothing.
    bool flag = false;
    if (YAML::convert<bool>::decode(value, flag)) {
      if (flag) out.option(key);
    } else {
      out.option(key, text);
    }
  }
}

struct Model {
  std::string path;
  std::optional<std::string> weight;
};

std::vector<Model> read_models(const YAML::Node& models, const std::string& source) {
  std::vector<Model> out;
  if (!models) return out;
  SOUPKIT_INPUT_ERROR_IF(!models.IsSequence(), "{}: models: expected a list (line {})", source, models.Mark().line + 1);
  for (std::size_t i = 0; i < models.size(); ++i) {
    const YAML::Node& m = models[i];
    const std::string where = fmt::format("models[{}]", i);
    if (m.IsScalar()) {
      out.push_back({m.Scalar(), std::nullopt});
      continue;
    }
    SOUPKIT_INPUT_ERROR_IF(!m.IsMap() || !m["model"], "{}: {}: expected 'model: PATH' (line {})", source, where,
                           m.Mark().line + 1);
    Model model{scalar(m["model"], source, where + ".model"), std::nullopt};
    if (const auto p = m["parameters"]) {
      SOUPKIT_INPUT_ERROR_IF(!p.IsMap(), "{}: {}.parameters: expected 'weight: W' (line {})", source, where,
                             p.Mark().line + 1);
      for (const auto& kv : p) {
        const std::string name = key_name(kv.first, source, where + ".parameters");
        SOUPKIT_INPUT_ERROR_IF(name != "weight", "{}: {}.parameters.{}: soupkit takes only a per-model 'weight'",
                               source, where, excerpt(name));
      }
      if (p["weight"]) model.weight = scalar(p["weight"], source, where + ".parameters.weight");
    }
    out.push_back(model);
  }
  return out;
}

}  // namespace

void JobCommand::option(const std::string& name, std::optional<std::string> value) {
  options.emplace_back(name, std::move(value));
}

std::vector<std::string> JobCommand::args(const std::vector<std::string>& overrides) const {
  // Options given after the job file replace the job's own of the same name.
  std::set<std::string> overridden;
  for (const auto& a : overrides)
    if (a.starts_with("--")) overridden.insert(a.substr(2, a.find('=') == std::string::npos ? a.npos : a.find('=') - 2));
  std::vector<std::string> all;
  // A path starting with '-' would read as an option: "./-x" is the same file.
  for (const auto& p : positional) all.push_back(p.starts_with('-') ? "./" + p : p);
  for (const auto& [name, value] : options) {
    if (overridden.count(name)) continue;
    all.push_back("--" + name);
    if (value) all.push_back(*value);
  }
  all.insert(all.end(), overrides.begin(), overrides.end());
  return all;
}

namespace {

JobCommand translate_job(const YAML::Node& job, const std::string& source) {
  SOUPKIT_INPUT_ERROR_IF(!job.IsMap(), "{}: a job file is a YAML mapping (merge_method, models, ...)", source);
  // (Keys given twice were refused, at every level, by load_untrusted_yaml.)
  for (const auto& kv : job) {
    const auto key = key_name(kv.first, source, "top level");
    SOUPKIT_INPUT_ERROR_IF(!kTopLevelKeys.count(key), "{}: unknown key '{}' (line {}); a job has {}", source,
                           excerpt(key), kv.first.Mark().line + 1, fmt::join(kTopLevelKeys, ", "));
  }
  SOUPKIT_INPUT_ERROR_IF(!job["merge_method"], "{}: merge_method is missing", source);
  const std::string method = scalar(job["merge_method"], source, "merge_method");
  const auto it = methods().find(method);
  if (it == methods().end()) {
    std::vector<std::string> known;
    for (const auto& [name, command] : methods()) known.push_back(name);
    throw InputError(fmt::format("{}: merge_method '{}' is not one soupkit runs ({})", source, excerpt(method),
                                 fmt::join(known, ", ")));
  }
  JobCommand out{it->second.front(), {it->second.begin() + 1, it->second.end()}, {}};
  auto& args = out.positional;
  const auto models = read_models(job["models"], source);
  const std::string base = job["base_model"] ? scalar(job["base_model"], source, "base_model") : "";
  auto need = [&](bool ok, const std::string& what) {
    SOUPKIT_INPUT_ERROR_IF(!ok, "{}: merge_method {} needs {}", source, method, what);
  };
  auto no_weights = [&] {
    for (const auto& m : models)
      SOUPKIT_INPUT_ERROR_IF(m.weight.has_value(), "{}: {}: per-model weights apply only to soups", source,
                             excerpt(m.path));
  };
  if (out.command == "monosoup") {
    need(!base.empty() && models.size() == 1, "base_model and exactly one entry in models (the fine-tuned model)");
    no_weights();
    out.option("base", base);
    out.option("finetuned", models[0].path);
  } else if (out.command == "soup") {
    need(!models.empty(), "models (the ingredients)");
    SOUPKIT_INPUT_ERROR_IF(!base.empty(), "{}: base_model: a soup averages its models only; list every ingredient "
                                          "under models", source);
    const bool weighted = std::any_of(models.begin(), models.end(), [](const Model& m) { return m.weight.has_value(); });
    std::string weights;
    for (const auto& m : models) {
      SOUPKIT_INPUT_ERROR_IF(weighted && !m.weight, "{}: {}: every model needs a weight once one has it", source,
                             excerpt(m.path));
      if (weighted && !weights.empty()) weights += ',';
      if (weighted) weights += *m.weight;
      args.push_back(m.path);
    }
    if (weighted) out.option("weights", weights);
  } else if (out.command == "transplant") {
    need(!base.empty() && job["tokenizer_source"], "base_model and tokenizer_source (the donor model directory)");
    no_weights();
    SOUPKIT_INPUT_ERROR_IF(!models.empty(), "{}: models: a transplant takes base_model and tokenizer_source only", source);
    out.option("base", base);
    out.option("donor", scalar(job["tokenizer_source"], source, "tokenizer_source"));
  } else {  // convert
    need(models.size() == 1 && base.empty(), "exactly one entry in models (the checkpoint to convert)");
    no_weights();
    args.push_back(models[0].path);
  }
  SOUPKIT_INPUT_ERROR_IF(job["tokenizer_source"] && out.command != "transplant",
                         "{}: tokenizer_source applies to merge_method transplant only", source);
  if (job["out_path"]) {
    const std::string out_path = scalar(job["out_path"], source, "out_path");
    // Refused here to name the job file and key; the engine would say only "the output path is empty".
    SOUPKIT_INPUT_ERROR_IF(out_path.empty(), "{}: out_path: the output path is empty ({})", source,
                           line_of(job["out_path"]));
    if (out.command == "convert")
      args.push_back(out_path);
    else
      out.option("out", out_path);
  }
  if (job["out_dtype"]) {
    const std::string dtype = dtype_option(source, "out_dtype", scalar(job["out_dtype"], source, "out_dtype"));
    out.option(out.command == "convert" ? "dtype" : "out-dtype", dtype);
  }
  if (job["dtype"]) {
    // mergekit's compute dtype. soupkit computes spectra in float64 and
    // averages in float64 (float32 on request), never below float32.
    const std::string dtype = dtype_option(source, "dtype", scalar(job["dtype"], source, "dtype"));
    SOUPKIT_INPUT_ERROR_IF(dtype != "F32" && dtype != "F64",
                           "{}: dtype: soupkit computes in float32 or float64, not {}; use out_dtype for the output",
                           source, dtype);
    if (out.command == "soup") out.option("accumulate", dtype);
  }
  add_parameters(job["parameters"], source, out);
  return out;
}

}  // namespace

JobCommand parse_job(const std::string& yaml_text, const std::string& source) {
  const YAML::Node job = load_untrusted_yaml(yaml_text, source);
  try {
    return translate_job(job, source);
  } catch (const YAML::Exception& e) {
    // The checks above name the key; this is the last resort for a node
    // yaml-cpp refuses to read (its message alone would name nothing).
    throw InputError(fmt::format("{}: line {}: cannot read this value: {}", source, e.mark.line + 1, e.msg));
  }
}

JobCommand read_job_file(const std::filesystem::path& path) {
  std::error_code ec;
  SOUPKIT_INPUT_ERROR_IF(!std::filesystem::is_regular_file(path, ec), "{}: no such job file", path.string());
  // Checked before reading: a job file is never large.
  const auto size = std::filesystem::file_size(path, ec);
  SOUPKIT_INPUT_ERROR_IF(!ec && size > kMaxYamlBytes, "{}: {} bytes is too large for a job file (limit {})",
                         path.string(), size, kMaxYamlBytes);
  return parse_job(read_text_file(path), path.string());
}

}  // namespace soupkit::cli
