// The Gram accumulator of the spherical merges against exact integer
// arithmetic: vectors of integers in [-2^20, 2^20], so every product (<= 2^40)
// and every row's partial sum (64 of them, <= 2^46) is exact in float64,
// while the totals over 4000 rows pass 2^53, where a plain float64 sum of the
// rows rounds. The compensated sum must give the correctly rounded exact
// total. Also the quadratic form and product helpers.
#include "soupkit/linalg/gram.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <vector>

namespace soupkit::linalg {
namespace {

TEST(CompensatedSum, KeepsWhatAPlainSumLoses) {
  CompensatedSum s;
  double plain = 0;
  for (const double x : {1e16, 1.0, 1.0, -1e16, 3.0}) {
    s.add(x);
    plain += x;
  }
  EXPECT_EQ(s.value(), 5.0);
  EXPECT_NE(plain, 5.0);  // a case a plain sum gets wrong
}

TEST(GramAccumulator, EqualsTheExactIntegerDotProducts) {
  constexpr std::size_t kRows = 4000, kLength = 64, kVectors = 3;
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<std::int64_t> value(-(1 << 20), 1 << 20);
  std::vector<std::vector<double>> x(kVectors, std::vector<double>(kRows * kLength));
  for (auto& v : x)
    for (auto& e : v) e = static_cast<double>(value(rng));
  GramAccumulator acc(kVectors);
  double plain00 = 0;  // a plain float64 sum of the rows' partial sums
  for (std::size_t r = 0; r < kRows; ++r) {
    const double* pieces[kVectors] = {x[0].data() + r * kLength, x[1].data() + r * kLength, x[2].data() + r * kLength};
    acc.add(pieces, kLength);
    double row = 0;
    for (std::size_t k = 0; k < kLength; ++k) row += pieces[0][k] * pieces[0][k];
    plain00 += row;
  }
  const Gram g = acc.result();
  for (std::size_t i = 0; i < kVectors; ++i)
    for (std::size_t j = 0; j < kVectors; ++j) {
      __int128 exact = 0;
      for (std::size_t k = 0; k < kRows * kLength; ++k)
        exact += static_cast<__int128>(x[i][k]) * static_cast<__int128>(x[j][k]);
      EXPECT_EQ(g(i, j), static_cast<double>(exact)) << i << "," << j;
      if (i == 0 && j == 0) {
        EXPECT_NE(plain00, static_cast<double>(exact)) << "the data does not need compensation";
      }
    }
  EXPECT_TRUE(g.finite());
}

TEST(Gram, QuadraticFormAndProduct) {
  Gram g(2);
  g.set(0, 0, 4);
  g.set(1, 1, 9);
  g.set(0, 1, -6);  // x1 = -1.5 x0
  EXPECT_EQ(g(1, 0), -6);
  EXPECT_EQ(g.squared_norm({1.5, 1}), 0.0);  // 1.5 x0 + x1 = 0
  EXPECT_EQ(g.squared_norm({1, 1}), 1.0);    // |x0 + x1|^2 = |-0.5 x0|^2
  const auto v = g.times({1, 2});
  EXPECT_EQ(v[0], 4 - 12.0);
  EXPECT_EQ(v[1], -6 + 18.0);
  g.set(0, 0, std::numeric_limits<double>::infinity());
  EXPECT_FALSE(g.finite());
}

}  // namespace
}  // namespace soupkit::linalg
