#include "soupkit/methods/delta_sparsifier.hpp"

#include "soupkit/linalg/counter_random.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <optional>
#include <vector>

namespace soupkit {
namespace {

constexpr std::uint64_t kMagnitudeMask = 0x7FFF'FFFF'FFFF'FFFFull;
constexpr std::uint64_t kInfinityBits = 0x7FF0'0000'0000'0000ull;

std::string where(const SparsifyRequest& r) { return fmt::format("tensor '{}', {}", r.tensor->name, r.model); }

// --- Magnitude selections (Magnitude, MagnitudeOutliers) -------------------

// Selects the `keep` largest magnitudes exactly, then masks pass after pass.
class TopMagnitudes {
 public:
  TopMagnitudes(const SparsifyRequest& r, std::int64_t keep) : request_(r), keep_(keep) {}

  void select(const linalg::BlockSource& task_vector, std::size_t max_bytes) {
    const auto count = static_cast<std::int64_t>(request_.tensor->numel());
    try {
      selection_ = linalg::select_top_magnitudes(task_vector, count, keep_, max_bytes);
    } catch (const InputError& e) {
      throw InputError(fmt::format("{}: task vector minus the base: {}", where(request_), e.what()));
    }
  }
  void begin_pass() { trim_.emplace(selection_); }
  void keep_mask(std::span<const double> delta, std::uint64_t first, std::span<std::uint8_t> mask) {
    try {
      trim_->keep_mask(delta, static_cast<std::int64_t>(first), mask);
    } catch (const InputError& e) {
      throw InputError(fmt::format("{}: task vector minus the base: {}", where(request_), e.what()));
    }
  }
  void end_pass() { trim_->finish(); }

 private:
  const SparsifyRequest& request_;
  std::int64_t keep_;
  linalg::MagnitudeSelection selection_;
  std::optional<linalg::MagnitudeTrim> trim_;
};

// TIES: the k largest magnitudes.
class MagnitudeSparsifier final : public DeltaSparsifier {
 public:
  MagnitudeSparsifier(const SparsifyRequest& r, std::int64_t keep) : request_(r), top_(request_, keep) {}
  void prepare(const linalg::BlockSource& task_vector, std::size_t max_bytes) override {
    top_.select(task_vector, max_bytes);
  }
  void begin_pass() override { top_.begin_pass(); }
  void keep_mask(std::span<const double> delta, std::uint64_t first, std::span<std::uint8_t> mask) override {
    top_.keep_mask(delta, first, mask);
  }
  void end_pass() override { top_.end_pass(); }

 private:
  SparsifyRequest request_;
  TopMagnitudes top_;
};

// Breadcrumbs: of the descending magnitude order, ranks [inner, outer)
// (the `outer` largest but not the `inner` largest); either bound may be
// trivial (inner 0, outer N), then it needs no selection.
class MagnitudeBandSparsifier final : public DeltaSparsifier {
 public:
  MagnitudeBandSparsifier(const SparsifyRequest& r, std::int64_t inner, std::int64_t outer) : request_(r) {
    const auto count = static_cast<std::int64_t>(r.tensor->numel());
    if (outer < count) outer_.emplace(request_, outer);
    if (inner > 0) inner_.emplace(request_, inner);
  }
  void prepare(const linalg::BlockSource& task_vector, std::size_t max_bytes) override {
    if (outer_) outer_->select(task_vector, max_bytes);
    if (inner_) inner_->select(task_vector, max_bytes);
  }
  void begin_pass() override {
    if (outer_) outer_->begin_pass();
    if (inner_) inner_->begin_pass();
  }
  void keep_mask(std::span<const double> delta, std::uint64_t first, std::span<std::uint8_t> mask) override {
    if (outer_) {
      outer_->keep_mask(delta, first, mask);
    } else {
      std::fill(mask.begin(), mask.end(), std::uint8_t{1});
    }
    if (!inner_) return;
    top_.resize(mask.size());
    inner_->keep_mask(delta, first, top_);
    for (std::size_t j = 0; j < mask.size(); ++j) mask[j] = mask[j] && !top_[j];
  }
  void end_pass() override {
    if (outer_) outer_->end_pass();
    if (inner_) inner_->end_pass();
  }

 private:
  SparsifyRequest request_;
  std::optional<TopMagnitudes> outer_, inner_;
  std::vector<std::uint8_t> top_;
};

// The kept positions of mergekit's magnitude_outliers as ascending
// positions [lo, hi): its integer arithmetic, then Python's slice
// indices[n_bot:-n_top] (a negative stop counts from the end, clamped to
// [0, N]; a stop of -0 is 0, so n_top = 0 keeps nothing).
struct AscendingBand {
  std::int64_t lo = 0, hi = 0;
};

__int128 python_int(double x, const SparsifyRequest& r, const char* parameter) {
  // int() of a double truncates toward zero; |x| < 2^100 is exact in 128 bits.
  SOUPKIT_INPUT_ERROR_IF(!(std::abs(x) < 0x1p100), "{}: {} x numel = {} is out of range", where(r), parameter, x);
  return static_cast<__int128>(std::trunc(x));
}

AscendingBand outlier_band(const SparsifyRequest& r) {
  const auto n = static_cast<__int128>(r.tensor->numel());
  const double count = static_cast<double>(r.tensor->numel());
  const __int128 target = python_int(r.density * count, r, "density");
  __int128 n_top = python_int(r.gamma * count, r, "gamma");
  __int128 n_bot = n - target - n_top;
  if (n_bot < 0) {
    n_top += n_bot;
    n_bot = 0;
  }
  __int128 stop = -n_top;
  if (stop < 0) stop = std::max<__int128>(stop + n, 0);
  stop = std::min(stop, n);
  const __int128 start = std::min(n_bot, n);
  return {static_cast<std::int64_t>(start), static_cast<std::int64_t>(std::max(stop, start))};
}

// --- Random drops (Random, DellaMagprune) -----------------------------------

class KeepNothing final : public DeltaSparsifier {
 public:
  void keep_mask(std::span<const double>, std::uint64_t, std::span<std::uint8_t> mask) override {
    std::fill(mask.begin(), mask.end(), std::uint8_t{0});
  }
  bool keeps_nothing() const override { return true; }
};

// DARE: element j kept when uniform(j) < density.
class RandomSparsifier final : public DeltaSparsifier {
 public:
  explicit RandomSparsifier(const SparsifyRequest& r)
      : stream_(r.seed, r.tensor->name, r.model_index), density_(r.density) {}
  void keep_mask(std::span<const double> delta, std::uint64_t first, std::span<std::uint8_t> mask) override {
    for (std::size_t j = 0; j < delta.size(); ++j) mask[j] = stream_.keep(first + j, density_) ? 1 : 0;
  }

 private:
  linalg::CounterStream stream_;
  double density_;
};

// DELLA: in each rank group (a 1-D tensor is one group; else, for each
// index of every dimension but the second, the elements along the second:
// a row's elements for a matrix), the element of ascending magnitude rank
// r in 1..L is kept with probability
//   (density - epsilon) + ((r - 1) / (L - 1) * 2) * epsilon,
// mergekit's (ranks - min) / (max - min) * 2 * epsilon over the group.
class DellaSparsifier final : public DeltaSparsifier {
 public:
  explicit DellaSparsifier(const SparsifyRequest& r)
      : request_(r), stream_(r.seed, r.tensor->name, r.model_index), low_(r.density - r.epsilon) {
    const Shape& shape = r.tensor->shape;
    whole_tensor_ = shape.size() == 1;
    group_ = whole_tensor_ ? shape[0] : shape[1];
    stride_ = 1;
    for (std::size_t d = 2; d < shape.size(); ++d) stride_ *= shape[d];
    SOUPKIT_INPUT_ERROR_IF(group_ < 2,
                           "{}: della ranks the magnitudes of each row of {} elements, and a row of {} has no rank "
                           "range (mergekit's (rank - min) / (max - min) is 0 / 0, and torch.bernoulli fails on the "
                           "NaN): merge this tensor with another method (a filter can set density: 1 for it)",
                           where(r), group_, group_);
  }

  void prepare(const linalg::BlockSource& task_vector, std::size_t) override {
    if (!whole_tensor_) return;
    // A 1-D tensor is one group: its probabilities are held whole.
    std::vector<double> values;
    values.reserve(group_);
    task_vector([&](std::span<const double> block) { values.insert(values.end(), block.begin(), block.end()); });
    SOUPKIT_ERROR_IF(values.size() != group_, "della: {} streamed {} elements, expected {}", where(request_),
                     values.size(), group_);
    held_.resize(group_);
    probabilities(values.data(), 0, 1, held_.data());
  }

  void keep_mask(std::span<const double> delta, std::uint64_t first, std::span<std::uint8_t> mask) override {
    if (whole_tensor_) {
      for (std::size_t j = 0; j < delta.size(); ++j) mask[j] = stream_.keep(first + j, held_[first + j]) ? 1 : 0;
      return;
    }
    const std::uint64_t row = group_ * stride_;
    SOUPKIT_ERROR_IF(delta.size() % row != 0 || first % row != 0, "della: {}: a block that is not whole rows",
                     where(request_));
    p_.resize(delta.size());
    for (std::uint64_t start = 0; start < delta.size(); start += row)
      for (std::uint64_t g = 0; g < stride_; ++g) probabilities(delta.data(), start + g, stride_, p_.data());
    for (std::size_t j = 0; j < delta.size(); ++j) mask[j] = stream_.keep(first + j, p_[j]) ? 1 : 0;
  }

 private:
  // A magnitude's bits (a non-negative double's bits order like it) and its position in the group.
  struct Ranked {
    std::uint64_t bits, position;
    // Ascending magnitude; of equal ones the lower position ranks higher.
    bool operator<(const Ranked& o) const { return bits != o.bits ? bits < o.bits : position > o.position; }
  };

  // p[start + k * step] for the group of group_ elements x[start + k * step].
  void probabilities(const double* x, std::uint64_t start, std::uint64_t step, double* p) {
    order_.resize(group_);
    for (std::uint64_t k = 0; k < group_; ++k) {
      const std::uint64_t bits = std::bit_cast<std::uint64_t>(x[start + k * step]) & kMagnitudeMask;
      SOUPKIT_INPUT_ERROR_IF(bits > kInfinityBits, "{}: task vector element {} is NaN, which has no magnitude to "
                             "rank", where(request_), start + k * step);
      order_[k] = {bits, k};
    }
    std::sort(order_.begin(), order_.end());
    const double span = static_cast<double>(group_ - 1);
    for (std::uint64_t rank = 0; rank < group_; ++rank) {
      const double normalised = static_cast<double>(rank) / span;
      p[start + order_[rank].position * step] = low_ + normalised * 2.0 * request_.epsilon;
    }
  }

  SparsifyRequest request_;
  linalg::CounterStream stream_;
  double low_;
  bool whole_tensor_ = false;
  std::uint64_t group_ = 0, stride_ = 1;
  std::vector<double> held_, p_;
  std::vector<Ranked> order_;
};

// --- Construction -------------------------------------------------------------

std::unique_ptr<DeltaSparsifier> magnitude(const SparsifyRequest& r) {
  const auto numel = static_cast<std::int64_t>(r.tensor->numel());
  SOUPKIT_INPUT_ERROR_IF(!(r.density >= 0), "{}: density {} is not a number >= 0 (mergekit's magnitude "
                         "sparsification asserts it keeps something)", where(r), r.density);
  const std::int64_t keep = linalg::keep_count_for_density(r.density, numel);
  SOUPKIT_INPUT_ERROR_IF(keep == 0,
                         "{}: density {} keeps no element of its {} (int(density x {}) = 0; mergekit stops here too): "
                         "raise the density (a filter can set it for this tensor alone)",
                         where(r), r.density, numel, numel);
  if (keep == numel) return nullptr;
  return std::make_unique<MagnitudeSparsifier>(r, keep);
}

std::unique_ptr<DeltaSparsifier> magnitude_outliers(const SparsifyRequest& r) {
  const auto numel = static_cast<std::int64_t>(r.tensor->numel());
  const AscendingBand band = outlier_band(r);
  if (band.hi <= band.lo) return std::make_unique<KeepNothing>();
  if (band.lo == 0 && band.hi == numel) return nullptr;
  // Ascending positions [lo, hi) are descending ranks [N - hi, N - lo).
  return std::make_unique<MagnitudeBandSparsifier>(r, numel - band.hi, numel - band.lo);
}

std::unique_ptr<DeltaSparsifier> random_drops(const SparsifyRequest& r) {
  SOUPKIT_INPUT_ERROR_IF(!(r.density >= 0), "{}: density {} is not a keep probability in [0, 1) (torch.bernoulli "
                         "fails in mergekit)", where(r), r.density);
  return std::make_unique<RandomSparsifier>(r);
}

std::unique_ptr<DeltaSparsifier> della(const SparsifyRequest& r) {
  if (r.density <= 0) return std::make_unique<KeepNothing>();
  SOUPKIT_INPUT_ERROR_IF(r.density + r.epsilon >= 1 || r.density - r.epsilon <= 0,
                         "{}: epsilon {} with density {} puts the keep probabilities density +/- epsilon outside (0, "
                         "1) (mergekit raises ValueError): lower epsilon",
                         where(r), r.epsilon, r.density);
  SOUPKIT_INPUT_ERROR_IF(r.tensor->shape.empty(), "{}: della ranks along a tensor's rows; a 0-d tensor has none "
                         "(mergekit's argsort fails)", where(r));
  return std::make_unique<DellaSparsifier>(r);
}

}  // namespace

std::unique_ptr<DeltaSparsifier> make_sparsifier(const SparsifyRequest& r) {
  SOUPKIT_ERROR_IF(!r.tensor, "internal: a sparsifier request without its tensor");
  if (r.method == Sparsification::None || r.density >= 1) return nullptr;
  switch (r.method) {
    case Sparsification::Magnitude: return magnitude(r);
    case Sparsification::MagnitudeOutliers: return magnitude_outliers(r);
    case Sparsification::Random: return random_drops(r);
    case Sparsification::DellaMagprune: return della(r);
    case Sparsification::None: break;
  }
  return nullptr;
}

std::uint64_t sparsifier_held_bytes(Sparsification method, const TensorInfo& tensor, std::size_t selection_cap) {
  switch (method) {
    case Sparsification::Magnitude: return selection_cap;
    case Sparsification::MagnitudeOutliers: return 2 * selection_cap;
    case Sparsification::DellaMagprune:
      // A 1-D tensor: its values, magnitudes and order while ranking, then its probabilities.
      return tensor.shape.size() == 1 ? 4 * sizeof(double) * tensor.numel() : 0;
    case Sparsification::Random:
    case Sparsification::None: break;
  }
  return 0;
}

std::uint64_t sparsifier_block_values(Sparsification method) {
  // DELLA: a block's probabilities, and a row's magnitudes and order.
  return method == Sparsification::DellaMagprune ? 3 : 0;
}

}  // namespace soupkit
