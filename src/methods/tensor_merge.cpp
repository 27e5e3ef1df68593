#include "soupkit/methods/tensor_merge.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/methods/merge_output.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace soupkit {

std::uint64_t row_elements(const TensorInfo& t) {
  const std::uint64_t rows = row_count(t);
  return rows ? t.numel() / rows : 0;
}

TensorMerge::TensorMerge(const MergeMethodSpec& spec, const MergeInputs& in)
    : label_(spec.merge_methods.front()), spec_entry_(spec), in_(in) {
  SOUPKIT_INPUT_ERROR_IF(in_.models.empty(), "{}: no model to merge", label_);
  SOUPKIT_INPUT_ERROR_IF(spec.base == BaseRole::Required && !in_.base(), "{}: a base model is needed (base_model, "
                         "--base)", label_);
  SOUPKIT_INPUT_ERROR_IF(spec.base == BaseRole::None && in_.base(), "{}: takes no base model (base_model, --base)",
                         label_);
  SOUPKIT_ERROR_IF(in_.parameters.per_model.size() != in_.models.size() ||
                       in_.parameters.model_names.size() != in_.models.size(),
                   "internal: {}: parameters for {} models, {} given", label_, in_.parameters.per_model.size(),
                   in_.models.size());
}

std::vector<std::size_t> TensorMerge::non_base_models() const {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < model_count(); ++i)
    if (base_index() != i) out.push_back(i);
  return out;
}

void TensorMerge::open_inputs() {
  models_.clear();
  for (const auto& p : in_.models) models_.push_back(open_checkpoint(p));
}

// Model i must hold exactly the reference's tensors, with the same shapes; a
// floating-point tensor may be of another float dtype (all are widened),
// anything else must be of the reference's dtype.
void TensorMerge::check_same_tensors(std::size_t i) const {
  const std::size_t r = reference();
  const std::string ref = model_name(r), model = model_name(i);
  for (const auto& t : models_[i]->tensors())
    SOUPKIT_INPUT_ERROR_IF(!models_[r]->find(t.name), "tensor '{}' is in {} but not in {}", t.name, model, ref);
  for (const auto& t : models_[r]->tensors()) {
    const TensorInfo* other = models_[i]->find(t.name);
    SOUPKIT_INPUT_ERROR_IF(!other, "tensor '{}' is in {} but not in {}", t.name, ref, model);
    SOUPKIT_INPUT_ERROR_IF(other->shape != t.shape, "tensor '{}' has shape {} in {} but {} in {}", t.name,
                           shape_string(t.shape), ref, shape_string(other->shape), model);
    const bool both_float = is_float_arith(t.dtype) && is_float_arith(other->dtype);
    SOUPKIT_INPUT_ERROR_IF(!both_float && other->dtype != t.dtype, "tensor '{}' is {} in {} but {} in {}", t.name,
                           dtype_name(t.dtype), ref, dtype_name(other->dtype), model);
  }
}

void TensorMerge::resolve_all_parameters(const std::vector<TensorInfo>& tensors) {
  const LayerPositions layers(tensors);
  tensor_parameters_.clear();
  for (const auto& t : tensors)
    tensor_parameters_.push_back(resolve_parameters(spec_entry_.parameters, in_.parameters, t.name, layers.t(t.name)));
}

std::uint64_t TensorMerge::working_row_bytes(const TensorInfo& out, const Inputs& in) const {
  std::uint64_t widest = 0;
  for (const auto* t : in) widest = std::max<std::uint64_t>(widest, dtype_size(t->dtype));
  // Merged: one input's raw rows, the method's float64 values, the output's
  // rows. Copied: the output's rows and one input's.
  const std::uint64_t per_element = is_float_arith(in[0]->dtype)
                                        ? widest + working_values_per_element() * sizeof(double) + dtype_size(out.dtype)
                                        : 2 * widest;
  return std::max<std::uint64_t>(row_elements(out) * per_element, 1);
}

std::uint64_t TensorMerge::block_rows(const TensorInfo& out, const Inputs& in) const {
  return std::max<std::uint64_t>(1, chunk_bytes_ / working_row_bytes(out, in));
}

MethodPlan TensorMerge::plan(const PlanContext& context) {
  chunk_bytes_ = context.chunk_bytes;
  open_inputs();
  for (std::size_t i = 0; i < models_.size(); ++i)
    if (i != reference()) check_same_tensors(i);
  const CheckpointReader& ref = *models_[reference()];
  MethodPlan plan;
  for (const auto& t : ref.tensors()) {
    TensorInfo out = t;
    if (is_float_arith(t.dtype)) out.dtype = in_.out_dtype.value_or(in_.compute_dtype.value_or(t.dtype));
    plan.output.tensors.push_back(out);
  }
  resolve_all_parameters(plan.output.tensors);
  made_files_ = describe_merge_output(spec_entry_, in_, ref, plan.output);
  for (std::size_t index = 0; index < plan.output.tensors.size(); ++index) {
    const TensorInfo& out = plan.output.tensors[index];
    const Inputs in = inputs_of(out);
    std::uint64_t held = 0;
    if (is_float_arith(out.dtype) && out.numel() > 0) {
      check_tensor(in, parameters(index));
      held = held_bytes(in, parameters(index));
    }
    TaskPlan task;
    std::uint64_t in_bytes = 0;
    for (std::size_t k = 0; k < in.size(); ++k) {
      in_bytes += in[k]->nbytes();
      task.sources.push_back(models_[k]->location(*in[k]));
    }
    const double passes = is_float_arith(out.dtype) ? passes_over_inputs() : 1;
    task.seconds = (passes * static_cast<double>(in_bytes) + static_cast<double>(out.nbytes())) / 1.5e9;
    const std::uint64_t rows = std::min(block_rows(out, in), std::max<std::uint64_t>(row_count(out), 1));
    task.peak_bytes = static_cast<double>(rows * working_row_bytes(out, in) + held);
    plan.tasks.push_back(std::move(task));
  }
  return plan;
}

void TensorMerge::prepare(const MethodPlan& plan) {
  if (models_.empty()) open_inputs();
  spec_ = plan.output;
  chunk_bytes_ = plan.context.chunk_bytes;
  if (tensor_parameters_.size() != spec_.tensors.size()) resolve_all_parameters(spec_.tensors);
}

TensorMerge::Inputs TensorMerge::inputs_of(const TensorInfo& out) const {
  Inputs in;
  for (const auto& m : models_) in.push_back(&m->planned(out.name));
  return in;
}

AuxSource TensorMerge::aux_contents(std::size_t index) {
  const std::string& name = spec_.aux_files.at(index).name;
  if (const auto it = made_files_.find(name); it != made_files_.end()) return AuxSource::bytes(it->second);
  return AuxSource::copy_of(*models_[reference()], name);
}

nlohmann::json TensorMerge::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& want = spec_.tensors.at(index);
  const Inputs in = inputs_of(want);
  if (is_float_arith(want.dtype) && want.numel() > 0) {
    merge_tensor(index, in, want, writer);
    return nullptr;
  }
  const std::uint64_t rows = row_count(want), step = block_rows(want, in);
  for (std::uint64_t first = 0; first < rows || (rows == 0 && first == 0); first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    out_.resize(count * row_bytes(want));
    if (!is_float_arith(want.dtype)) copy_identical_rows(in, first, count);  // (an empty float tensor has no bytes)
    writer.write_rows(index, first, count, out_);
    if (rows == 0) break;
  }
  return nullptr;
}

void TensorMerge::read_rows(std::size_t k, const Inputs& in, std::uint64_t first, std::uint64_t count,
                            std::vector<double>& dst) {
  const TensorInfo& t = *in.at(k);
  raw_.resize(count * row_bytes(t));
  models_.at(k)->read_rows(t, first, count, raw_);
  dst.resize(count * row_elements(t));
  load_as_f64(t.dtype, raw_.data(), dst.size(), dst.data());
  // mergekit converts every input to `dtype` before merging.
  if (in_.compute_dtype && *in_.compute_dtype != t.dtype && *in_.compute_dtype != DType::F64) {
    raw_.resize(dst.size() * dtype_size(*in_.compute_dtype));
    store_from_f64(*in_.compute_dtype, dst.data(), dst.size(), raw_.data());
    load_as_f64(*in_.compute_dtype, raw_.data(), dst.size(), dst.data());
  }
}

void TensorMerge::read_task_vector_rows(std::size_t k, const Inputs& in, std::uint64_t first, std::uint64_t count,
                                        const std::vector<double>& base, std::vector<double>& dst) {
  read_rows(k, in, first, count, dst);
  SOUPKIT_ERROR_IF(base.size() != dst.size(), "internal: {} base values for {} of '{}'", base.size(), dst.size(),
                   in.at(k)->name);
  for (std::size_t j = 0; j < dst.size(); ++j) dst[j] -= base[j];
}

void TensorMerge::write_rows(std::size_t index, const TensorInfo& out, std::uint64_t first, std::uint64_t count,
                             const std::vector<double>& values, CheckpointWriter& writer) {
  out_.resize(count * row_bytes(out));
  store_from_f64(out.dtype, values.data(), count * row_elements(out), out_.data());
  writer.write_rows(index, first, count, out_);
}

// Integer, bool and fp8 tensors cannot be merged: they must be the same
// bytes in every model, and are copied.
void TensorMerge::copy_identical_rows(const Inputs& in, std::uint64_t first, std::uint64_t count) {
  const std::size_t r = reference();
  models_[r]->read_rows(*in[r], first, count, out_);
  for (std::size_t i = 0; i < models_.size(); ++i) {
    if (i == r) continue;
    raw_.resize(out_.size());
    models_[i]->read_rows(*in[i], first, count, raw_);
    const auto differ = std::mismatch(out_.begin(), out_.end(), raw_.begin()).first;
    if (differ == out_.end()) continue;
    const std::size_t size = dtype_size(in[r]->dtype);
    const std::uint64_t at = (first * row_bytes(*in[r]) + static_cast<std::uint64_t>(differ - out_.begin())) / size;
    throw InputError(fmt::format("tensor '{}' ({}, cannot be merged) differs between {} and {} at element {}: "
                                 "integer, bool and fp8 tensors must be identical in every model",
                                 in[r]->name, dtype_name(in[r]->dtype), model_name(r), model_name(i), at));
  }
}

}  // namespace soupkit
