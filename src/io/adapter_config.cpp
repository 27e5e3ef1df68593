#include "adapter_config.hpp"

#include "model_directory.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/message_text.hpp"

#include <cmath>

namespace soupkit::detail {
namespace {

using nlohmann::json;

// The largest rank soupkit takes from a config; real adapters use 4..256.
// (The factors' shapes are checked against the base anyway; this only keeps
// a declared number from being used before that.)
constexpr std::uint64_t kMaxRank = 1u << 20;

bool has_regex_characters(const std::string& key) {
  return key.find_first_of("\\^$.|?*+()[]{}") != std::string::npos;
}

bool module_matches(const std::string& module, const std::string& key) {
  return module == key || (module.size() > key.size() && module.ends_with(key) &&
                           module[module.size() - key.size() - 1] == '.');
}

}  // namespace

AdapterConfig read_adapter_config(const fs::path& dir) {
  AdapterConfig c;
  c.file = dir / "adapter_config.json";
  check_link_stays_inside(dir, c.file);
  const std::string where = c.file.string();
  const json j = parse_untrusted_json(read_text_file(c.file), where);
  SOUPKIT_INPUT_ERROR_IF(!j.is_object(), "{}: not a JSON object", where);
  const auto refuse = [&](const std::string& key, std::string_view why) {
    throw InputError(fmt::format("{}: {}: {}", where, key, why));
  };
  const auto get = [&](const char* key) -> const json* {
    const auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  const auto flag = [&](const char* key) {
    const json* v = get(key);
    if (v && !v->is_boolean()) refuse(key, fmt::format("{} is not true or false", json_excerpt(*v)));
    return v && v->get<bool>();
  };
  const auto rank = [&](const json& v, const std::string& key) {
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() == 0 || v.get<std::uint64_t>() > kMaxRank)
      refuse(key, fmt::format("{} is not a rank from 1 to {}", json_excerpt(v), kMaxRank));
    return v.get<std::uint64_t>();
  };
  const auto alpha = [&](const json& v, const std::string& key) {
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      refuse(key, fmt::format("{} is not a finite number", json_excerpt(v)));
    return v.get<double>();
  };

  if (const json* t = get("peft_type"); t && *t != "LORA")
    refuse("peft_type", fmt::format("{}: soupkit reads LoRA adapters only", json_excerpt(*t)));
  const json* r = get("r");
  if (!r) refuse("r", "missing");
  c.r = rank(*r, "r");
  const json* a = get("lora_alpha");
  if (!a) refuse("lora_alpha", "missing");
  c.lora_alpha = alpha(*a, "lora_alpha");
  c.use_rslora = flag("use_rslora");
  c.fan_in_fan_out = flag("fan_in_fan_out");
  if (flag("use_dora")) refuse("use_dora", "DoRA adapters are not supported (only plain LoRA)");
  if (flag("lora_bias")) refuse("lora_bias", "a bias on lora_B is not supported");
  if (const json* b = get("bias")) {
    // "all" and "lora_only": the trained biases are saved in the adapter
    // file and replace the base's (as any whole tensor there does).
    if (*b != "none" && *b != "all" && *b != "lora_only")
      refuse("bias", fmt::format("{} is not none, all or lora_only", json_excerpt(*b)));
  }
  for (const char* key : {"layer_replication", "trainable_token_indices", "target_parameters", "loftq_config"}) {
    const json* v = get(key);
    if (v && (!(v->is_object() || v->is_array()) || !v->empty()))
      refuse(key, "not supported (it changes the model beyond W + scale B A)");
  }
  for (const auto& [key, target] : {std::pair{"rank_pattern", 0}, std::pair{"alpha_pattern", 1}}) {
    const json* v = get(key);
    if (!v) continue;
    if (!v->is_object()) refuse(key, "not an object");
    for (const auto& [pattern, value] : v->items()) {
      const std::string name = fmt::format("{}.{}", key, excerpt(pattern));
      if (pattern.empty() || has_regex_characters(pattern))
        refuse(name, "a regular expression; soupkit honours only literal module names here");
      if (target == 0) c.rank_pattern[pattern] = rank(value, name);
      else c.alpha_pattern[pattern] = alpha(value, name);
    }
  }
  if (const json* t = get("target_modules"); t && t->is_array()) {
    c.target_modules.emplace();
    for (const auto& m : *t) {
      if (!m.is_string()) refuse("target_modules", fmt::format("{} is not a module name", json_excerpt(m)));
      c.target_modules->push_back(m.get<std::string>());
    }
  } else if (t && !t->is_string()) {
    refuse("target_modules", "not a list of module names or a string");
  }
  return c;
}

AdapterConfig::Scaling AdapterConfig::scaling_for(const std::string& module) const {
  Scaling s{r, 0, false};
  double a = lora_alpha;
  for (const auto& [key, value] : rank_pattern)
    if (module_matches(module, key)) {
      s.r = value;
      s.from_pattern = true;
      break;
    }
  for (const auto& [key, value] : alpha_pattern)
    if (module_matches(module, key)) {
      a = value;
      break;
    }
  // PEFT: lora_alpha / r, or lora_alpha / math.sqrt(r), in Python floats.
  s.scale = use_rslora ? a / std::sqrt(static_cast<double>(s.r)) : a / static_cast<double>(s.r);
  return s;
}

void AdapterConfig::check_target(const std::string& module, const fs::path& weights) const {
  if (!target_modules) return;
  for (const auto& t : *target_modules)
    if (module_matches(module, t)) return;
  throw InputError(fmt::format("{}: module '{}' is adapted, but {} does not list it in target_modules",
                               weights.string(), printable(module), file.string()));
}

fs::path adapter_weights_file(const fs::path& dir) {
  for (const char* name : {"adapter_model.safetensors", "adapter_model.bin"}) {
    const fs::path p = dir / name;
    if (fs::exists(p)) {
      check_link_stays_inside(dir, p);
      return p;
    }
  }
  throw InputError(fmt::format("{}: a LoRA adapter directory without adapter_model.safetensors or adapter_model.bin",
                               dir.string()));
}

}  // namespace soupkit::detail
