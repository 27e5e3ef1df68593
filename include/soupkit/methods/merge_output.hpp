#pragma once
// What a merge of the method family writes besides its tensors, as mergekit
// does: the reference model's carried files (config, tokenizer, ...) with
// config.json's torch_dtype following the output dtype; for a directory
// output a model card (README.md: method, inputs, parameters, soupkit's
// version) and the configuration itself (mergekit_config.yml: the job file
// as given, or the equivalent configuration of a command line); and
// safetensors metadata {"format": "pt"} when the reference had none (what
// transformers expects of a checkpoint).
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/method_registry.hpp"

#include <map>
#include <string>

namespace soupkit {

inline constexpr const char* kModelCardName = "README.md";
inline constexpr const char* kMergeConfigName = "mergekit_config.yml";

// Fills out's metadata, shard size, overwrite, carried files and provenance
// (out.tensors must be set: their dtypes decide torch_dtype; `inputs`: each
// model's describe_input). Returns the files soupkit makes, by name (the
// others are copies of the reference's); a directory's model card carries
// the provenance.
std::map<std::string, std::string> describe_merge_output(const MergeMethodSpec& spec, const MergeInputs& in,
                                                         const CheckpointReader& reference,
                                                         const nlohmann::json& inputs, OutputSpec& out);
// The configuration (YAML) a command line's inputs amount to, in mergekit's keys.
std::string equivalent_config(const MergeMethodSpec& spec, const MergeInputs& in);

}  // namespace soupkit
