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
#include "soupkit/methods/tensor_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <atomic>
#include <cmath>

namespace soupkit {
namespace {

// mergekit leaves a sum of weights this close to 0 undivided.
constexpr double kZeroWeightSum = 1e-8;

const std::byte* bytes_of(const std::vector<double>& v) { return reinterpret_cast<const std::byte*>(v.data()); }

class TaskArithmeticMethod final : public TensorMerge {
 public:
  TaskArithmeticMethod(const MergeMethodSpec& spec, const MergeInputs& in)
      : TensorMerge(spec, in), task_models_(non_base_models()) {
    log::info("task_arithmetic: base {} and {} model{}", in.base_path().string(), task_models_.size(),
              task_models_.size() == 1 ? "" : "s");
  }

 private:
  std::uint64_t working_values_per_element() const override { return 3; }  // base, task vector, sum
  void check_tensor(const Inputs& in, const TensorParameters& p) const override { (void)scale(in, p); }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;
  // s: lambda, over the sum of weights when normalising.
  double scale(const Inputs& in, const TensorParameters& p) const;

  std::vector<std::size_t> task_models_;     // the models but the base
  mutable std::atomic<bool> warned_zero_sum_{false};
  std::vector<double> base_, delta_, acc_;  // scratch reused from block to block
};

double TaskArithmeticMethod::scale(const Inputs& in, const TensorParameters& p) const {
  const double lambda = p.global.number("lambda");
  if (!p.global.flag("normalize")) return lambda;
  double sum = 0;
  for (const std::size_t m : task_models_) sum += p.per_model[m].number("weight");
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(sum), "tensor '{}': the weights sum to {}, not a finite number", in[0]->name,
                         sum);
  // mergekit leaves a sum this close to 0 undivided.
  if (std::abs(sum) < kZeroWeightSum) {
    if (!warned_zero_sum_.exchange(true))
      log::warn("task_arithmetic: tensor '{}': the weights sum to {}: not normalised (as mergekit, a sum this close to "
                "0 counts as 1; said once)", in[0]->name, sum);
    return lambda;
  }
  const double s = lambda / sum;
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(s), "tensor '{}': lambda {} over the sum of weights {} is not a finite number",
                         in[0]->name, lambda, sum);
  return s;
}

// out = b + s sum_i w_i (x_i - b), block by block. Each step is one IEEE
// operation per element through the linalg kernel (compiled without fused
// multiply-add): x_i - b is x_i + (-1) b, exactly.
void TaskArithmeticMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out,
                                        CheckpointWriter& writer) {
  const TensorParameters& p = parameters(index);
  const double s = scale(in, p);
  const std::size_t base = *base_index();
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(base, in, first, count, base_);
    acc_.assign(base_.size(), 0.0);
    for (std::size_t k = 0; k < task_models_.size(); ++k) {
      const std::size_t m = task_models_[k];
      read_rows(m, in, first, count, delta_);
      linalg::weighted_sum(DType::F64, delta_.data(), -1.0, bytes_of(base_), delta_.size(), linalg::Term::Next);
      linalg::weighted_sum(DType::F64, acc_.data(), p.per_model[m].number("weight"), bytes_of(delta_), delta_.size(),
                           k == 0 ? linalg::Term::First : linalg::Term::Next);
    }
    linalg::weighted_sum(DType::F64, base_.data(), s, bytes_of(acc_), base_.size(), linalg::Term::Next);
    write_rows(index, out, first, count, base_, writer);
  }
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<TaskArithmeticMethod>(spec, in);
}

}  // namespace
MergeMethodSpec task_arithmetic_spec() {
  return {
      .name = "task-arithmetic",
      .merge_methods = {"task_arithmetic"},
      .summary = "task arithmetic: add the models' weighted task vectors (W_i - W_base) to the base",
      .base = BaseRole::Required,
      .parameters =
          {
              {.name = "weight", .kind = ParameterKind::Number, .default_value = std::nullopt,
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
