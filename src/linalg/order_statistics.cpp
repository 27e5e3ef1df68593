#include "soupkit/linalg/order_statistics.hpp"

#include "soupkit/util/error.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace soupkit::linalg {
namespace {

// A value's key, followed by its low part's key when there are low parts.
__extension__ typedef unsigned __int128 Key;

constexpr int kMaxDigitBits = 16;
constexpr std::uint64_t kSignBit = std::uint64_t{1} << 63;
// As in magnitude selection: collecting (nth_element, ~20 ns a candidate)
// beats another histogram pass (~3 ns an element plus the source's cost)
// only once the candidates are a small part of the tensor, or few.
constexpr std::int64_t kCollectFractionDivisor = 16;
constexpr std::int64_t kAlwaysCollect = 65536;

// The 64-bit key that orders like the value; -0.0 takes 0.0's.
std::uint64_t order_key(double x, std::int64_t index) {
  SOUPKIT_INPUT_ERROR_IF(std::isnan(x), "element {} is NaN, which has no place in an order", index);
  if (x == 0) x = 0.0;
  const auto bits = std::bit_cast<std::uint64_t>(x);
  return (bits & kSignBit) ? ~bits : bits | kSignBit;
}

double value_of(std::uint64_t key) { return std::bit_cast<double>((key & kSignBit) ? key & ~kSignBit : ~key); }

// One position's search: its candidates are the elements whose keys agree
// with `prefix` above the lowest `unknown_bits`; the element wanted is the
// `rank`-th smallest (0-based) of them.
struct Search {
  Key prefix = 0;
  int unknown_bits = 0;  // the key's width at the start
  std::int64_t candidates = 0, rank = 0;
  bool done = false;
  Key key = 0;  // once done

  bool is_candidate(Key k, int key_bits) const { return unknown_bits == key_bits || (k >> unknown_bits) == prefix; }
  bool shares_candidates(const Search& o) const { return prefix == o.prefix && unknown_bits == o.unknown_bits; }
  void finish(Key k) { done = true, key = k; }
};

// What one pass gathers for the searches that share candidates.
struct Probe {
  std::vector<std::size_t> searches;  // indices into the searches
  Search state;                       // their common candidates
  bool collect = false;
  int width = 0, shift = 0;
  std::vector<std::int64_t> histogram;
  std::vector<Key> collected;
  std::int64_t seen = 0;
  // The smallest and largest candidate keys, and how often each occurs.
  Key min = ~Key{0}, max = 0;
  std::int64_t min_count = 0, max_count = 0;

  void add(Key k) {
    ++seen;
    if (collect) {
      // No more than the pass before counted: memory stays within the cap.
      if (seen <= state.candidates) collected.push_back(k);
      return;
    }
    ++histogram[static_cast<std::size_t>((k >> shift) & ((Key{1} << width) - 1))];
    if (k < min) min = k, min_count = 0;
    if (k == min) ++min_count;
    if (k > max) max = k, max_count = 0;
    if (k == max) ++max_count;
  }
};

// The searches still open, grouped by candidates, each group collecting or
// histogramming within its share of the cap.
std::vector<Probe> plan_pass(const std::vector<Search>& searches, std::int64_t count, std::size_t max_bytes) {
  std::vector<Probe> probes;
  for (std::size_t i = 0; i < searches.size(); ++i) {
    if (searches[i].done) continue;
    const auto same = std::find_if(probes.begin(), probes.end(),
                                   [&](const Probe& p) { return p.state.shares_candidates(searches[i]); });
    if (same != probes.end()) {
      same->searches.push_back(i);
      continue;
    }
    probes.emplace_back();
    probes.back().searches = {i};
    probes.back().state = searches[i];
  }
  const std::size_t share = max_bytes / std::max<std::size_t>(probes.size(), 1);
  const std::int64_t max_collected = std::min(static_cast<std::int64_t>(share / sizeof(Key)),
                                              std::max(kAlwaysCollect, count / kCollectFractionDivisor));
  const int digit_bits =
      std::min(kMaxDigitBits, static_cast<int>(std::bit_width(share / sizeof(std::int64_t))) - 1);
  for (Probe& p : probes) {
    p.collect = p.state.candidates <= max_collected;
    if (p.collect) {
      p.collected.reserve(static_cast<std::size_t>(p.state.candidates));
      continue;
    }
    p.width = std::min(digit_bits, p.state.unknown_bits);
    p.shift = p.state.unknown_bits - p.width;
    p.histogram.assign(std::size_t{1} << p.width, 0);
  }
  return probes;
}

// After a pass: each search of the probe ends, or narrows to one bucket.
void resolve(Probe& p, std::vector<Search>& searches, int pass) {
  SOUPKIT_ERROR_IF(p.seen != p.state.candidates,
                   "order statistics: pass {} found {} candidates, the pass before {} (the data changed between "
                   "passes)",
                   pass, p.seen, p.state.candidates);
  for (const std::size_t i : p.searches) {
    Search& s = searches[i];
    if (p.collect) {
      const auto at = p.collected.begin() + s.rank;
      std::nth_element(p.collected.begin(), at, p.collected.end());
      s.finish(*at);
      continue;
    }
    if (s.rank < p.min_count) {
      s.finish(p.min);
      continue;
    }
    if (s.rank >= s.candidates - p.max_count) {
      s.finish(p.max);
      continue;
    }
    std::size_t digit = 0;
    while (s.rank >= p.histogram[digit]) s.rank -= p.histogram[digit++];
    s.prefix = (s.prefix << p.width) | digit;
    s.unknown_bits = p.shift;
    s.candidates = p.histogram[digit];
    if (s.unknown_bits == 0) s.finish(s.prefix);
  }
}

// The search over keys of `key_bits` bits; `stream(pass, each)` calls
// each(key) for every element in flat order and returns how many it gave.
template <class Stream>
OrderStatistics select(Stream&& stream, int key_bits, std::int64_t count, std::span<const std::int64_t> positions,
                       std::size_t max_bytes) {
  SOUPKIT_ERROR_IF(max_bytes < kMinSelectionBytes, "order statistics: a memory cap of {} bytes is below the {} needed",
                   max_bytes, kMinSelectionBytes);
  std::vector<Search> searches;
  for (const std::int64_t r : positions) {
    SOUPKIT_ERROR_IF(r < 0 || r >= count, "order statistics: position {} of {} elements", r, count);
    Search s;
    s.unknown_bits = key_bits;
    s.candidates = count;
    s.rank = r;
    searches.push_back(s);
  }
  OrderStatistics out;
  for (;;) {
    std::vector<Probe> probes = plan_pass(searches, count, max_bytes);
    if (probes.empty()) break;
    const int pass = ++out.passes;
    const std::int64_t streamed = stream(pass, [&](Key key) {
      for (Probe& p : probes)
        if (p.state.is_candidate(key, key_bits)) p.add(key);
    });
    SOUPKIT_ERROR_IF(streamed != count, "order statistics: pass {} streamed {} elements, expected {}", pass, streamed,
                     count);
    for (Probe& p : probes) resolve(p, searches, pass);
  }
  for (const Search& s : searches) {
    if (key_bits == 64)
      out.at.push_back({value_of(static_cast<std::uint64_t>(s.key)), 0.0});
    else
      out.at.push_back({value_of(static_cast<std::uint64_t>(s.key >> 64)), value_of(static_cast<std::uint64_t>(s.key))});
  }
  return out;
}

void check_block(std::size_t size, std::int64_t index, std::int64_t count, int pass) {
  SOUPKIT_ERROR_IF(size > static_cast<std::uint64_t>(count - index),
                   "order statistics: pass {} streamed more than the tensor's {} elements", pass, count);
}

}  // namespace

OrderStatistics select_order_statistics(const BlockSource& source, std::int64_t count,
                                        std::span<const std::int64_t> positions, std::size_t max_bytes) {
  const auto stream = [&](int pass, const auto& each) {
    std::int64_t index = 0;
    source([&](std::span<const double> block) {
      check_block(block.size(), index, count, pass);
      for (const double x : block) each(Key{order_key(x, index++)});
    });
    return index;
  };
  return select(stream, 64, count, positions, max_bytes);
}

OrderStatistics select_order_statistics(const PairSource& source, std::int64_t count,
                                        std::span<const std::int64_t> positions, std::size_t max_bytes) {
  const auto stream = [&](int pass, const auto& each) {
    std::int64_t index = 0;
    source([&](std::span<const double> values, std::span<const double> lows) {
      SOUPKIT_ERROR_IF(values.size() != lows.size(), "order statistics: a block of {} values and {} low parts",
                       values.size(), lows.size());
      check_block(values.size(), index, count, pass);
      for (std::size_t j = 0; j < values.size(); ++j, ++index)
        each((Key{order_key(values[j], index)} << 64) | order_key(lows[j], index));
    });
    return index;
  };
  return select(stream, 128, count, positions, max_bytes);
}

}  // namespace soupkit::linalg
