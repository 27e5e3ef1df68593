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
// dtype (the base's unless --out-dtype). Integer, bool and fp8 tensors must
// be identical in the base and every model and are copied. Tensors stream in
// row blocks, so memory does not depend on tensor size or model count.
#include "soupkit/io/cast.hpp"
#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/methods/carried_files.hpp"
#include "soupkit/methods/method_registry.hpp"
#include "soupkit/methods/row_ranges.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

namespace soupkit {
namespace {

// mergekit leaves a sum of weights this close to 0 undivided.
constexpr double kZeroWeightSum = 1e-8;

std::string model_name(std::size_t i, const fs::path& p) { return fmt::format("model {} ({})", i + 1, p.string()); }

// Elements per row of a tensor seen as a matrix (0 for an empty tensor).
std::uint64_t row_elements(const TensorInfo& t) {
  const std::uint64_t rows = row_count(t);
  return rows ? t.numel() / rows : 0;
}

const std::byte* bytes_of(const std::vector<double>& v) { return reinterpret_cast<const std::byte*>(v.data()); }

class TaskArithmeticMethod final : public Method {
 public:
  explicit TaskArithmeticMethod(const MergeInputs& in);
  std::string name() const override { return "task_arithmetic"; }
  MethodPlan plan() override;
  void prepare(const MethodPlan& plan) override;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) override;
  AuxSource aux_contents(std::size_t index) override { return AuxSource::copy_of(*base_, spec_.aux_files.at(index).name); }

 private:
  void open_inputs();
  void check_same_tensors(std::size_t i) const;
  // One output tensor's estimated seconds, peak bytes and input locations:
  // everything planning says about a tensor besides its description.
  void plan_tensor(const TensorInfo& base, const TensorInfo& out, MethodPlan& plan) const;
  // Rows per block: all of a block's buffers within chunk_bytes (one row at least).
  std::uint64_t block_rows(const TensorInfo& out, const std::vector<const TensorInfo*>& in) const;
  // Bytes of those buffers per row.
  static std::uint64_t working_row_bytes(const TensorInfo& out, const std::vector<const TensorInfo*>& in);
  std::vector<const TensorInfo*> inputs_of(const TensorInfo& out) const;  // base first, then each model
  void merge_rows(const std::vector<const TensorInfo*>& in, const TensorInfo& out, std::uint64_t first,
                  std::uint64_t count);
  void copy_identical_rows(const std::vector<const TensorInfo*>& in, std::uint64_t first, std::uint64_t count);

  MergeInputs in_;
  std::vector<double> weights_;  // one per model
  double lambda_ = 1;
  bool normalize_ = false;
  double scale_ = 1;  // s: lambda, over the sum of weights when normalising
  std::unique_ptr<CheckpointReader> base_;
  std::vector<std::unique_ptr<CheckpointReader>> models_;
  OutputSpec spec_;
  // Scratch reused from block to block: one input's raw rows, the base and
  // one task vector widened, the weighted sum, and the output's raw rows.
  std::vector<std::byte> raw_, out_;
  std::vector<double> base64_, delta_, acc_;
};

TaskArithmeticMethod::TaskArithmeticMethod(const MergeInputs& in) : in_(in) {
  SOUPKIT_INPUT_ERROR_IF(in_.models.empty(), "task_arithmetic: at least one model is needed besides the base");
  lambda_ = in_.global.number("lambda");
  normalize_ = in_.global.flag("normalize");
  double sum = 0;
  for (std::size_t i = 0; i < in_.models.size(); ++i) {
    weights_.push_back(in_.per_model.at(i).number("weight"));
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
}

void TaskArithmeticMethod::open_inputs() {
  base_ = open_checkpoint(in_.base);
  models_.clear();
  for (const auto& p : in_.models) models_.push_back(open_checkpoint(p));
}

// Model i must hold exactly the base's tensors, with the same shapes; a
// floating-point tensor may be of another float dtype (all are widened),
// anything else must be of the base's dtype.
void TaskArithmeticMethod::check_same_tensors(std::size_t i) const {
  const std::string base = fmt::format("the base ({})", in_.base.string()), model = model_name(i, in_.models[i]);
  for (const auto& t : models_[i]->tensors())
    SOUPKIT_INPUT_ERROR_IF(!base_->find(t.name), "tensor '{}' is in {} but not in {}", t.name, model, base);
  for (const auto& t : base_->tensors()) {
    const TensorInfo* other = models_[i]->find(t.name);
    SOUPKIT_INPUT_ERROR_IF(!other, "tensor '{}' is in {} but not in {}", t.name, base, model);
    SOUPKIT_INPUT_ERROR_IF(other->shape != t.shape, "tensor '{}' has shape {} in {} but {} in {}", t.name,
                           shape_string(t.shape), base, shape_string(other->shape), model);
    const bool both_float = is_float_arith(t.dtype) && is_float_arith(other->dtype);
    SOUPKIT_INPUT_ERROR_IF(!both_float && other->dtype != t.dtype, "tensor '{}' is {} in {} but {} in {}", t.name,
                           dtype_name(t.dtype), base, dtype_name(other->dtype), model);
  }
}

std::uint64_t TaskArithmeticMethod::working_row_bytes(const TensorInfo& out, const std::vector<const TensorInfo*>& in) {
  std::uint64_t widest = 0;
  for (const auto* t : in) widest = std::max<std::uint64_t>(widest, dtype_size(t->dtype));
  // Merged: one input's raw rows, base, task vector and sum in float64, the
  // output's rows. Copied: the output's rows and one input's.
  const std::uint64_t per_element =
      is_float_arith(in[0]->dtype) ? widest + 3 * sizeof(double) + dtype_size(out.dtype) : 2 * widest;
  return std::max<std::uint64_t>(row_elements(out) * per_element, 1);
}

std::uint64_t TaskArithmeticMethod::block_rows(const TensorInfo& out, const std::vector<const TensorInfo*>& in) const {
  return std::max<std::uint64_t>(1, in_.chunk_bytes / working_row_bytes(out, in));
}

void TaskArithmeticMethod::plan_tensor(const TensorInfo& base, const TensorInfo& out, MethodPlan& plan) const {
  const auto in = inputs_of(out);
  std::uint64_t in_bytes = 0;
  std::vector<std::string> sources;
  for (std::size_t k = 0; k < in.size(); ++k) {
    in_bytes += in[k]->nbytes();
    sources.push_back((k == 0 ? *base_ : *models_[k - 1]).location(*in[k]));
  }
  plan.costs.push_back(static_cast<double>(in_bytes + out.nbytes()) / 1.5e9);
  const std::uint64_t rows = std::min(block_rows(out, in), std::max<std::uint64_t>(row_count(base), 1));
  plan.memory.push_back(static_cast<double>(rows * working_row_bytes(out, in)));
  plan.sources.push_back(std::move(sources));
}

MethodPlan TaskArithmeticMethod::plan() {
  open_inputs();
  for (std::size_t i = 0; i < models_.size(); ++i) {
    std::error_code ec;
    SOUPKIT_INPUT_ERROR_IF(fs::equivalent(in_.base, in_.models[i], ec),
                           "{} is the base model: its task vector is zero, yet its weight would count in the sum of "
                           "weights (mergekit leaves the base out of both); list only the other models",
                           model_name(i, in_.models[i]));
    check_same_tensors(i);
  }
  MethodPlan plan;
  plan.output.metadata = base_->metadata();
  plan.output.shard_size = in_.shard_size;
  plan.output.overwrite = in_.overwrite;
  plan.output.aux_files = carried_files(*base_, in_.output);
  nlohmann::json models = nlohmann::json::array();
  for (const auto& p : in_.models) models.push_back(p.string());
  nlohmann::json params = {{"weights", weights_}, {"lambda", lambda_}, {"normalize", normalize_}};
  if (in_.out_dtype) params["out_dtype"] = dtype_name(*in_.out_dtype);
  plan.output.provenance = {
      {"method", "task_arithmetic"}, {"base", in_.base.string()}, {"models", models}, {"parameters", params}};
  for (const auto& t : base_->tensors()) {
    TensorInfo out = t;
    if (in_.out_dtype && is_float_arith(t.dtype)) out.dtype = *in_.out_dtype;
    plan.output.tensors.push_back(out);
    plan_tensor(t, out, plan);
  }
  log::info("task_arithmetic: base {} and {} model{}, {} tensors each, lambda {}{}", in_.base.string(),
            models_.size(), models_.size() == 1 ? "" : "s", base_->tensors().size(), lambda_,
            normalize_ ? ", normalised by the sum of weights" : "");
  return plan;
}

void TaskArithmeticMethod::prepare(const MethodPlan& plan) {
  if (!base_) open_inputs();
  spec_ = plan.output;
}

std::vector<const TensorInfo*> TaskArithmeticMethod::inputs_of(const TensorInfo& out) const {
  std::vector<const TensorInfo*> in;
  for (std::size_t k = 0; k <= models_.size(); ++k) {
    const CheckpointReader& reader = k == 0 ? *base_ : *models_[k - 1];
    const TensorInfo* t = reader.find(out.name);
    SOUPKIT_ERROR_IF(!t, "{}: tensor '{}' disappeared since planning", reader.path().string(), out.name);
    in.push_back(t);
  }
  return in;
}

nlohmann::json TaskArithmeticMethod::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& want = spec_.tensors.at(index);
  const auto in = inputs_of(want);
  for_each_row_range(row_count(want), block_rows(want, in), [&](std::uint64_t first, std::uint64_t count) {
    out_.resize(count * row_bytes(want));
    if (is_float_arith(in[0]->dtype))
      merge_rows(in, want, first, count);
    else
      copy_identical_rows(in, first, count);
    writer.write_rows(index, first, count, out_);
  });
  return nullptr;
}

// out_ = b + s sum_i w_i (x_i - b) over rows [first, first + count). Each
// step is one IEEE operation per element through the linalg kernel (compiled
// without fused multiply-add): x_i - b is x_i + (-1) b, exactly.
void TaskArithmeticMethod::merge_rows(const std::vector<const TensorInfo*>& in, const TensorInfo& out,
                                      std::uint64_t first, std::uint64_t count) {
  const std::size_t elements = count * row_elements(out);
  base64_.resize(elements);
  delta_.resize(elements);
  acc_.resize(elements);
  for (std::size_t k = 0; k < in.size(); ++k) {
    raw_.resize(count * row_bytes(*in[k]));
    (k == 0 ? *base_ : *models_[k - 1]).read_rows(*in[k], first, count, raw_);
    if (k == 0) {
      load_as_f64(in[0]->dtype, raw_.data(), elements, base64_.data());
      continue;
    }
    load_as_f64(in[k]->dtype, raw_.data(), elements, delta_.data());
    linalg::weighted_sum(DType::F64, delta_.data(), -1.0, bytes_of(base64_), elements, linalg::Term::Next);
    linalg::weighted_sum(DType::F64, acc_.data(), weights_[k - 1], bytes_of(delta_), elements,
                         k == 1 ? linalg::Term::First : linalg::Term::Next);
  }
  linalg::weighted_sum(DType::F64, base64_.data(), scale_, bytes_of(acc_), elements, linalg::Term::Next);
  store_from_f64(out.dtype, base64_.data(), elements, out_.data());
}

// Integer, bool and fp8 tensors cannot be merged: they must be the same
// bytes in the base and every model, and are copied.
void TaskArithmeticMethod::copy_identical_rows(const std::vector<const TensorInfo*>& in, std::uint64_t first,
                                               std::uint64_t count) {
  base_->read_rows(*in[0], first, count, out_);
  for (std::size_t i = 0; i < models_.size(); ++i) {
    raw_.resize(out_.size());
    models_[i]->read_rows(*in[i + 1], first, count, raw_);
    const auto differ = std::mismatch(out_.begin(), out_.end(), raw_.begin()).first;
    if (differ == out_.end()) continue;
    const std::size_t size = dtype_size(in[0]->dtype);
    const std::uint64_t at = (first * row_bytes(*in[0]) + static_cast<std::uint64_t>(differ - out_.begin())) / size;
    throw InputError(fmt::format("tensor '{}' ({}, cannot be merged) differs between the base ({}) and {} at element "
                                 "{}: integer, bool and fp8 tensors must be identical in the base and every model",
                                 in[0]->name, dtype_name(in[0]->dtype), in_.base.string(),
                                 model_name(i, in_.models[i]), at));
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
