#include "soupkit/methods/task_vector_merge.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/methods/carried_files.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace soupkit {

std::uint64_t row_elements(const TensorInfo& t) {
  const std::uint64_t rows = row_count(t);
  return rows ? t.numel() / rows : 0;
}

TaskVectorMerge::TaskVectorMerge(std::string label, const MergeInputs& in) : label_(std::move(label)), in_(in) {
  SOUPKIT_INPUT_ERROR_IF(in_.models.empty(), "{}: at least one model is needed besides the base", label_);
}

std::string TaskVectorMerge::model_name(std::size_t i) const {
  return fmt::format("model {} ({})", i + 1, in_.models.at(i).string());
}

void TaskVectorMerge::open_inputs() {
  base_ = open_checkpoint(in_.base);
  models_.clear();
  for (const auto& p : in_.models) models_.push_back(open_checkpoint(p));
}

// Model i must hold exactly the base's tensors, with the same shapes; a
// floating-point tensor may be of another float dtype (all are widened),
// anything else must be of the base's dtype.
void TaskVectorMerge::check_same_tensors(std::size_t i) const {
  const std::string base = fmt::format("the base ({})", in_.base.string()), model = model_name(i);
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

std::uint64_t TaskVectorMerge::working_row_bytes(const TensorInfo& out, const Inputs& in) const {
  std::uint64_t widest = 0;
  for (const auto* t : in) widest = std::max<std::uint64_t>(widest, dtype_size(t->dtype));
  // Merged: one input's raw rows, the method's float64 values, the output's
  // rows. Copied: the output's rows and one input's.
  const std::uint64_t per_element = is_float_arith(in[0]->dtype)
                                        ? widest + working_values_per_element() * sizeof(double) + dtype_size(out.dtype)
                                        : 2 * widest;
  return std::max<std::uint64_t>(row_elements(out) * per_element, 1);
}

std::uint64_t TaskVectorMerge::block_rows(const TensorInfo& out, const Inputs& in) const {
  return std::max<std::uint64_t>(1, chunk_bytes_ / working_row_bytes(out, in));
}

MethodPlan TaskVectorMerge::plan(const PlanContext& context) {
  chunk_bytes_ = context.chunk_bytes;
  open_inputs();
  for (std::size_t i = 0; i < models_.size(); ++i) {
    std::error_code ec;
    SOUPKIT_INPUT_ERROR_IF(fs::equivalent(in_.base, in_.models[i], ec),
                           "{} is the base model: its task vector is zero, yet its weight would count in the sum of "
                           "weights (mergekit leaves the base out of both); list only the other models",
                           model_name(i));
    check_same_tensors(i);
  }
  MethodPlan plan;
  plan.output.metadata = base_->metadata();
  plan.output.shard_size = in_.shard_size;
  plan.output.overwrite = in_.overwrite;
  plan.output.aux_files = carried_files(*base_, in_.output);
  nlohmann::json models = nlohmann::json::array();
  for (const auto& p : in_.models) models.push_back(p.string());
  nlohmann::json params = parameters();
  if (in_.out_dtype) params["out_dtype"] = dtype_name(*in_.out_dtype);
  plan.output.provenance = {{"method", label_}, {"base", in_.base.string()}, {"models", models}, {"parameters", params}};
  for (const auto& t : base_->tensors()) {
    TensorInfo out = t;
    if (in_.out_dtype && is_float_arith(t.dtype)) out.dtype = *in_.out_dtype;
    plan.output.tensors.push_back(out);
    const Inputs in = inputs_of(out);
    if (is_float_arith(t.dtype) && t.numel() > 0) check_tensor(in);
    TaskPlan task;
    std::uint64_t in_bytes = 0;
    for (std::size_t k = 0; k < in.size(); ++k) {
      in_bytes += in[k]->nbytes();
      task.sources.push_back((k == 0 ? *base_ : *models_[k - 1]).location(*in[k]));
    }
    const double passes = is_float_arith(t.dtype) ? passes_over_inputs() : 1;
    task.seconds = (passes * static_cast<double>(in_bytes) + static_cast<double>(out.nbytes())) / 1.5e9;
    const std::uint64_t rows = std::min(block_rows(out, in), std::max<std::uint64_t>(row_count(t), 1));
    task.peak_bytes = static_cast<double>(rows * working_row_bytes(out, in));
    plan.tasks.push_back(std::move(task));
  }
  return plan;
}

void TaskVectorMerge::prepare(const MethodPlan& plan) {
  if (!base_) open_inputs();
  spec_ = plan.output;
  chunk_bytes_ = plan.context.chunk_bytes;
}

TaskVectorMerge::Inputs TaskVectorMerge::inputs_of(const TensorInfo& out) const {
  Inputs in{&base_->planned(out.name)};
  for (const auto& m : models_) in.push_back(&m->planned(out.name));
  return in;
}

AuxSource TaskVectorMerge::aux_contents(std::size_t index) {
  return AuxSource::copy_of(*base_, spec_.aux_files.at(index).name);
}

nlohmann::json TaskVectorMerge::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& want = spec_.tensors.at(index);
  const Inputs in = inputs_of(want);
  if (is_float_arith(in[0]->dtype) && want.numel() > 0) {
    merge_tensor(index, in, want, writer);
    return nullptr;
  }
  const std::uint64_t rows = row_count(want), step = block_rows(want, in);
  for (std::uint64_t first = 0; first < rows || (rows == 0 && first == 0); first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    out_.resize(count * row_bytes(want));
    if (!is_float_arith(in[0]->dtype)) copy_identical_rows(in, first, count);  // (an empty float tensor has no bytes)
    writer.write_rows(index, first, count, out_);
    if (rows == 0) break;
  }
  return nullptr;
}

void TaskVectorMerge::read_rows(std::size_t k, const Inputs& in, std::uint64_t first, std::uint64_t count,
                                std::vector<double>& dst) {
  const TensorInfo& t = *in.at(k);
  raw_.resize(count * row_bytes(t));
  (k == 0 ? *base_ : *models_[k - 1]).read_rows(t, first, count, raw_);
  dst.resize(count * row_elements(t));
  load_as_f64(t.dtype, raw_.data(), dst.size(), dst.data());
}

void TaskVectorMerge::write_rows(std::size_t index, const TensorInfo& out, std::uint64_t first, std::uint64_t count,
                                 const std::vector<double>& values, CheckpointWriter& writer) {
  out_.resize(count * row_bytes(out));
  store_from_f64(out.dtype, values.data(), count * row_elements(out), out_.data());
  writer.write_rows(index, first, count, out_);
}

// Integer, bool and fp8 tensors cannot be merged: they must be the same
// bytes in the base and every model, and are copied.
void TaskVectorMerge::copy_identical_rows(const Inputs& in, std::uint64_t first, std::uint64_t count) {
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
                                 in[0]->name, dtype_name(in[0]->dtype), in_.base.string(), model_name(i), at));
  }
}

}  // namespace soupkit
