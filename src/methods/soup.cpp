#include "soupkit/methods/soup.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

namespace soupkit {
namespace {

// Each ingredient is read in blocks of about this many bytes, and each block
// is added into the accumulator while both are still in cache: reading a
// whole row range first and summing it afterwards would pass over memory
// twice per ingredient (docs/benchmarks.md, "Model soups").
constexpr std::uint64_t kBlockBytes = 512 << 10;
// Output row ranges above this gain nothing (docs/soups.md); under a small
// budget the engine's chunk size is smaller.
constexpr std::uint64_t kMaxRangeBytes = 8ull << 20;

void store(DType type, const double* acc, std::size_t n, std::byte* dst) { store_from_f64(type, acc, n, dst); }
void store(DType type, const float* acc, std::size_t n, std::byte* dst) { store_from_f32(type, acc, n, dst); }

// Elements per row of a tensor seen as a matrix (0 for an empty tensor).
std::uint64_t row_elements(const TensorInfo& t) {
  const std::uint64_t rows = row_count(t);
  return rows ? t.numel() / rows : 0;
}

std::string ingredient_name(std::size_t i, const fs::path& p) { return fmt::format("ingredient {} ({})", i + 1, p.string()); }

// The first element at which two raw buffers of `size`-byte elements differ.
std::uint64_t first_difference(const std::byte* a, const std::byte* b, std::uint64_t bytes, std::size_t size) {
  const auto* end = a + bytes;
  const auto* at = std::mismatch(a, end, b).first;
  return static_cast<std::uint64_t>(at - a) / size;
}

}  // namespace

std::vector<double> normalise_weights(const std::vector<double>& raw, std::size_t ingredients) {
  SOUPKIT_INPUT_ERROR_IF(ingredients == 0, "a soup needs at least one ingredient");
  if (raw.empty()) return std::vector<double>(ingredients, 1.0 / static_cast<double>(ingredients));
  SOUPKIT_INPUT_ERROR_IF(raw.size() != ingredients, "--weights: {} weights for {} ingredients", raw.size(), ingredients);
  double sum = 0;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    SOUPKIT_INPUT_ERROR_IF(!std::isfinite(raw[i]) || raw[i] < 0, "--weights: weight {} ({}) is not a finite number >= 0",
                           i + 1, raw[i]);
    sum += raw[i];
  }
  // Finite weights can still sum to inf (1e308,1e308), and x / inf is 0:
  // every normalised weight would be 0 and the soup all zeros.
  SOUPKIT_INPUT_ERROR_IF(!(sum > 0) || !std::isfinite(sum), "--weights: the weights {} sum to {}, not a finite number > 0",
                         fmt::join(raw, ","), sum);
  std::vector<double> w;
  for (double x : raw) {
    w.push_back(x / sum);
    SOUPKIT_INPUT_ERROR_IF(!std::isfinite(w.back()), "--weights: the weights {} do not normalise to finite numbers",
                           fmt::join(raw, ","));
  }
  return w;
}

SoupMethod::SoupMethod(SoupOptions options) : options_(std::move(options)) {
  SOUPKIT_INPUT_ERROR_IF(options_.weights.size() != options_.ingredients.size(),
                         "internal: {} weights for {} ingredients", options_.weights.size(), options_.ingredients.size());
  SOUPKIT_INPUT_ERROR_IF(options_.accumulate != DType::F64 && options_.accumulate != DType::F32,
                         "the accumulator must be F64 or F32, not {}", dtype_name(options_.accumulate));
}

void SoupMethod::open_inputs() {
  readers_.clear();
  for (const auto& p : options_.ingredients) readers_.push_back(open_checkpoint(p));
}

MethodPlan SoupMethod::plan(const PlanContext& context) {
  const std::uint64_t chunk_bytes = std::min(context.chunk_bytes, kMaxRangeBytes);
  SOUPKIT_INPUT_ERROR_IF(options_.ingredients.empty(), "a soup needs at least one ingredient");
  open_inputs();
  const CheckpointReader& first = *readers_[0];
  const auto& ing = options_.ingredients;

  // Every ingredient must hold exactly the first one's tensors, with the same
  // shapes; floating-point tensors may differ in float dtype (they are
  // widened anyway), anything else must have the same dtype.
  for (std::size_t i = 1; i < readers_.size(); ++i) {
    for (const auto& t : readers_[i]->tensors())
      SOUPKIT_INPUT_ERROR_IF(!first.find(t.name), "tensor '{}' is in {} but not in {}", t.name,
                             ingredient_name(i, ing[i]), ingredient_name(0, ing[0]));
    for (const auto& t : first.tensors()) {
      const TensorInfo* other = readers_[i]->find(t.name);
      SOUPKIT_INPUT_ERROR_IF(!other, "tensor '{}' is in {} but not in {}", t.name, ingredient_name(0, ing[0]),
                             ingredient_name(i, ing[i]));
      SOUPKIT_INPUT_ERROR_IF(other->shape != t.shape, "tensor '{}' has shape {} in {} but {} in {}", t.name,
                             shape_string(t.shape), ingredient_name(0, ing[0]), shape_string(other->shape),
                             ingredient_name(i, ing[i]));
      const bool both_float = is_float_arith(t.dtype) && is_float_arith(other->dtype);
      SOUPKIT_INPUT_ERROR_IF(!both_float && other->dtype != t.dtype, "tensor '{}' is {} in {} but {} in {}", t.name,
                             dtype_name(t.dtype), ingredient_name(0, ing[0]), dtype_name(other->dtype),
                             ingredient_name(i, ing[i]));
    }
  }

  MethodPlan plan;
  plan.output.metadata = first.metadata();
  plan.output.shard_size = options_.shard_size;
  plan.output.overwrite = options_.overwrite;
  const fs::path aux_source = options_.aux_source.value_or(ing[0]);
  aux_reader_ = aux_source == ing[0] ? nullptr : open_checkpoint(aux_source);
  plan.output.aux_files = (aux_reader_ ? *aux_reader_ : first).aux_files();
  if (output_kind(options_.output) == OutputKind::SafetensorsFile && !plan.output.aux_files.empty()) {
    log::warn("{}: a single .safetensors file cannot hold {} non-weight file(s) of {} (config, tokenizer); "
              "write to a directory to keep them",
              options_.output.string(), plan.output.aux_files.size(), aux_source.string());
    plan.output.aux_files.clear();
  }
  nlohmann::json sources = nlohmann::json::array();
  for (const auto& p : ing) sources.push_back(p.string());
  nlohmann::json params = {{"weights", options_.weights}, {"accumulate", dtype_name(options_.accumulate)}};
  if (options_.out_dtype) params["out_dtype"] = dtype_name(*options_.out_dtype);
  nlohmann::json inputs = nlohmann::json::array();
  for (std::size_t i = 0; i < ing.size(); ++i) inputs.push_back(describe_input(ing[i], *readers_[i]));
  plan.output.provenance = {
      {"method", options_.label}, {"ingredients", sources}, {"inputs", inputs}, {"parameters", params}};

  const double acc_size = static_cast<double>(dtype_size(options_.accumulate));
  for (const auto& t : first.tensors()) {
    TensorInfo out = t;
    if (options_.out_dtype && is_float_arith(t.dtype)) out.dtype = *options_.out_dtype;
    plan.output.tensors.push_back(out);
    std::uint64_t in_bytes = 0;
    for (const auto& r : readers_) in_bytes += r->find(t.name)->nbytes();
    TaskPlan task;
    task.seconds = static_cast<double>(in_bytes + out.nbytes()) / 1.5e9;
    // One row range of output, and a block of raw input and its accumulator
    // (a row at least), whatever the number of ingredients; tensors that are
    // compared instead hold a second row range.
    const double row = static_cast<double>(row_bytes(out)), elements = static_cast<double>(row_elements(t));
    const double out_chunk = std::min(static_cast<double>(out.nbytes()), std::max(static_cast<double>(chunk_bytes), row));
    const double block = std::max(static_cast<double>(kBlockBytes), elements * 8);
    task.peak_bytes = is_float_arith(t.dtype) ? out_chunk + block * (1 + acc_size / 2) : 2 * out_chunk;
    for (std::size_t i = 0; i < readers_.size(); ++i) task.sources.push_back(readers_[i]->location(*readers_[i]->find(t.name)));
    plan.tasks.push_back(std::move(task));
  }
  log::info("{}: {} ingredient{}, {} tensors each, accumulating in {}", options_.label, ing.size(),
            ing.size() == 1 ? "" : "s", first.tensors().size(), options_.accumulate == DType::F64 ? "float64" : "float32");
  return plan;
}

void SoupMethod::prepare(const MethodPlan& plan) {
  if (readers_.empty()) open_inputs();
  spec_ = plan.output;
  chunk_bytes_ = std::min(plan.context.chunk_bytes, kMaxRangeBytes);
}

std::vector<const TensorInfo*> SoupMethod::inputs_of(const TensorInfo& out) const {
  std::vector<const TensorInfo*> in;
  for (std::size_t i = 0; i < readers_.size(); ++i) {
    in.push_back(&readers_[i]->planned(out.name));
  }
  return in;
}

nlohmann::json SoupMethod::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& want = spec_.tensors.at(index);
  const auto in = inputs_of(want);
  const bool average = is_float_arith(in[0]->dtype);
  // Row ranges of at most chunk_bytes of output, each written at once: few
  // enough writes for HDF5's 4 MiB chunks, small enough to stay in cache.
  const std::uint64_t rows = row_count(want), out_row = row_bytes(want);
  const std::uint64_t step = std::max<std::uint64_t>(1, chunk_bytes_ / std::max<std::uint64_t>(out_row, 1));
  for (std::uint64_t first = 0; first < rows || (rows == 0 && first == 0); first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    out_.resize(count * out_row);
    if (average)
      average_rows(in, want, first, count);
    else
      copy_identical_rows(in, first, count);
    writer.write_rows(index, first, count, out_);
    if (rows == 0) break;
  }
  return nullptr;
}

// out_ = sum_i w_i x_i over rows [first, first + count), block by block so
// that each ingredient's block is summed while it is in cache.
void SoupMethod::average_rows(const std::vector<const TensorInfo*>& in, const TensorInfo& out, std::uint64_t first,
                              std::uint64_t count) {
  const std::uint64_t per_row = row_elements(out);
  std::uint64_t widest = 1;
  for (const auto* t : in) widest = std::max<std::uint64_t>(widest, dtype_size(t->dtype));
  const std::uint64_t block = std::max<std::uint64_t>(1, kBlockBytes / std::max<std::uint64_t>(per_row * widest, 1));
  const bool f64 = options_.accumulate == DType::F64;
  if (f64)
    acc64_.resize(std::max<std::uint64_t>(acc64_.size(), block * per_row));
  else
    acc32_.resize(std::max<std::uint64_t>(acc32_.size(), block * per_row));
  for (std::uint64_t b = 0; b < count; b += block) {
    const std::uint64_t n = std::min(block, count - b), elements = n * per_row;
    for (std::size_t i = 0; i < in.size(); ++i) {
      raw_.resize(n * row_bytes(*in[i]));
      readers_[i]->read_rows(*in[i], first + b, n, raw_);
      // In ingredient order, so the sum does not depend on the rank count.
      const auto term = i == 0 ? linalg::Term::First : linalg::Term::Next;
      if (f64)
        linalg::weighted_sum(in[i]->dtype, acc64_.data(), options_.weights[i], raw_.data(), elements, term);
      else
        linalg::weighted_sum(in[i]->dtype, acc32_.data(), static_cast<float>(options_.weights[i]), raw_.data(),
                             elements, term);
    }
    std::byte* dst = out_.data() + b * row_bytes(out);
    if (f64)
      store(out.dtype, acc64_.data(), elements, dst);
    else
      store(out.dtype, acc32_.data(), elements, dst);
  }
}

// Integer, bool and fp8 tensors cannot be averaged: they must be the same
// bytes in every ingredient, and are copied.
void SoupMethod::copy_identical_rows(const std::vector<const TensorInfo*>& in, std::uint64_t first, std::uint64_t count) {
  readers_[0]->read_rows(*in[0], first, count, out_);
  const std::uint64_t rb = row_bytes(*in[0]);
  for (std::size_t i = 1; i < in.size(); ++i) {
    raw_.resize(count * rb);
    readers_[i]->read_rows(*in[i], first, count, raw_);
    if (std::memcmp(raw_.data(), out_.data(), raw_.size()) == 0) continue;
    const std::size_t size = dtype_size(in[0]->dtype);
    const std::uint64_t at = first * (rb / size) + first_difference(out_.data(), raw_.data(), raw_.size(), size);
    throw InputError(fmt::format("tensor '{}' ({}, cannot be averaged) differs between {} and {} at element {}: "
                                 "integer, bool and fp8 tensors must be identical in every ingredient",
                                 in[0]->name, dtype_name(in[0]->dtype), ingredient_name(0, options_.ingredients[0]),
                                 ingredient_name(i, options_.ingredients[i]), at));
  }
}

AuxSource SoupMethod::aux_contents(std::size_t index) {
  const auto& name = spec_.aux_files.at(index).name;
  if (options_.aux_source && *options_.aux_source != options_.ingredients[0]) {
    if (!aux_reader_) aux_reader_ = open_checkpoint(*options_.aux_source);
    return AuxSource::copy_of(*aux_reader_, name);
  }
  return AuxSource::copy_of(*readers_[0], name);
}

}  // namespace soupkit
