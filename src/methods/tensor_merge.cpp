#include "soupkit/methods/tensor_merge.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/methods/merge_output.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace soupkit {
namespace {
// Row blocks hold about this many elements at most (whatever the chunk
// size), so that a block's float64 arrays (input, task vector, mixed
// values, ...) stay in the L2 cache through the several loops a method runs
// over them, instead of streaming each loop through memory. Measured on the
// 3-model TIES benchmark (docs/benchmarks.md).
constexpr std::uint64_t kCacheBlockElements = 32768;
}  // namespace

std::uint64_t row_elements(const TensorInfo& t) {
  const std::uint64_t rows = row_count(t);
  return rows ? t.numel() / rows : 0;
}

std::uint64_t last_axis_elements(const TensorInfo& t) { return t.shape.size() >= 2 ? t.shape.back() : t.numel(); }

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

namespace {

// mergekit's architectures of the Llama family (llama, mistral, qwen2, ...)
// declare the head optional and tied to the input embeddings: a model
// without its own lm_head.weight gives its model.embed_tokens.weight
// (LoadTensor's tied_names), and the output has a head when any model has one.
constexpr std::string_view kHead = "lm_head.weight";
constexpr std::string_view kTiedEmbedding = "model.embed_tokens.weight";

// Model m's tensor that stands for `name`: its own, or for the head its tied embeddings.
const TensorInfo* stand_in(const CheckpointReader& m, std::string_view name) {
  if (const TensorInfo* t = m.find(name)) return t;
  return name == kHead ? m.find(kTiedEmbedding) : nullptr;
}

}  // namespace

// Model i must hold exactly the reference's tensors (a head may stand for
// the other's tied embeddings), with the same shapes; a floating-point
// tensor may be of another float dtype (all are widened), anything else
// must be of the reference's dtype.
void TensorMerge::check_same_tensors(std::size_t i) const {
  const std::size_t r = reference();
  const std::string ref = model_name(r), model = model_name(i);
  for (const auto& t : models_[i]->tensors())
    SOUPKIT_INPUT_ERROR_IF(!stand_in(*models_[r], t.name), "tensor '{}' is in {} but not in {}", t.name, model, ref);
  std::vector<TensorInfo> expected = models_[r]->tensors();
  if (!models_[r]->find(kHead) && models_[i]->find(kHead))
    if (const TensorInfo* tied = models_[r]->find(kTiedEmbedding)) expected.push_back(*tied);
  for (const auto& t : expected) {
    const TensorInfo* other = stand_in(*models_[i], t.name);
    SOUPKIT_INPUT_ERROR_IF(!other, "tensor '{}' is in {} but not in {}", t.name, ref, model);
    SOUPKIT_INPUT_ERROR_IF(other->shape != t.shape, "tensor '{}' has shape {} in {} but {} in {} (as '{}')", t.name,
                           shape_string(t.shape), ref, shape_string(other->shape), model, other->name);
    const bool both_float = is_float_arith(t.dtype) && is_float_arith(other->dtype);
    SOUPKIT_INPUT_ERROR_IF(!both_float && other->dtype != t.dtype, "tensor '{}' is {} in {} but {} in {}", t.name,
                           dtype_name(t.dtype), ref, dtype_name(other->dtype), model);
  }
}

void TensorMerge::resolve_all_parameters() {
  tensor_parameters_.clear();
  for (const auto& source : sources_) {
    if (in_.slices.empty()) {
      tensor_parameters_.push_back(resolve_parameters(spec_entry_.parameters, in_.parameters, source.out.name, source.t));
      continue;
    }
    // A slice's sources have their own parameters, then the slice's, then the global ones.
    const MergeSlice& slice = in_.slices.at(source.slice);
    ParameterSources sources = in_.parameters;
    sources.per_model = slice.source_parameters;
    sources.slice = slice.parameters;
    tensor_parameters_.push_back(
        resolve_parameters(spec_entry_.parameters, sources, source.out.name, source.t, source.names));
  }
}

namespace {

// mergekit's architectures put embeddings before the layers and everything
// else outside them (final norm, head) after; soupkit tells them by name.
bool before_the_layers(std::string_view name) {
  for (const char* word : {"embed", "wte", "wpe", "word_embeddings", "tok_embeddings"})
    if (name.find(word) != std::string_view::npos) return true;
  return false;
}

}  // namespace

void TensorMerge::plan_sources() {
  sources_.clear();
  if (!in_.slices.empty()) return plan_slice_sources();
  const CheckpointReader& ref = *models_[reference()];
  const LayerPositions layers(ref.tensors());
  std::vector<std::size_t> all(model_count());
  for (std::size_t k = 0; k < all.size(); ++k) all[k] = k;
  const auto names_of = [&](std::string_view name) {
    std::vector<std::optional<std::string>> names(model_count());
    for (std::size_t k = 0; k < names.size(); ++k) {
      const TensorInfo* t = stand_in(*models_[k], name);
      SOUPKIT_INPUT_ERROR_IF(!t, "tensor '{}' is not in {}", name, model_name(k));  // (checked when planning)
      names[k] = t->name;
    }
    return names;
  };
  for (const auto& t : ref.tensors()) sources_.push_back({t, names_of(t.name), all, layers.t(t.name), 0});
  // The reference's head is tied (it has none) but another model has one: mergekit writes a head.
  const bool any_head = std::any_of(models_.begin(), models_.end(), [](const auto& m) { return m->find(kHead); });
  if (!ref.find(kHead) && any_head && ref.find(kTiedEmbedding)) {
    TensorInfo head = *ref.find(kTiedEmbedding);
    head.name = std::string(kHead);
    sources_.push_back({head, names_of(kHead), all, 0, 0});
  }
}

// Member k's tensor must exist with the output's shape; a floating-point
// one may be of another float dtype, anything else of the same dtype.
void TensorMerge::check_member(const TensorSource& source, std::size_t k) const {
  const std::string& name = *source.names[k];
  const TensorInfo* t = models_[k]->find(name);
  SOUPKIT_INPUT_ERROR_IF(!t, "tensor '{}' (for the output's '{}') is not in {}", name, source.out.name, model_name(k));
  SOUPKIT_INPUT_ERROR_IF(t->shape != source.out.shape, "tensor '{}' has shape {} in {}, but {} is {}", name,
                         shape_string(t->shape), model_name(k), source.out.name, shape_string(source.out.shape));
  const bool both_float = is_float_arith(t->dtype) && is_float_arith(source.out.dtype);
  SOUPKIT_INPUT_ERROR_IF(!both_float && t->dtype != source.out.dtype, "tensor '{}' is {} in {} but {} in {}", name,
                         dtype_name(t->dtype), model_name(k), dtype_name(source.out.dtype),
                         model_name(source.members.front()));
}

// mergekit's slices: the first slice's first source gives the tensors
// before the layers, the last slice's the ones after; each slice adds its
// layers, layer first + o of every source making output layer j (counted
// over all slices), at t = o / (L - 1) (1 when L = 1).
void TensorMerge::plan_slice_sources() {
  const auto members_of = [&](const MergeSlice& slice) {
    std::vector<std::size_t> members;
    for (std::size_t k = 0; k < slice.ranges.size(); ++k)
      if (slice.ranges[k]) members.push_back(k);
    return members;
  };
  // The one layer stack every source has.
  std::optional<std::string> prefix;
  for (const auto& reader : models_)
    for (const auto& t : reader->tensors())
      if (const auto layer = parse_layer_name(t.name)) {
        SOUPKIT_INPUT_ERROR_IF(prefix && *prefix != layer->prefix,
                               "slices: {} has two layer stacks ('{}' and '{}'); soupkit slices one stack only",
                               reader->path().string(), *prefix, layer->prefix);
        prefix = layer->prefix;
      }
  SOUPKIT_INPUT_ERROR_IF(!prefix, "slices: no model has layers (tensors named like 'model.layers.0.*')");
  const auto outside = [&](const MergeSlice& slice, bool before) {
    const std::vector<std::size_t> members = members_of(slice);
    for (const auto& t : models_[members.front()]->tensors()) {
      if (parse_layer_name(t.name) || before_the_layers(t.name) != before) continue;
      std::vector<std::optional<std::string>> names(model_count());
      for (const std::size_t k : members) names[k] = t.name;
      sources_.push_back({t, names, members, 0, static_cast<std::size_t>(before ? 0 : in_.slices.size() - 1)});
    }
  };
  outside(in_.slices.front(), true);
  std::uint64_t layer_out = 0;
  for (std::size_t s = 0; s < in_.slices.size(); ++s) {
    const MergeSlice& slice = in_.slices[s];
    const std::vector<std::size_t> members = members_of(slice);
    const std::size_t lead = members.front();
    const LayerPositions stacks(models_[lead]->tensors());
    for (const std::size_t k : members) {
      const LayerPositions own(models_[k]->tensors());
      SOUPKIT_INPUT_ERROR_IF(slice.ranges[k]->end > own.layer_count(*prefix),
                             "slices[{}]: layer_range [{}, {}] of {} reaches past its {} layers", s,
                             slice.ranges[k]->first, slice.ranges[k]->end, model_name(k), own.layer_count(*prefix));
    }
    const std::uint64_t length = slice.ranges[lead]->end - slice.ranges[lead]->first;
    for (std::uint64_t o = 0; o < length; ++o, ++layer_out) {
      const double t = length > 1 ? static_cast<double>(o) / static_cast<double>(length - 1) : 1.0;
      const std::uint64_t lead_layer = slice.ranges[lead]->first + o;
      for (const auto& tensor : models_[lead]->tensors()) {
        const auto layer = parse_layer_name(tensor.name);
        if (!layer || layer->prefix != *prefix || layer->index != lead_layer) continue;
        TensorInfo out = tensor;
        out.name = fmt::format("{}{}{}", *prefix, layer_out, layer->suffix);
        std::vector<std::optional<std::string>> names(model_count());
        for (const std::size_t k : members)
          names[k] = fmt::format("{}{}{}", *prefix, slice.ranges[k]->first + o, layer->suffix);
        sources_.push_back({out, names, members, t, s});
      }
    }
  }
  outside(in_.slices.back(), false);
  for (const auto& source : sources_)
    for (const std::size_t k : source.members) check_member(source, k);
}

std::uint64_t TensorMerge::working_row_bytes(const TensorInfo& out, const Inputs& in) const {
  std::uint64_t widest = 0;
  for (const auto* t : in)
    if (t) widest = std::max<std::uint64_t>(widest, dtype_size(t->dtype));
  // Merged: one input's raw rows, the method's float64 values, the output's
  // rows. Copied: the output's rows and one input's.
  const std::uint64_t per_element = is_float_arith(out.dtype)
                                        ? widest + working_values_per_element() * sizeof(double) + dtype_size(out.dtype)
                                        : 2 * widest;
  return std::max<std::uint64_t>(row_elements(out) * per_element, 1);
}

std::uint64_t TensorMerge::block_rows(const TensorInfo& out, const Inputs& in) const {
  const std::uint64_t within_chunk = chunk_bytes_ / working_row_bytes(out, in);
  const std::uint64_t within_cache = kCacheBlockElements / std::max<std::uint64_t>(row_elements(out), 1);
  return std::max<std::uint64_t>(1, std::min(within_chunk, within_cache));
}

MethodPlan TensorMerge::plan(const PlanContext& context) {
  try {
    return plan_tensors(context);
  } catch (const InputError& e) {
    if (in_.job_name.empty()) throw;
    // The parameters, models and their tensors come from the job file: name it.
    throw InputError(fmt::format("{}: {}", in_.job_name, e.what()));
  }
}

MethodPlan TensorMerge::plan_tensors(const PlanContext& context) {
  chunk_bytes_ = context.chunk_bytes;
  open_inputs();
  if (in_.slices.empty())
    for (std::size_t i = 0; i < models_.size(); ++i)
      if (i != reference()) check_same_tensors(i);
  plan_sources();
  MethodPlan plan;
  for (std::size_t index = 0; index < sources_.size(); ++index) {
    TensorInfo out = sources_[index].out;
    if (is_float_arith(out.dtype))
      out.dtype = in_.out_dtype ? *in_.out_dtype : result_dtype(inputs_of(index), in_.compute_dtype.value_or(out.dtype));
    plan.output.tensors.push_back(out);
  }
  resolve_all_parameters();
  nlohmann::json inputs = nlohmann::json::array();
  for (std::size_t i = 0; i < models_.size(); ++i) inputs.push_back(describe_input(in_.models[i], *models_[i]));
  made_files_ = describe_merge_output(spec_entry_, in_, *models_[reference()], inputs, plan.output);
  for (std::size_t index = 0; index < plan.output.tensors.size(); ++index) {
    const TensorInfo& out = plan.output.tensors[index];
    const Inputs in = inputs_of(index);
    std::uint64_t held = 0;
    if (is_float_arith(out.dtype) && out.numel() > 0) {
      check_tensor(in, parameters(index));
      held = held_bytes(in, parameters(index));
    }
    TaskPlan task;
    std::uint64_t in_bytes = 0;
    for (std::size_t k = 0; k < in.size(); ++k) {
      if (!in[k]) continue;
      in_bytes += in[k]->nbytes();
      task.sources.push_back(models_[k]->location(*in[k]));
    }
    const double passes = is_float_arith(out.dtype) ? passes_over_inputs() : 1;
    task.seconds = (passes * static_cast<double>(in_bytes) + static_cast<double>(out.nbytes())) / 1.5e9;
    const std::uint64_t rows = std::min(block_rows(out, in), std::max<std::uint64_t>(row_count(out), 1));
    task.peak_bytes = static_cast<double>(rows * working_row_bytes(out, in) + held);
    if (is_float_arith(out.dtype) && out.numel() > 0) task.peak_bytes += static_cast<double>(statistic_bytes(out));
    plan.tasks.push_back(std::move(task));
  }
  return plan;
}

void TensorMerge::prepare(const MethodPlan& plan) {
  if (models_.empty()) open_inputs();
  spec_ = plan.output;
  chunk_bytes_ = plan.context.chunk_bytes;
  if (sources_.size() != spec_.tensors.size()) {
    plan_sources();
    resolve_all_parameters();
  }
}

TensorMerge::Inputs TensorMerge::inputs_of(std::size_t index) const {
  const TensorSource& source = sources_.at(index);
  Inputs in(model_count(), nullptr);
  for (const std::size_t k : source.members) in[k] = &models_[k]->planned(*source.names[k]);
  return in;
}

AuxSource TensorMerge::aux_contents(std::size_t index) {
  const std::string& name = spec_.aux_files.at(index).name;
  if (const auto it = made_files_.find(name); it != made_files_.end()) return AuxSource::bytes(it->second);
  return AuxSource::copy_of(*models_[reference()], name);
}

nlohmann::json TensorMerge::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& want = spec_.tensors.at(index);
  const Inputs in = inputs_of(index);
  if (is_float_arith(want.dtype) && want.numel() > 0) {
    merge_tensor(index, in, want, writer);
    return nullptr;
  }
  const std::uint64_t rows = row_count(want), step = block_rows(want, in);
  for (std::uint64_t first = 0; first < rows || (rows == 0 && first == 0); first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    out_.resize(count * row_bytes(want));
    if (!is_float_arith(want.dtype)) copy_identical_rows(index, in, first, count);  // (an empty float tensor has no bytes)
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

DType TensorMerge::read_dtype(const Inputs& in, std::size_t k) const {
  return in_.compute_dtype.value_or(in.at(k)->dtype);
}

DType TensorMerge::promoted_dtype(const Inputs& in, DType dtype) const {
  const auto promote = [](DType a, DType b) {
    if (a == b) return a;
    if (a == DType::F64 || b == DType::F64) return DType::F64;
    return DType::F32;  // (float32 with a 16-bit type, or float16 with bfloat16)
  };
  for (std::size_t k = 0; k < in.size(); ++k)
    if (in[k] && is_float_arith(in[k]->dtype)) dtype = promote(dtype, read_dtype(in, k));
  return dtype;
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
void TensorMerge::copy_identical_rows(std::size_t index, const Inputs& in, std::uint64_t first, std::uint64_t count) {
  const std::vector<std::size_t>& from = members(index);
  const std::size_t r = from.front();
  models_[r]->read_rows(*in[r], first, count, out_);
  for (const std::size_t i : from) {
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
