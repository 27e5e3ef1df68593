#pragma once
// `soupkit transplant`: gives a base model a donor model's tokenizer without
// training ("Training-Free Tokenizer Transplantation via Orthogonal Matching
// Pursuit", 2025). Donor tokens the base also has (same text) take the
// base's rows exactly; every other donor token is written by OMP as a sparse
// combination of the shared tokens' donor embeddings, and the same
// coefficients applied to the shared tokens' base rows give its new row.
// The embedding and (unless tied) the output matrix are rebuilt this way by
// all ranks together; the other tensors are copied. See docs/transplant.md.
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/stream_copy.hpp"
#include "soupkit/io/tokenizer.hpp"

#include <map>
#include <optional>

namespace soupkit {

struct TransplantOptions {
  fs::path base;
  fs::path donor;
  fs::path output;
  int k = 64;
  std::int64_t pad_to_multiple_of = 1;
  // Tensor names; empty = found among the usual names.
  std::string embed_name, lm_head_name, donor_embed_name, donor_lm_head_name;
  std::optional<fs::path> report;
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;
};

// One rebuilt matrix: which donor matrix supplies the OMP dictionary and
// targets, which base matrix the shared rows and the rebuild.
struct TransplantRebuild {
  std::string donor_tensor, base_tensor;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TransplantRebuild, donor_tensor, base_tensor)

// What every rank needs of the coordinator's plan.
struct TransplantState {
  std::map<std::size_t, TransplantRebuild> rebuilds;  // by output tensor index
  // Per output row of a rebuilt matrix: base row to copy (>= 0), kApproximate or kZero.
  std::vector<std::int64_t> row_source;
  std::vector<std::int64_t> atoms;  // donor token ids of the dictionary (exact matches), ascending
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TransplantState, rebuilds, row_source, atoms)

class TransplantMethod final : public Method {
 public:
  explicit TransplantMethod(TransplantOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "transplant"; }
  MethodPlan plan(const PlanContext& context) override;
  void prepare(const MethodPlan& plan) override;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) override;
  nlohmann::json compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer) override;
  AuxSource aux_contents(std::size_t index) override;
  void finish(const std::vector<nlohmann::json>& records, double seconds) override;

 private:
  TransplantOptions options_;
  std::unique_ptr<CheckpointReader> base_, donor_;
  OutputSpec spec_;
  std::map<std::size_t, TransplantRebuild> rebuilds_;  // by output tensor index
  std::uint64_t chunk_bytes_ = 0;                      // copies and row reads go by ranges of at most this
  // Per output row of a rebuilt matrix: base row to copy (>= 0), kApproximate or kZero.
  std::vector<std::int64_t> row_source_;
  std::vector<std::int64_t> atoms_;  // donor token ids of the dictionary (exact matches), ascending
  // Coordinator only.
  std::optional<Tokenizer> donor_tokenizer_;
  std::map<std::string, std::string> rewritten_aux_;  // aux file -> new contents
  std::map<std::string, const CheckpointReader*> aux_source_;
  nlohmann::json counts_;
  CopyBuffers buffers_;
};

}  // namespace soupkit
