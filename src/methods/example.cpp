#include "soupkit/methods/example.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"

#include <cmath>
#include <functional>

namespace soupkit {
namespace {

constexpr int kVocab = 512, kHidden = 64, kLayers = 2, kContext = 128, kRank = 4;

// splitmix64: tiny, fast and identical everywhere.
struct Rng {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

std::uint64_t name_seed(std::uint64_t seed, const std::string& name) {
  std::uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::vector<TensorInfo> example_tensors() {
  std::vector<TensorInfo> t;
  auto add = [&](std::string name, DType dtype, Shape shape) { t.push_back({std::move(name), dtype, std::move(shape)}); };
  add("transformer.wte.weight", DType::BF16, {kVocab, kHidden});
  add("transformer.wpe.weight", DType::BF16, {kContext, kHidden});
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = fmt::format("transformer.h.{}.", l);
    add(p + "ln_1.weight", DType::F32, {kHidden});
    add(p + "ln_1.bias", DType::F32, {kHidden});
    add(p + "attn.c_attn.weight", DType::BF16, {kHidden, 3 * kHidden});
    add(p + "attn.c_attn.bias", DType::BF16, {3 * kHidden});
    add(p + "attn.c_proj.weight", DType::F16, {kHidden, kHidden});
    add(p + "attn.bias", DType::BOOL, {1, 1, kContext, kContext});
    add(p + "mlp.c_fc.weight", DType::BF16, {kHidden, 4 * kHidden});
    add(p + "mlp.c_proj.weight", DType::F32, {4 * kHidden, kHidden});
  }
  add("transformer.ln_f.weight", DType::F32, {kHidden});
  add("transformer.patch_embed.weight", DType::F32, {32, 3, 4, 4});  // a convolution kernel
  add("transformer.position_ids", DType::I64, {kContext});
  add("logit_scale", DType::F32, {});
  return t;
}

}  // namespace

MethodPlan ExampleMethod::plan(const PlanContext&) {
  MethodPlan plan;
  plan.output.tensors = example_tensors();
  plan.output.metadata = {{"format", "pt"}};
  plan.output.provenance = {{"method", "example"},
                            {"parameters", {{"seed", options_.seed}, {"finetuned", options_.finetuned}}}};
  plan.output.shard_size = options_.shard_size;
  plan.output.overwrite = options_.overwrite;
  plan.output.aux_files = {{"config.json", config_json().size()}};
  // Each tensor is generated whole (the example is small).
  for (const auto& t : plan.output.tensors) {
    TaskPlan task;
    task.seconds = static_cast<double>(t.nbytes()) / 1e9;
    task.peak_bytes = static_cast<double>(t.nbytes());
    plan.tasks.push_back(std::move(task));
  }
  return plan;
}

nlohmann::json ExampleMethod::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& t = spec_.tensors.at(index);
  std::vector<std::byte> out(t.nbytes());
  generate(t, out);
  writer.write(index, out);
  return nullptr;
}

void ExampleMethod::generate(const TensorInfo& t, std::span<std::byte> out) const {
  const std::size_t n = t.numel();
  if (t.dtype == DType::I64) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t v = static_cast<std::int64_t>(i);
      std::memcpy(out.data() + 8 * i, &v, 8);
    }
    return;
  }
  if (t.dtype == DType::BOOL) {  // causal mask
    for (std::size_t i = 0; i < n; ++i) out[i] = std::byte((i % kContext) <= (i / kContext % kContext) ? 1 : 0);
    return;
  }
  std::vector<double> v(n);
  Rng rng{name_seed(options_.seed, t.name)};
  const bool norm = t.name.find("ln_") != std::string::npos;
  const double scale = t.shape.size() >= 2 ? 1.0 / std::sqrt(static_cast<double>(n / t.shape[0])) : 0.02;
  for (auto& x : v) x = norm ? 1.0 + 0.05 * rng.normal() : scale * rng.normal();
  if (t.shape.empty()) v[0] = 2.6592;
  if (options_.finetuned) {
    // A low-rank update (what fine-tuning mostly learns) plus small noise.
    Rng urng{name_seed(options_.seed + 1, t.name)};
    if (t.shape.size() >= 2) {
      const std::size_t rows = t.shape[0], cols = n / rows;
      std::vector<double> a(rows * kRank), b(cols * kRank);
      for (auto& x : a) x = urng.normal();
      for (auto& x : b) x = urng.normal();
      const double amp = 0.3 * scale / std::sqrt(static_cast<double>(kRank));
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) {
          double s = 0;
          for (int k = 0; k < kRank; ++k) s += a[r * kRank + k] * b[c * kRank + k] / (1.0 + k);
          v[r * cols + c] += amp * s + 0.02 * scale * urng.normal();
        }
    } else {
      for (auto& x : v) x += 0.01 * urng.normal();
    }
  }
  store_from_f64(t.dtype, v.data(), n, out.data());
}

AuxSource ExampleMethod::aux_contents(std::size_t) {
  return AuxSource::bytes(config_json());
}

std::string ExampleMethod::config_json() const {
  return nlohmann::json{{"model_type", "gpt2"},          {"architectures", {"GPT2LMHeadModel"}},
                        {"vocab_size", kVocab},          {"n_embd", kHidden},
                        {"n_layer", kLayers},            {"n_positions", kContext},
                        {"soupkit_example", options_.finetuned ? "finetuned" : "base"}}
             .dump(2) +
         "\n";
}

}  // namespace soupkit
