// mergekit's `nuslerp` (mergekit/merge_methods/nuslerp.py): spherical
// interpolation of two models v0, v1 (in the order listed) at
//   t = w1 / (w0 + w1)      (0.5 when |w0 + w1| < 1e-6)
// from their per-model `weight`s; with a base model, of their task vectors
// (v_i = W_i - W_base, the result added to the base). The vectors
// interpolated are, per tensor:
//   nuslerp_flatten (default true), or a tensor of one dimension: the whole tensor;
//   else nuslerp_row_wise false: each vector along the last dimension (each row of a matrix);
//   else nuslerp_row_wise true:  each vector along the first dimension (each column of a matrix)
// (mergekit: dim = 0 if row_wise else -1, normalising along it). Each pair:
//   c = (v0 / max(|v0|, 1e-7)) . (v1 / max(|v1|, 1e-7)) clamped to [-1, 1], theta = acos(c)
//   |sin theta| < 1e-8:  (1 - t) v0 + t v1
//   otherwise:           (sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta)
// Exactly two models besides the base (mergekit: "NuSlerp merge expects
// exactly two models (plus optional base model)"; the base cannot be one of
// the two); a single model (no base) is copied.
//
// Passes: vectors along the last dimension lie within a row, so each block
// is merged on its own (1 read of each input); whole tensors and columns
// need their norms and dot products first (a statistics pass, then the
// writing pass: 2 reads; columns keep 3 compensated sums per column).
// mergekit computes in the models' dtype (torch); soupkit in float64.
#include "soupkit/methods/spherical_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <cmath>

namespace soupkit {
namespace {

constexpr double kNormClamp = 1e-7;      // mergekit's _normalize
constexpr double kColinear = 1e-8;       // nuslerp's eps on |sin theta|
constexpr double kZeroWeightSum = 1e-6;  // below it, t = 0.5

// One pair's interpolation, from |v0|^2, |v1|^2 and v0 . v1.
struct PairSlerp {
  PairSlerp(double s00, double s11, double s01, double t) : t(t) {
    const double n0 = std::sqrt(s00), n1 = std::sqrt(s11);
    // s01 / sqrt(s00 s11) (= s01 / (n0 n1) exactly in real numbers) gives
    // exactly +-1 for exactly parallel or opposite vectors, so those take
    // the lerp branch; n0 n1 would leave them an ulp from it, where
    // 1 / sin(theta) of an opposite pair is ~1e8.
    const double cos = n0 < kNormClamp || n1 < kNormClamp
                           ? s01 / (std::max(n0, kNormClamp) * std::max(n1, kNormClamp))
                           : s01 / std::sqrt(s00 * s11);
    const double theta = std::acos(std::clamp(cos, -1.0, 1.0));
    sin_theta = std::sin(theta);
    colinear = std::abs(sin_theta) < kColinear;
    a = std::sin((1 - t) * theta);
    b = std::sin(t * theta);
  }
  double operator()(double v0, double v1) const {
    return colinear ? (1 - t) * v0 + t * v1 : (a * v0 + b * v1) / sin_theta;
  }
  double t, a = 0, b = 0, sin_theta = 0;
  bool colinear = false;
};

enum class Vectors { Whole, LastDimension, FirstDimension };

class NuslerpMethod final : public SphericalMerge {
 public:
  NuslerpMethod(const MergeMethodSpec& spec, const MergeInputs& in) : SphericalMerge(spec, in) {
    const std::size_t n = model_count();
    if (n > 1) {
      SOUPKIT_INPUT_ERROR_IF(base_index() && n != 3,
                             "nuslerp with a base model interpolates exactly two other models; {} model{} besides the "
                             "base {} given (the base cannot be one of the two: mergekit refuses this too)",
                             n - 1, n == 2 ? "" : "s", n == 2 ? "is" : "are");
      SOUPKIT_INPUT_ERROR_IF(!base_index() && n != 2,
                             "nuslerp interpolates exactly two models (plus an optional base model); {} are given "
                             "(mergekit refuses this too)",
                             n);
      pair_ = non_base_models();
    }
    log::info("nuslerp: {}{}", n == 1 ? "one model (copied)" : "two models",
              base_index() ? ", task vectors from base " + in.base_path().string() : "");
  }

 private:
  // v0, v1, the base, the output; and, so that the estimate covers the
  // column layout's state (3 compensated sums and a PairSlerp, 11 float64 a
  // column) even when a block is a single row, 11 more.
  // mergekit's arithmetic between the inputs promotes their dtypes (torch).
  DType result_dtype(const Inputs& in, DType dtype) const override { return promoted_dtype(in, dtype); }
  std::uint64_t working_values_per_element() const override { return 4 + 11; }
  double passes_over_inputs() const override { return 2; }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;
  double interpolation_factor(const TensorParameters& p) const;
  void merge_whole(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops, double t,
                   CheckpointWriter& writer);
  void merge_last_dimension(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops, double t,
                            CheckpointWriter& writer);
  void merge_first_dimension(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops, double t,
                             CheckpointWriter& writer);

  std::vector<std::size_t> pair_;  // the two models, in order
};

double NuslerpMethod::interpolation_factor(const TensorParameters& p) const {
  const double w0 = p.per_model[pair_[0]].number("weight"), w1 = p.per_model[pair_[1]].number("weight");
  const double sum = w0 + w1;
  return std::abs(sum) < kZeroWeightSum ? 0.5 : w1 / sum;
}

void NuslerpMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out,
                                 CheckpointWriter& writer) {
  if (model_count() == 1) return copy_model(index, in, out, 0, writer);
  const TensorParameters& p = parameters(index);
  const double t = interpolation_factor(p);
  const Operands ops{pair_, base_index().has_value()};
  const Vectors vectors = p.global.flag("nuslerp_flatten") || out.shape.size() <= 1 ? Vectors::Whole
                          : p.global.flag("nuslerp_row_wise")                      ? Vectors::FirstDimension
                                                                                   : Vectors::LastDimension;
  switch (vectors) {
    case Vectors::Whole: return merge_whole(index, in, out, ops, t, writer);
    case Vectors::LastDimension: return merge_last_dimension(index, in, out, ops, t, writer);
    case Vectors::FirstDimension: return merge_first_dimension(index, in, out, ops, t, writer);
  }
}

// out = pair(v0, v1) (+ the base), element by element.
void apply(bool minus_base, const std::vector<double>& v0, const std::vector<double>& v1,
           const std::vector<double>& base, std::size_t j, const PairSlerp& pair, double& out) {
  const double r = pair(v0[j], v1[j]);
  out = minus_base ? base[j] + r : r;
}

void NuslerpMethod::merge_whole(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops,
                                double t, CheckpointWriter& writer) {
  const linalg::Gram g = whole_gram(in, out, ops);
  const PairSlerp pair(g(0, 0), g(1, 1), g(0, 1), t);
  write_blocks(index, in, out, ops, writer, [&](const Block& b, std::vector<double>& values) {
    for (std::size_t j = 0; j < values.size(); ++j) apply(ops.minus_base, b.v[0], b.v[1], b.base, j, pair, values[j]);
  });
}

// Each vector is shape[-1] consecutive elements of a row: merged in place.
void NuslerpMethod::merge_last_dimension(std::size_t index, const Inputs& in, const TensorInfo& out,
                                         const Operands& ops, double t, CheckpointWriter& writer) {
  const std::size_t length = out.shape.back();
  write_blocks(index, in, out, ops, writer, [&](const Block& b, std::vector<double>& values) {
    const std::vector<double>&v0 = b.v[0], &v1 = b.v[1];
    for (std::size_t start = 0; start < values.size(); start += length) {
      double s00 = 0, s11 = 0, s01 = 0;
      for (std::size_t j = start; j < start + length; ++j) {
        s00 += v0[j] * v0[j];
        s11 += v1[j] * v1[j];
        s01 += v0[j] * v1[j];
      }
      const PairSlerp pair(s00, s11, s01, t);
      for (std::size_t j = start; j < start + length; ++j) apply(ops.minus_base, v0, v1, b.base, j, pair, values[j]);
    }
  });
}

// Each vector is one position of a row across all rows (a column of a
// matrix): its sums are accumulated over the rows first.
void NuslerpMethod::merge_first_dimension(std::size_t index, const Inputs& in, const TensorInfo& out,
                                          const Operands& ops, double t, CheckpointWriter& writer) {
  const std::size_t columns = row_elements(out);
  std::vector<linalg::CompensatedSum> s00(columns), s11(columns), s01(columns);
  visit_blocks(in, out, ops, [&](const Block& b) {
    const std::vector<double>&v0 = b.v[0], &v1 = b.v[1];
    for (std::uint64_t r = 0; r < b.count; ++r)
      for (std::size_t c = 0, j = r * columns; c < columns; ++c, ++j) {
        s00[c].add(v0[j] * v0[j]);
        s11[c].add(v1[j] * v1[j]);
        s01[c].add(v0[j] * v1[j]);
      }
  });
  std::vector<PairSlerp> pairs;
  pairs.reserve(columns);
  for (std::size_t c = 0; c < columns; ++c) {
    pairs.emplace_back(s00[c].value(), s11[c].value(), s01[c].value(), t);
    SOUPKIT_INPUT_ERROR_IF(!std::isfinite(pairs.back().sin_theta),
                           "tensor '{}': the norms of its column {} are not finite numbers (a model holds inf or "
                           "NaN); mergekit would write NaN",
                           out.name, c);
  }
  write_blocks(index, in, out, ops, writer, [&](const Block& b, std::vector<double>& values) {
    for (std::uint64_t r = 0; r < b.count; ++r)
      for (std::size_t c = 0, j = r * columns; c < columns; ++c, ++j) apply(ops.minus_base, b.v[0], b.v[1], b.base, j, pairs[c],
                                                                            values[j]);
  });
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<NuslerpMethod>(spec, in);
}

}  // namespace

MergeMethodSpec nuslerp_spec() {
  return {
      .name = "nuslerp",
      .merge_methods = {"nuslerp"},
      .summary = "NuSLERP: spherical interpolation of two models (or of their task vectors from a base) at "
                 "t = w1 / (w0 + w1)",
      .base = BaseRole::Optional,
      .parameters =
          {
              {.name = "weight", .kind = ParameterKind::Number, .default_value = std::nullopt,
               .help = "relative weight of each of the two models (t = w1 / (w0 + w1))", .per_model = true,
               .list_option = "weights"},
              {.name = "nuslerp_flatten", .kind = ParameterKind::Bool, .default_value = true,
               .help = "interpolate each tensor as one vector (false: vector by vector, see nuslerp_row_wise)"},
              {.name = "nuslerp_row_wise", .kind = ParameterKind::Bool, .default_value = false,
               .help = "without nuslerp_flatten: interpolate the vectors along the first dimension (columns of a "
                       "matrix) instead of the last (rows)"},
          },
      .build = build,
  };
}

}  // namespace soupkit
