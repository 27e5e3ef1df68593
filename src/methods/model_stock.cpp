// mergekit's `model_stock` (model_stock.py; Jang et al., 2024, "Model
// Stock: All we need is just a few fine-tuned models"): the base W_0 moved
// towards the average of N >= 2 fine-tuned models W_1..W_N by a factor t set
// by the angle between their task vectors d_i = W_i - W_0:
//   cos_ij = clamp(<d_i, d_j> / max(|d_i| |d_j|, 1e-6), -1, 1)   (i < j)
//   cos    = the mean of cos_ij over the N (N - 1) / 2 pairs
//   t      = N cos / (1 + (N - 1) cos)
//   W      = t (W_1 + ... + W_N) / N + (1 - t) W_0
// Over the whole tensor flattened; with `filter_wise` (default false) per
// vector along the last axis instead (each row of a matrix its own t; a
// 1-D or 0-D tensor is one vector). The base is required; mergekit needs at
// least three tensors, the base and two others ("ModelStockMerge requires
// at least 3 models (base plus two+ others)"): one other model is refused;
// with none, the output is the base. mergekit would write inf or NaN where
// 1 + (N - 1) cos = 0 (two exactly opposite task vectors): refused, naming
// the tensor (and the vector).
//
// Passes: filter-wise on a tensor of two dimensions or more, one (each row
// block holds whole vectors). Otherwise the tensor's dot products and norms
// are a whole-tensor statistic: a first pass over base and models, block by
// block, adds up the task vectors' Gram matrix (every <d_i, d_j> and
// |d_i|^2: linalg::GramAccumulator, fed one row at a time, each row's sums
// plain and the rows' compensated, so the same numbers whatever the blocks
// or rank count), and a second applies t. Memory: a row block of each model
// and the base, and one row of the task vectors.
//
// Float64, in mergekit's order: d_i = W_i - W_0; the Gram matrix; |d_i| =
// sqrt(sum d_i^2); cos as above, the mean as the sum over pairs in order
// (0,1), (0,2), ..., (1,2), ... divided by their count; avg = (0 + W_1 +
// ... + W_N) / N; W = t avg + (1 - t) W_0, rounded once to the output dtype.
// (mergekit computes in the tensors' dtype, e.g. bfloat16 norms.)
#include "soupkit/linalg/gram.hpp"
#include "soupkit/methods/base_model_merge.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

namespace soupkit {
namespace {

constexpr double kMinNormProduct = 1e-6;  // norm_product.clamp(min=1e-6)

// The mean of the pairwise cosines cos_ij = clamp(<d_i, d_j> / max(|d_i| |d_j|, 1e-6), -1, 1), i < j,
// from the task vectors' Gram matrix.
double mean_cosine(const linalg::Gram& g) {
  double sum = 0;
  std::size_t pairs = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    for (std::size_t j = i + 1; j < g.size(); ++j, ++pairs) {
      const double norms = std::sqrt(g(i, i)) * std::sqrt(g(j, j));
      sum += std::clamp(g(i, j) / std::max(norms, kMinNormProduct), -1.0, 1.0);
    }
  return sum / static_cast<double>(pairs);
}

class ModelStockMethod final : public BaseModelMerge {
 public:
  ModelStockMethod(const MergeMethodSpec& spec, const MergeInputs& in) : BaseModelMerge(spec, in) {
    log::info("model_stock: base {} and {} other model{}", in.base_path().string(), in.models.size() - 1,
              in.models.size() == 2 ? "" : "s");
  }

 private:
  // The base's values (then the result), each other model's, and one row of their task vectors.
  // mergekit's arithmetic between the inputs promotes their dtypes (torch).
  DType result_dtype(const Inputs& in, DType dtype) const override { return promoted_dtype(in, dtype); }
  std::uint64_t working_values_per_element() const override { return model_count(); }
  double passes_over_inputs() const override { return 2; }
  void check_tensor(const Inputs& in, const TensorParameters& p) const override;
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override;

  // Reads rows [first, first + count) of the base and of every model.
  void read_block(const Inputs& in, const std::vector<std::size_t>& models, std::uint64_t first, std::uint64_t count);
  // Adds elements [begin, begin + length) of the block's task vectors to `gram`.
  void add_task_vectors(linalg::GramAccumulator& gram, std::size_t begin, std::size_t length);
  // t from the task vectors' Gram matrix; InputError naming the tensor (and the vector, filter-wise) where it
  // divides by zero.
  double interpolation(const linalg::Gram& g, const TensorInfo& out, std::optional<std::uint64_t> vector) const;
  // base_[j] = t avg_j + (1 - t) base_[j] over [begin, end).
  void apply(double t, std::size_t begin, std::size_t end);

  std::vector<double> base_;
  std::vector<std::vector<double>> values_, deltas_;  // per model of the tensor
  std::vector<const double*> pieces_;
};

void ModelStockMethod::check_tensor(const Inputs& in, const TensorParameters& p) const {
  const std::vector<std::size_t> models = others(in);
  SOUPKIT_INPUT_ERROR_IF(models.size() == 1,
                         "model_stock: tensor '{}' comes from one model besides the base ({}); model stock needs the "
                         "base and at least two others, from whose task vectors' angle it takes its weight (mergekit: "
                         "'ModelStockMerge requires at least 3 models (base plus two+ others)')",
                         in[models[0]]->name, model_name(models[0]));
  (void)p;
}

void ModelStockMethod::read_block(const Inputs& in, const std::vector<std::size_t>& models, std::uint64_t first,
                                  std::uint64_t count) {
  read_rows(base_index().value(), in, first, count, base_);
  values_.resize(models.size());
  for (std::size_t k = 0; k < models.size(); ++k) read_rows(models[k], in, first, count, values_[k]);
}

void ModelStockMethod::add_task_vectors(linalg::GramAccumulator& gram, std::size_t begin, std::size_t length) {
  deltas_.resize(values_.size());
  pieces_.resize(values_.size());
  for (std::size_t k = 0; k < values_.size(); ++k) {
    deltas_[k].resize(length);
    for (std::size_t j = 0; j < length; ++j) deltas_[k][j] = values_[k][begin + j] - base_[begin + j];
    pieces_[k] = deltas_[k].data();
  }
  gram.add(pieces_.data(), length);
}

double ModelStockMethod::interpolation(const linalg::Gram& g, const TensorInfo& out,
                                       std::optional<std::uint64_t> vector) const {
  const std::size_t n = g.size();
  const double cos = mean_cosine(g);
  const double denominator = 1 + static_cast<double>(n - 1) * cos;
  SOUPKIT_INPUT_ERROR_IF(!std::isfinite(cos) || denominator == 0,
                         "model_stock: {}: the task vectors' mean pairwise cosine is {}, so t = N cos / (1 + (N - 1) "
                         "cos) with N = {} {} (mergekit would write inf or NaN): the models' differences from the base "
                         "cancel out",
                         vector ? fmt::format("tensor '{}', vector {} along its last axis (filter_wise)", out.name,
                                              *vector)
                                : fmt::format("tensor '{}'", out.name),
                         cos, n, std::isfinite(cos) ? "divides by zero" : "is not a number");
  return static_cast<double>(n) * cos / denominator;
}

void ModelStockMethod::apply(double t, std::size_t begin, std::size_t end) {
  const double n = static_cast<double>(values_.size());
  for (std::size_t j = begin; j < end; ++j) {
    double sum = 0;  // Python's sum(): 0 + W_1 + ... + W_N
    for (const auto& v : values_) sum += v[j];
    base_[j] = t * (sum / n) + (1 - t) * base_[j];
  }
}

void ModelStockMethod::merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out,
                                    CheckpointWriter& writer) {
  const std::vector<std::size_t> models = others(in);
  if (models.empty()) return write_base(index, in, out, writer);
  const std::size_t n = models.size();
  const std::uint64_t rows = row_count(out), step = block_rows(out, in), vector = last_axis_elements(out);
  const bool per_vector = parameters(index).global.flag("filter_wise") && out.shape.size() >= 2;
  double t = 0;  // the whole tensor's
  if (!per_vector) {
    // Fed one row at a time: the same sums whatever the row blocks.
    linalg::GramAccumulator whole(n);
    const std::uint64_t row = row_elements(out);
    for (std::uint64_t first = 0; first < rows; first += step) {
      read_block(in, models, first, std::min(step, rows - first));
      for (std::size_t begin = 0; begin < base_.size(); begin += row) add_task_vectors(whole, begin, row);
    }
    t = interpolation(whole.result(), out, std::nullopt);
  }
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    read_block(in, models, first, count);
    if (!per_vector) apply(t, 0, base_.size());
    for (std::size_t begin = 0; per_vector && begin < base_.size(); begin += vector) {
      linalg::GramAccumulator one(n);
      add_task_vectors(one, begin, vector);
      const std::uint64_t at = (first * row_elements(out) + begin) / vector;
      apply(interpolation(one.result(), out, at), begin, begin + vector);
    }
    write_rows(index, out, first, count, base_, writer);
  }
}

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<ModelStockMethod>(spec, in);
}

}  // namespace

MergeMethodSpec model_stock_spec() {
  return {
      .name = "model-stock",
      .merge_methods = {"model_stock"},
      .summary = "Model Stock: the base moved towards the models' average by a factor from their task vectors' angle",
      .base = BaseRole::Required,
      .parameters = {{.name = "filter_wise", .kind = ParameterKind::Bool, .default_value = false,
                      .help = "one factor per vector along the last axis (each row of a matrix) instead of per tensor"}},
      .build = build,
  };
}

}  // namespace soupkit
