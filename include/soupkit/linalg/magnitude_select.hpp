#pragma once
// Exact top-k selection by magnitude over a tensor streamed in blocks, in
// memory bounded independently of its size: the kernel behind TIES-style
// magnitude sparsification of task vectors (W_i - W_base) too large to hold.
//
// The kept set. Elements are ranked by |x| descending; equal magnitudes are
// ranked by flat index ascending (the lower index wins). The k best ranked
// are kept. Equivalently, with t the magnitude of the k-th ranked element and
// q = k - #{|x| > t}: every element with |x| > t is kept, and of those with
// |x| == t the q with the lowest flat indices. -0.0 and 0.0 are both
// magnitude 0; infinities rank above every finite value; NaN is refused.
//
// The search. A non-negative double's IEEE bit pattern, read as uint64,
// orders like its value, so t is found digit by digit on the 63 bits of
// |x| (radix selection): a pass histograms the next digit of the elements
// still sharing t's known prefix, the bucket holding the k-th ranked element
// extends the prefix, and the elements above it are counted out. Once the
// remaining candidates fit in the memory cap and are at most N/16 or at most
// 65536, one pass collects them and std::nth_element finishes (it costs
// ~20 ns a candidate against ~3 ns an element for a histogram pass:
// collecting most of a big tensor would cost more than the pass it saves).
// Each pass also tracks the candidates' smallest and largest magnitudes with
// their multiplicities, so k = N, k = 1, and a k-th element among the
// extreme values (typically a task vector's exact zeros) end after that pass.
//
// Passes over the data (one call of the BlockSource each):
//   - N <= 65536 and N * 8 <= max_bytes: 1 (the whole tensor is collected);
//   - k = 0, or all candidates equal: 1;
//   - typically 2: one histogram of the top 16 bits (11 exponent bits and 5
//     mantissa bits: 1/32-octave buckets), then one collection of the
//     k-th element's bucket (~1% of a normal-looking tensor); 3 when that
//     bucket exceeds the cap or N/16;
//   - at most ceil(63 / b) (4 for b = 16), where b = min(16,
//     floor(log2(max_bytes / 8))) is the digit width: after that many
//     histograms every bit of t is known.
// Memory held by the kernel: max(2^b, collected candidates) * 8 bytes, at
// most max_bytes, whatever N.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

namespace soupkit::linalg {

// Streams the whole tensor, in flat order, as consecutive blocks of any
// sizes (empty blocks are allowed), each time it is called. consume may
// throw (NaN is refused from inside it): the source must let that propagate.
using BlockConsumer = std::function<void(std::span<const double>)>;
using BlockSource = std::function<void(const BlockConsumer& consume)>;

// The smallest memory cap accepted: a 512-counter histogram (9-bit digits,
// at most 7 passes).
inline constexpr std::size_t kMinSelectionBytes = 4096;

struct MagnitudeSelection {
  std::int64_t count = 0;       // N, elements in the tensor
  std::int64_t keep = 0;        // k, elements kept
  // t: the k-th ranked magnitude (+infinity when k = 0, so nothing exceeds it).
  double threshold = 0;
  std::int64_t ties_kept = 0;   // q: kept elements with |x| == t, the lowest-indexed ones
  int passes = 0;               // calls of the BlockSource this selection made
};

// The k mergekit's magnitude sparsification keeps for a density:
// int(density * N) in Python float arithmetic, i.e. the double product
// rounded once, then truncated (0.29 * 100 gives 28); N when density >= 1.
// Throws InputError for a NaN or negative density.
std::int64_t keep_count_for_density(double density, std::int64_t count);

// Finds t and q for keeping the k = `keep` largest magnitudes of the `count`
// elements `source` streams. Throws InputError naming the flat index of the
// first NaN; Error if keep is outside [0, count], max_bytes is below
// kMinSelectionBytes, or a pass streams other data than the one before
// (another element count, or candidates that do not add up).
MagnitudeSelection select_top_magnitudes(const BlockSource& source, std::int64_t count, std::int64_t keep,
                                         std::size_t max_bytes);

// Applies a selection to the tensor streamed once more, block by block, in
// flat order: each block must start where the previous one ended (`first`
// is checked against that), because which ties are kept depends on how many
// came before. NaN is refused here too (InputError naming the index).
class MagnitudeTrim {
 public:
  explicit MagnitudeTrim(const MagnitudeSelection& selection);

  // mask[i] = 1 if block[i] (flat index first + i) is kept, else 0.
  void keep_mask(std::span<const double> block, std::int64_t first, std::span<std::uint8_t> mask);
  // Zeroes the dropped elements of block (flat index first + i) in place.
  void trim(std::span<double> block, std::int64_t first);
  // Throws Error unless exactly the selection's N elements were seen and
  // exactly its k kept (otherwise the data changed since the selection).
  void finish() const;

  std::int64_t seen() const { return seen_; }
  std::int64_t kept() const { return kept_; }

 private:
  void start_block(std::size_t size, std::int64_t first) const;
  bool admit(double x, std::int64_t index);

  MagnitudeSelection selection_;
  std::uint64_t threshold_bits_ = 0;
  std::int64_t seen_ = 0, kept_ = 0, ties_seen_ = 0;
};

}  // namespace soupkit::linalg
