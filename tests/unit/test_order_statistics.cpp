// The streaming order statistics against std::sort: the values at chosen
// positions (the quartiles arcee_fusion asks for, the ends, repeated
// positions) of random data, data with many ties, a majority of exact zeros,
// signed zeros, infinities, denormals and huge exponents, under memory caps
// that force every refinement pass, streamed in blocks of odd sizes (empty
// ones included). Values must be the sort's bit for bit (-0.0 reported as
// 0.0), and the pass counts the documented ones.
#include "soupkit/linalg/order_statistics.hpp"

#include "soupkit/util/error.hpp"
#include "streamed_data.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace soupkit::linalg {
namespace {

constexpr std::size_t kRoomy = std::size_t{1} << 30;

BlockSource blocks_of(const std::vector<double>& x) { return test_data::blocks_of(x, test_data::kOddSizes); }
using test_data::normal_data;

// The positions arcee_fusion asks for (median, q1, q3 as mergekit indexes
// them: floor(q (n - 1))), the ends and a repeat.
std::vector<std::int64_t> positions_for(std::int64_t n) {
  return {(n - 1) / 2, (n - 1) / 4, (3 * (n - 1)) / 4, 0, n - 1, (n - 1) / 2, n / 3};
}

OrderStatistics expect_sorted_values(const std::vector<double>& x, std::size_t cap, const std::string& what) {
  SCOPED_TRACE(what + ", cap = " + std::to_string(cap));
  const auto n = static_cast<std::int64_t>(x.size());
  const std::vector<std::int64_t> positions = positions_for(n);
  const OrderStatistics got = select_order_statistics(blocks_of(x), n, positions, cap);
  std::vector<double> sorted = x;
  for (auto& v : sorted)
    if (v == 0) v = 0.0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(got.at.size(), positions.size());
  for (std::size_t i = 0; i < positions.size() && i < got.at.size(); ++i) {
    EXPECT_EQ(std::bit_cast<std::uint64_t>(got.at[i].value),
              std::bit_cast<std::uint64_t>(sorted[static_cast<std::size_t>(positions[i])]))
        << "position " << positions[i] << ": got " << got.at[i].value << ", sorted " << sorted[positions[i]];
    EXPECT_EQ(std::bit_cast<std::uint64_t>(got.at[i].low), 0u);
  }
  EXPECT_GE(got.passes, 1);
  EXPECT_LE(got.passes, 10);  // ceil(64 / 7): the narrowest digit, under the smallest cap
  return got;
}

void expect_sorted_values_under_every_cap(const std::vector<double>& x, const std::string& what) {
  for (const std::size_t cap : {kRoomy, kMinSelectionBytes, std::size_t{1} << 16}) expect_sorted_values(x, cap, what);
}

TEST(OrderStatistics, RandomData) {
  expect_sorted_values_under_every_cap(normal_data(20000, 1), "normal");
  expect_sorted_values_under_every_cap(normal_data(777, 2, 1e-3), "small normal");
  std::vector<double> positive = normal_data(5000, 3);
  for (auto& v : positive) v = std::fabs(v) * 1e-4;  // importance-like: non-negative, small
  expect_sorted_values_under_every_cap(positive, "non-negative");
}

TEST(OrderStatistics, TiesZerosAndSpecialValues) {
  std::mt19937_64 rng(4);
  const double levels[] = {-0.5, -0.25, 0.0, -0.0, 0.125, 0.25, 0.5};
  std::vector<double> few(30000);
  for (auto& v : few) v = levels[rng() % 7];
  expect_sorted_values_under_every_cap(few, "seven levels");

  std::vector<double> mostly_zero = normal_data(30000, 5);
  for (std::size_t i = 0; i < mostly_zero.size(); ++i)
    if (i % 10 < 8) mostly_zero[i] = i % 2 ? -0.0 : 0.0;  // 80% zeros: median and q1 among them
  expect_sorted_values_under_every_cap(mostly_zero, "mostly zero");

  std::vector<double> wide = normal_data(4000, 6);
  const double inf = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < wide.size(); i += 9) wide[i] = std::ldexp(wide[i], static_cast<int>(i % 2000) - 1000);
  wide[7] = inf, wide[8] = -inf, wide[9] = std::numeric_limits<double>::denorm_min();
  wide[10] = -std::numeric_limits<double>::denorm_min(), wide[11] = std::numeric_limits<double>::max();
  expect_sorted_values_under_every_cap(wide, "denormals, huge exponents, infinities");

  expect_sorted_values_under_every_cap({-0.0}, "one element");
  expect_sorted_values_under_every_cap(std::vector<double>(100000, 3.0), "all equal");
}

TEST(OrderStatistics, PassCounts) {
  // Small: collected whole in one pass.
  EXPECT_EQ(expect_sorted_values(normal_data(1000, 7), kRoomy, "small").passes, 1);
  // Large, roomy cap: one histogram, then one collection of each position's bucket.
  EXPECT_EQ(expect_sorted_values(normal_data(400000, 8), kRoomy, "large").passes, 2);
  // All equal: the first histogram's extremes end it.
  EXPECT_EQ(expect_sorted_values(std::vector<double>(100000, -1.5), std::size_t{1} << 16, "equal").passes, 1);
}

// Exact products as double-doubles (hi = fl(d k), low = fma(d, k, -hi)),
// ranked by (hi, low) against std::sort of the pairs; many share a factor k
// (a vector's KL in arcee_fusion), so equal rounded values with other low
// parts are common.
TEST(OrderStatistics, ExactProductsByValueThenLowPart) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  const std::size_t n = 50000;
  std::vector<double> hi(n), lo(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 2) {  // an error-free product
      const double k = 1 + std::ldexp(static_cast<double>(i / 100), -40);  // one factor per 100 elements
      const double d = std::fabs(normal(rng)) / 3;
      hi[i] = d * k;
      lo[i] = std::fma(d, k, -hi[i]);
    } else {  // few rounded values, each with low parts on both sides
      hi[i] = std::ldexp(static_cast<double>(rng() % 16), -3);
      lo[i] = hi[i] * std::ldexp(static_cast<double>(static_cast<int>(rng() % 7) - 3), -56);
    }
  }
  hi[5] = 1.0, lo[5] = std::ldexp(1.0, -54), hi[6] = 1.0, lo[6] = -std::ldexp(1.0, -54), hi[7] = 1.0, lo[7] = -0.0;
  std::vector<std::pair<double, double>> sorted(n);
  for (std::size_t i = 0; i < n; ++i) sorted[i] = {hi[i] == 0 ? 0.0 : hi[i], lo[i] == 0 ? 0.0 : lo[i]};
  std::sort(sorted.begin(), sorted.end());
  std::int64_t same_value_other_low = 0;
  for (std::size_t i = 1; i < n; ++i) same_value_other_low += sorted[i].first == sorted[i - 1].first &&
                                                              sorted[i].second != sorted[i - 1].second;
  EXPECT_GT(same_value_other_low, 50) << "the data does not exercise the low parts";
  const PairSource pairs = [&](const PairConsumer& consume) {
    for (std::size_t at = 0; at < n; at += 777) {
      const std::size_t m = std::min<std::size_t>(777, n - at);
      consume(std::span<const double>(hi.data() + at, m), std::span<const double>(lo.data() + at, m));
    }
  };
  std::vector<std::int64_t> positions = positions_for(static_cast<std::int64_t>(n));
  for (std::int64_t r = 0; r < static_cast<std::int64_t>(n); r += 997) positions.push_back(r);
  for (const std::size_t cap : {kRoomy, kMinSelectionBytes, std::size_t{1} << 16}) {
    SCOPED_TRACE("cap " + std::to_string(cap));
    const OrderStatistics got = select_order_statistics(pairs, static_cast<std::int64_t>(n), positions, cap);
    ASSERT_EQ(got.at.size(), positions.size());
    for (std::size_t i = 0; i < positions.size(); ++i) {
      const auto& want = sorted[static_cast<std::size_t>(positions[i])];
      EXPECT_EQ(got.at[i].value, want.first) << "position " << positions[i];
      EXPECT_EQ(std::bit_cast<std::uint64_t>(got.at[i].low), std::bit_cast<std::uint64_t>(want.second))
          << "position " << positions[i];
    }
    EXPECT_LE(got.passes, 19);  // ceil(128 / 7)
  }
}

TEST(OrderStatistics, Refusals) {
  std::vector<double> x = normal_data(100, 9);
  x[42] = std::nan("");
  const std::int64_t median[] = {50};
  try {
    select_order_statistics(blocks_of(x), 100, median, kRoomy);
    FAIL() << "NaN accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("element 42 is NaN"), std::string::npos) << e.what();
  }
  x[42] = 1;
  const std::int64_t outside[] = {100};
  EXPECT_THROW(select_order_statistics(blocks_of(x), 100, outside, kRoomy), Error);
  EXPECT_THROW(select_order_statistics(blocks_of(x), 100, median, kMinSelectionBytes - 1), Error);
  // A source that streams other data on its second pass.
  std::vector<double> big = normal_data(200000, 10);
  int calls = 0;
  const BlockSource changing = [&](const BlockConsumer& consume) {
    if (calls++ == 1)
      for (auto& v : big) v *= 3;  // every value in another bucket
    consume(big);
  };
  EXPECT_THROW(select_order_statistics(changing, 200000, median, kRoomy), Error);
}

}  // namespace
}  // namespace soupkit::linalg
