#pragma once
// The parameters of a merge method, as mergekit's configuration gives them
// (mergekit/config.py: ParameterSetting, evaluate_setting, ConfigReader):
// a value is set globally (`parameters`) or per model
// (`models[i].parameters`), and each setting is
//   - a scalar (0.5, true),
//   - a gradient: a list of numbers, interpolated linearly at the tensor's
//     relative layer position t in [0, 1],
//   - or a list of conditions {filter, value}: the first whose filter is
//     absent, "*", or a substring of the tensor name gives the value (a
//     scalar or a gradient); when none matches, the setting gives nothing.
// Each tensor resolves every parameter on its own: a model's own setting,
// else the global one, else the parameter's default; a parameter without a
// default that resolves to nothing is an error naming model and tensor.
#include "soupkit/util/error.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
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

// "0.8", "true", "64": a value as help and messages print it (numbers in
// their shortest round-trip form, so 0.8 is not 0.80000000000000004).
std::string parameter_text(const ParameterValue& value);

struct MethodParameter {
  std::string name;  // mergekit's key, snake_case ("weight", "normalize", "lambda")
  ParameterKind kind = ParameterKind::Number;
  // The default; none: the parameter is required (mergekit's required=True)
  // for every model but the base.
  std::optional<ParameterValue> default_value = 0.0;
  std::string help;  // one line, without the default (help prints it)
  // Given once per model (mergekit's tensor_parameters, models[].parameters.<name>);
  // on the command line a comma-separated list under `list_option` ("weights").
  bool per_model = false;
  std::string list_option = {};
};

class ParameterSetting;

// One entry of a conditional list: {filter: "mlp", value: 0.5}.
struct ParameterCondition {
  std::optional<std::string> filter;       // none: matches every tensor
  std::shared_ptr<const ParameterSetting> value;  // a scalar or a gradient
};

class ParameterSetting {
 public:
  static ParameterSetting scalar(ParameterValue value);
  static ParameterSetting gradient(std::vector<double> points);  // at least one point
  static ParameterSetting conditions(std::vector<ParameterCondition> conditions);

  // mergekit's evaluate_setting: the value for tensor `tensor` at layer
  // position t, or none when no condition matches.
  std::optional<ParameterValue> evaluate(std::string_view tensor, double t) const;
  // As the configuration gave it (provenance): 0.5, [0, 1], [{"filter": "mlp", "value": 0.5}].
  nlohmann::json to_json() const;

 private:
  enum class Form { Scalar, Gradient, Conditions };
  Form form_ = Form::Scalar;
  ParameterValue scalar_ = 0.0;
  std::vector<double> gradient_;
  std::vector<ParameterCondition> conditions_;
};

// Settings by parameter name.
using ParameterSettings = std::map<std::string, ParameterSetting, std::less<>>;
nlohmann::json settings_json(const ParameterSettings& settings);

// A parameter's value by name, once resolved for one tensor: every
// parameter of the method that has a value (a required one always has), so a
// method reads each with the accessor of its kind.
class ParameterValues {
 public:
  void set(const std::string& name, ParameterValue value) { values_[name] = value; }
  bool has(std::string_view name) const { return values_.find(name) != values_.end(); }
  double number(std::string_view name) const;
  bool flag(std::string_view name) const;
  std::uint64_t size(std::string_view name) const;

 private:
  template <class T>
  T get(std::string_view name) const;
  std::map<std::string, ParameterValue, std::less<>> values_;
};

// Every parameter of a method, resolved for one tensor.
struct TensorParameters {
  ParameterValues global;
  std::vector<ParameterValues> per_model;  // one per model of MergeInputs::models
};

// Where settings come from and how they are named in messages.
struct ParameterSources {
  ParameterSettings global;                  // `parameters`
  std::vector<ParameterSettings> per_model;  // `models[i].parameters` (or a slice's `sources[i].parameters`)
  ParameterSettings slice;                   // a slice's `parameters`: searched before the global ones
  std::vector<std::string> model_names;      // "models[1] (path)", for messages
  std::optional<std::size_t> base_index;     // a model that is the base: its required parameters may be absent
};

// Resolves `parameters` (a method's table) for tensor `tensor` at layer
// position t, as mergekit's ConfigReader.parameter does: a per-model
// parameter from the model's own setting, then the slice's, then the global
// one; a global parameter from the slice's, then the global setting; then
// the default. InputError
// naming parameter, model and tensor when a required one has no value.
// `model_tensors` (with slices): each model's own name of the tensor (none:
// not one of its sources), which mergekit's plan_layer matches the filters
// of per-model parameters against; global ones match the output's name.
TensorParameters resolve_parameters(const std::vector<MethodParameter>& parameters, const ParameterSources& sources,
                                    std::string_view tensor, double t,
                                    const std::vector<std::optional<std::string>>& model_tensors = {});

}  // namespace soupkit
