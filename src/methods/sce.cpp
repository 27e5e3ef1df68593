// SCE (Select, Calculate, Erase: FuseChat 2, Wan et al., 2024), as mergekit's
// `sce` defines it (mergekit/merge_methods/sce.py; docs/merge_methods_spec.md).
// Per tensor, with tv_i = W_i - W_base for the n models but the base (none:
// the output is the base):
//   Select (select_topk < 1): the elementwise variance of the task vectors
//     over the models, var = sum_i (tv_i - mean)^2 / n with mean = sum_i tv_i / n;
//     k = int(float32(count of var != 0) * float32(select_topk)) (torch's
//     int64 x float product is float32); the k largest variances are kept
//     (equal ones: the lower flat index first), every tv_i zeroed elsewhere;
//     select_topk <= 0 or k = 0 zeroes them all;
//   Calculate: w_i = mean over the tensor of tv_i^2 (after the selection),
//     divided by sum_i w_i, or 1/n each when that sum is below 1e-6;
//   Erase: e = (sum_i tv_i >= 0 ? +1 : -1) (the unweighted sign election),
//     ew_i = w_i [sign(tv_i) == e];
//   out = base + (sum_i tv_i ew_i) / max(sum_i ew_i, 1e-6).
// There are no per-model parameters (no weight, no density).
//
// Streaming and exact: with select_topk < 1, a pass counts the nonzero
// variances, linalg::select_top_magnitudes finds the k-th largest (typically
// 2 passes, at most 4), then a pass sums each model's squares (in flat
// order, float64) and the merge is a last pass: 6 passes over all inputs
// typically, 2 without the selection. A block holds every model's task
// vector at once (the variance needs them all).
#include "soupkit/linalg/magnitude_select.hpp"
#include "soupkit/methods/sign_consensus.hpp"
#include "soupkit/methods/tensor_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/format.h>

#include <cmath>
#include <optional>

namespace soupkit {
namespace {

constexpr double kUniformBelow = 1e-6;  // sce_weight: a sum of weights below this gives 1/n each
constexpr double kMinDivisor = 1e-6;    // the clamp of the erased weights' sum

// Which elements survive the selection.
struct Selection {
  enum class Kind { All, None, Top } kind = Kind::All;
  linalg::MagnitudeSelection top;  // Kind::Top: the k largest variances
};

class SceMethod final : public TensorMerge {
 public:
  SceMethod(const MergeMethodSpec& spec, const MergeInputs& in)
      : TensorMerge(spec, in), task_models_(non_base_models()) {
    log::info("sce: base {} and {} model{}", in.base_path().string(), task_models_.size(),
              task_models_.size() == 1 ? "" : "s");
  }

 private:
  // Base, every task vector, the variance and output, a mask (rounded up).
  // mergekit's arithmetic between the inputs promotes their dtypes (torch).
  DType result_dtype(const Inputs& in, DType dtype) const override { return promoted_dtype(in, dtype); }
  std::uint64_t working_values_per_element() const override { return model_count() + 4; }
  double passes_over_inputs() const override { return inputs().parameters.global.count("select_topk") ? 6 : 2; }
  std::uint64_t held_bytes(const Inputs&, const TensorParameters& p) const override {
    return p.global.number("select_topk") < 1 ? selection_cap() : 0;
  }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  std::size_t selection_cap() const { return std::max<std::size_t>(chunk_bytes(), linalg::kMinSelectionBytes); }
  // tvs_[i] = task model i's rows [first, first + count); base_ the base's.
  void read_block(const Inputs& in, std::uint64_t first, std::uint64_t count);
  // var_ = the elementwise variance of tvs_ over the models.
  void variance();
  // Calls each(block start, block size) after reading every block in order.
  template <class Each>
  void for_each_block(const Inputs& in, const TensorInfo& out, Each&& each);
  Selection select(const Inputs& in, const TensorInfo& out, double topk);
  // Zeroes tvs_ where the selection drops (trim: the pass's, for Kind::Top).
  void apply(const Selection& s, std::optional<linalg::MagnitudeTrim>& trim, std::uint64_t at, const TensorInfo& out);
  std::vector<double> model_weights(const Inputs& in, const TensorInfo& out, const Selection& s);

  std::vector<std::size_t> task_models_;
  std::vector<double> base_, var_;
  std::vector<std::vector<double>> tvs_;  // per task model
  std::vector<std::uint8_t> keep_;
};

void SceMethod::read_block(const Inputs& in, std::uint64_t first, std::uint64_t count) {
  read_rows(*base_index(), in, first, count, base_);
  tvs_.resize(task_models_.size());
  for (std::size_t i = 0; i < task_models_.size(); ++i)
    read_task_vector_rows(task_models_[i], in, first, count, base_, tvs_[i]);
}

void SceMethod::variance() {
  const std::size_t n = tvs_.size(), size = base_.size();
  const double count = static_cast<double>(n);
  var_.resize(size);
  for (std::size_t j = 0; j < size; ++j) {
    double sum = tvs_[0][j];
    for (std::size_t i = 1; i < n; ++i) sum += tvs_[i][j];
    const double mean = sum / count;
    double squares = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double d = tvs_[i][j] - mean;
      squares = i == 0 ? d * d : squares + d * d;
    }
    var_[j] = squares / count;
  }
}

template <class Each>
void SceMethod::for_each_block(const Inputs& in, const TensorInfo& out, Each&& each) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_block(in, first, count);
    each(first, count);
  }
}

Selection SceMethod::select(const Inputs& in, const TensorInfo& out, double topk) {
  Selection s;
  if (topk >= 1) return s;
  s.kind = Selection::Kind::None;
  if (topk <= 0) return s;
  std::uint64_t nonzero = 0;
  for_each_block(in, out, [&](std::uint64_t, std::uint64_t) {
    variance();
    for (const double v : var_) nonzero += v != 0;
  });
  // int(count_nonzero(var) * select_topk): a float32 product in torch.
  const float product = static_cast<float>(nonzero) * static_cast<float>(topk);
  const auto keep = static_cast<std::int64_t>(product);
  if (keep == 0) return s;
  const linalg::BlockSource variances = [&](const linalg::BlockConsumer& consume) {
    for_each_block(in, out, [&](std::uint64_t, std::uint64_t) {
      variance();
      consume(var_);
    });
  };
  try {
    s.top = linalg::select_top_magnitudes(variances, static_cast<std::int64_t>(out.numel()), keep, selection_cap());
  } catch (const InputError& e) {
    throw InputError(fmt::format("tensor '{}': the task vectors' variance: {}", out.name, e.what()));
  }
  s.kind = Selection::Kind::Top;
  return s;
}

void SceMethod::apply(const Selection& s, std::optional<linalg::MagnitudeTrim>& trim, std::uint64_t at,
                      const TensorInfo& out) {
  if (s.kind == Selection::Kind::All) return;
  keep_.assign(base_.size(), 0);
  if (s.kind == Selection::Kind::Top) {
    variance();
    try {
      trim->keep_mask(var_, static_cast<std::int64_t>(at), keep_);
    } catch (const InputError& e) {
      throw InputError(fmt::format("tensor '{}': the task vectors' variance: {}", out.name, e.what()));
    }
  }
  for (auto& tv : tvs_)
    for (std::size_t j = 0; j < tv.size(); ++j) tv[j] *= keep_[j] ? 1.0 : 0.0;
}

// sce_weight: each model's mean square over the whole tensor, normalised.
std::vector<double> SceMethod::model_weights(const Inputs& in, const TensorInfo& out, const Selection& s) {
  const std::size_t n = task_models_.size();
  std::vector<double> squares(n, 0.0);
  std::optional<linalg::MagnitudeTrim> trim;
  if (s.kind == Selection::Kind::Top) trim.emplace(s.top);
  for_each_block(in, out, [&](std::uint64_t first, std::uint64_t) {
    apply(s, trim, first * row_elements(out), out);
    for (std::size_t i = 0; i < n; ++i)
      for (const double v : tvs_[i]) squares[i] += v * v;
  });
  if (trim) trim->finish();
  std::vector<double> weights(n);
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    weights[i] = squares[i] / static_cast<double>(out.numel());
    sum += weights[i];
  }
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(sum), "tensor '{}': the task vectors' mean squares sum to {} (mergekit would "
                         "write NaN)", out.name, sum);
  for (auto& w : weights) w = std::abs(sum) < kUniformBelow ? 1.0 / static_cast<double>(n) : w / sum;
  return weights;
}

void SceMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) {
  const std::size_t n = task_models_.size();
  if (n == 0) {  // mergekit returns the base
    for_each_block(in, out, [&](std::uint64_t first, std::uint64_t count) {
      write_rows(index, out, first, count, base_, writer);
    });
    return;
  }
  const Selection s = select(in, out, parameters(index).global.number("select_topk"));
  const std::vector<double> weights = model_weights(in, out, s);
  std::optional<linalg::MagnitudeTrim> trim;
  if (s.kind == Selection::Kind::Top) trim.emplace(s.top);
  for_each_block(in, out, [&](std::uint64_t first, std::uint64_t count) {
    apply(s, trim, first * row_elements(out), out);
    for (std::size_t j = 0; j < base_.size(); ++j) {
      double sum = tvs_[0][j];
      for (std::size_t i = 1; i < n; ++i) sum += tvs_[i][j];
      const double elected = elected_sign(sum);
      double merged = 0, divisor = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const double erased = agrees(tvs_[i][j], elected) ? weights[i] : 0.0;
        const double part = tvs_[i][j] * erased;
        merged = i == 0 ? part : merged + part;
        divisor = i == 0 ? erased : divisor + erased;
      }
      base_[j] += merged / std::max(divisor, kMinDivisor);
    }
    write_rows(index, out, first, count, base_, writer);
  });
  if (trim) trim->finish();
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<SceMethod>(spec, in);
}

}  // namespace

MergeMethodSpec sce_spec() {
  return {
      .name = "sce",
      .merge_methods = {"sce"},
      .summary = "SCE: keep the elements where the task vectors vary most, weight models by their mean square, "
                 "erase minority signs",
      .base = BaseRole::Required,
      .parameters =
          {
              {.name = "select_topk", .kind = ParameterKind::Number, .default_value = 1.0,
               .help = "fraction of the elements with nonzero variance across the task vectors kept, the most "
                       "varying (1: all; 0 or less: none)"},
              {.name = "int8_mask", .kind = ParameterKind::Bool, .default_value = false,
               .help = "accepted for mergekit configs: it only sets the dtype of mergekit's masks, no value "
                       "changes"},
          },
      .build = build,
  };
}

}  // namespace soupkit
