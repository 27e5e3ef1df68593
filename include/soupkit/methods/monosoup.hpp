#pragma once
// `soupkit monosoup`: MonoSoup ("Model soups need only one ingredient", 2026).
// For each weight matrix, the fine-tuning update dW = W1 - W0 is split by
// SVD into its top-k (high-energy) part and the rest, which are reweighted
// with coefficients taken from the singular spectrum:
//   W = W0 + lambda_high dW_high + lambda_low dW_low.
// See docs/monosoup.md for the exact rules.
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/monosoup_coefficients.hpp"
#include "soupkit/methods/stream_copy.hpp"

#include <algorithm>

#include <optional>

namespace soupkit {

struct MonosoupOptions {
  fs::path base;
  fs::path finetuned;
  fs::path output;
  MonosoupMode mode = MonosoupMode::EffectiveRank;
  double variance_threshold = 0.8;
  double min_rel_update = 1e-6;
  std::optional<fs::path> report;
  bool strict = false;
  std::optional<DType> out_dtype;  // floating-point outputs in this dtype instead of W1's
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;
  // Matrices with min(m, n) >= this go to ScaLAPACK on a grid of all ranks;
  // 0 chooses automatically (see docs/monosoup.md).
  std::int64_t scalapack_min_dim = 0;
  // A LoRA adapter's W1 = W0 + s B A is read as a dense matrix and goes the
  // route of any checkpoint, instead of the low-rank SVD (docs/monosoup.md).
  bool materialise_adapter = false;
};

// What every rank needs of the coordinator's plan: per output tensor, why it
// is kept unchanged (empty: a MonoSoup candidate).
struct MonosoupState {
  std::vector<std::string> kept_reason;
  std::vector<bool> low_rank;  // per output tensor: W1 - W0 is the adapter's s B A (the low-rank route)
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(MonosoupState, kept_reason, low_rank)

class MonosoupMethod final : public Method {
 public:
  explicit MonosoupMethod(MonosoupOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "monosoup"; }
  MethodPlan plan(const PlanContext& context) override;
  void prepare(const MethodPlan& plan) override;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) override;
  nlohmann::json compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer) override;
  AuxSource aux_contents(std::size_t index) override;
  void finish(const std::vector<nlohmann::json>& records, double seconds) override;

 private:
  void explain(const nlohmann::json& summary, const std::vector<const nlohmann::json*>& reweighted) const;
  struct Inputs {
    const TensorInfo& w0;
    const TensorInfo& w1;
    const TensorInfo& out;
    std::int64_t m, n;
  };
  Inputs inputs(std::size_t index) const;
  nlohmann::json compute_low_rank(std::size_t index, CheckpointWriter& writer, nlohmann::json record);
  MonosoupOptions options_;
  std::unique_ptr<CheckpointReader> base_, finetuned_;
  OutputSpec spec_;
  std::uint64_t chunk_bytes_ = 0;  // row ranges of kept tensors (the engine's)
  std::vector<std::string> kept_reason_;  // per output tensor; empty = a MonoSoup candidate
  std::vector<bool> low_rank_;
  // Scratch reused from tensor to tensor (largest first, so they grow once).
  std::vector<std::byte> raw_, out_;
  CopyBuffers copy_buffers_;
  std::vector<double> delta_, base_values_;
};

}  // namespace soupkit
