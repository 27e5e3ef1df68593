#pragma once
// `soupkit convert`: any checkpoint format to any other, bit-exact for
// unchanged dtypes, optionally casting floating-point tensors.
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/stream_copy.hpp"

#include <optional>

namespace soupkit {

struct ConvertOptions {
  fs::path input;
  fs::path output;
  std::optional<DType> dtype;  // cast floating-point tensors to this
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;
};

class ConvertMethod final : public Method {
 public:
  explicit ConvertMethod(ConvertOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "convert"; }
  MethodPlan plan(const PlanContext& context) override;
  void prepare(const MethodPlan& plan) override;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) override;
  AuxSource aux_contents(std::size_t index) override;

 private:
  ConvertOptions options_;
  std::unique_ptr<CheckpointReader> reader_;
  OutputSpec spec_;
  std::uint64_t chunk_bytes_ = 0;  // the engine's (PlanContext)
  CopyBuffers buffers_;
};

}  // namespace soupkit
