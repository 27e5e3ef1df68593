#pragma once
// The merge methods that share one shape: a base model (or none), a list of
// models, typed parameters (per model, like mergekit's `weight`, or global,
// like `lambda`), one output. Each is described by a MergeMethodSpec, and
// the cli makes from it a command (`soupkit <name> --base B --out OUT
// [--<param> V ...] MODEL...`), its --help and its job-file translation
// (merge_method, base_model, models[].parameters.<per-model parameter>,
// parameters.<global parameter>): a new method of this family is one file
// in src/methods/ and one line in method_registry.cpp.
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/merge_parameters.hpp"

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace soupkit {

// One output slice of mergekit's `slices` syntax: layers [first, end) of
// each source model's layer stack, stacked after the previous slices'.
struct MergeSlice {
  struct Range {
    std::uint64_t first = 0, end = 0;
  };
  std::vector<std::optional<Range>> ranges;  // per model of MergeInputs::models (none: not a source of this slice)
  std::vector<ParameterSettings> source_parameters;  // per model: sources[i].parameters
  ParameterSettings parameters;                      // the slice's own parameters
};

// What a method of the family is built from. The models are mergekit's
// inputs after its normalize_config: the models as listed, then the base
// model when it is not among them; `parameters.base_index` says which one
// is the base. A method of task vectors skips the base; a method without a
// base role (linear) merges it like any other model.
struct MergeInputs {
  std::optional<std::size_t> base() const { return parameters.base_index; }
  const fs::path& base_path() const { return models.at(parameters.base_index.value()); }

  std::vector<fs::path> models;
  ParameterSources parameters;  // settings per model and global, resolved per tensor
  // mergekit's `slices` (empty: the `models` syntax, every layer of every
  // model). With slices, models lists every source in order of appearance.
  std::vector<MergeSlice> slices;
  fs::path output;
  // mergekit's `dtype`: every floating-point input is rounded to it when
  // read (as mergekit converts its inputs) and the output is written in it.
  // soupkit then computes in float64, rounding once at the end.
  std::optional<DType> compute_dtype;
  std::optional<DType> out_dtype;  // floating-point outputs in this dtype (mergekit's out_dtype)
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;
  std::uint64_t random_seed = 0;  // for the methods that draw (uses_random_seed)
  // The job file as given (its text), written beside a directory output
  // (the model card's configuration); empty from the command line.
  std::string job_text;
  std::string job_name;  // "mergekit_config.yml"-like name of the file given
  // (Row blocks come from the engine's chunk size: PlanContext / MethodPlan::context.)
};

// Whether two model references name the same model (the same path, or the
// same existing file or directory).
bool same_model(const fs::path& a, const fs::path& b);
// mergekit's normalize_config: `base` becomes the base of `in`, as the model
// it already is in in.models, else appended with no parameters of its own
// (`name` names it in messages).
void add_base_model(const fs::path& base, std::string name, MergeInputs& in);

// How a method uses base_model.
enum class BaseRole {
  None,      // takes none (mergekit would only add it as one more model: refused)
  Required,  // must be given
  Optional,  // may be given (a model like the others, or a method-specific role)
};

struct MergeMethodSpec {
  std::string name;                        // the command: soupkit <name>
  std::vector<std::string> merge_methods;  // the merge_method names of job files it answers to
  std::string summary;                     // one line for soupkit --help
  BaseRole base = BaseRole::None;
  std::vector<MethodParameter> parameters;
  bool uses_random_seed = false;  // takes --random-seed (job: parameters.random_seed is not mergekit's: an option)
  // (`spec` is this entry, which outlives the method: merge_method_specs() keeps it.)
  std::unique_ptr<Method> (*build)(const MergeMethodSpec& spec, const MergeInputs&) = nullptr;
};

// Every method of the family, in the order help lists them; each checked
// once (names, kinds of defaults: an internal Error otherwise).
const std::vector<MergeMethodSpec>& merge_method_specs();

}  // namespace soupkit
