// TIES-Merging (Yadav et al., 2023), as mergekit's `ties` defines it
// (docs/merge_methods_spec.md): per model, trim the task vector
// d_i = W_i - W_base to its k_i = int(density_i * numel) largest magnitudes
// over the whole tensor (density >= 1 keeps it whole); elect each element's
// sign by the sum of the weighted trimmed deltas (>= 0 elects +); keep the
// weighted deltas of that sign (a zero never agrees); with normalize (the
// default) divide by the sum of the agreeing models' weights (1 where none
// agree); scale by lambda; add to the base.
//
// Exact and streaming: a tensor is never held whole. The threshold of each
// model's trim is found by linalg::select_top_magnitudes over row blocks of
// its task vector (typically 2 passes over base and model, at most 4; the
// memory it holds is capped at the engine's chunk size), equal magnitudes
// ranked by lower flat index first; a last pass over all inputs, block by
// block in order, trims, elects and averages. So a tensor costs up to
// 1 + 4 x (models with density < 1) reads of the base and one of each model,
// and memory is one row block per model plus the selection's cap, whatever
// the tensor's size; a tensor is computed by one rank, the same way on any
// rank count, so outputs are byte-identical for any number of ranks.
//
// Float64 throughout, in ties_oracle.py's order of operations: d = m - b;
// t = d * keep (0 or 1; d itself for density >= 1); wd = w t; s = sum_i wd_i;
// e = s >= 0 ? 1 : -1; a_i = sign(wd_i) == e; mixed = sum_i wd_i a_i;
// divisor = sum_i w_i a_i (1 if 0); mixed / divisor (normalize); b + lambda
// mixed; rounded once to the output dtype. The products that are not exact
// (w t, lambda mixed) go through the linalg kernel, compiled without fused
// multiply-add. `int8_mask` is accepted: in mergekit it only chooses the
// dtype of the sign masks, which changes no value.
#include "soupkit/linalg/magnitude_select.hpp"
#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/methods/tensor_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <cmath>
#include <optional>

namespace soupkit {
namespace {

const std::byte* bytes_of(const std::vector<double>& v) { return reinterpret_cast<const std::byte*>(v.data()); }

double sign_of(double x) { return x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0; }

class TiesMethod final : public TensorMerge {
 public:
  TiesMethod(const MergeMethodSpec& spec, const MergeInputs& in);

 private:
  // Base, one task vector, each model's weighted trimmed delta, the mixed
  // delta, and (rounded up to a value) a block's keep mask.
  std::uint64_t working_values_per_element() const override { return model_count() + 4; }
  double passes_over_inputs() const override { return 4; }
  void check_tensor(const Inputs& in, const TensorParameters& p) const override { (void)keep_counts(in, p); }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  // k_i per task model (non_base_models order) for this tensor (numel when
  // density >= 1); InputError naming tensor and model when a density is
  // negative or keeps nothing.
  std::vector<std::int64_t> keep_counts(const Inputs& in, const TensorParameters& p) const;
  // Model m's trim of this tensor: its task vector streamed as many times
  // as the selection needs.
  linalg::MagnitudeSelection select(std::size_t m, const Inputs& in, const TensorInfo& out, std::int64_t keep);
  // delta_ = model m's task vector over rows [first, first + count); base_ must hold the base's rows.
  void read_task_vector(std::size_t m, const Inputs& in, std::uint64_t first, std::uint64_t count);

  std::vector<std::size_t> task_models_;  // the models but the base
  // Scratch reused from block to block.
  std::vector<double> base_, delta_, mixed_;
  std::vector<std::vector<double>> weighted_;  // per model
  std::vector<std::uint8_t> keep_;
};

TiesMethod::TiesMethod(const MergeMethodSpec& spec, const MergeInputs& in)
    : TensorMerge(spec, in), task_models_(non_base_models()) {
  log::info("ties: base {} and {} model{}", in.base_path().string(), task_models_.size(),
            task_models_.size() == 1 ? "" : "s");
}

std::vector<std::int64_t> TiesMethod::keep_counts(const Inputs& in, const TensorParameters& p) const {
  const auto numel = static_cast<std::int64_t>(in[0]->numel());
  std::vector<std::int64_t> keep;
  for (const std::size_t m : task_models_) {
    const double density = p.per_model[m].number("density");
    SOUPKIT_INPUT_ERROR_IF(!(density >= 0), "tensor '{}': density {} of {} is not a number >= 0", in[0]->name, density,
                           model_name(m));
    keep.push_back(linalg::keep_count_for_density(density, numel));
    SOUPKIT_INPUT_ERROR_IF(keep.back() == 0,
                           "tensor '{}': density {} of {} keeps no element of its {} (int(density x {}) = 0; mergekit "
                           "stops here too): raise the density (a filter can set it for this tensor alone)",
                           in[0]->name, density, model_name(m), numel, numel);
  }
  return keep;
}

void TiesMethod::read_task_vector(std::size_t m, const Inputs& in, std::uint64_t first, std::uint64_t count) {
  read_rows(m, in, first, count, delta_);
  for (std::size_t j = 0; j < delta_.size(); ++j) delta_[j] -= base_[j];
}

linalg::MagnitudeSelection TiesMethod::select(std::size_t m, const Inputs& in, const TensorInfo& out,
                                              std::int64_t keep) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  const linalg::BlockSource task_vector = [&](const linalg::BlockConsumer& consume) {
    for (std::uint64_t first = 0; first < rows; first += step) {
      const std::uint64_t count = std::min(step, rows - first);
      read_rows(*base_index(), in, first, count, base_);
      read_task_vector(m, in, first, count);
      consume(delta_);
    }
  };
  const auto numel = static_cast<std::int64_t>(out.numel());
  const std::size_t cap = std::max<std::size_t>(chunk_bytes(), linalg::kMinSelectionBytes);
  try {
    return linalg::select_top_magnitudes(task_vector, numel, keep, cap);
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: task vector of {} minus the base: {}", model_name(m), out.name, e.what()));
  }
}

void TiesMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) {
  const std::size_t n = task_models_.size();
  const TensorParameters& p = parameters(index);
  const std::vector<std::int64_t> keep = keep_counts(in, p);
  std::vector<double> weights;
  for (const std::size_t m : task_models_) weights.push_back(p.per_model[m].number("weight"));
  const double lambda = p.global.number("lambda");
  const bool normalize = p.global.flag("normalize");
  const auto numel = static_cast<std::int64_t>(out.numel());
  std::vector<std::optional<linalg::MagnitudeTrim>> trims(n);
  for (std::size_t i = 0; i < n; ++i)
    if (keep[i] < numel) trims[i].emplace(select(task_models_[i], in, out, keep[i]));
  weighted_.resize(n);
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(*base_index(), in, first, count, base_);
    const std::size_t m = base_.size();
    const auto at = static_cast<std::int64_t>(first * row_elements(out));
    for (std::size_t i = 0; i < n; ++i) {
      read_task_vector(task_models_[i], in, first, count);
      if (trims[i]) {
        keep_.resize(m);
        trims[i]->keep_mask(delta_, at, keep_);
        for (std::size_t j = 0; j < m; ++j) delta_[j] *= keep_[j] ? 1.0 : 0.0;
      }
      weighted_[i].resize(m);
      linalg::weighted_sum(DType::F64, weighted_[i].data(), weights[i], bytes_of(delta_), m, linalg::Term::First);
    }
    mixed_.resize(m);
    for (std::size_t j = 0; j < m; ++j) {
      double sum = weighted_[0][j];
      for (std::size_t i = 1; i < n; ++i) sum += weighted_[i][j];
      const double elected = sum >= 0 ? 1.0 : -1.0;
      double mixed = 0, divisor = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const double agree = sign_of(weighted_[i][j]) == elected ? 1.0 : 0.0;
        const double part = weighted_[i][j] * agree, weight = weights[i] * agree;  // exact products
        mixed = i == 0 ? part : mixed + part;
        divisor = i == 0 ? weight : divisor + weight;
      }
      if (divisor == 0) divisor = 1;
      mixed_[j] = normalize ? mixed / divisor : mixed;
    }
    linalg::weighted_sum(DType::F64, base_.data(), lambda, bytes_of(mixed_), m, linalg::Term::Next);
    write_rows(index, out, first, count, base_, writer);
  }
  for (auto& trim : trims)
    if (trim) trim->finish();
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<TiesMethod>(spec, in);
}

}  // namespace

MergeMethodSpec ties_spec() {
  return {
      .name = "ties",
      .merge_methods = {"ties"},
      .summary = "TIES-Merging: trim each task vector to its largest magnitudes, elect signs, average the agreeing",
      .base = BaseRole::Required,
      .parameters =
          {
              {.name = "weight", .kind = ParameterKind::Number, .default_value = std::nullopt,
               .help = "weight w_i of each model's task vector (may be negative)", .per_model = true,
               .list_option = "weights"},
              {.name = "density", .kind = ParameterKind::Number, .default_value = 1.0,
               .help = "fraction of each task vector's elements kept, by magnitude (1: all)", .per_model = true,
               .list_option = "densities"},
              {.name = "lambda", .kind = ParameterKind::Number, .default_value = 1.0,
               .help = "scale of the merged task vector"},
              {.name = "normalize", .kind = ParameterKind::Bool, .default_value = true,
               .help = "divide by the sum of the agreeing models' weights (the disjoint mean)"},
              {.name = "int8_mask", .kind = ParameterKind::Bool, .default_value = false,
               .help = "accepted for mergekit configs: it only sets the dtype of mergekit's masks, no value changes"},
          },
      .build = build,
  };
}

}  // namespace soupkit
