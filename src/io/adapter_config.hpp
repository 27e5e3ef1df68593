#pragma once
// A PEFT LoRA adapter's adapter_config.json, read as untrusted input: every
// option that changes what the adapter means is honoured or refused by name
// (docs/formats.md, "LoRA adapters").
#include "soupkit/io/checkpoint.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace soupkit::detail {

struct AdapterConfig {
  fs::path file;
  std::uint64_t r = 0;
  double lora_alpha = 0;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  // rank_pattern / alpha_pattern, literal keys only: a key applies to the
  // modules whose name is the key or ends with ".key" (PEFT matches
  // ".*\.KEY$"; keys with regular-expression characters are refused).
  std::map<std::string, std::uint64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  // target_modules as a list (checked against the adapted modules); a
  // string (a regular expression, or "all-linear") is not evaluated: the
  // adapter's tensors say which modules it adapts.
  std::optional<std::vector<std::string>> target_modules;

  struct Scaling {
    std::uint64_t r;
    double scale;  // alpha / r, or alpha / sqrt(r) with use_rslora
    bool from_pattern;
  };
  Scaling scaling_for(const std::string& module) const;
  // Throws InputError naming the module unless target_modules allows it.
  void check_target(const std::string& module, const fs::path& weights) const;
};

AdapterConfig read_adapter_config(const fs::path& dir);
// DIR/adapter_model.safetensors, else DIR/adapter_model.bin (links checked).
fs::path adapter_weights_file(const fs::path& dir);

std::unique_ptr<CheckpointReader> open_adapter_checkpoint(const fs::path& reference, const fs::path& base,
                                                          const fs::path& adapter_dir);

}  // namespace soupkit::detail
