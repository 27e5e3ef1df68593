// mergekit's `arcee_fusion` (arcee_fusion.py; Arcee's MergeKit v0.1
// release): the base B takes one other model M's value where M's change
// is important, and keeps its own elsewhere:
//   KL       = sum_j p_j log(p_j / q_j) along the last axis, per vector,
//              p = softmax(M) + 1e-8, q = softmax(B) + 1e-8
//   s        = |M - B| KL(vector of the element)      (importance scores)
//   h        = median + 1.5 (q3 - q1) of s over the whole tensor, the
//              q-quantile being sorted(s)[floor(q (n - 1))]
//   W        = B + (M - B) [s >= h]
// A 1-D or 0-D tensor is one vector. No parameters. The base is required;
// mergekit fuses exactly two models ("ArceeFusion merge expects exactly two
// models"), so more are refused; with the base alone, the output is it.
//
// mergekit sorts the scores of a tensor of more than 10^6 elements only in
// a random sample of 10^6 (torch.randperm, unseeded: a different threshold
// every run); soupkit takes the exact quantiles of the whole tensor (what
// the sample estimates), and says so once when planning.
//
// Streaming and exact: the quantiles come from linalg::select_order_statistics
// over the scores computed block by block (typically 2 passes over base and
// model, at most ceil(64 / digit bits); its memory capped at the engine's
// chunk size), then one last pass applies the mask. A vector's KL needs the
// whole vector: the rows of a matrix hold whole vectors, so it is computed
// in the block, and kept for the later passes when the per-vector values fit
// in a chunk; a 1-D tensor, one vector over every block, takes three more
// streaming passes (its maxima, its sums of exponentials, its divergence).
// So a matrix costs about 3 reads of base and model; memory is a row block
// of each, the scores' block, the selection's cap and the cached KL values,
// all declared in the plan.
//
// Float64 (compensated sums in flat order), in this order per vector:
// e = exp(x - max x), p = e / sum e + 1e-8 (both models), KL = sum p log(p / q);
// s = |M - B| KL; h = m + 1.5 (q3 - q1); W = B + (M - B) mask, rounded once
// to the output dtype. (mergekit computes in the tensors' dtype, e.g. a
// bfloat16 softmax.)
#include "soupkit/linalg/compensated_sum.hpp"
#include "soupkit/linalg/exact_arithmetic.hpp"
#include "soupkit/linalg/order_statistics.hpp"
#include "soupkit/methods/base_model_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <span>

namespace soupkit {
namespace {

constexpr double kSoftmaxEps = 1e-8;     // _compute_importance's eps
constexpr double kOutlierFactor = 1.5;   // threshold = median + 1.5 IQR
constexpr std::uint64_t kSampledAbove = 1'000'000;  // mergekit samples the scores of larger tensors

// KL(p || q) of p = softmax(M) + eps and q = softmax(B) + eps along one
// vector given in pieces, each piece seen once per stage, stages in order.
class SoftmaxDivergence {
 public:
  enum Stage { Maxima, Exponentials, Terms };

  void add(Stage stage, std::span<const double> base, std::span<const double> model) {
    for (std::size_t j = 0; j < base.size(); ++j) {
      switch (stage) {
        case Maxima:
          max_base_ = std::max(max_base_, base[j]);
          max_model_ = std::max(max_model_, model[j]);
          break;
        case Exponentials:
          sum_base_.add(std::exp(base[j] - max_base_));
          sum_model_.add(std::exp(model[j] - max_model_));
          break;
        case Terms: {
          const double p = std::exp(model[j] - max_model_) / sum_model_.value() + kSoftmaxEps;
          const double q = std::exp(base[j] - max_base_) / sum_base_.value() + kSoftmaxEps;
          divergence_.add(p * std::log(p / q));
          break;
        }
      }
    }
  }
  double value() const { return divergence_.value(); }

 private:
  // (A NaN input makes the sums, so the scores, NaN: refused by the selection.)
  double max_base_ = -std::numeric_limits<double>::infinity(), max_model_ = max_base_;
  linalg::CompensatedSum sum_base_, sum_model_, divergence_;
};

double divergence_of(std::span<const double> base, std::span<const double> model) {
  SoftmaxDivergence d;
  for (const auto stage : {SoftmaxDivergence::Maxima, SoftmaxDivergence::Exponentials, SoftmaxDivergence::Terms})
    d.add(stage, base, model);
  return d.value();
}

// h = m + 1.5 (q3 - q1) of three exact scores, and s >= h decided exactly.
class Threshold {
 public:
  Threshold(const linalg::OrderStatistic& median, const linalg::OrderStatistic& q1, const linalg::OrderStatistic& q3);
  // Whether the score hi + lo is at least h.
  bool admits(double hi, double lo);

 private:
  static constexpr double kMarginUlps = 8;  // far more than the rounding of approximate_ and of a score
  double approximate_, margin_;
  std::array<double, 16> terms_{};  // 2 s - 2 h: the score's two terms, then -2 h's fourteen
};

class ArceeFusionMethod final : public BaseModelMerge {
 public:
  ArceeFusionMethod(const MergeMethodSpec& spec, const MergeInputs& in) : BaseModelMerge(spec, in) {
    log::info("arcee_fusion: base {} and {} other model{}", in.base_path().string(), in.models.size() - 1,
              in.models.size() == 2 ? "" : "s");
  }

 private:
  // The base's values (then the result), the model's, the scores (two parts each).
  std::uint64_t working_values_per_element() const override { return 4; }
  double passes_over_inputs() const override { return 3; }
  std::uint64_t statistic_bytes(const TensorInfo& out) const override {
    return selection_cap() + (caches_divergences(out) ? vectors(out) * sizeof(double) : 0);
  }
  void check_tensor(const Inputs& in, const TensorParameters& p) const override;
  // mergekit's fusion mask is float32 ((scores >= h).float()), and B + (M - B) x mask
  // promotes to it: a fused bfloat16 or float16 tensor is written as float32 (float64
  // stays). The base alone is returned as it is.
  DType result_dtype(const Inputs& in, DType dtype) const override {
    return others(in).empty() ? dtype : promoted_dtype(in, DType::F32);
  }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  std::size_t selection_cap() const { return std::max<std::size_t>(chunk_bytes(), linalg::kMinSelectionBytes); }
  static std::uint64_t vectors(const TensorInfo& out) { return out.numel() / last_axis_elements(out); }
  bool caches_divergences(const TensorInfo& out) const {
    return out.shape.size() >= 2 && vectors(out) * sizeof(double) <= chunk_bytes();
  }
  void read_pair(const Inputs& in, std::uint64_t first, std::uint64_t count);
  // The divergence of a 1-D or 0-D tensor, its one vector streamed three times.
  double whole_tensor_divergence(const Inputs& in, const TensorInfo& out);
  // scores_ for the block read at row `first`.
  void score_block(const TensorInfo& out, std::uint64_t first);
  double divergence(const TensorInfo& out, std::uint64_t first, std::size_t begin, std::size_t end);
  // h, from the scores streamed as often as the selection needs.
  Threshold threshold(const Inputs& in, const TensorInfo& out);

  std::size_t model_ = 0;  // the other model of the tensor being merged
  std::optional<double> whole_divergence_;  // 1-D and 0-D tensors
  bool cache_ = false, cached_ = false;     // per-vector divergences kept, and filled
  std::vector<double> divergences_;         // per vector, when kept
  std::vector<double> base_, other_, scores_, lows_;  // scratch reused from block to block
  mutable std::atomic<bool> told_sampling_{false};
};

void ArceeFusionMethod::check_tensor(const Inputs& in, const TensorParameters& p) const {
  const std::vector<std::size_t> models = others(in);
  SOUPKIT_INPUT_ERROR_IF(models.size() > 1,
                         "arcee_fusion: tensor '{}' comes from {} models besides the base ({} and {}...); arcee_fusion "
                         "fuses exactly one model into the base (mergekit: 'ArceeFusion merge expects exactly two "
                         "models')",
                         in[models[0]]->name, models.size(), model_name(models[0]), model_name(models[1]));
  if (!models.empty() && in[models[0]]->numel() > kSampledAbove && !told_sampling_.exchange(true))
    log::info("arcee_fusion: tensor '{}' has {} elements: mergekit would take its threshold from a random sample of "
              "10^6 importance scores; soupkit takes the exact quantiles of all (said once)",
              in[models[0]]->name, in[models[0]]->numel());
  (void)p;
}

void ArceeFusionMethod::read_pair(const Inputs& in, std::uint64_t first, std::uint64_t count) {
  read_rows(base_index().value(), in, first, count, base_);
  read_rows(model_, in, first, count, other_);
}

double ArceeFusionMethod::whole_tensor_divergence(const Inputs& in, const TensorInfo& out) {
  SoftmaxDivergence d;
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (const auto stage : {SoftmaxDivergence::Maxima, SoftmaxDivergence::Exponentials, SoftmaxDivergence::Terms})
    for (std::uint64_t first = 0; first < rows; first += step) {
      read_pair(in, first, std::min(step, rows - first));
      d.add(stage, base_, other_);
    }
  return d.value();
}

double ArceeFusionMethod::divergence(const TensorInfo& out, std::uint64_t first, std::size_t begin,
                                     std::size_t end) {
  if (whole_divergence_) return *whole_divergence_;
  const std::uint64_t vector = (first * row_elements(out) + begin) / last_axis_elements(out);
  if (cached_) return divergences_[vector];
  const double kl = divergence_of(std::span(base_).subspan(begin, end - begin),
                                  std::span(other_).subspan(begin, end - begin));
  if (cache_) divergences_[vector] = kl;
  return kl;
}

void ArceeFusionMethod::score_block(const TensorInfo& out, std::uint64_t first) {
  scores_.resize(base_.size());
  lows_.resize(base_.size());
  const std::size_t vector = last_axis_elements(out);
  for (std::size_t begin = 0; begin < base_.size(); begin += vector) {
    const std::size_t end = std::min(begin + vector, base_.size());  // (a 1-D tensor's vector spans blocks)
    const double kl = divergence(out, first, begin, end);
    for (std::size_t j = begin; j < end; ++j) {
      const linalg::ExactProduct s = linalg::exact_product(std::fabs(other_[j] - base_[j]), kl);
      scores_[j] = s.hi, lows_[j] = s.lo;
    }
  }
}

Threshold::Threshold(const linalg::OrderStatistic& median, const linalg::OrderStatistic& q1,
                     const linalg::OrderStatistic& q3)
    : approximate_(median.value + kOutlierFactor * (q3.value - q1.value)),
      margin_(kMarginUlps * std::numeric_limits<double>::epsilon() *
              (std::fabs(median.value) + kOutlierFactor * (std::fabs(q3.value) + std::fabs(q1.value)))) {
  // 2 h = 2 m + 3 q3 - 3 q1, each score hi + lo, as sums of exact terms
  // (doubling is exact, 3 x = x + x + x).
  std::size_t k = 2;  // [0, 2): the score's own terms
  for (const double x : {median.value, median.low}) terms_[k++] = -2 * x;
  for (const double x : {q3.value, q3.low})
    for (int i = 0; i < 3; ++i) terms_[k++] = -x;
  for (const double x : {q1.value, q1.low})
    for (int i = 0; i < 3; ++i) terms_[k++] = x;
}

bool Threshold::admits(double hi, double lo) {
  // Far from h, the rounded comparison is the exact one.
  const double gap = hi - approximate_;
  const double margin = margin_ + kMarginUlps * std::numeric_limits<double>::epsilon() * std::fabs(hi);
  if (gap > margin) return true;
  if (gap < -margin) return false;
  terms_[0] = 2 * hi, terms_[1] = 2 * lo;
  return linalg::exact_sum_sign(terms_) >= 0;
}

Threshold ArceeFusionMethod::threshold(const Inputs& in, const TensorInfo& out) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  const linalg::PairSource scores = [&](const linalg::PairConsumer& consume) {
    for (std::uint64_t first = 0; first < rows; first += step) {
      read_pair(in, first, std::min(step, rows - first));
      score_block(out, first);
      consume(scores_, lows_);
    }
    cached_ = cache_;
  };
  // mergekit's approximate_quantiles: sorted[int(q * (n - 1))], q = 0.5, 0.25, 0.75.
  const auto n = static_cast<std::int64_t>(out.numel());
  const std::int64_t positions[] = {(n - 1) / 2, (n - 1) / 4, 3 * (n - 1) / 4};
  try {
    const auto selected = linalg::select_order_statistics(scores, n, positions, selection_cap());
    const auto& q = selected.at;
    log::debug("arcee_fusion: tensor '{}': median {}, quartiles {} and {} ({} passes of the selection)", out.name,
               q[0].value, q[1].value, q[2].value, selected.passes);
    return Threshold(q[0], q[1], q[2]);
  } catch (const InputError& e) {
    throw InputError(fmt::format("arcee_fusion: tensor '{}': importance scores |model - base| x KL: {} (an input holds "
                                 "inf or NaN)",
                                 out.name, e.what()));
  }
}

void ArceeFusionMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out,
                                     CheckpointWriter& writer) {
  const std::vector<std::size_t> models = others(in);
  if (models.empty()) return write_base(index, in, out, writer);
  model_ = models.front();
  whole_divergence_.reset();
  cache_ = caches_divergences(out), cached_ = false;
  divergences_.assign(cache_ ? vectors(out) : 0, 0.0);
  if (out.shape.size() < 2) whole_divergence_ = whole_tensor_divergence(in, out);
  Threshold h = threshold(in, out);
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_pair(in, first, count);
    score_block(out, first);
    for (std::size_t j = 0; j < base_.size(); ++j)
      base_[j] = base_[j] + (other_[j] - base_[j]) * (h.admits(scores_[j], lows_[j]) ? 1.0 : 0.0);
    write_rows(index, out, first, count, base_, writer);
  }
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<ArceeFusionMethod>(spec, in);
}

}  // namespace

MergeMethodSpec arcee_fusion_spec() {
  return {
      .name = "arcee-fusion",
      .merge_methods = {"arcee_fusion"},
      .summary = "Arcee Fusion: the base takes the model's changes whose importance (|delta| x KL) is an outlier",
      .base = BaseRole::Required,
      .parameters = {},
      .build = build,
  };
}

}  // namespace soupkit
