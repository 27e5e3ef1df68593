// Task arithmetic (Ilharco et al., 2023, "Editing Models with Task
// Arithmetic"), as mergekit's task_arithmetic defines it: a base model plus
// a weighted sum of task vectors (each model minus the base),
//   W = W_base + lambda * sum_i w_i (W_i - W_base)               normalize: false (the default)
//   W = W_base + lambda * sum_i w_i (W_i - W_base) / sum_i w_i   normalize: true
// Weights may be negative (subtracting a task). With normalize, a sum of
// weights below 1e-8 in magnitude is taken as 1, as mergekit does.
//
// Every floating-point element is computed in float64, in this order, so the
// bytes do not depend on the rank count: d_i = x_i - b; acc = w_1 d_1;
// acc += w_i d_i in model order; out = b + s acc with s = lambda (divided by
// the sum of weights when normalising); out rounded once to the output
// dtype (the base's unless --out-dtype). Tensors stream in row blocks, so
// memory does not depend on tensor size or model count (task_vector_merge.hpp).
#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/methods/task_vector_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <cmath>

namespace soupkit {
namespace {

// mergekit leaves a sum of weights this close to 0 undivided.
constexpr double kZeroWeightSum = 1e-8;

const std::byte* bytes_of(const std::vector<double>& v) { return reinterpret_cast<const std::byte*>(v.data()); }

class TaskArithmeticMethod final : public TaskVectorMerge {
 public:
  explicit TaskArithmeticMethod(const MergeInputs& in);

 private:
  nlohmann::json parameters() const override {
    return {{"weights", weights_}, {"lambda", lambda_}, {"normalize", normalize_}};
  }
  std::uint64_t working_values_per_element() const override { return 3; }  // base, task vector, sum
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  std::vector<double> weights_;  // one per model
  double lambda_ = 1;
  bool normalize_ = false;
  double scale_ = 1;  // s: lambda, over the sum of weights when normalising
  std::vector<double> base_, delta_, acc_;  // scratch reused from block to block
};

TaskArithmeticMethod::TaskArithmeticMethod(const MergeInputs& in) : TaskVectorMerge("task_arithmetic", in) {
  lambda_ = in.global.number("lambda");
  normalize_ = in.global.flag("normalize");
  double sum = 0;
  for (std::size_t i = 0; i < in.models.size(); ++i) {
    weights_.push_back(in.per_model.at(i).number("weight"));
    sum += weights_.back();
  }
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(sum), "--weights: the weights {} sum to {}, not a finite number",
                         fmt::join(weights_, ","), sum);
  scale_ = lambda_;
  if (normalize_ && std::abs(sum) < kZeroWeightSum)
    log::warn("task_arithmetic: the weights {} sum to {}: not normalised (as mergekit, a sum this close to 0 counts as 1)",
              fmt::join(weights_, ","), sum);
  else if (normalize_)
    scale_ = lambda_ / sum;
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(scale_), "--lambda {} over the sum of weights {} is not a finite number",
                         lambda_, sum);
  log::info("task_arithmetic: base {} and {} model{}, lambda {}{}", in.base.string(), in.models.size(),
            in.models.size() == 1 ? "" : "s", lambda_, normalize_ ? ", normalised by the sum of weights" : "");
}

// out = b + s sum_i w_i (x_i - b), block by block. Each step is one IEEE
// operation per element through the linalg kernel (compiled without fused
// multiply-add): x_i - b is x_i + (-1) b, exactly.
void TaskArithmeticMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out,
                                        CheckpointWriter& writer) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(0, in, first, count, base_);
    acc_.resize(base_.size());
    for (std::size_t k = 1; k < in.size(); ++k) {
      read_rows(k, in, first, count, delta_);
      linalg::weighted_sum(DType::F64, delta_.data(), -1.0, bytes_of(base_), delta_.size(), linalg::Term::Next);
      linalg::weighted_sum(DType::F64, acc_.data(), weights_[k - 1], bytes_of(delta_), delta_.size(),
                           k == 1 ? linalg::Term::First : linalg::Term::Next);
    }
    linalg::weighted_sum(DType::F64, base_.data(), scale_, bytes_of(acc_), base_.size(), linalg::Term::Next);
    write_rows(index, out, first, count, base_, writer);
  }
}

std::unique_ptr<Method> build(const MergeInputs& in) { return std::make_unique<TaskArithmeticMethod>(in); }

}  // namespace
MergeMethodSpec task_arithmetic_spec() {
  return {
      .name = "task-arithmetic",
      .merge_methods = {"task_arithmetic"},
      .summary = "task arithmetic: add the models' weighted task vectors (W_i - W_base) to the base",
      .needs_base = true,
      .parameters =
          {
              {.name = "weight", .kind = ParameterKind::Number, .default_value = 1.0,
               .help = "weight w_i of each model's task vector (may be negative)", .per_model = true,
               .list_option = "weights"},
              {.name = "lambda", .kind = ParameterKind::Number, .default_value = 1.0,
               .help = "scale of the summed task vectors"},
              {.name = "normalize", .kind = ParameterKind::Bool, .default_value = false,
               .help = "divide the summed task vectors by the sum of the weights"},
          },
      .build = build,
  };
}

}  // namespace soupkit
