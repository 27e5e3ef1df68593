// mergekit's `linear` (Wortsman et al., 2022, model soups): the weighted
// sum of the models, divided by the sum of the weights when `normalize`
// (the default):
//   W = sum_i w_i W_i              normalize: false
//   W = sum_i w_i W_i / sum_i w_i  normalize: true
// Every model takes part, the base too when base_model is given (mergekit
// adds it to the models; it then needs a weight, from its entry or the
// global parameters, or mergekit fails: soupkit refuses). mergekit divides
// by the sum whatever it is; a sum of 0 would give inf or NaN, which
// soupkit refuses naming the tensor.
//
// Float64, in this order, so the bytes do not depend on the rank count:
// acc = w_1 x_1; acc += w_i x_i in model order (through the linalg kernel,
// without fused multiply-add); acc / sum when normalising; rounded once to
// the output dtype.
#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/methods/tensor_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <cmath>

namespace soupkit {
namespace {

const std::byte* bytes_of(const std::vector<double>& v) { return reinterpret_cast<const std::byte*>(v.data()); }

class LinearMethod final : public TensorMerge {
 public:
  LinearMethod(const MergeMethodSpec& spec, const MergeInputs& in) : TensorMerge(spec, in) {
    log::info("linear: {} model{}", in.models.size(), in.models.size() == 1 ? "" : "s");
  }

 private:
  // mergekit's arithmetic between the inputs promotes their dtypes (torch).
  DType result_dtype(const Inputs& in, DType dtype) const override { return promoted_dtype(in, dtype); }
  std::uint64_t working_values_per_element() const override { return 2; }  // one model's values, the sum
  void check_tensor(const Inputs& in, const TensorParameters& p) const override { (void)divisor(in, p); }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;
  // The sum of the weights when normalising, else 1.
  double divisor(const Inputs& in, const TensorParameters& p) const;

  std::vector<double> values_, acc_;  // scratch reused from block to block
};

double LinearMethod::divisor(const Inputs& in, const TensorParameters& p) const {
  double sum = 0;
  for (std::size_t m = 0; m < model_count(); ++m) {
    SOUPKIT_INPUT_ERROR_IF(!p.per_model[m].has("weight"),
                           "{} has no weight for tensor '{}': linear merges the base model like the others (mergekit "
                           "adds it to the models and fails without its weight); give it one under models or in the "
                           "global parameters",
                           model_name(m), in[0]->name);
    sum += p.per_model[m].number("weight");
  }
  if (!p.global.flag("normalize")) return 1;
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(sum) || sum == 0,
                         "tensor '{}': the weights sum to {}, and normalize divides by it (mergekit would write inf or "
                         "NaN): change the weights or set normalize: false",
                         in[0]->name, sum);
  return sum;
}

void LinearMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) {
  const TensorParameters& p = parameters(index);
  const double sum = divisor(in, p);
  const bool normalize = p.global.flag("normalize");
  const std::uint64_t rows = row_count(out), step = block_rows(out, in);
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    for (std::size_t m = 0; m < model_count(); ++m) {
      read_rows(m, in, first, count, values_);
      acc_.resize(values_.size());
      linalg::weighted_sum(DType::F64, acc_.data(), p.per_model[m].number("weight"), bytes_of(values_), values_.size(),
                           m == 0 ? linalg::Term::First : linalg::Term::Next);
    }
    if (normalize)
      for (auto& v : acc_) v /= sum;
    write_rows(index, out, first, count, acc_, writer);
  }
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<LinearMethod>(spec, in);
}

}  // namespace

MergeMethodSpec linear_spec() {
  return {
      .name = "linear",
      .merge_methods = {"linear"},
      .summary = "linear merge: the weighted sum of the models, over the sum of the weights (normalize)",
      .base = BaseRole::Optional,
      .parameters =
          {
              {.name = "weight", .kind = ParameterKind::Number, .default_value = std::nullopt,
               .help = "weight w_i of each model", .per_model = true, .list_option = "weights"},
              {.name = "normalize", .kind = ParameterKind::Bool, .default_value = true,
               .help = "divide by the sum of the weights"},
          },
      .build = build,
  };
}

}  // namespace soupkit
