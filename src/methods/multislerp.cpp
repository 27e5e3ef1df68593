// mergekit's `multislerp` (mergekit/merge_methods/multislerp.py):
// barycentric interpolation on the hypersphere of two or more models (of
// their task vectors X_i = W_i - W_base when base_model is given, the result
// added back to the base), per whole tensor, with the per-model `weight`s:
//   w = weight / sum(weight)  (normalize_weights, the default)
//   n_i = |X_i|, unit_i = X_i / (n_i + eps)
//   mean = sum w_i unit_i; |mean| < eps: two models give w_0 X_0 + w_1 X_1 (+ base), more are refused (mergekit raises)
//   mean = mean / |mean|; tangent_i = unit_i - (unit_i . mean) mean; r = sum w_i tangent_i
//   tn = |r| + eps;  W = (mean cos(tn) + r sin(tn) / tn) sum_i n_i w_i  (+ base)
// (r vanishes in exact arithmetic, since sum w_i unit_i . mean = |mean|: the
// result is the normalised weighted mean of the unit vectors times the
// weighted mean norm; soupkit evaluates mergekit's formula as written.)
// A single model (besides the base) is copied, as mergekit returns it.
//
// Streaming, exactly: every vector above is a combination of the X_i, so
// their dot products and norms come from the X_i's Gram matrix (one
// statistics pass), and a writing pass forms the result: 2 reads of each
// input. mergekit computes in the models' dtype (weights included); soupkit
// in float64.
#include "soupkit/methods/spherical_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <cmath>

namespace soupkit {
namespace {

// c with W = sum_i c_i X_i (+ base), from the Gram matrix of the X_i and
// the weights (already normalised when normalize_weights).
std::vector<double> multislerp_coefficients(const linalg::Gram& g, const std::vector<double>& w, double eps,
                                            const std::string& tensor) {
  const std::size_t n = g.size();
  std::vector<double> norms(n), mean(n);
  for (std::size_t i = 0; i < n; ++i) {
    norms[i] = std::sqrt(g(i, i));
    mean[i] = w[i] / (norms[i] + eps);  // sum w_i unit_i
  }
  const double mean_norm = std::sqrt(g.squared_norm(mean));
  if (mean_norm < eps) {
    SOUPKIT_INPUT_ERROR_IF(n != 2, "tensor '{}': the weighted sum of the models' unit vectors is zero (antipodal "
                           "models whose weights balance out); mergekit refuses this too: change the weights",
                           tensor);
    return w;
  }
  for (auto& m : mean) m /= mean_norm;
  const std::vector<double> g_mean = g.times(mean);
  double along = 0;  // sum_i w_i (unit_i . mean)
  for (std::size_t i = 0; i < n; ++i) along += w[i] * (g_mean[i] / (norms[i] + eps));
  std::vector<double> tangent(n);
  for (std::size_t i = 0; i < n; ++i) tangent[i] = w[i] / (norms[i] + eps) - along * mean[i];
  const double tn = std::sqrt(g.squared_norm(tangent)) + eps;
  double avg_norm = 0;
  for (std::size_t i = 0; i < n; ++i) avg_norm += norms[i] * w[i];
  std::vector<double> c(n);
  for (std::size_t i = 0; i < n; ++i) c[i] = (mean[i] * std::cos(tn) + tangent[i] * (std::sin(tn) / tn)) * avg_norm;
  for (const double v : c)
    SOUPKIT_INPUT_ERROR_IF(!std::isfinite(v), "tensor '{}': multislerp divides by zero with eps = {} (a zero norm "
                           "that a positive eps would offset); mergekit writes NaN here: give eps > 0",
                           tensor, eps);
  return c;
}

class MultislerpMethod final : public SphericalMerge {
 public:
  MultislerpMethod(const MergeMethodSpec& spec, const MergeInputs& in) : SphericalMerge(spec, in) {
    ops_ = {non_base_models(), base_index().has_value()};
    SOUPKIT_INPUT_ERROR_IF(ops_.models.empty(), "multislerp: no model besides the base model to interpolate "
                           "(mergekit fails here too)");
    log::info("multislerp: {} model{}{}", ops_.models.size(), ops_.models.size() == 1 ? " (copied)" : "s",
              base_index() ? ", task vectors from base " + in.base_path().string() : "");
  }

 private:
  // Every operand's rows, the base's, the output.
  // mergekit's arithmetic promotes the inputs' dtypes (torch); a single model is returned as it is.
  DType result_dtype(const Inputs& in, DType dtype) const override {
    return ops_.models.size() == 1 ? read_dtype(in, ops_.models[0]) : promoted_dtype(in, dtype);
  }
  std::uint64_t working_values_per_element() const override { return ops_.models.size() + 2; }
  double passes_over_inputs() const override { return 2; }
  void check_tensor(const Inputs& in, const TensorParameters& p) const override { (void)weights(in[0]->name, p); }

  // The weights of the operands, normalised when normalize_weights.
  std::vector<double> weights(const std::string& tensor, const TensorParameters& p) const {
    std::vector<double> w;
    double sum = 0;
    for (const std::size_t m : ops_.models) {
      w.push_back(p.per_model[m].number("weight"));
      sum += w.back();
    }
    if (!p.global.flag("normalize_weights") || ops_.models.size() == 1) return w;
    SOUPKIT_INPUT_ERROR_IF(sum == 0 || !std::isfinite(sum), "tensor '{}': the weights sum to {}, and "
                           "normalize_weights divides by it (mergekit would write inf or NaN): change the weights or "
                           "set normalize_weights: false",
                           tensor, sum);
    for (auto& v : w) v /= sum;
    return w;
  }

  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override {
    if (ops_.models.size() == 1) return copy_model(index, in, out, ops_.models[0], writer);
    const TensorParameters& p = parameters(index);
    const auto c = multislerp_coefficients(whole_gram(in, out, ops_), weights(out.name, p),
                                           p.global.number("eps"), out.name);
    write_combination(index, in, out, ops_, c, writer);
  }

  Operands ops_;
};

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<MultislerpMethod>(spec, in);
}

}  // namespace

MergeMethodSpec multislerp_spec() {
  return {
      .name = "multislerp",
      .merge_methods = {"multislerp"},
      .summary = "Multi-SLERP: barycentric interpolation of two or more models (or task vectors) on the hypersphere",
      .base = BaseRole::Optional,
      .parameters =
          {
              {.name = "weight", .kind = ParameterKind::Number, .default_value = std::nullopt,
               .help = "weight w_i of each model", .per_model = true, .list_option = "weights"},
              {.name = "normalize_weights", .kind = ParameterKind::Bool, .default_value = true,
               .help = "divide the weights by their sum"},
              {.name = "eps", .kind = ParameterKind::Number, .default_value = 1e-8,
               .help = "small constant for numerical stability (added to the norms)"},
          },
      .build = build,
  };
}

}  // namespace soupkit
