#include "soupkit/linalg/magnitude_select.hpp"

#include "soupkit/util/error.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

namespace soupkit::linalg {
namespace {

constexpr std::uint64_t kMagnitudeMask = 0x7FFF'FFFF'FFFF'FFFFull;
constexpr std::uint64_t kInfinityBits = 0x7FF0'0000'0000'0000ull;  // every pattern above it is a NaN
constexpr int kMagnitudeBits = 63;
constexpr int kMaxDigitBits = 16;
// nth_element costs ~20 ns a candidate, a histogram pass ~3 ns an element
// (plus the source's own cost): collecting is worth a pass saved only once
// the candidates are a small part of the tensor, or few in absolute terms.
constexpr std::int64_t kCollectFractionDivisor = 16;
constexpr std::int64_t kAlwaysCollect = 65536;

std::uint64_t magnitude_bits(double x) { return std::bit_cast<std::uint64_t>(x) & kMagnitudeMask; }

void refuse_nan(std::uint64_t bits, std::int64_t index) {
  SOUPKIT_INPUT_ERROR_IF(bits > kInfinityBits, "element {} is NaN, which has no magnitude to rank", index);
}

// One call of the source: every element's magnitude bits to `each`, NaN
// refused, the element count checked against the declared one.
template <class Each>
void stream_pass(const BlockSource& source, std::int64_t count, int pass, Each&& each) {
  std::int64_t index = 0;
  source([&](std::span<const double> block) {
    SOUPKIT_ERROR_IF(block.size() > static_cast<std::uint64_t>(count - index),
                     "magnitude selection: pass {} streamed more than the tensor's {} elements", pass, count);
    for (const double x : block) {
      const std::uint64_t bits = magnitude_bits(x);
      refuse_nan(bits, index);
      each(bits);
      ++index;
    }
  });
  SOUPKIT_ERROR_IF(index != count, "magnitude selection: pass {} streamed {} elements, expected {}", pass, index,
                   count);
}

// A pass must find as many candidates as the pass before counted for them.
void check_candidates(int pass, std::int64_t found, std::int64_t expected) {
  SOUPKIT_ERROR_IF(found != expected,
                   "magnitude selection: pass {} found {} candidates, the pass before {} (the data changed between "
                   "passes)",
                   pass, found, expected);
}

// The smallest and largest candidate magnitudes and how often each occurs.
struct Extremes {
  std::uint64_t min = std::numeric_limits<std::uint64_t>::max(), max = 0;
  std::int64_t min_count = 0, max_count = 0;

  void add(std::uint64_t bits) {
    if (bits < min) min = bits, min_count = 0;
    if (bits == min) ++min_count;
    if (bits > max) max = bits, max_count = 0;
    if (bits == max) ++max_count;
  }
};

// The search state: the candidates are the elements whose magnitude bits
// above the lowest `unknown_bits` equal `prefix` (every element at the
// start); the k-th ranked element is the `rank`-th largest of them.
struct Search {
  std::uint64_t prefix = 0;
  int unknown_bits = kMagnitudeBits;
  std::int64_t candidates = 0, rank = 0;

  bool is_candidate(std::uint64_t bits) const { return (bits >> unknown_bits) == prefix; }
};

MagnitudeSelection found(MagnitudeSelection s, std::uint64_t threshold_bits, std::int64_t ties_kept) {
  s.threshold = std::bit_cast<double>(threshold_bits);
  s.ties_kept = ties_kept;
  return s;
}

// A pass collecting the candidates, then nth_element among them.
MagnitudeSelection collect_and_select(const BlockSource& source, MagnitudeSelection s, const Search& search) {
  std::vector<std::uint64_t> values;
  values.reserve(static_cast<std::size_t>(search.candidates));
  std::int64_t seen = 0;
  stream_pass(source, s.count, ++s.passes, [&](std::uint64_t bits) {
    if (!search.is_candidate(bits)) return;
    // No more than the previous pass counted: memory stays within the cap.
    if (seen++ < search.candidates) values.push_back(bits);
  });
  check_candidates(s.passes, seen, search.candidates);
  const auto kth = values.begin() + (search.rank - 1);
  std::nth_element(values.begin(), kth, values.end(), std::greater<>());
  const std::uint64_t threshold = *kth;
  const auto above = std::count_if(values.begin(), values.end(), [&](std::uint64_t v) { return v > threshold; });
  return found(s, threshold, search.rank - above);
}

}  // namespace

std::int64_t keep_count_for_density(double density, std::int64_t count) {
  SOUPKIT_INPUT_ERROR_IF(std::isnan(density) || density < 0, "density {} is not a fraction of at least 0", density);
  SOUPKIT_ERROR_IF(count < 0, "keep count for a tensor of {} elements", count);
  if (density >= 1) return count;
  const double product = density * static_cast<double>(count);
  // Below 1 the rounded product stays under N (it is at most the double just
  // below N's); the guard only keeps the conversion defined whatever happens.
  if (product >= static_cast<double>(count)) return count;
  return static_cast<std::int64_t>(product);
}

MagnitudeSelection select_top_magnitudes(const BlockSource& source, std::int64_t count, std::int64_t keep,
                                         std::size_t max_bytes) {
  SOUPKIT_ERROR_IF(count < 0 || keep < 0 || keep > count,
                   "magnitude selection: cannot keep {} of {} elements", keep, count);
  SOUPKIT_ERROR_IF(max_bytes < kMinSelectionBytes, "magnitude selection: a memory cap of {} bytes is below the {} needed",
                   max_bytes, kMinSelectionBytes);
  MagnitudeSelection s;
  s.count = count;
  s.keep = keep;
  if (keep == 0) {
    // Nothing exceeds +infinity and no tie is kept; the pass still refuses NaN.
    stream_pass(source, count, ++s.passes, [](std::uint64_t) {});
    return found(s, kInfinityBits, 0);
  }
  const std::int64_t max_collected =
      std::min(static_cast<std::int64_t>(max_bytes / sizeof(std::uint64_t)),
               std::max(kAlwaysCollect, count / kCollectFractionDivisor));
  const int digit_bits = std::min(kMaxDigitBits, static_cast<int>(std::bit_width(max_bytes / sizeof(std::int64_t))) - 1);

  Search search;
  search.candidates = count;
  search.rank = keep;
  for (;;) {
    if (search.candidates <= max_collected) return collect_and_select(source, s, search);

    const int width = std::min(digit_bits, search.unknown_bits);
    const int shift = search.unknown_bits - width;
    const std::uint64_t digit_mask = (std::uint64_t{1} << width) - 1;
    std::vector<std::int64_t> histogram(std::size_t{1} << width, 0);
    Extremes extremes;
    std::int64_t candidates = 0;
    stream_pass(source, count, ++s.passes, [&](std::uint64_t bits) {
      if (!search.is_candidate(bits)) return;
      ++histogram[(bits >> shift) & digit_mask];
      extremes.add(bits);
      ++candidates;
    });
    check_candidates(s.passes, candidates, search.candidates);

    if (search.rank <= extremes.max_count) return found(s, extremes.max, search.rank);
    const std::int64_t above_min = search.candidates - extremes.min_count;
    if (search.rank > above_min) return found(s, extremes.min, search.rank - above_min);

    // The bucket holding the rank-th largest candidate, counting from the top.
    std::uint64_t digit = digit_mask;
    while (search.rank > histogram[digit]) search.rank -= histogram[digit--];
    search.prefix = (search.prefix << width) | digit;
    search.unknown_bits = shift;
    search.candidates = histogram[digit];
    if (search.unknown_bits == 0) return found(s, search.prefix, search.rank);
  }
}

MagnitudeTrim::MagnitudeTrim(const MagnitudeSelection& selection)
    : selection_(selection), threshold_bits_(magnitude_bits(selection.threshold)) {
  SOUPKIT_ERROR_IF(selection.count < 0 || selection.keep < 0 || selection.keep > selection.count ||
                       selection.ties_kept < 0 || selection.ties_kept > selection.keep ||
                       std::isnan(selection.threshold) || selection.threshold < 0,
                   "magnitude trim: inconsistent selection (keep {} of {}, threshold {}, {} ties)", selection.keep,
                   selection.count, selection.threshold, selection.ties_kept);
}

void MagnitudeTrim::start_block(std::size_t size, std::int64_t first) const {
  SOUPKIT_ERROR_IF(first != seen_,
                   "magnitude trim: a block starts at element {} but {} elements came before it (blocks must come "
                   "in flat order)",
                   first, seen_);
  SOUPKIT_ERROR_IF(size > static_cast<std::uint64_t>(selection_.count - seen_),
                   "magnitude trim: a block of {} elements at {} runs past the tensor's {}", size, first,
                   selection_.count);
}

bool MagnitudeTrim::admit(double x, std::int64_t index) {
  const std::uint64_t bits = magnitude_bits(x);
  refuse_nan(bits, index);
  bool keep = bits > threshold_bits_;
  if (bits == threshold_bits_) keep = ties_seen_++ < selection_.ties_kept;
  kept_ += keep;
  return keep;
}

void MagnitudeTrim::keep_mask(std::span<const double> block, std::int64_t first, std::span<std::uint8_t> mask) {
  SOUPKIT_ERROR_IF(mask.size() != block.size(), "magnitude trim: a mask of {} for a block of {} elements",
                   mask.size(), block.size());
  start_block(block.size(), first);
  for (std::size_t i = 0; i < block.size(); ++i, ++seen_) mask[i] = admit(block[i], seen_) ? 1 : 0;
}

void MagnitudeTrim::trim(std::span<double> block, std::int64_t first) {
  start_block(block.size(), first);
  for (std::size_t i = 0; i < block.size(); ++i, ++seen_)
    if (!admit(block[i], seen_)) block[i] = 0.0;
}

void MagnitudeTrim::finish() const {
  SOUPKIT_ERROR_IF(seen_ != selection_.count, "magnitude trim: saw {} of the tensor's {} elements", seen_,
                   selection_.count);
  SOUPKIT_ERROR_IF(kept_ != selection_.keep,
                   "magnitude trim: kept {} elements, the selection {} (the data changed since the selection)", kept_,
                   selection_.keep);
}

}  // namespace soupkit::linalg
