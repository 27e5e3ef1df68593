#pragma once
// `soupkit soup uniform`: model soups (Wortsman et al., 2022). Every output
// tensor is the weighted mean of the ingredients' tensors,
//   W = sum_i w_i W_i   (weights normalised to sum to 1),
// accumulated in float64 (or float32) whatever the inputs' dtypes, in
// ingredient order, so the result is the same bytes on any number of ranks.
// Integer, bool and fp8 tensors must be identical in every ingredient and
// are copied. Memory per rank does not depend on the number of ingredients:
// tensors are streamed row range by row range, one ingredient at a time.
#include "soupkit/engine/engine.hpp"

#include <optional>

namespace soupkit {

struct SoupOptions {
  std::vector<fs::path> ingredients;
  // One per ingredient, normalised to sum to 1 (see normalise_weights).
  std::vector<double> weights;
  fs::path output;
  // Config and tokenizer files are copied from this checkpoint (default:
  // the first ingredient).
  std::optional<fs::path> aux_source;
  std::optional<DType> out_dtype;  // floating-point outputs in this dtype instead of the first ingredient's
  DType accumulate = DType::F64;   // F64 or F32 (docs/soups.md: why F64 is the default)
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;
  std::string label = "soup";  // method name in logs and provenance
};

// Uniform weights when `raw` is empty; otherwise checks `raw` (one finite,
// non-negative number per ingredient, a finite positive sum) and divides by
// the sum.
std::vector<double> normalise_weights(const std::vector<double>& raw, std::size_t ingredients);

class SoupMethod final : public Method {
 public:
  explicit SoupMethod(SoupOptions options);
  std::string name() const override { return options_.label; }
  MethodPlan plan(const PlanContext& context) override;
  void prepare(const MethodPlan& plan) override;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) override;
  AuxSource aux_contents(std::size_t index) override;

 private:
  void open_inputs();
  // The same tensor in every ingredient (checked at planning time).
  std::vector<const TensorInfo*> inputs_of(const TensorInfo& out) const;
  void average_rows(const std::vector<const TensorInfo*>& in, const TensorInfo& out, std::uint64_t first,
                    std::uint64_t count);
  void copy_identical_rows(const std::vector<const TensorInfo*>& in, std::uint64_t first, std::uint64_t count);

  SoupOptions options_;
  std::vector<std::unique_ptr<CheckpointReader>> readers_;
  std::unique_ptr<CheckpointReader> aux_reader_;
  OutputSpec spec_;
  std::uint64_t chunk_bytes_ = 0;  // output row ranges (at least one row), so memory is bounded
  // Scratch reused from tensor to tensor: the accumulator and output of one
  // row range, and one ingredient's raw bytes of a cache-sized block.
  std::vector<double> acc64_;
  std::vector<float> acc32_;
  std::vector<std::byte> raw_, out_;
};

}  // namespace soupkit
