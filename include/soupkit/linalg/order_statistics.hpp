#pragma once
// Exact order statistics (the values at given positions of the ascending
// sort) of a tensor streamed in blocks, in memory bounded independently of
// its size: what arcee_fusion's threshold (median + 1.5 x interquartile
// range of its importance scores) needs without sorting a whole tensor.
//
// The order. Values ascending, -0.0 equal to 0.0 (both reported as 0.0),
// -infinity first, +infinity last; NaN is refused. Position r (0-based) is
// sorted[r] of a full sort. A source may give each value a second double,
// its `low` part: elements are then ordered by (value, low), which is the
// order of the exact sums value + low when each pair is a double-double
// (|low| at most half an ulp of value, as an error-free product gives), so
// exact products are ranked exactly, not by their rounded values.
//
// The search: radix selection on the key that orders like the value (its
// IEEE pattern with the sign bit flipped for non-negative values, all bits
// inverted for negative ones; with low parts, the value's key then the low
// part's, 128 bits). Several positions are searched at once, sharing
// passes: every pass histograms the next digit of the candidates of each
// distinct search (positions whose candidates coincide share one), or
// collects them and finishes with std::nth_element once they fit the memory
// cap (and are at most N/16 or at most 65536). Each histogram pass also
// notes its candidates' smallest and largest keys and their multiplicities,
// so a position among the extreme values (e.g. a run of exact zeros) ends
// after that pass.
//
// Passes over the data (one call of the source each): 1 when the whole
// tensor can be collected; typically 2 (a histogram of the top 16 bits:
// sign, exponent and 4 mantissa bits, then one collection per position's
// bucket); at most ceil(K / b), K the key bits (64, or 128 with low parts)
// and b the digit width: 16 when the cap holds one 2^16-counter histogram
// per search, narrower (at least 7 bits) under a small cap. Memory held: at
// most max_bytes, whatever N.
#include "soupkit/linalg/magnitude_select.hpp"  // BlockSource, BlockConsumer, kMinSelectionBytes

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace soupkit::linalg {

// Streams values and their low parts (two spans of one size) in flat order,
// as consecutive blocks of any sizes, each time it is called.
using PairConsumer = std::function<void(std::span<const double> values, std::span<const double> lows)>;
using PairSource = std::function<void(const PairConsumer& consume)>;

struct OrderStatistic {
  double value = 0;
  double low = 0;  // 0 without low parts
};

struct OrderStatistics {
  std::vector<OrderStatistic> at;  // per position asked, in the order asked
  int passes = 0;                  // calls of the source
};

// The elements at `positions` (each in [0, count)) of the `count` values
// `source` streams. Throws InputError naming the flat index of the first
// NaN; Error for a position outside [0, count), max_bytes below
// kMinSelectionBytes, or a pass that streams other data than the one
// before (another element count, or candidates that do not add up).
OrderStatistics select_order_statistics(const BlockSource& source, std::int64_t count,
                                        std::span<const std::int64_t> positions, std::size_t max_bytes);
// The same, ordered by (value, low).
OrderStatistics select_order_statistics(const PairSource& source, std::int64_t count,
                                        std::span<const std::int64_t> positions, std::size_t max_bytes);

}  // namespace soupkit::linalg
