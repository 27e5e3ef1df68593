#pragma once
// `soupkit example`: generates the built-in example, a small GPT-2-shaped
// model pair (a "base" and a "finetuned" model directory) with every kind of
// tensor soupkit handles: bf16/f16/f32 matrices, a 4-D convolution, 1-D
// norms, a 0-d scalar, int64 and bool buffers. Values are pseudo-random but
// fixed by the seed, so the example is the same on every machine.
#include "soupkit/engine/engine.hpp"

namespace soupkit {

struct ExampleOptions {
  std::uint64_t seed = 2026;
  bool finetuned = false;     // base + a low-rank update + noise
  std::uint64_t shard_size = 64 * 1024;  // small, so the example is sharded
  bool overwrite = false;
};

class ExampleMethod final : public Method {
 public:
  explicit ExampleMethod(ExampleOptions options) : options_(options) {}
  std::string name() const override { return options_.finetuned ? "example (finetuned)" : "example (base)"; }
  MethodPlan plan(const PlanContext& context) override;
  void prepare(const MethodPlan& plan) override { spec_ = plan.output; }
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) override;
  AuxSource aux_contents(std::size_t index) override;

 private:
  std::string config_json() const;
  void generate(const TensorInfo& t, std::span<std::byte> out) const;
  ExampleOptions options_;
  OutputSpec spec_;
};

}  // namespace soupkit
