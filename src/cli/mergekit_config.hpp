#pragma once
// A mergekit configuration (mergekit/config.py: MergeConfiguration) for a
// merge method of the family, read into the method's inputs with
// mergekit's meaning, or refused naming the key:
//   merge_method, base_model, models: [{model, parameters}], parameters
//   (global; a per-model parameter given here is every model's default, as
//   in mergekit), dtype (inputs rounded to it, output in it), out_dtype
//   (the output only), tokenizer_source (base, or the model whose tokenizer
//   the output carries anyway; union is refused, pointing to `soupkit
//   transplant`), and soupkit's out_path. Parameter values: a number or
//   true/false, a gradient (a list of numbers), or a list of
//   {filter, value} conditions (merge_parameters.hpp). Unknown keys and
//   parameters, keys mergekit has and soupkit does not run (slices,
//   modules, tokenizer, chat_template), model references that are Hugging
//   Face hub ids or LoRA sums (model+adapter): refused by name.
#include "soupkit/methods/method_registry.hpp"

#include <string>

namespace YAML {
class Node;
}

namespace soupkit::cli {

// `job` is the configuration's top-level mapping, `source` its name in
// messages, `text` the file as given (the model card's copy).
MergeInputs read_mergekit_config(const YAML::Node& job, const std::string& source, const MergeMethodSpec& spec,
                                 const std::string& text);

// The keys of a mergekit configuration soupkit reads for the family.
const std::vector<std::string>& mergekit_config_keys();

}  // namespace soupkit::cli
