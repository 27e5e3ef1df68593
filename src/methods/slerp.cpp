// mergekit's `slerp` (mergekit/merge_methods/slerp.py): spherical linear
// interpolation between the base model v0 and the one other model v1, over
// each whole tensor, at the per-tensor parameter t (t = 0: the base):
//   d = (v0/|v0|) . (v1/|v1|)     (a norm <= 1e-8 leaves its vector unscaled)
//   |d| > 0.9995:  W = (1 - t) v0 + t v1                      (nearly colinear: lerp)
//   otherwise:     theta = acos(d), W = s0 v0 + s1 v1 with
//                  s0 = sin(theta - t theta) / sin(theta), s1 = sin(t theta) / sin(theta)
// Exactly two models (the base among them; mergekit adds base_model to the
// models when it is not listed); with the base alone, the base is copied
// (mergekit returns a tensor's only input). mergekit refuses any other count
// ("Slerp merge expects exactly two models"), and so does soupkit.
//
// Passes: the statistics pass (|v0|^2, |v1|^2, v0 . v1 over the whole
// tensor, exactly, spherical_merge.hpp), then the writing pass: 2 reads of
// each input. mergekit computes in float32 numpy; soupkit in float64,
// rounding once to the output dtype.
#include "soupkit/methods/spherical_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <cmath>

namespace soupkit {
namespace {

constexpr double kNormEps = 1e-8;         // mergekit's normalize(v, eps)
constexpr double kDotThreshold = 0.9995;  // mergekit's DOT_THRESHOLD

// {s0, s1}: W = s0 v0 + s1 v1, from the Gram matrix of (v0, v1).
std::vector<double> slerp_coefficients(const linalg::Gram& g, double t) {
  const double n0 = std::sqrt(g(0, 0)), n1 = std::sqrt(g(1, 1));
  // (g01 / sqrt(g00 g11) when both are normalised: exactly +-1 for parallel or opposite tensors.)
  const double dot = n0 > kNormEps && n1 > kNormEps ? g(0, 1) / std::sqrt(g(0, 0) * g(1, 1))
                                                    : g(0, 1) / ((n0 > kNormEps ? n0 : 1.0) * (n1 > kNormEps ? n1 : 1.0));
  if (std::abs(dot) > kDotThreshold) return {1 - t, t};
  const double theta0 = std::acos(dot), sin_theta0 = std::sin(theta0);
  const double theta_t = theta0 * t;
  return {std::sin(theta0 - theta_t) / sin_theta0, std::sin(theta_t) / sin_theta0};
}

class SlerpMethod final : public SphericalMerge {
 public:
  SlerpMethod(const MergeMethodSpec& spec, const MergeInputs& in) : SphericalMerge(spec, in) {
    SOUPKIT_INPUT_ERROR_IF(model_count() > 2,
                           "slerp interpolates exactly two models, the base and one other; {} are given (the models "
                           "and base_model; mergekit refuses this too: 'Slerp merge expects exactly two models')",
                           model_count());
    if (model_count() == 2) other_ = non_base_models().front();
    log::info("slerp: base {}{}", in.base_path().string(),
              model_count() == 2 ? " and " + in.models[other_].string() : " alone (copied)");
  }

 private:
  std::uint64_t working_values_per_element() const override { return 3; }  // v0, v1, output
  double passes_over_inputs() const override { return 2; }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override {
    if (model_count() == 1) return copy_model(index, in, out, *base_index(), writer);
    const Operands ops{{*base_index(), other_}, false};
    const auto c = slerp_coefficients(whole_gram(in, out, ops), parameters(index).global.number("t"));
    write_combination(index, in, out, ops, c, writer);
  }

  std::size_t other_ = 0;
};

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<SlerpMethod>(spec, in);
}

}  // namespace

MergeMethodSpec slerp_spec() {
  return {
      .name = "slerp",
      .merge_methods = {"slerp"},
      .summary = "SLERP: spherical interpolation between the base and one other model at t (0: the base)",
      .base = BaseRole::Required,
      .parameters =
          {
              {.name = "t", .kind = ParameterKind::Number, .default_value = std::nullopt,
               .help = "interpolation factor: 0 gives the base, 1 the other model"},
          },
      .build = build,
  };
}

}  // namespace soupkit
