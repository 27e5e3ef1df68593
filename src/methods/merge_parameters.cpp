#include "soupkit/methods/merge_parameters.hpp"

#include <fmt/format.h>

namespace soupkit {

std::string parameter_text(const ParameterValue& value) {
  return std::visit([](auto v) { return fmt::format("{}", v); }, value);
}

ParameterSetting ParameterSetting::scalar(ParameterValue value) {
  ParameterSetting s;
  s.form_ = Form::Scalar;
  s.scalar_ = value;
  return s;
}

ParameterSetting ParameterSetting::gradient(std::vector<double> points) {
  SOUPKIT_ERROR_IF(points.empty(), "internal: a gradient without points");
  ParameterSetting s;
  s.form_ = Form::Gradient;
  s.gradient_ = std::move(points);
  return s;
}

ParameterSetting ParameterSetting::conditions(std::vector<ParameterCondition> conditions) {
  ParameterSetting s;
  s.form_ = Form::Conditions;
  s.conditions_ = std::move(conditions);
  return s;
}

std::optional<ParameterValue> ParameterSetting::evaluate(std::string_view tensor, double t) const {
  switch (form_) {
    case Form::Scalar: return scalar_;
    case Form::Gradient: {
      // mergekit: scaled = t (len - 1); i0 = int(scaled); i1 = min(len - 1, i0 + 1);
      // frac = scaled - i0; (1 - frac) s[i0] + frac s[i1], in Python's float64.
      const auto last = static_cast<double>(gradient_.size() - 1);
      const double scaled = t * last;
      const auto i0 = static_cast<std::size_t>(scaled);  // t in [0, 1]: scaled >= 0, int() truncates
      const std::size_t i1 = std::min(gradient_.size() - 1, i0 + 1);
      const double frac = scaled - static_cast<double>(i0);
      return (1 - frac) * gradient_.at(i0) + frac * gradient_.at(i1);
    }
    case Form::Conditions:
      for (const auto& c : conditions_)
        if (!c.filter || *c.filter == "*" || (!tensor.empty() && tensor.find(*c.filter) != std::string_view::npos))
          return c.value->evaluate(tensor, t);
      return std::nullopt;
  }
  return std::nullopt;
}

nlohmann::json ParameterSetting::to_json() const {
  switch (form_) {
    case Form::Scalar: return std::visit([](auto v) { return nlohmann::json(v); }, scalar_);
    case Form::Gradient: return gradient_;
    case Form::Conditions: {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& c : conditions_) {
        nlohmann::json entry = {{"value", c.value->to_json()}};
        if (c.filter) entry["filter"] = *c.filter;
        list.push_back(entry);
      }
      return list;
    }
  }
  return nullptr;
}

nlohmann::json settings_json(const ParameterSettings& settings) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, setting] : settings) out[name] = setting.to_json();
  return out;
}

template <class T>
T ParameterValues::get(std::string_view name) const {
  const auto it = values_.find(name);
  SOUPKIT_ERROR_IF(it == values_.end() || !std::holds_alternative<T>(it->second),
                   "internal: no parameter '{}' of this kind was given", name);
  return std::get<T>(it->second);
}

double ParameterValues::number(std::string_view name) const { return get<double>(name); }
bool ParameterValues::flag(std::string_view name) const { return get<bool>(name); }
std::uint64_t ParameterValues::size(std::string_view name) const { return get<std::uint64_t>(name); }

namespace {

std::optional<ParameterValue> lookup(const ParameterSettings& settings, std::string_view name, std::string_view tensor,
                                     double t) {
  const auto it = settings.find(name);
  return it == settings.end() ? std::nullopt : it->second.evaluate(tensor, t);
}

}  // namespace

TensorParameters resolve_parameters(const std::vector<MethodParameter>& parameters, const ParameterSources& sources,
                                    std::string_view tensor, double t,
                                    const std::vector<std::optional<std::string>>& model_tensors) {
  const auto name_in = [&](std::size_t i) -> std::string_view {
    return i < model_tensors.size() && model_tensors[i] ? std::string_view(*model_tensors[i]) : tensor;
  };
  TensorParameters out;
  out.per_model.resize(sources.per_model.size());
  for (const auto& p : parameters) {
    if (!p.per_model) {
      auto value = lookup(sources.slice, p.name, tensor, t);
      if (!value) value = lookup(sources.global, p.name, tensor, t);
      if (!value) value = p.default_value;
      SOUPKIT_INPUT_ERROR_IF(!value, "parameter '{}' is required and has no value for tensor '{}' (no filter of "
                             "parameters.{} matches it)", p.name, tensor, p.name);
      out.global.set(p.name, *value);
      continue;
    }
    for (std::size_t i = 0; i < sources.per_model.size(); ++i) {
      const std::string_view own = name_in(i);
      auto value = lookup(sources.per_model[i], p.name, own, t);
      if (!value) value = lookup(sources.slice, p.name, own, t);
      if (!value) value = lookup(sources.global, p.name, own, t);
      if (!value) value = p.default_value;
      if (!value && sources.base_index == i) continue;  // mergekit: not required of the base
      SOUPKIT_INPUT_ERROR_IF(!value, "{}: parameter '{}' is required and has no value for tensor '{}' (set it in "
                             "the model's parameters or in the global parameters)",
                             sources.model_names.at(i), p.name, own);
      out.per_model[i].set(p.name, *value);
    }
  }
  return out;
}

}  // namespace soupkit
