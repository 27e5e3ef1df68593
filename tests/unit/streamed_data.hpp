#pragma once
// Test data for the streaming selections (magnitude_select, order_statistics):
// normal samples, and a tensor streamed in blocks of cycling sizes.
#include "soupkit/linalg/magnitude_select.hpp"

#include <algorithm>
#include <random>
#include <vector>

namespace soupkit::linalg::test_data {

// Streams x in blocks whose sizes cycle through `sizes` (zeros give empty blocks).
inline BlockSource blocks_of(const std::vector<double>& x, std::vector<std::size_t> sizes) {
  return [&x, sizes](const BlockConsumer& consume) {
    std::size_t at = 0, s = 0;
    do {
      const std::size_t n = std::min(sizes[s++ % sizes.size()], x.size() - at);
      consume(std::span<const double>(x.data() + at, n));
      at += n;
    } while (at < x.size());
  };
}

inline const std::vector<std::size_t> kOddSizes = {1, 0, 7, 13, 0, 101, 3, 997, 2};

inline std::vector<double> normal_data(std::size_t n, unsigned seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

}  // namespace soupkit::linalg::test_data
