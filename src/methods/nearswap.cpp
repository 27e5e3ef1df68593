// mergekit's `nearswap` (nearswap.py; the QuartetAnemoi-70B-t0.0001 recipe):
// the base B pulled towards one other model M where the two are already
// close, element by element:
//   w = clamp(t / max(|B - M|, 1e-6), 0, 1)
//   W = w M + (1 - w) B
// so an element within t of the base's takes M's value, and one further away
// moves towards it by t / |B - M|. `t` is required (no default), global, and
// may be a gradient or a filter like every mergekit parameter. The base is
// required; mergekit merges exactly one model into it ("NearSwap merge
// expects exactly two models, one base and one other"), so more are refused
// naming the tensor; with none, the output is the base.
//
// One pass, float64, in this order: d = B - M; a = |d|; w = t / max(a, 1e-6);
// w = min(max(w, 0), 1); W = w M + (1 - w) B; rounded once to the output
// dtype. (mergekit computes in the tensors' dtype: in bfloat16, 1e-6 and t
// are rounded to it first.)
#include "soupkit/methods/base_model_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <cmath>

namespace soupkit {
namespace {

constexpr double kMinDistance = 1e-6;  // absdiff.clamp(min=1e-6)

class NearswapMethod final : public BaseModelMerge {
 public:
  NearswapMethod(const MergeMethodSpec& spec, const MergeInputs& in) : BaseModelMerge(spec, in) {
    log::info("nearswap: base {} and {} other model{}", in.base_path().string(), in.models.size() - 1,
              in.models.size() == 2 ? "" : "s");
  }

 private:
  // mergekit's arithmetic between the inputs promotes their dtypes (torch).
  DType result_dtype(const Inputs& in, DType dtype) const override { return promoted_dtype(in, dtype); }
  std::uint64_t working_values_per_element() const override { return 2; }  // the base's values (then W), M's
  void check_tensor(const Inputs& in, const TensorParameters& p) const override;
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  std::vector<double> base_, model_;  // scratch reused from block to block
};

void NearswapMethod::check_tensor(const Inputs& in, const TensorParameters& p) const {
  const std::vector<std::size_t> models = others(in);
  SOUPKIT_INPUT_ERROR_IF(models.size() > 1,
                         "nearswap: tensor '{}' comes from {} models besides the base ({} and {}...); nearswap merges "
                         "exactly one model into the base (mergekit: 'NearSwap merge expects exactly two models, one "
                         "base and one other')",
                         in[models[0]]->name, models.size(), model_name(models[0]), model_name(models[1]));
  (void)p;
}

void NearswapMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out,
                                  CheckpointWriter& writer) {
  const std::vector<std::size_t> models = others(in);
  if (models.empty()) return write_base(index, in, out, writer);
  const std::size_t b = base_index().value(), m = models.front();
  const double t = parameters(index).global.number("t");
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_rows(b, in, first, count, base_);
    read_rows(m, in, first, count, model_);
    for (std::size_t j = 0; j < base_.size(); ++j) {
      const double distance = std::max(std::fabs(base_[j] - model_[j]), kMinDistance);
      const double w = std::min(std::max(t / distance, 0.0), 1.0);
      base_[j] = w * model_[j] + (1 - w) * base_[j];
    }
    write_rows(index, out, first, count, base_, writer);
  }
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<NearswapMethod>(spec, in);
}

}  // namespace

MergeMethodSpec nearswap_spec() {
  return {
      .name = "nearswap",
      .merge_methods = {"nearswap"},
      .summary = "nearswap: the base moved towards one model where they are close (by t / |base - model|, at most 1)",
      .base = BaseRole::Required,
      .parameters = {{.name = "t", .kind = ParameterKind::Number, .default_value = std::nullopt,
                      .help = "closeness scale: each element moves min(1, t / max(|base - model|, 1e-6)) of the way "
                              "to the model (t <= 0: the base)"}},
      .build = build,
  };
}

}  // namespace soupkit
