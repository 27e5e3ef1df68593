// mergekit's GTATask.execute (docs/merge_methods_spec.md), per tensor:
//   d_i = W_i - W_base for every model but the base (none: the base itself);
//   t_i = sparsify(d_i): d_i * keep_i, times sum|d_i| / sum|d_i * keep_i|
//         when rescaling (unless either sum is below 1e-7), or d_i itself
//         when the sparsifier keeps everything (density >= 1);
//   wd_i = w_i t_i;
//   consensus sum:  e = (sum_i wd_i >= 0 ? +1 : -1); a_i = [sign(wd_i) == e];
//                   mixed = sum_i wd_i a_i; divisor = sum_i w_i a_i (1 where 0);
//                   normalize: mixed / divisor; out = b + lambda mixed
//   no consensus:   mixed = sum_i wd_i; divisor = sum_i w_i (1 if |.| < 1e-8);
//                   out = b + s mixed, s = lambda / divisor when normalising,
//                   else lambda;
// rounded once to the output dtype.
//
// Streaming, in up to three phases of passes over row blocks (a tensor is
// never held whole; each is computed by one rank, the same way on any rank
// count, so outputs are byte-identical for any number of ranks):
//   1. each sparsifier's preparation: the exact thresholds of the magnitude
//      methods (linalg::select_top_magnitudes: typically 2, at most 4 passes
//      over base and model per threshold; TIES one threshold, breadcrumbs
//      two), a 1-D tensor's DELLA ranks (1 pass);
//   2. with rescale, one pass over all inputs for every sparsified model's
//      two L1 norms, each a float64 sum in flat element order;
//   3. the merge: one pass over all inputs.
//
// Float64 in this order; the products that are not exact (w t, lambda
// mixed, s mixed) go through linalg::weighted_sum, and this file is compiled
// without fused multiply-add (CMakeLists.txt), so the bytes are the same on
// every machine.
#include "soupkit/methods/generalized_task_arithmetic.hpp"

#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/methods/sign_consensus.hpp"
#include "soupkit/methods/tensor_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <atomic>
#include <cmath>
#include <optional>
#include <type_traits>

namespace soupkit {
namespace {

// mergekit leaves a sum of weights this close to 0 undivided (no consensus).
constexpr double kZeroWeightSum = 1e-8;
// rescaled_masked_tensor's eps: an L1 norm below it leaves the masked delta unscaled.
constexpr double kRescaleEps = 1e-7;

const std::byte* bytes_of(const std::vector<double>& v) { return reinterpret_cast<const std::byte*>(v.data()); }

// One task model's part in one tensor.
struct TaskModel {
  std::size_t model = 0;  // index in MergeInputs::models
  double weight = 0;
  std::unique_ptr<DeltaSparsifier> sparsifier;  // none: the task vector whole
  bool rescale = false;                         // rescale's L1 ratio applies
  std::optional<double> factor;                 // that ratio, once found (none: unscaled)
};

class GtaMethod final : public TensorMerge {
 public:
  GtaMethod(const GtaVariant& variant, const MergeMethodSpec& spec, const MergeInputs& in)
      : TensorMerge(spec, in), variant_(variant), task_models_(non_base_models()) {
    log::info("{}: base {} and {} model{}", variant.merge_method, in.base_path().string(), task_models_.size(),
              task_models_.size() == 1 ? "" : "s");
  }

 private:
  // Base, one task vector, the mixed delta and a keep mask (rounded up to a
  // value); with a consensus, each model's weighted delta; DELLA's ranks.
  std::uint64_t working_values_per_element() const override {
    return 4 + (variant_.consensus == Consensus::Sum ? model_count() : 0) +
           sparsifier_block_values(variant_.sparsification);
  }
  double passes_over_inputs() const override;
  void check_tensor(const Inputs& in, const TensorParameters& p) const override;
  std::uint64_t held_bytes(const Inputs& in, const TensorParameters& p) const override;
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  // Every task model's weight and sparsifier for this tensor (InputError
  // where mergekit would stop).
  std::vector<TaskModel> task_models(const Inputs& in, const TensorParameters& p) const;
  // No consensus: s = lambda, over the sum of weights when normalising.
  double linear_scale(const Inputs& in, const TensorParameters& p) const;
  std::size_t selection_cap() const { return std::max<std::size_t>(chunk_bytes(), linalg::kMinSelectionBytes); }
  // Model m's task vector streamed whole, block by block (for the sparsifiers' preparation).
  linalg::BlockSource task_vector(std::size_t m, const Inputs& in, const TensorInfo& out);
  void find_rescale_factors(std::vector<TaskModel>& models, const Inputs& in, const TensorInfo& out);
  // delta_ = t_i over a block whose task vector delta_ holds, starting at flat element `at`.
  void sparsify_block(TaskModel& model, std::uint64_t at);
  void copy_base(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer);
  // The sign consensus of a block: mixed_ from weighted_.
  void elect(const std::vector<TaskModel>& models, bool normalize, std::size_t size);

  GtaVariant variant_;
  std::vector<std::size_t> task_models_;  // the models but the base
  mutable std::atomic<bool> warned_zero_sum_{false};
  // Scratch reused from block to block.
  std::vector<double> base_, delta_, mixed_;
  std::vector<double> sum_, divisor_;  // the consensus's, per element of a sub-block
  std::vector<std::vector<double>> weighted_;  // per task model (consensus)
  std::vector<std::uint8_t> keep_;
};

double GtaMethod::passes_over_inputs() const {
  double passes = 1;  // the merge
  if (variant_.default_rescale) passes += 1;
  if (variant_.sparsification == Sparsification::Magnitude) passes += 3;  // a selection: typically 2, at most 4
  if (variant_.sparsification == Sparsification::MagnitudeOutliers) passes += 6;  // two selections
  return passes;
}

std::vector<TaskModel> GtaMethod::task_models(const Inputs& in, const TensorParameters& p) const {
  const bool rescale = p.global.flag("rescale");
  std::vector<TaskModel> models;
  for (const std::size_t m : task_models_) {
    const ParameterValues& own = p.per_model[m];
    SparsifyRequest request{.method = variant_.sparsification,
                            .tensor = in[m],
                            .model = model_name(m),
                            .model_index = m,
                            .density = own.number("density"),
                            .gamma = own.has("gamma") ? own.number("gamma") : 0.0,
                            .epsilon = own.has("epsilon") ? own.number("epsilon") : 0.0,
                            .seed = inputs().random_seed};
    TaskModel model;
    model.model = m;
    model.weight = own.number("weight");
    model.sparsifier = make_sparsifier(request);
    model.rescale = rescale && model.sparsifier;
    models.push_back(std::move(model));
  }
  return models;
}

double GtaMethod::linear_scale(const Inputs& in, const TensorParameters& p) const {
  const double lambda = p.global.number("lambda");
  if (!p.global.flag("normalize")) return lambda;
  double sum = 0;
  for (const std::size_t m : task_models_) sum += p.per_model[m].number("weight");
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(sum), "tensor '{}': the weights sum to {}, not a finite number", in[0]->name,
                         sum);
  if (std::abs(sum) < kZeroWeightSum) {
    if (!warned_zero_sum_.exchange(true))
      log::warn("{}: tensor '{}': the weights sum to {}: not normalised (as mergekit, a sum this close to 0 counts as "
                "1; said once)", name(), in[0]->name, sum);
    return lambda;
  }
  const double s = lambda / sum;
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(s), "tensor '{}': lambda {} over the sum of weights {} is not a finite number",
                         in[0]->name, lambda, sum);
  return s;
}

void GtaMethod::check_tensor(const Inputs& in, const TensorParameters& p) const {
  for (const auto& model : task_models(in, p))
    if (variant_.sparsification == Sparsification::MagnitudeOutliers && model.sparsifier &&
        model.sparsifier->keeps_nothing())
      log::warn("tensor '{}', {}: density {} and gamma {} keep no element of its {} (mergekit's slice "
                "indices[n_bot:-n_top] is empty, e.g. when int(gamma x numel) = 0): this model adds nothing to it",
                in[0]->name, model_name(model.model), p.per_model[model.model].number("density"),
                p.per_model[model.model].number("gamma"), in[0]->numel());
  if (variant_.consensus == Consensus::None) (void)linear_scale(in, p);
}

std::uint64_t GtaMethod::held_bytes(const Inputs& in, const TensorParameters& p) const {
  std::uint64_t held = 0;
  for (const auto& model : task_models(in, p))
    if (model.sparsifier) held += sparsifier_held_bytes(variant_.sparsification, *in[model.model], selection_cap());
  return held;
}

linalg::BlockSource GtaMethod::task_vector(std::size_t m, const Inputs& in, const TensorInfo& out) {
  return [this, m, &in, &out](const linalg::BlockConsumer& consume) {
    const std::uint64_t rows = row_count(out), step = block_rows(out, in);
    for (std::uint64_t first = 0; first < rows; first += step) {
      const std::uint64_t count = std::min(step, rows - first);
      read_rows(*base_index(), in, first, count, base_);
      read_task_vector_rows(m, in, first, count, base_, delta_);
      consume(delta_);
    }
  };
}

// mergekit's rescaled_masked_tensor with the L1 norm: before = sum |d|,
// after = sum |d keep| over the whole tensor, each summed in flat order.
void GtaMethod::find_rescale_factors(std::vector<TaskModel>& models, const Inputs& in, const TensorInfo& out) {
  std::vector<double> before(models.size(), 0.0), after(models.size(), 0.0);
  bool any = false;
  for (auto& model : models)
    if (model.rescale) {
      model.sparsifier->begin_pass();
      any = true;
    }
  if (!any) return;
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(*base_index(), in, first, count, base_);
    const std::uint64_t at = first * row_elements(out);
    for (std::size_t i = 0; i < models.size(); ++i) {
      if (!models[i].rescale) continue;
      read_task_vector_rows(models[i].model, in, first, count, base_, delta_);
      keep_.resize(delta_.size());
      models[i].sparsifier->keep_mask(delta_, at, keep_);
      for (std::size_t j = 0; j < delta_.size(); ++j) {
        before[i] += std::abs(delta_[j]);
        after[i] += std::abs(delta_[j] * (keep_[j] ? 1.0 : 0.0));
      }
    }
  }
  for (std::size_t i = 0; i < models.size(); ++i) {
    if (!models[i].rescale) continue;
    models[i].sparsifier->end_pass();
    SOUPKIT_INPUT_ERROR_IF(!std::isfinite(before[i]),
                           "tensor '{}', {}: the L1 norm of the task vector is {}, and rescale divides by norms (mergekit "
                           "would write NaN): set rescale: false",
                           out.name, model_name(models[i].model), before[i]);
    if (before[i] >= kRescaleEps && after[i] >= kRescaleEps) models[i].factor = before[i] / after[i];
  }
}

void GtaMethod::sparsify_block(TaskModel& model, std::uint64_t at) {
  if (!model.sparsifier) return;
  keep_.resize(delta_.size());
  model.sparsifier->keep_mask(delta_, at, keep_);
  for (std::size_t j = 0; j < delta_.size(); ++j) delta_[j] *= keep_[j] ? 1.0 : 0.0;
  if (model.factor)
    for (auto& v : delta_) v *= *model.factor;
}

void GtaMethod::copy_base(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(*base_index(), in, first, count, base_);
    write_rows(index, out, first, count, base_, writer);
  }
}

// Per element j, in this order (so the bytes match the definition's loop):
//   sum = wd_0 + wd_1 + ...; e = elected_sign(sum);
//   a_i = [sign(wd_i) == e]; mixed = sum_i wd_i a_i; divisor = sum_i w_i a_i;
//   divisor 0 -> 1; mixed_j = normalize ? mixed / divisor : mixed.
// Written as branch-free loops over one model at a time, on sub-blocks small
// enough to stay in the L1/L2 cache, so the compiler vectorises them; each
// element's operations and their order are those of the scalar definition.
void GtaMethod::elect(const std::vector<TaskModel>& models, bool normalize, std::size_t size) {
  constexpr std::size_t kSubBlock = 2048;
  const std::size_t n = models.size();
  sum_.resize(std::min(size, kSubBlock));
  divisor_.resize(sum_.size());
  for (std::size_t begin = 0; begin < size; begin += kSubBlock) {
    const std::size_t count = std::min(kSubBlock, size - begin);
    double* sum = sum_.data();
    double* divisor = divisor_.data();
    double* mixed = mixed_.data() + begin;
    const double* w0 = weighted_[0].data() + begin;
    for (std::size_t j = 0; j < count; ++j) sum[j] = w0[j];
    for (std::size_t i = 1; i < n; ++i) {
      const double* wi = weighted_[i].data() + begin;
      for (std::size_t j = 0; j < count; ++j) sum[j] += wi[j];
    }
    // e = elected_sign(sum), kept in sum's place.
    for (std::size_t j = 0; j < count; ++j) sum[j] = sum[j] >= 0 ? 1.0 : -1.0;
    const double* __restrict elected = sum;
    // Model 0 starts the sums (assigned, not added to 0: -0 stays -0).
    const auto vote = [&](std::size_t i, auto first) {
      const double* __restrict wi = weighted_[i].data() + begin;
      double* __restrict mix = mixed;
      double* __restrict div = divisor;
      const double weight = models[i].weight;
      for (std::size_t j = 0; j < count; ++j) {
        // agrees(wd_i, e): wd_i e > 0 (e = +-1, so the product is exact;
        // a zero or NaN never agrees).
        const double agree = wi[j] * elected[j] > 0 ? 1.0 : 0.0;
        const double part = wi[j] * agree, part_weight = weight * agree;  // exact products
        if constexpr (decltype(first)::value) {
          mix[j] = part;
          div[j] = part_weight;
        } else {
          mix[j] += part;
          div[j] += part_weight;
        }
      }
    };
    vote(0, std::true_type{});
    for (std::size_t i = 1; i < n; ++i) vote(i, std::false_type{});
    for (std::size_t j = 0; j < count; ++j) {
      const double d = divisor[j] == 0 ? 1.0 : divisor[j];
      mixed[j] = normalize ? mixed[j] / d : mixed[j];
    }
  }
}

void GtaMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) {
  if (task_models_.empty()) return copy_base(index, in, out, writer);  // mergekit returns the base
  const TensorParameters& p = parameters(index);
  std::vector<TaskModel> models = task_models(in, p);
  for (auto& model : models)
    if (model.sparsifier) model.sparsifier->prepare(task_vector(model.model, in, out), selection_cap());
  find_rescale_factors(models, in, out);
  for (auto& model : models)
    if (model.sparsifier) model.sparsifier->begin_pass();

  const bool consensus = variant_.consensus == Consensus::Sum;
  const bool normalize = p.global.flag("normalize");
  const double scale = consensus ? p.global.number("lambda") : linear_scale(in, p);
  const std::size_t n = models.size();
  weighted_.resize(consensus ? n : 0);
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(*base_index(), in, first, count, base_);
    const std::size_t size = base_.size();
    const std::uint64_t at = first * row_elements(out);
    mixed_.resize(size);
    for (std::size_t i = 0; i < n; ++i) {
      read_task_vector_rows(models[i].model, in, first, count, base_, delta_);
      sparsify_block(models[i], at);
      if (consensus) {
        weighted_[i].resize(size);
        linalg::weighted_sum(DType::F64, weighted_[i].data(), models[i].weight, bytes_of(delta_), size,
                             linalg::Term::First);
      } else {
        linalg::weighted_sum(DType::F64, mixed_.data(), models[i].weight, bytes_of(delta_), size,
                             i == 0 ? linalg::Term::First : linalg::Term::Next);
      }
    }
    if (consensus) elect(models, normalize, size);
    linalg::weighted_sum(DType::F64, base_.data(), scale, bytes_of(mixed_), size, linalg::Term::Next);
    write_rows(index, out, first, count, base_, writer);
  }
  for (auto& model : models)
    if (model.sparsifier) model.sparsifier->end_pass();
}

}  // namespace

std::unique_ptr<Method> make_gta_method(const GtaVariant& variant, const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<GtaMethod>(variant, spec, in);
}

}  // namespace soupkit
