// A base checkpoint with a PEFT LoRA adapter merged in (BASE+ADAPTER): the
// base's tensors, where each adapted weight reads as
//   W1 = W0 + scale * B A        (B A transposed for fan_in_fan_out)
// computed per row block, and tensors the adapter saves whole
// (modules_to_save, biases) read from the adapter instead. The rounding is
// torch's (W0.double() + scale * (B.double() @ A.double())).to(W0.dtype):
// float64 arithmetic, then float64 -> float32 -> the base's dtype, which is
// how torch converts float64 to bfloat16 and float16 (docs/formats.md).
#include "adapter_config.hpp"
#include "checkpoint_formats.hpp"
#include "model_directory.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

namespace soupkit::detail {
namespace {

constexpr std::string_view kPrefix = "base_model.model.";

// What an adapter tensor's name says: a factor of a module, or a whole tensor.
struct AdapterName {
  enum Kind { FactorA, FactorB, Whole } kind;
  std::string target;  // the base tensor: MODULE.weight, or the whole tensor's name
  std::string module;
};

AdapterName parse_adapter_name(const std::string& name, const fs::path& file) {
  const auto refuse = [&](std::string_view why) {
    throw InputError(fmt::format("{}: tensor '{}': {}", file.string(), printable(name), why));
  };
  if (!name.starts_with(kPrefix)) refuse("not a PEFT adapter tensor name (they start with base_model.model.)");
  std::string rest = name.substr(kPrefix.size());
  for (std::string_view unsupported : {"lora_embedding_A", "lora_embedding_B"})
    if (rest.find(unsupported) != std::string::npos)
      refuse("LoRA on an embedding layer (lora_embedding_A/B) is not supported");
  if (rest.find("lora_magnitude_vector") != std::string::npos) refuse("DoRA (use_dora) is not supported");
  for (const auto& [tag, kind] : {std::pair{".lora_A", AdapterName::FactorA}, std::pair{".lora_B", AdapterName::FactorB}}) {
    const auto at = rest.find(tag);
    if (at == std::string::npos) continue;
    std::string module = rest.substr(0, at);
    std::string tail = rest.substr(at + std::string_view(tag).size());
    if (tail == ".bias" || tail == ".default.bias") refuse("a bias on lora_B (lora_bias) is not supported");
    if (tail != ".weight" && tail != ".default.weight")
      refuse("expected MODULE.lora_A.weight or MODULE.lora_A.default.weight (and lora_B)");
    if (module.empty()) refuse("no module name before lora_A/lora_B");
    return {kind, module + ".weight", module};
  }
  if (rest.find("lora_") != std::string::npos) refuse("an adapter tensor of a kind soupkit does not know");
  return {AdapterName::Whole, rest, {}};
}

std::vector<double> read_as_f64(const CheckpointReader& reader, const TensorInfo& t) {
  const auto raw = reader.read(t);
  std::vector<double> values(t.numel());
  load_as_f64(t.dtype, raw.data(), values.size(), values.data());
  return values;
}

class AdapterReader final : public CheckpointReader {
 public:
  AdapterReader(const fs::path& reference, std::unique_ptr<CheckpointReader> base, const fs::path& adapter_dir)
      : CheckpointReader(reference), base_(std::move(base)) {
    config_ = read_adapter_config(adapter_dir);
    const fs::path weights = adapter_weights_file(adapter_dir);
    adapter_ = open_checkpoint(weights);
    format_ = fmt::format("{} + LoRA adapter", base_->format_name());
    metadata_ = base_->metadata();
    std::map<std::string, Factors> factors;  // by target
    std::map<std::string, const TensorInfo*> whole;
    for (const auto& t : adapter_->tensors()) {
      const AdapterName an = parse_adapter_name(t.name, weights);
      const TensorInfo* target = base_->find(an.target);
      SOUPKIT_INPUT_ERROR_IF(!target, "{}: tensor '{}' maps to '{}', which is not in the base {}", weights.string(),
                             printable(t.name), printable(an.target), base_->path().string());
      SOUPKIT_INPUT_ERROR_IF(!is_float_arith(t.dtype) || !is_float_arith(target->dtype),
                             "{}: tensor '{}' is {} and its base tensor '{}' {}: LoRA needs floating point",
                             weights.string(), printable(t.name), dtype_name(t.dtype), printable(an.target),
                             dtype_name(target->dtype));
      if (an.kind == AdapterName::Whole) {
        SOUPKIT_INPUT_ERROR_IF(t.shape != target->shape, "{}: tensor '{}' has shape {}, but '{}' is {} in the base {}",
                               weights.string(), printable(t.name), shape_string(t.shape), printable(an.target),
                               shape_string(target->shape), base_->path().string());
        whole[an.target] = &t;
        continue;
      }
      Factors& f = factors[an.target];
      f.module = an.module;
      const TensorInfo*& slot = an.kind == AdapterName::FactorA ? f.a : f.b;
      SOUPKIT_INPUT_ERROR_IF(slot, "{}: module '{}' has two lora_{} tensors", weights.string(), printable(an.module),
                             an.kind == AdapterName::FactorA ? 'A' : 'B');
      slot = &t;
    }
    for (auto& [target, f] : factors) check_factors(weights, *base_->find(target), f);
    SOUPKIT_INPUT_ERROR_IF(factors.empty() && whole.empty(), "{}: the adapter holds no tensors", weights.string());
    for (const auto& t : base_->tensors()) {
      Source source;
      TensorInfo info = t;
      if (const auto it = whole.find(t.name); it != whole.end()) {
        source.whole = it->second;
        info.dtype = it->second->dtype;  // a saved module keeps its own dtype
      }
      if (const auto it = factors.find(t.name); it != factors.end()) {
        SOUPKIT_INPUT_ERROR_IF(source.whole, "{}: '{}' is both adapted (lora_A/B) and saved whole", weights.string(),
                               printable(t.name));
        source.factors = it->second;
      }
      sources_.push_back(source);
      add_tensor(std::move(info), reference.string());
    }
  }

  std::string_view format_name() const override { return format_; }

  const CheckpointReader* low_rank_base() const override { return base_.get(); }

  std::optional<LowRankUpdate> low_rank_update(const TensorInfo& t) const override {
    const Source& source = sources_.at(index_of(t));
    if (!source.factors.a) return std::nullopt;
    return load_update(t, source.factors);
  }

  std::uint64_t low_rank_rank(const TensorInfo& t) const override { return sources_.at(index_of(t)).factors.r; }

  bool reads_low_rank_base_unchanged(const TensorInfo& t) const override {
    const Source& source = sources_.at(index_of(t));
    return !source.whole && !source.factors.a;
  }

  void read_rows(const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                 std::span<std::byte> dst) const override {
    const Source& source = sources_.at(index_of(t));
    const TensorInfo& base_tensor = base_->planned(t.name);
    if (source.whole) return adapter_->read_rows(*source.whole, first_row, rows, dst);
    if (!source.factors.a) return base_->read_rows(base_tensor, first_row, rows, dst);
    const std::uint64_t rb = row_bytes(t);
    SOUPKIT_ERROR_IF(first_row + rows > row_count(t) || dst.size() != rows * rb, "{}: tensor '{}': bad row range [{}, {})",
                     path_.string(), t.name, first_row, first_row + rows);
    base_->read_rows(base_tensor, first_row, rows, dst);
    const std::uint64_t n = t.numel() / row_count(t);
    std::lock_guard lock(cache_mutex_);
    if (cached_index_ != index_of(t)) {
      cached_ = load_update(t, source.factors);
      cached_index_ = index_of(t);
    }
    const LowRankUpdate& u = cached_;
    // Row by row, in place in dst: beyond the factors, O(n) scratch. Each
    // element sums its r products in order k = 0..r-1, a row of R at a
    // time (contiguous, so the compiler vectorises over j).
    std::vector<double> w(n), acc(n);
    std::vector<float> out(n);
    for (std::uint64_t i = 0; i < rows; ++i) {
      std::byte* row = dst.data() + i * rb;
      load_as_f64(t.dtype, row, n, w.data());
      const double* left = u.left.data() + (first_row + i) * u.r;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::uint64_t k = 0; k < u.r; ++k) {
        const double l = left[k];
        const double* right = u.right.data() + k * n;
        for (std::uint64_t j = 0; j < n; ++j) acc[j] += l * right[j];
      }
      for (std::uint64_t j = 0; j < n; ++j) out[j] = static_cast<float>(w[j] + u.scale * acc[j]);
      store_from_f32(t.dtype, out.data(), n, row);
    }
  }

  std::string location(const TensorInfo& t) const override {
    const Source& source = sources_.at(index_of(t));
    if (source.whole) return adapter_->location(*source.whole);
    const std::string base = base_->location(base_->planned(t.name));
    if (!source.factors.a) return base;
    return fmt::format("{} + {} x {}", base, adapter_->location(*source.factors.b), adapter_->location(*source.factors.a));
  }

  std::vector<AuxFileInfo> aux_files() const override { return base_->aux_files(); }
  void read_aux_block(const std::string& name, std::uint64_t offset, std::span<std::byte> dst) const override {
    base_->read_aux_block(name, offset, dst);
  }

 private:
  struct Factors {
    std::string module;
    const TensorInfo* a = nullptr;  // [r, in]
    const TensorInfo* b = nullptr;  // [out, r]
    std::uint64_t r = 0;
    double scale = 0;
  };
  struct Source {
    const TensorInfo* whole = nullptr;
    Factors factors;
  };

  // Every shape from the file is checked against the base's before anything
  // is sized by it.
  void check_factors(const fs::path& weights, const TensorInfo& target, Factors& f) const {
    const auto where = fmt::format("{}: module '{}'", weights.string(), printable(f.module));
    SOUPKIT_INPUT_ERROR_IF(!f.a || !f.b, "{}: lora_{} without lora_{}", where, f.a ? 'A' : 'B', f.a ? 'B' : 'A');
    SOUPKIT_INPUT_ERROR_IF(target.shape.size() != 2, "{}: base tensor '{}' has shape {}; LoRA is read for 2-D weights "
                           "(Linear, GPT-2's Conv1D) only", where, printable(target.name), shape_string(target.shape));
    SOUPKIT_INPUT_ERROR_IF(f.a->shape.size() != 2 || f.b->shape.size() != 2,
                           "{}: lora_A {} and lora_B {} must be matrices", where, shape_string(f.a->shape),
                           shape_string(f.b->shape));
    // Linear's weight is [out, in]; Conv1D's (fan_in_fan_out) is [in, out].
    const std::uint64_t out = config_.fan_in_fan_out ? target.shape[1] : target.shape[0];
    const std::uint64_t in = config_.fan_in_fan_out ? target.shape[0] : target.shape[1];
    const std::uint64_t r = f.a->shape[0];
    SOUPKIT_INPUT_ERROR_IF(f.a->shape[1] != in || f.b->shape[0] != out || f.b->shape[1] != r,
                           "{}: lora_A {} and lora_B {} do not fit base tensor '{}' {}{} (expected A [r, {}], B [{}, r])",
                           where, shape_string(f.a->shape), shape_string(f.b->shape), printable(target.name),
                           shape_string(target.shape), config_.fan_in_fan_out ? " with fan_in_fan_out" : "", in, out);
    const AdapterConfig::Scaling s = config_.scaling_for(f.module);
    SOUPKIT_INPUT_ERROR_IF(r != s.r, "{}: lora_A and lora_B have rank {}, but adapter_config.json says r = {}{}", where, r,
                           s.r, s.from_pattern ? " (rank_pattern)" : "");
    config_.check_target(f.module, weights);
    f.r = r;
    f.scale = s.scale;
  }

  LowRankUpdate load_update(const TensorInfo& t, const Factors& f) const {
    LowRankUpdate u;
    u.r = f.r;
    u.scale = f.scale;
    u.m = t.shape[0];
    u.n = t.shape[1];
    const auto a = read_as_f64(*adapter_, *f.a);  // [r, in]
    const auto b = read_as_f64(*adapter_, *f.b);  // [out, r]
    if (!config_.fan_in_fan_out) {
      u.left = b;   // [m = out, r]
      u.right = a;  // [r, n = in]
    } else {      // W is [in, out]: W1 = W0 + scale A^T B^T
      u.left.resize(u.m * u.r);
      u.right.resize(u.r * u.n);
      for (std::uint64_t i = 0; i < u.m; ++i)
        for (std::uint64_t k = 0; k < u.r; ++k) u.left[i * u.r + k] = a[k * u.m + i];
      for (std::uint64_t k = 0; k < u.r; ++k)
        for (std::uint64_t j = 0; j < u.n; ++j) u.right[k * u.n + j] = b[j * u.r + k];
    }
    return u;
  }

  std::unique_ptr<CheckpointReader> base_, adapter_;
  AdapterConfig config_;
  std::string format_;
  std::vector<Source> sources_;  // parallel to tensors_
  // The factors of the tensor read last (row blocks of one tensor come in
  // a row; the factors are O((m + n) r)).
  mutable std::mutex cache_mutex_;
  mutable std::size_t cached_index_ = static_cast<std::size_t>(-1);
  mutable LowRankUpdate cached_;
};

}  // namespace

std::unique_ptr<CheckpointReader> open_adapter_checkpoint(const fs::path& reference, const fs::path& base,
                                                          const fs::path& adapter_dir) {
  return std::make_unique<AdapterReader>(reference, open_checkpoint(base), adapter_dir);
}

}  // namespace soupkit::detail
