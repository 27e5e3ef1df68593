#include "mergekit_config.hpp"

#include "options.hpp"
#include "yaml_input.hpp"

#include "soupkit/io/checkpoint.hpp"
#include "soupkit/io/tokenizer.hpp"
#include "soupkit/util/message_text.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <set>

namespace soupkit::cli {
namespace {

// Where a value sits, for messages: "<source>: models[1].parameters.weight (line 7)".
struct Place {
  const std::string& source;
  std::string key;
  std::string line;
  [[noreturn]] void refuse(std::string_view problem) const {
    throw InputError(fmt::format("{}: {}: {}{}", source, key, problem, line.empty() ? "" : " (" + line + ")"));
  }
  // (A key that is absent has an invalid node, and no line.)
  Place at(std::string sub, const YAML::Node& node) const { return {source, key + sub, node ? line_of(node) : line}; }
};

std::string key_text(const YAML::Node& key, const Place& where) {
  if (!key.IsScalar()) where.at("", key).refuse("a key that is not a name");
  return key.Scalar();
}

std::string scalar_text(const YAML::Node& node, const Place& where) {
  if (!node.IsScalar()) where.refuse("expected a single value");
  return node.Scalar();
}

const std::set<std::string> kKeys = {"merge_method", "base_model", "models",           "slices", "parameters",
                                     "dtype",        "out_dtype",  "tokenizer_source", "out_path"};
// mergekit's keys that soupkit does not run for this family, and why.
// (slices are read, see read_slices.)
const std::map<std::string, std::string> kRefusedKeys = {
    {"modules", "per-module definitions are not run by soupkit; give the whole models under 'models'"},
    {"tokenizer", "soupkit builds no tokenizer; to move a model onto another vocabulary use 'soupkit transplant'"},
    {"chat_template", "soupkit writes no chat template; the output carries the reference model's tokenizer files"},
};

std::optional<DType> dtype_key(const YAML::Node& job, const char* key, const Place& top) {
  const YAML::Node node = job[key];
  if (!node) return std::nullopt;
  const Place where = top.at(key, node);
  std::string text = scalar_text(node, where);
  if (text.starts_with("torch.")) text = text.substr(6);
  static const std::map<std::string, DType> names = {
      {"float32", DType::F32}, {"float", DType::F32},   {"float16", DType::F16}, {"half", DType::F16},
      {"bfloat16", DType::BF16}, {"float64", DType::F64}, {"double", DType::F64}, {"F32", DType::F32},
      {"F16", DType::F16},     {"BF16", DType::BF16},   {"F64", DType::F64}};
  const auto it = names.find(text);
  if (it == names.end()) where.refuse(fmt::format("'{}' is not a dtype soupkit writes (float32, float16, bfloat16, "
                                                  "float64)", excerpt(text)));
  return it->second;
}

// A model reference: a local path. mergekit also takes Hugging Face hub ids
// (org/name, perhaps @revision), refused here, and LoRA sums (model+adapter).
fs::path model_path(const YAML::Node& node, const Place& where) {
  const std::string text = scalar_text(node, where);
  if (text.empty()) where.refuse("an empty model path");
  std::error_code ec;
  if (fs::exists(text, ec)) return text;
  // A LoRA sum (model+adapter): the model with the adapter merged in, read
  // by open_checkpoint, which names a missing part.
  if (text.find('+') != std::string::npos) {
    for (auto plus = text.find('+'); plus != std::string::npos; plus = text.find('+', plus + 1))
      if (fs::exists(text.substr(0, plus), ec) && is_adapter_directory(text.substr(plus + 1))) return text;
    where.refuse(fmt::format("'{}' does not exist, and read as a LoRA sum (model+adapter) it is not an existing model "
                             "and a LoRA adapter directory (with adapter_config.json)", excerpt(text)));
  }
  const bool local_looking = text.front() == '/' || text.front() == '.' || text.front() == '~' ||
                             std::count(text.begin(), text.end(), '/') != 1;
  if (!local_looking)
    where.refuse(fmt::format("'{}' does not exist here and looks like a Hugging Face hub id: soupkit reads local paths "
                             "only; download it first (e.g. huggingface-cli download {} --local-dir DIR) and give "
                             "the directory",
                             excerpt(text), excerpt(text.substr(0, text.find('@')))));
  return text;  // opening it names the missing file
}

const MethodParameter* find_parameter(const MergeMethodSpec& spec, std::string_view name) {
  for (const auto& p : spec.parameters)
    if (p.name == name) return &p;
  return nullptr;
}

std::string parameter_names(const MergeMethodSpec& spec, bool per_model_only) {
  std::vector<std::string> names;
  for (const auto& p : spec.parameters)
    if (!per_model_only || p.per_model) names.push_back(p.name);
  return names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "));
}

ParameterValue scalar_value(const MethodParameter& p, const YAML::Node& node, const Place& where) {
  const std::string text = scalar_text(node, where);
  switch (p.kind) {
    // mergekit's pydantic reads every setting as a float (true is 1.0,
    // false 0.0) and a flag back as a bool (only 0 and 1 are flags), so
    // `weight: true` is 1 and `normalize: 0` is false there too.
    case ParameterKind::Number: {
      bool flag = false;
      if (YAML::convert<bool>::decode(node, flag)) return flag ? 1.0 : 0.0;
      const auto value = parse_number(text);
      if (!value || !std::isfinite(*value)) where.refuse(fmt::format("'{}' is not a finite number", excerpt(text)));
      return *value;
    }
    case ParameterKind::Bool: {
      bool flag = false;
      if (YAML::convert<bool>::decode(node, flag)) return flag;
      const auto value = parse_number(text);
      if (value && (*value == 0 || *value == 1)) return *value == 1;
      where.refuse(fmt::format("'{}' is not true or false (or 1 or 0)", excerpt(text)));
    }
    case ParameterKind::Size: {
      const auto value = parse_number(text);
      if (!value || !(*value >= 0) || *value != std::floor(*value) || *value > 9.007199254740992e15)
        where.refuse(fmt::format("'{}' is not a whole number >= 0", excerpt(text)));
      return static_cast<std::uint64_t>(*value);
    }
  }
  where.refuse("unreadable value");
}

// A scalar, or (for a number) a gradient: a list of numbers.
ParameterSetting scalar_or_gradient(const MethodParameter& p, const YAML::Node& node, const Place& where) {
  if (node.IsScalar()) return ParameterSetting::scalar(scalar_value(p, node, where));
  if (!node.IsSequence() || node.size() == 0)
    where.refuse("expected a value or a gradient (a non-empty list of numbers)");
  if (p.kind != ParameterKind::Number)
    where.refuse(fmt::format("'{}' is {}: a gradient (a list of values over the layers) is for numbers", p.name,
                             p.kind == ParameterKind::Bool ? "true or false" : "a whole number"));
  std::vector<double> points;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const Place item = where.at(fmt::format("[{}]", i), node[i]);
    if (!node[i].IsScalar()) item.refuse("a gradient is a list of numbers");
    points.push_back(std::get<double>(scalar_value(p, node[i], item)));
  }
  return ParameterSetting::gradient(std::move(points));
}

// mergekit's ParameterSetting: a scalar, a gradient, or a list of {filter, value}.
ParameterSetting read_setting(const MethodParameter& p, const YAML::Node& node, const Place& where) {
  if (node.IsMap())
    where.refuse("a single {filter, value} must be an entry of a list (- filter: ..., value: ...), as in mergekit");
  const bool conditions = node.IsSequence() && node.size() > 0 && node[0].IsMap();
  if (!conditions) return scalar_or_gradient(p, node, where);
  std::vector<ParameterCondition> list;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const YAML::Node& entry = node[i];
    const Place item = where.at(fmt::format("[{}]", i), entry);
    if (!entry.IsMap()) item.refuse("a list of conditions has only {filter, value} entries");
    for (const auto& kv : entry) {
      const std::string name = key_text(kv.first, item);
      if (name != "filter" && name != "value")
        item.at(fmt::format(".{}", excerpt(name)), kv.first).refuse("unknown key; a condition has filter and value");
    }
    if (!entry["value"]) item.refuse("a condition needs a value");
    ParameterCondition c;
    if (const YAML::Node f = entry["filter"]) {
      if (!f.IsNull()) c.filter = scalar_text(f, item.at(".filter", f));
    }
    c.value = std::make_shared<ParameterSetting>(scalar_or_gradient(p, entry["value"], item.at(".value", entry["value"])));
    list.push_back(std::move(c));
  }
  return ParameterSetting::conditions(std::move(list));
}

ParameterSettings read_settings(const MergeMethodSpec& spec, const YAML::Node& node, const Place& where,
                                bool per_model) {
  ParameterSettings out;
  if (!node || node.IsNull()) return out;
  if (!node.IsMap()) where.refuse("expected a mapping of parameter names to values");
  for (const auto& kv : node) {
    const std::string name = key_text(kv.first, where);
    const Place at = where.at(fmt::format(".{}", excerpt(name)), kv.first);
    if (name == "random_seed")
      at.refuse("not a mergekit parameter: the seed of soupkit's random drops is the option --random-seed (soupkit "
                "run CONFIG OUT --random-seed N)");
    const MethodParameter* p = find_parameter(spec, name);
    if (!p)
      at.refuse(fmt::format("merge_method {} has no parameter '{}' (its parameters: {})", spec.merge_methods.front(),
                            excerpt(name), parameter_names(spec, false)));
    if (per_model && !p->per_model)
      at.refuse(fmt::format("'{}' is a global parameter of {}: mergekit ignores it here; set it under the top-level "
                            "parameters",
                            name, spec.merge_methods.front()));
    out.emplace(name, read_setting(*p, kv.second, at));
  }
  return out;
}

void read_models(const MergeMethodSpec& spec, const YAML::Node& models, const Place& top, MergeInputs& in) {
  const Place where = top.at("models", models);
  if (!models.IsSequence() || models.size() == 0) where.refuse("expected a non-empty list of models");
  for (std::size_t i = 0; i < models.size(); ++i) {
    const YAML::Node& m = models[i];
    const std::string key = fmt::format("models[{}]", i);
    const Place item = top.at(key, m);
    fs::path path;
    ParameterSettings settings;
    if (m.IsScalar()) {
      path = model_path(m, item);
    } else {
      if (!m.IsMap() || !m["model"]) item.refuse("expected 'model: PATH' (and perhaps parameters)");
      for (const auto& kv : m) {
        const std::string name = key_text(kv.first, item);
        if (name != "model" && name != "parameters")
          item.at(fmt::format(".{}", excerpt(name)), kv.first).refuse("unknown key; a model entry has model and parameters");
      }
      path = model_path(m["model"], item.at(".model", m["model"]));
      settings = read_settings(spec, m["parameters"], item.at(".parameters", m["parameters"]), true);
    }
    for (std::size_t j = 0; j < in.models.size(); ++j)
      if (same_model(in.models[j], path))
        item.refuse(fmt::format("{} is listed twice (also models[{}]); mergekit would keep one of them", path.string(),
                                j));
    in.models.push_back(path);
    in.parameters.per_model.push_back(std::move(settings));
    in.parameters.model_names.push_back(fmt::format("{} ({})", key, path.string()));
  }
}

std::uint64_t layer_bound(const YAML::Node& node, const Place& where) {
  const std::string text = scalar_text(node, where);
  const auto value = parse_number(text);
  if (!value || !(*value >= 0) || *value != std::floor(*value) || *value > 1e9)
    where.refuse(fmt::format("'{}' is not a layer index (a whole number >= 0)", excerpt(text)));
  return static_cast<std::uint64_t>(*value);
}

// mergekit's slices: each output slice stacks layers [first, end) of its
// sources. Every slice must list the same models in the same order (each
// output layer is then a merge of every model), except for passthrough,
// which takes each slice from its one source.
void read_slices(const MergeMethodSpec& spec, const YAML::Node& slices, const Place& top, MergeInputs& in) {
  const Place where = top.at("slices", slices);
  if (!slices.IsSequence() || slices.size() == 0) where.refuse("expected a non-empty list of slices");
  struct Source {
    fs::path model;
    MergeSlice::Range range;
    ParameterSettings settings;
  };
  std::vector<std::vector<Source>> all;
  std::vector<ParameterSettings> slice_settings;
  for (std::size_t s = 0; s < slices.size(); ++s) {
    const YAML::Node& slice = slices[s];
    const Place item = top.at(fmt::format("slices[{}]", s), slice);
    if (!slice.IsMap()) item.refuse("expected a mapping with sources (and perhaps parameters)");
    for (const auto& kv : slice) {
      const std::string name = key_text(kv.first, item);
      const Place at = item.at(fmt::format(".{}", excerpt(name)), kv.first);
      if (name == "base_model") at.refuse("a base model per slice is not run by soupkit; give base_model at the top");
      if (name == "residual_weight") at.refuse("not run by soupkit (mergekit's planner does not use it either)");
      if (name != "sources" && name != "parameters") at.refuse("unknown key; a slice has sources and parameters");
    }
    const YAML::Node sources = slice["sources"];
    if (!sources || !sources.IsSequence() || sources.size() == 0) item.refuse("a slice needs a non-empty list of sources");
    std::vector<Source> list;
    for (std::size_t i = 0; i < sources.size(); ++i) {
      const YAML::Node& src = sources[i];
      const Place at = item.at(fmt::format(".sources[{}]", i), src);
      if (!src.IsMap() || !src["model"] || !src["layer_range"]) at.refuse("expected model and layer_range: [FIRST, END]");
      for (const auto& kv : src) {
        const std::string name = key_text(kv.first, at);
        if (name != "model" && name != "layer_range" && name != "parameters")
          at.at(fmt::format(".{}", excerpt(name)), kv.first).refuse("unknown key; a source has model, layer_range and parameters");
      }
      const YAML::Node range = src["layer_range"];
      const Place r = at.at(".layer_range", range);
      if (!range.IsSequence() || range.size() != 2) r.refuse("expected [FIRST, END]");
      Source source{model_path(src["model"], at.at(".model", src["model"])),
                    {layer_bound(range[0], r), layer_bound(range[1], r)},
                    read_settings(spec, src["parameters"], at.at(".parameters", src["parameters"]), true)};
      if (source.range.first >= source.range.end) r.refuse("the range is empty (FIRST must be below END)");
      for (const auto& other : list)
        if (same_model(other.model, source.model)) at.refuse(fmt::format("{} is a source twice", source.model.string()));
      if (!list.empty() && source.range.end - source.range.first != list[0].range.end - list[0].range.first)
        r.refuse("all sources of a slice must have the same number of layers (mergekit refuses it too)");
      list.push_back(std::move(source));
    }
    if (spec.merge_methods.front() != "passthrough" && !all.empty()) {
      bool same = all[0].size() == list.size();
      for (std::size_t i = 0; same && i < list.size(); ++i) same = same_model(all[0][i].model, list[i].model);
      if (!same)
        item.at(".sources", sources).refuse("soupkit merges slices whose sources are the same models in the same "
                                            "order as the first slice's (or stacks them with passthrough)");
    }
    all.push_back(std::move(list));
    slice_settings.push_back(read_settings(spec, slice["parameters"], item.at(".parameters", slice["parameters"]), false));
  }
  // The models: every source, in order of first appearance.
  for (const auto& list : all)
    for (const auto& source : list) {
      bool known = false;
      for (const auto& m : in.models) known = known || same_model(m, source.model);
      if (known) continue;
      in.models.push_back(source.model);
      in.parameters.per_model.emplace_back();
      in.parameters.model_names.push_back(source.model.string());
    }
  for (std::size_t s = 0; s < all.size(); ++s) {
    MergeSlice slice;
    slice.ranges.resize(in.models.size());
    slice.source_parameters.resize(in.models.size());
    slice.parameters = std::move(slice_settings[s]);
    for (auto& source : all[s])
      for (std::size_t k = 0; k < in.models.size(); ++k)
        if (same_model(in.models[k], source.model)) {
          slice.ranges[k] = source.range;
          slice.source_parameters[k] = std::move(source.settings);
        }
    in.slices.push_back(std::move(slice));
  }
}

// mergekit's embedding tensors (its architectures' is_embed weights: input
// embeddings and the head), which a tokenizer_source rebuilds.
bool is_embedding(const TensorInfo& t) {
  if (t.shape.size() != 2) return false;
  for (const char* word : {"embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in", "embed_out",
                           "lm_head"})
    if (t.name.find(word) != std::string::npos) return true;
  return false;
}

// With a tokenizer_source mergekit rebuilds every model's embeddings on the
// output vocabulary (tokenizer/embed.py: one row per token of
// tokenizer.get_vocab(), each model's row of that token): the identity only
// when every model has the reference's vocabulary and its embeddings one
// row per token. Anything else (padded rows dropped, rows permuted or
// invented) soupkit does not do in a merge: refused.
Tokenizer tokenizer_of(const CheckpointReader& model, const Place& where) {
  try {
    return read_tokenizer(model);
  } catch (const InputError& e) {
    where.refuse(fmt::format("mergekit builds the output's vocabulary from every model's tokenizer: {}", e.what()));
  }
}

void check_embeddings_follow_the_vocabulary(const MergeInputs& in, std::size_t reference, const Place& where) {
  const auto ref_model = open_checkpoint(in.models.at(reference));
  const Tokenizer vocabulary = tokenizer_of(*ref_model, where);
  for (std::size_t id = 0; id < vocabulary.pieces.size(); ++id)
    if (!vocabulary.present[id])
      where.refuse(fmt::format("{} has no token of id {}: mergekit would rebuild the embeddings on its {} tokens; "
                               "soupkit merges embeddings as they are (leave out tokenizer_source, or use 'soupkit "
                               "transplant')",
                               vocabulary.source, id, std::count(vocabulary.present.begin(), vocabulary.present.end(),
                                                                 true)));
  for (std::size_t k = 0; k < in.models.size(); ++k) {
    const auto model = k == reference ? nullptr : open_checkpoint(in.models[k]);
    const CheckpointReader& reader = model ? *model : *ref_model;
    if (model) {
      const Tokenizer own = tokenizer_of(reader, where);
      if (own.pieces != vocabulary.pieces)
        where.refuse(fmt::format("{} is not the vocabulary of {}: mergekit would permute that model's embeddings to "
                                 "it; soupkit does that with 'soupkit transplant'",
                                 own.source, vocabulary.source));
    }
    for (const auto& t : reader.tensors())
      if (is_embedding(t) && t.shape[0] != vocabulary.pieces.size())
        where.refuse(fmt::format("tensor '{}' of {} has {} rows but {} has {} tokens: with a tokenizer_source "
                                 "mergekit rebuilds the embeddings with one row per token; soupkit merges them as "
                                 "they are (leave out tokenizer_source, or use 'soupkit transplant')",
                                 t.name, in.models[k].string(), t.shape[0], vocabulary.source,
                                 vocabulary.pieces.size()));
  }
}

// tokenizer_source: the output carries the reference model's tokenizer (the
// base's, else the first model's): `base` and that model's path mean it;
// any other source would need mergekit's embedding permutation.
void check_tokenizer_source(const YAML::Node& job, const Place& top, const MergeInputs& in) {
  const YAML::Node node = job["tokenizer_source"];
  if (!node) return;
  const Place where = top.at("tokenizer_source", node);
  const std::string text = scalar_text(node, where);
  if (text == "union")
    where.refuse("a union vocabulary is built by 'soupkit transplant' (it rebuilds the embeddings of tokens a "
                 "model lacks), not by a merge");
  const std::size_t reference = in.base().value_or(0);
  if (text == "base") {
    if (!in.base()) where.refuse("'base' needs a base_model");
  } else if (!same_model(text, in.models.at(reference))) {
    where.refuse(fmt::format("the output carries the tokenizer of {} (the {}); another model's vocabulary would need "
                             "its embeddings permuted, which soupkit does with 'soupkit transplant'",
                             in.models.at(reference).string(), in.base() ? "base model" : "first model"));
  }
  check_embeddings_follow_the_vocabulary(in, reference, where);
}

}  // namespace

const std::vector<std::string>& mergekit_config_keys() {
  static const std::vector<std::string> keys(kKeys.begin(), kKeys.end());
  return keys;
}

MergeInputs read_mergekit_config(const YAML::Node& given, const std::string& source, const MergeMethodSpec& spec,
                                 const std::string& text) {
  const Place top{source, "", ""};
  // A key set to null (`base_model:` with nothing) is mergekit's None: as if absent.
  YAML::Node job(YAML::NodeType::Map);
  for (const auto& kv : given)
    if (!kv.second.IsNull()) job[kv.first] = kv.second;
  for (const auto& kv : job) {
    const std::string key = key_text(kv.first, top);
    const Place at = top.at(excerpt(key), kv.first);
    if (const auto it = kRefusedKeys.find(key); it != kRefusedKeys.end()) at.refuse(it->second);
    if (!kKeys.count(key))
      at.refuse(fmt::format("unknown key; a configuration has {}", fmt::join(kKeys, ", ")));
  }
  MergeInputs in;
  in.job_text = text;
  if (job["models"] && job["slices"])
    top.at("slices", job["slices"]).refuse("give models or slices, not both (mergekit takes exactly one)");
  if (!job["models"] && !job["slices"])
    top.at("models", job).refuse(fmt::format("merge_method {} needs models (or slices)", spec.merge_methods.front()));
  if (job["models"]) read_models(spec, job["models"], top, in);
  if (job["slices"]) read_slices(spec, job["slices"], top, in);
  if (const YAML::Node base = job["base_model"]) {
    const Place where = top.at("base_model", base);
    if (spec.base == BaseRole::None)
      where.refuse(fmt::format("merge_method {} takes no base model", spec.merge_methods.front()));
    const fs::path path = model_path(base, where);
    if (!in.slices.empty()) {
      // With slices mergekit merges the sources only; the base must be one of them.
      bool listed = false;
      for (const auto& m : in.models) listed = listed || same_model(m, path);
      if (!listed) where.refuse("with slices the base model must be one of every slice's sources");
    }
    add_base_model(path, "base_model", in);
  } else if (spec.base == BaseRole::Required) {
    top.at("base_model", job).refuse(fmt::format("merge_method {} needs a base_model", spec.merge_methods.front()));
  }
  in.parameters.global = read_settings(spec, job["parameters"], top.at("parameters", job["parameters"]), false);
  in.compute_dtype = dtype_key(job, "dtype", top);
  in.out_dtype = dtype_key(job, "out_dtype", top);
  check_tokenizer_source(job, top, in);
  if (const YAML::Node out = job["out_path"]) {
    const Place where = top.at("out_path", out);
    const std::string path = scalar_text(out, where);
    if (path.empty()) where.refuse("the output path is empty");
    in.output = path;
  }
  return in;
}

}  // namespace soupkit::cli
