// The methods of mergekit's generalized task arithmetic, one row each, as
// mergekit's registry.py registers them (consensus, sparsification, the
// defaults of normalize and rescale), and their parameter tables, as
// GeneralizedTaskArithmeticMerge.parameters and .tensor_parameters give
// them: weight (required), density (1.0), gamma (0.01) for
// magnitude_outliers, epsilon (0.15) for della_magprune per model; int8_mask
// (false), normalize, rescale, lambda (1.0) global. Every one is accepted by
// every method, as in mergekit, even where it changes nothing (a
// task_arithmetic density); help says so.
#include "soupkit/methods/generalized_task_arithmetic.hpp"

#include "soupkit/util/error.hpp"

#include <string_view>

namespace soupkit {
namespace {

const std::vector<GtaVariant>& variants() {
  static const std::vector<GtaVariant> table = {
      {"task-arithmetic", "task_arithmetic",
       "task arithmetic: add the models' weighted task vectors (W_i - W_base) to the base", Consensus::None,
       Sparsification::None, false, false},
      {"ties", "ties",
       "TIES-Merging: trim each task vector to its largest magnitudes, elect signs, average the agreeing",
       Consensus::Sum, Sparsification::Magnitude, true, false},
      {"dare-linear", "dare_linear",
       "DARE: drop each task vector's elements at random, rescale the survivors, add the weighted sum",
       Consensus::None, Sparsification::Random, false, true},
      {"dare-ties", "dare_ties",
       "DARE-TIES: drop task vector elements at random, rescale the survivors, elect signs, sum the agreeing",
       Consensus::Sum, Sparsification::Random, false, true},
      {"breadcrumbs", "breadcrumbs",
       "Model Breadcrumbs: drop each task vector's largest outliers and smallest magnitudes, add the weighted sum",
       Consensus::None, Sparsification::MagnitudeOutliers, false, false},
      {"breadcrumbs-ties", "breadcrumbs_ties",
       "Model Breadcrumbs with TIES: drop outliers and small magnitudes, elect signs, sum the agreeing",
       Consensus::Sum, Sparsification::MagnitudeOutliers, false, false},
      {"della", "della",
       "DELLA: drop elements at random, more likely the smaller in magnitude, rescale, elect signs, average",
       Consensus::Sum, Sparsification::DellaMagprune, true, true},
      {"della-linear", "della_linear",
       "linear DELLA: drop elements at random, more likely the smaller in magnitude, rescale, add the weighted sum",
       Consensus::None, Sparsification::DellaMagprune, false, true},
  };
  return table;
}

const GtaVariant& variant_named(std::string_view merge_method) {
  for (const auto& v : variants())
    if (v.merge_method == merge_method) return v;
  throw Error(fmt::format("internal: no generalized task arithmetic method '{}'", merge_method));
}

std::string density_help(Sparsification s) {
  switch (s) {
    case Sparsification::None:
      return "accepted as mergekit accepts it; task_arithmetic sparsifies nothing, so it has no effect";
    case Sparsification::Magnitude: return "fraction of each task vector's elements kept, by magnitude (1: all)";
    case Sparsification::Random: return "probability of keeping each element of the task vector (1: all)";
    case Sparsification::MagnitudeOutliers:
      return "fraction of each task vector's elements kept: the largest magnitudes after the gamma outliers (1: all)";
    case Sparsification::DellaMagprune:
      return "mean keep probability: density - epsilon for a row's smallest magnitude up to density + epsilon for "
             "its largest (1: all)";
  }
  return {};
}

std::vector<MethodParameter> parameters_of(const GtaVariant& v) {
  const bool sparsifies = v.sparsification != Sparsification::None;
  const bool consensus = v.consensus == Consensus::Sum;
  std::vector<MethodParameter> out = {
      {.name = "weight", .kind = ParameterKind::Number, .default_value = std::nullopt,
       .help = "weight w_i of each model's task vector (may be negative)", .per_model = true,
       .list_option = "weights"},
      {.name = "density", .kind = ParameterKind::Number, .default_value = 1.0, .help = density_help(v.sparsification),
       .per_model = true, .list_option = "densities"},
  };
  if (v.sparsification == Sparsification::MagnitudeOutliers)
    out.push_back({.name = "gamma", .kind = ParameterKind::Number, .default_value = 0.01,
                   .help = "fraction of each task vector's elements dropped as the largest-magnitude outliers "
                           "(int(gamma x numel) of them; none dropped means mergekit's slice keeps nothing)",
                   .per_model = true, .list_option = "gammas"});
  if (v.sparsification == Sparsification::DellaMagprune)
    out.push_back({.name = "epsilon", .kind = ParameterKind::Number, .default_value = 0.15,
                   .help = "half-width of the keep probabilities around density (density +/- epsilon within (0, 1))",
                   .per_model = true, .list_option = "epsilons"});
  out.push_back({.name = "lambda", .kind = ParameterKind::Number, .default_value = 1.0,
                 .help = "scale of the merged task vector"});
  out.push_back({.name = "normalize", .kind = ParameterKind::Bool, .default_value = v.default_normalize,
                 .help = consensus ? "divide by the sum of the agreeing models' weights (the disjoint mean)"
                                   : "divide the summed task vectors by the sum of the weights (by 1 when it is "
                                     "below 1e-8 in magnitude)"});
  out.push_back({.name = "rescale", .kind = ParameterKind::Bool, .default_value = v.default_rescale,
                 .help = sparsifies ? "multiply each sparsified task vector by sum|delta| / sum|kept| (the L1 norm "
                                      "kept), unless either is below 1e-7"
                                    : "accepted as mergekit accepts it; without sparsification it has no effect"});
  out.push_back({.name = "int8_mask", .kind = ParameterKind::Bool, .default_value = false,
                 .help = "accepted for mergekit configs: it only sets the dtype of mergekit's masks, no value "
                         "changes"});
  return out;
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return make_gta_method(variant_named(spec.merge_methods.front()), spec, in);
}

MergeMethodSpec spec_of(std::string_view merge_method) {
  const GtaVariant& v = variant_named(merge_method);
  return {
      .name = v.command,
      .merge_methods = {v.merge_method},
      .summary = v.summary,
      .base = BaseRole::Required,
      .parameters = parameters_of(v),
      .uses_random_seed =
          v.sparsification == Sparsification::Random || v.sparsification == Sparsification::DellaMagprune,
      .build = build,
  };
}

}  // namespace

// The registry's entries (method_registry.cpp).
MergeMethodSpec task_arithmetic_spec() { return spec_of("task_arithmetic"); }
MergeMethodSpec ties_spec() { return spec_of("ties"); }
MergeMethodSpec dare_linear_spec() { return spec_of("dare_linear"); }
MergeMethodSpec dare_ties_spec() { return spec_of("dare_ties"); }
MergeMethodSpec breadcrumbs_spec() { return spec_of("breadcrumbs"); }
MergeMethodSpec breadcrumbs_ties_spec() { return spec_of("breadcrumbs_ties"); }
MergeMethodSpec della_spec() { return spec_of("della"); }
MergeMethodSpec della_linear_spec() { return spec_of("della_linear"); }

}  // namespace soupkit
