// mergekit's `karcher` (mergekit/merge_methods/karcher.py): the Karcher
// (Riemannian, Frechet) mean on the unit sphere of all the models' tensors
// (the base too when base_model is given: mergekit adds it to the models and
// karcher treats it like the others), with equal weights alpha_i = 1/N,
// scaled back by the mean norm. Per tensor, with n_i = |x_i|:
//   valid = {i : n_i > tol} (none: the output is 0); a_i = alpha_i / sum_valid alpha
//   u = sum a_i x_i/n_i, normalised (|u| < tol: u = the first valid unit vector)
//   up to max_iter times:
//     T = sum over valid i with theta_i = acos(clamp(u . x_i/n_i)) >= tol of a_i theta_i / sin(theta_i) (x_i/n_i - cos(theta_i) u)
//     |T| < tol: stop;  u = cos|T| u + sin|T| T/|T|;  |u| > tol: u = u/|u|
//   W = (sum_i alpha_i n_i) u
// A single model is copied (mergekit returns a tensor's only input).
//
// Streaming, exactly. u and T are always combinations of the x_i, so soupkit
// carries them as coefficient vectors: u . x_j and |T| are c^T G over the
// Gram matrix G of the models' tensors, which one statistics pass computes
// exactly (spherical_merge.hpp). The iteration then runs on N x N numbers
// with mergekit's tests and stopping rule, and a writing pass forms
// W = sum_i c_i x_i: 2 reads of each input whatever max_iter (a pass per
// iteration would recompute the same G). mergekit computes in the models'
// dtype (norms in float32); soupkit in float64. The stopping tests compare
// norms computed as c^T G c, whose float64 rounding error is about 1e-16
// absolute in |T|^2: a tol below ~1e-7 is beyond what any float64 evaluation
// (and far beyond mergekit's float32/bfloat16 one) can resolve.
#include "soupkit/methods/spherical_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <cmath>

namespace soupkit {
namespace {

struct KarcherSettings {
  std::uint64_t max_iter;
  double tol;
};

// Non-finite numbers arise only from divisions by zero that tol <= 0 lets
// through (theta = 0, |T| = 0, |u| = 0), where mergekit writes NaN.
void check_finite(const std::vector<double>& c, const std::string& tensor, double tol) {
  for (const double v : c)
    SOUPKIT_INPUT_ERROR_IF(!std::isfinite(v),
                           "tensor '{}': karcher's iteration divides by zero with tol = {} (a zero angle or norm that "
                           "a positive tol would skip); mergekit writes NaN here: give tol > 0",
                           tensor, tol);
}

// c with W = sum_i c_i x_i, from the Gram matrix of the models' tensors.
std::vector<double> karcher_coefficients(const linalg::Gram& g, const KarcherSettings& s, const std::string& tensor) {
  const std::size_t n = g.size();
  const std::vector<double> alphas(n, 1.0 / static_cast<double>(n));
  std::vector<double> norms(n);
  for (std::size_t i = 0; i < n; ++i) norms[i] = std::sqrt(g(i, i));
  std::vector<std::size_t> valid;
  for (std::size_t i = 0; i < n; ++i)
    if (norms[i] > s.tol) valid.push_back(i);
  std::vector<double> out(n, 0.0);
  if (valid.empty()) return out;
  const std::size_t k = valid.size();
  double alpha_sum = 0;
  for (const std::size_t i : valid) alpha_sum += alphas[i];
  std::vector<double> a(k);
  for (std::size_t l = 0; l < k; ++l) a[l] = alphas[valid[l]] / alpha_sum;
  // The Gram matrix of the valid unit vectors (a zero vector's unit is 0, as
  // in mergekit). g_lm / sqrt(g_ll g_mm) rather than / (n_l n_m): the
  // diagonal is exactly 1, and equal or opposite vectors give exactly +-1,
  // so the cancellations mergekit's vectors make exactly (a model and its
  // negative: T = 0) are exact here too.
  linalg::Gram units(k);
  for (std::size_t l = 0; l < k; ++l)
    for (std::size_t m = l; m < k; ++m) {
      const double gl = g(valid[l], valid[l]), gm = g(valid[m], valid[m]);
      units.set(l, m, gl == 0 || gm == 0 ? 0.0 : g(valid[l], valid[m]) / std::sqrt(gl * gm));
    }
  const auto norm = [&](const std::vector<double>& c) { return std::sqrt(units.squared_norm(c)); };
  std::vector<double> u = a;  // coefficients over the valid units
  const double norm_u = norm(u);
  if (norm_u < s.tol) {
    std::fill(u.begin(), u.end(), 0.0);
    u[0] = 1;
  } else {
    for (auto& v : u) v /= norm_u;
  }
  check_finite(u, tensor, s.tol);
  std::vector<double> tangent(k);
  for (std::uint64_t iteration = 0; iteration < s.max_iter; ++iteration) {
    const std::vector<double> dots = units.times(u);
    std::fill(tangent.begin(), tangent.end(), 0.0);
    for (std::size_t l = 0; l < k; ++l) {
      const double dot = std::clamp(dots[l], -1.0, 1.0);
      const double theta = std::acos(dot);
      if (theta < s.tol) continue;
      const double scale = a[l] * (theta / std::sin(theta));
      // T += scale (unit_l - dot u)
      tangent[l] += scale;
      for (std::size_t m = 0; m < k; ++m) tangent[m] -= scale * dot * u[m];
    }
    const double norm_t = norm(tangent);
    if (norm_t < s.tol) break;
    const double cos_t = std::cos(norm_t), sin_t = std::sin(norm_t);
    for (std::size_t m = 0; m < k; ++m) u[m] = cos_t * u[m] + sin_t * (tangent[m] / norm_t);
    const double u_norm = norm(u);
    if (u_norm > s.tol)
      for (auto& v : u) v /= u_norm;
    check_finite(u, tensor, s.tol);
  }
  double scale = 0;  // the weighted sum of every model's norm, zero norms included
  for (std::size_t i = 0; i < n; ++i) scale += alphas[i] * norms[i];
  for (std::size_t l = 0; l < k; ++l) {
    const double norm_l = norms[valid[l]];
    out[valid[l]] = norm_l == 0 ? 0.0 : scale * u[l] / norm_l;
  }
  check_finite(out, tensor, s.tol);
  return out;
}

class KarcherMethod final : public SphericalMerge {
 public:
  KarcherMethod(const MergeMethodSpec& spec, const MergeInputs& in) : SphericalMerge(spec, in) {
    for (std::size_t i = 0; i < model_count(); ++i) all_.models.push_back(i);
    log::info("karcher: {} model{}{}", model_count(), model_count() == 1 ? " (copied)" : "s",
              base_index() ? " (the base among them)" : "");
  }

 private:
  // Every model's rows and the output.
  // mergekit's mean u starts as zeros_like(the first model's unit vector) and keeps its dtype: the
  // first model's (in normalize_config's order: the models, then the base), not the base's.
  DType result_dtype(const Inputs& in, DType dtype) const override {
    for (std::size_t k = 0; k < in.size(); ++k)
      if (in[k]) return read_dtype(in, k);
    return dtype;
  }
  std::uint64_t working_values_per_element() const override { return model_count() + 1; }
  double passes_over_inputs() const override { return 2; }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override {
    if (model_count() == 1) return copy_model(index, in, out, 0, writer);
    const TensorParameters& p = parameters(index);
    const KarcherSettings settings{p.global.size("max_iter"), p.global.number("tol")};
    const auto c = karcher_coefficients(whole_gram(in, out, all_), settings, out.name);
    if (std::all_of(c.begin(), c.end(), [](double v) { return v == 0; })) {
      // mergekit's zeros_like: +0 everywhere (0 x a negative value would be -0).
      return write_blocks(index, in, out, all_, writer,
                          [](const Block&, std::vector<double>& values) { std::fill(values.begin(), values.end(), 0.0); });
    }
    write_combination(index, in, out, all_, c, writer);
  }

  Operands all_;  // every model, the base included
};

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<KarcherMethod>(spec, in);
}

}  // namespace

MergeMethodSpec karcher_spec() {
  return {
      .name = "karcher",
      .merge_methods = {"karcher"},
      .summary = "Karcher mean: the Riemannian mean of the models on the unit sphere, scaled by their mean norm",
      .base = BaseRole::Optional,
      .parameters =
          {
              {.name = "max_iter", .kind = ParameterKind::Size, .default_value = std::uint64_t{10},
               .help = "most iterations of the Karcher mean"},
              {.name = "tol", .kind = ParameterKind::Number, .default_value = 1e-5,
               .help = "convergence tolerance (also: norms and angles below it are skipped)"},
          },
      .build = build,
  };
}

}  // namespace soupkit
