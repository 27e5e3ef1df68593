#include "job_file.hpp"

#include "commands.hpp"
#include "mergekit_config.hpp"
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

JobValue value_of(const YAML::Node& node, const std::string& source, const std::string& key) {
  return {scalar(node, source, key), key, line_of(node)};
}

// parameters: {snake_or_kebab_key: value} -> --kebab-key value, each
// checked by name against the command's options: a flag takes true (a bare
// --flag) or false (left out, once its name is checked), an option with a
// value takes a single value or a list (comma-separated).
void add_parameters(const YAML::Node& params, const Command& command, const std::string& source, JobCommand& out) {
  if (!params) return;
  SOUPKIT_INPUT_ERROR_IF(!params.IsMap(), "{}: parameters: expected a mapping of option names to values (line {})",
                         source, params.Mark().line + 1);
  const auto options = command.options();
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
    const auto* option = key == "help" ? nullptr : options.find_nothrow(key, false);
    SOUPKIT_INPUT_ERROR_IF(!option, "{}: {}: soupkit {} has no option --{} ({}; see 'soupkit {} --help')", source,
                           where, command.name, excerpt(key), line_of(kv.first), command.name);
    SOUPKIT_INPUT_ERROR_IF(out.has_option(key), "{}: {}: --{} is already set by the job's other keys ({})", source,
                           where, key, line_of(kv.first));
    const YAML::Node& value = kv.second;
    if (option->semantic()->max_tokens() == 0) {
      // YAML's booleans (true, True, yes, on, ...): a bare flag, or nothing.
      bool flag = false;
      SOUPKIT_INPUT_ERROR_IF(!value.IsScalar() || !YAML::convert<bool>::decode(value, flag),
                             "{}: {}: --{} is a flag: true or false ({})", source, where, key, line_of(value));
      if (flag) out.option(key);
    } else if (value.IsSequence()) {
      std::string joined;
      for (const auto& item : value) {
        if (!joined.empty()) joined += ',';
        joined += scalar(item, source, where);
      }
      out.option(key, joined);
    } else {
      out.option(key, scalar(value, source, where));
    }
  }
}

std::vector<JobModel> read_models(const YAML::Node& models, const std::string& source) {
  SOUPKIT_INPUT_ERROR_IF(!models.IsSequence(), "{}: models: expected a list (line {})", source, models.Mark().line + 1);
  std::vector<JobModel> out;
  for (std::size_t i = 0; i < models.size(); ++i) {
    const YAML::Node& m = models[i];
    const std::string where = fmt::format("models[{}]", i);
    if (m.IsScalar()) {
      out.push_back({m.Scalar(), where, {}});
      continue;
    }
    SOUPKIT_INPUT_ERROR_IF(!m.IsMap() || !m["model"], "{}: {}: expected 'model: PATH' (line {})", source, where,
                           m.Mark().line + 1);
    for (const auto& kv : m) {
      const std::string name = key_name(kv.first, source, where);
      SOUPKIT_INPUT_ERROR_IF(name != "model" && name != "parameters",
                             "{}: {}.{}: unknown key ({}); a model entry has model and parameters", source, where,
                             excerpt(name), line_of(kv.first));
    }
    JobModel model{scalar(m["model"], source, where + ".model"), where, {}};
    if (const auto p = m["parameters"]) {
      SOUPKIT_INPUT_ERROR_IF(!p.IsMap(), "{}: {}.parameters: expected 'weight: W' (line {})", source, where,
                             p.Mark().line + 1);
      for (const auto& kv : p) {
        const std::string name = key_name(kv.first, source, where + ".parameters");
        const std::string key = where + ".parameters." + excerpt(name);
        model.parameters.emplace_back(name, value_of(kv.second, source, key));
      }
    }
    out.push_back(std::move(model));
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

bool JobCommand::has_option(std::string_view name) const {
  return std::any_of(options.begin(), options.end(), [&](const auto& o) { return o.first == name; });
}

JobInput JobInput::read(const YAML::Node& job, const std::string& source, const std::string& merge_method) {
  JobInput in;
  in.source_ = source;
  in.merge_method_ = merge_method;
  auto value = [&](const char* key) -> std::optional<JobValue> {
    if (!job[key]) return std::nullopt;
    return value_of(job[key], source, key);
  };
  in.base_model_ = value("base_model");
  in.tokenizer_source_ = value("tokenizer_source");
  in.out_path_ = value("out_path");
  // Refused here to name the job file and key; the engine would say only "the output path is empty".
  SOUPKIT_INPUT_ERROR_IF(in.out_path_ && in.out_path_->text.empty(), "{}: out_path: the output path is empty ({})",
                         source, in.out_path_->line);
  in.out_dtype_ = value("out_dtype");
  if (in.out_dtype_) in.out_dtype_->text = dtype_option(source, "out_dtype", in.out_dtype_->text);
  in.dtype_ = value("dtype");
  if (in.dtype_) {
    // mergekit's compute dtype. soupkit computes spectra in float64 and
    // averages in float64 (float32 on request), never below float32.
    in.dtype_->text = dtype_option(source, "dtype", in.dtype_->text);
    SOUPKIT_INPUT_ERROR_IF(in.dtype_->text != "F32" && in.dtype_->text != "F64",
                           "{}: dtype: soupkit computes in float32 or float64, not {}; use out_dtype for the output",
                           source, in.dtype_->text);
  }
  if (job["models"]) {
    in.models_ = read_models(job["models"], source);
    in.models_line_ = line_of(job["models"]);
  }
  return in;
}

const std::vector<JobModel>& JobInput::models() {
  static const std::vector<JobModel> none;
  read_.insert("models");
  return models_ ? *models_ : none;
}

const JobValue* JobInput::model_parameter(std::size_t i, std::string_view name) {
  for (const auto& [given, value] : models_.value().at(i).parameters) {
    if (given != name) continue;
    read_.insert(value.key);
    return &value;
  }
  return nullptr;
}

void JobInput::need(bool ok, std::string_view what) const {
  SOUPKIT_INPUT_ERROR_IF(!ok, "{}: merge_method {} needs {}", source_, merge_method_, what);
}

void JobInput::refuse(const JobValue& value, std::string_view problem) const {
  const std::string where = value.line.empty() ? "" : " (" + value.line + ")";
  throw InputError(fmt::format("{}: {}: {}{}", source_, value.key, problem, where));
}

void JobInput::add_output_options(JobCommand& out) {
  if (const auto& path = out_path()) out.option("out", path->text);
  if (const auto& dtype = out_dtype()) out.option("out-dtype", dtype->text);
}

void JobInput::check_all_read() const {
  for (const auto* value : {&base_model_, &tokenizer_source_, &out_path_, &out_dtype_})
    if (*value && !read_.count((*value)->key))
      refuse(**value, fmt::format("merge_method {} does not take it", merge_method_));
  if (!models_) return;
  SOUPKIT_INPUT_ERROR_IF(!read_.count("models"), "{}: models: merge_method {} does not take it ({})", source_,
                         merge_method_, models_line_);
  for (const auto& model : *models_)
    for (const auto& [name, value] : model.parameters)
      if (!read_.count(value.key))
        refuse(value, fmt::format("merge_method {} takes no per-model '{}'", merge_method_, excerpt(name)));
}

namespace {

JobCommand translate_job(const YAML::Node& job, const std::string& source, const std::string& text) {
  SOUPKIT_INPUT_ERROR_IF(!job.IsMap(), "{}: a job file is a YAML mapping (merge_method, models, ...)", source);
  // (Keys given twice were refused, at every level, by load_untrusted_yaml.)
  if (job["merge_method"] && job["merge_method"].IsScalar())
    if (const Command* command = find_merge_method(job["merge_method"].Scalar()); command && command->merge_spec) {
      JobCommand out{command->name, {}, {}, {}};
      out.merge = std::make_shared<const MergeInputs>(read_mergekit_config(job, source, *command->merge_spec, text));
      return out;
    }
  SOUPKIT_INPUT_ERROR_IF(!job["merge_method"], "{}: merge_method is missing", source);
  const std::string method = scalar(job["merge_method"], source, "merge_method");
  const Command* command = find_merge_method(method);
  SOUPKIT_INPUT_ERROR_IF(!command, "{}: merge_method '{}' is not one soupkit runs (it runs: {})", source,
                         excerpt(method), fmt::join(merge_method_names(), ", "));
  for (const auto& kv : job) {
    const auto key = key_name(kv.first, source, "top level");
    SOUPKIT_INPUT_ERROR_IF(!kTopLevelKeys.count(key), "{}: unknown key '{}' (line {}); a job has {}", source,
                           excerpt(key), kv.first.Mark().line + 1, fmt::join(kTopLevelKeys, ", "));
  }
  JobInput in = JobInput::read(job, source, method);
  JobCommand out{command->name, {}, {}, nullptr};
  command->translate(in, out);
  add_parameters(job["parameters"], *command, source, out);
  in.check_all_read();
  return out;
}

}  // namespace

JobCommand parse_job(const std::string& yaml_text, const std::string& source) {
  const YAML::Node job = load_untrusted_yaml(yaml_text, source);
  try {
    return translate_job(job, source, yaml_text);
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
