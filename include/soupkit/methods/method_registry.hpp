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

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace soupkit {

// Number: a finite double. Bool: true or false. Size: a whole number >= 0.
enum class ParameterKind { Number, Bool, Size };

// A value of a parameter: double for Number, bool for Bool, std::uint64_t for Size.
using ParameterValue = std::variant<double, bool, std::uint64_t>;

struct MethodParameter {
  std::string name;  // mergekit's key, snake_case ("weight", "normalize", "lambda")
  ParameterKind kind = ParameterKind::Number;
  ParameterValue default_value = 0.0;  // of `kind`'s type
  std::string help;                    // one line, without the default (help prints it)
  // Given once per model (mergekit's models[].parameters.<name>); on the
  // command line a comma-separated list under `list_option` ("weights").
  bool per_model = false;
  std::string list_option = {};
};

// "0.8", "true", "64": a value as help and messages print it (numbers in
// their shortest round-trip form, so 0.8 is not 0.80000000000000004).
std::string parameter_text(const ParameterValue& value);

// A parameter's value by name: every parameter of the spec, defaults filled
// in (the cli does it), so a method reads each with the accessor of its kind.
class ParameterValues {
 public:
  void set(const std::string& name, ParameterValue value) { values_[name] = value; }
  double number(std::string_view name) const;
  bool flag(std::string_view name) const;
  std::uint64_t size(std::string_view name) const;

 private:
  template <class T>
  T get(std::string_view name) const;
  std::map<std::string, ParameterValue, std::less<>> values_;
};

// What a method of the family is built from.
struct MergeInputs {
  fs::path base;  // empty for a method without a base
  std::vector<fs::path> models;
  std::vector<ParameterValues> per_model;  // one per model: its per-model parameters
  ParameterValues global;                  // the global parameters
  fs::path output;
  std::optional<DType> out_dtype;  // floating-point outputs in this dtype (default: the method's choice)
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;
  // (Row blocks come from the engine's chunk size: PlanContext / MethodPlan::context.)
};

struct MergeMethodSpec {
  std::string name;                        // the command: soupkit <name>
  std::vector<std::string> merge_methods;  // the merge_method names of job files it answers to
  std::string summary;                     // one line for soupkit --help
  bool needs_base = false;                 // --base / base_model required (otherwise not taken)
  std::vector<MethodParameter> parameters;
  std::unique_ptr<Method> (*build)(const MergeInputs&) = nullptr;
};

// Every method of the family, in the order help lists them; each checked
// once (names, kinds of defaults: an internal Error otherwise).
const std::vector<MergeMethodSpec>& merge_method_specs();

}  // namespace soupkit
