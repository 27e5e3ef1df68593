#include "soupkit/methods/merge_output.hpp"

#include "soupkit/methods/carried_files.hpp"
#include "soupkit/methods/layer_position.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace soupkit {
namespace {

// transformers' names of the dtypes a config.json may declare.
const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F64: return "float64";
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: return nullptr;
  }
}

// The one dtype of the output's floating-point tensors, if they share one.
std::optional<DType> float_output_dtype(const OutputSpec& out) {
  std::optional<DType> found;
  for (const auto& t : out.tensors) {
    if (!is_float_arith(t.dtype)) continue;
    if (found && *found != t.dtype) return std::nullopt;
    found = t.dtype;
  }
  return found;
}

// The output's layer count (slices change it), from its tensor names.
std::optional<std::uint64_t> layer_count(const OutputSpec& out) {
  std::optional<std::uint64_t> count;
  for (const auto& t : out.tensors)
    if (const auto layer = parse_layer_name(t.name)) count = std::max(count.value_or(0), layer->index + 1);
  return count;
}

// config.json with its dtype key following the output (transformers reads
// `torch_dtype`, newer versions write `dtype`: whichever is there is set),
// and its layer count the output's when slices changed it.
std::string rewritten_config(const CheckpointReader& reference, std::optional<DType> dtype,
                             std::optional<std::uint64_t> layers) {
  const std::string text = reference.read_aux("config.json");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: config.json is not JSON ({}); the output's config.json would declare its dtype",
                                 reference.path().string(), e.what()));
  }
  SOUPKIT_INPUT_ERROR_IF(!config.is_object(), "{}: config.json is not a JSON object", reference.path().string());
  if (dtype) {
    const char* name = torch_dtype_name(*dtype);
    bool set = false;
    for (const char* key : {"torch_dtype", "dtype"})
      if (config.contains(key)) {
        config[key] = name;
        set = true;
      }
    if (!set) config["torch_dtype"] = name;
  }
  if (layers)
    for (const char* key : {"num_hidden_layers", "n_layer", "num_layers"})
      if (config.contains(key)) config[key] = *layers;
  return config.dump(2) + "\n";
}

std::string model_list(const MergeInputs& in) {
  std::string text;
  for (std::size_t i = 0; i < in.models.size(); ++i)
    text += fmt::format("* {}{}\n", in.models[i].string(), in.base() == i ? " (the base model)" : "");
  return text;
}

// The card's provenance is the output's (the run's facts, like the rank
// count, are in no output: its bytes do not depend on them).
std::string model_card(const MergeMethodSpec& spec, const MergeInputs& in, const std::string& config,
                       const nlohmann::json& provenance) {
  const std::string base = in.base() ? fmt::format(", with {} as the base", in.base_path().string()) : "";
  return fmt::format(
      "---\nlibrary_name: transformers\ntags:\n- merge\n- soupkit\n---\n\n"
      "This model is a merge of pre-trained models made with soupkit {} (merge_method `{}`: {}).\n\n"
      "It was merged with the {} method{}.\n\n"
      "The following models were included in the merge:\n{}\n"
      "The following configuration (also in {}) produced it:\n\n```yaml\n{}```\n\n"
      "## Provenance\n\nWhat soupkit read and how (also in each weight file's metadata, `soupkit_provenance`):\n\n"
      "```json\n{}\n```\n",
      SOUPKIT_VERSION, spec.merge_methods.front(), spec.summary, spec.merge_methods.front(), base, model_list(in),
      kMergeConfigName, config, provenance.dump(2));
}

}  // namespace

std::string equivalent_config(const MergeMethodSpec& spec, const MergeInputs& in) {
  // JSON is YAML: each value exactly as soupkit read it.
  nlohmann::json config = {{"merge_method", spec.merge_methods.front()}};
  if (in.base()) config["base_model"] = in.base_path().string();
  nlohmann::json models = nlohmann::json::array();
  for (std::size_t i = 0; i < in.models.size(); ++i) {
    nlohmann::json m = {{"model", in.models[i].string()}};
    if (!in.parameters.per_model.at(i).empty()) m["parameters"] = settings_json(in.parameters.per_model[i]);
    models.push_back(m);
  }
  config["models"] = models;
  if (!in.parameters.global.empty()) config["parameters"] = settings_json(in.parameters.global);
  if (in.compute_dtype) config["dtype"] = torch_dtype_name(*in.compute_dtype);
  if (in.out_dtype) config["out_dtype"] = torch_dtype_name(*in.out_dtype);
  return config.dump(2) + "\n";
}

std::map<std::string, std::string> describe_merge_output(const MergeMethodSpec& spec, const MergeInputs& in,
                                                         const CheckpointReader& reference,
                                                         const nlohmann::json& inputs, OutputSpec& out) {
  out.metadata = reference.metadata();
  if (out.metadata.empty()) out.metadata["format"] = "pt";
  out.shard_size = in.shard_size;
  out.overwrite = in.overwrite;
  nlohmann::json models = nlohmann::json::array();
  for (std::size_t i = 0; i < in.models.size(); ++i) {
    nlohmann::json m = {{"model", in.models[i].string()}, {"parameters", settings_json(in.parameters.per_model[i])}};
    if (in.base() == i) m["base"] = true;
    models.push_back(m);
  }
  out.provenance = {{"method", spec.merge_methods.front()},
                    {"models", models},
                    {"parameters", settings_json(in.parameters.global)},
                    {"soupkit_version", SOUPKIT_VERSION}};
  if (in.compute_dtype) out.provenance["dtype"] = dtype_name(*in.compute_dtype);
  if (in.out_dtype) out.provenance["out_dtype"] = dtype_name(*in.out_dtype);
  if (spec.uses_random_seed) out.provenance["random_seed"] = in.random_seed;
  out.provenance["inputs"] = inputs;

  std::map<std::string, std::string> made;
  const bool directory = output_kind(in.output) == OutputKind::ModelDirectory;
  std::vector<AuxFileInfo> files = carried_files(reference, in.output);
  if (directory) {
    // The input's own card and configuration describe the input, not this merge.
    std::erase_if(files, [](const AuxFileInfo& f) { return f.name == kModelCardName || f.name == kMergeConfigName; });
    const std::string config = in.job_text.empty() ? equivalent_config(spec, in) : in.job_text;
    made[kMergeConfigName] = config;
    made[kModelCardName] = model_card(spec, in, config.ends_with('\n') ? config : config + "\n", out.provenance);
  }
  const auto dtype = float_output_dtype(out);
  const auto layers = in.slices.empty() ? std::nullopt : layer_count(out);
  for (const auto& f : files)
    if (f.name == "config.json" && (dtype || layers)) made[f.name] = rewritten_config(reference, dtype, layers);
  for (auto& f : files)
    if (made.count(f.name)) f.size = made[f.name].size();
  for (const auto& [name, contents] : made)
    if (std::none_of(files.begin(), files.end(), [&](const AuxFileInfo& f) { return f.name == name; }))
      files.push_back({name, contents.size()});
  out.aux_files = std::move(files);
  return made;
}

}  // namespace soupkit
