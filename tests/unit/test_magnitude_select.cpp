// The streaming top-k magnitude selection against a brute force: every index
// sorted by (-|x|, index) with std::stable_sort, the first k kept. Checked on
// random data, many ties, denormals, huge exponents and infinities, signed
// zeros, k at 0, 1, N-1 and N, memory caps that force every refinement pass,
// and blocks of odd sizes (empty ones included); the kept set must be the
// brute force's exactly, and the pass counts the documented ones.
#include "soupkit/linalg/magnitude_select.hpp"

#include "soupkit/util/error.hpp"
#include "streamed_data.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace soupkit::linalg {
namespace {

constexpr std::size_t kRoomy = std::size_t{1} << 30;  // every test tensor fits: one collecting pass

// The reference: mask[i] = 1 for the k best ranked elements.
std::vector<std::uint8_t> brute_force_mask(const std::vector<double>& x, std::int64_t k) {
  std::vector<std::size_t> order(x.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  std::vector<std::uint8_t> mask(x.size(), 0);
  for (std::int64_t r = 0; r < k; ++r) mask[order[static_cast<std::size_t>(r)]] = 1;
  return mask;
}

using test_data::blocks_of;
using test_data::kOddSizes;
using test_data::normal_data;

std::vector<std::uint8_t> streamed_mask(const std::vector<double>& x, const MagnitudeSelection& s,
                                        const std::vector<std::size_t>& sizes) {
  MagnitudeTrim trim(s);
  std::vector<std::uint8_t> mask(x.size(), 7);
  std::size_t at = 0, b = 0;
  while (at < x.size()) {
    const std::size_t n = std::min(sizes[b++ % sizes.size()], x.size() - at);
    trim.keep_mask(std::span<const double>(x.data() + at, n), static_cast<std::int64_t>(at),
                   std::span<std::uint8_t>(mask.data() + at, n));
    at += n;
  }
  trim.finish();
  return mask;
}

std::int64_t first_difference(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return static_cast<std::int64_t>(i);
  return -1;
}

// Selects k of x under the cap, checks t, q and the streamed mask against the
// brute force, and checks trim() zeroes exactly the dropped elements.
MagnitudeSelection expect_exact(const std::vector<double>& x, std::int64_t k, std::size_t max_bytes,
                                const std::string& what) {
  SCOPED_TRACE(what + ", k = " + std::to_string(k) + ", cap = " + std::to_string(max_bytes));
  const auto n = static_cast<std::int64_t>(x.size());
  const MagnitudeSelection s = select_top_magnitudes(blocks_of(x, kOddSizes), n, k, max_bytes);
  const std::vector<std::uint8_t> expected = brute_force_mask(x, k);
  EXPECT_EQ(s.count, n);
  EXPECT_EQ(s.keep, k);
  if (k == 0) {
    EXPECT_EQ(s.threshold, std::numeric_limits<double>::infinity());
    EXPECT_EQ(s.ties_kept, 0);
  } else {
    double kth = std::numeric_limits<double>::infinity();
    std::int64_t ties = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
      if (expected[i]) kth = std::min(kth, std::fabs(x[i]));
    for (std::size_t i = 0; i < x.size(); ++i) ties += expected[i] && std::fabs(x[i]) == kth;
    EXPECT_EQ(std::bit_cast<std::uint64_t>(s.threshold), std::bit_cast<std::uint64_t>(kth));
    EXPECT_EQ(s.ties_kept, ties);
  }
  const std::vector<std::uint8_t> got = streamed_mask(x, s, {5, 1, 0, 33, 2});
  EXPECT_EQ(first_difference(got, expected), -1) << "first element kept differently";

  std::vector<double> trimmed = x;
  MagnitudeTrim trim(s);
  for (std::size_t at = 0; at < trimmed.size(); at += 11) {
    const std::size_t m = std::min<std::size_t>(11, trimmed.size() - at);
    trim.trim(std::span<double>(trimmed.data() + at, m), static_cast<std::int64_t>(at));
  }
  trim.finish();
  EXPECT_EQ(trim.kept(), k);
  std::int64_t wrong = -1;  // the first element trim() got wrong: kept ones unchanged, dropped ones +0.0
  for (std::size_t i = 0; i < x.size() && wrong < 0; ++i)
    if (std::bit_cast<std::uint64_t>(trimmed[i]) != (expected[i] ? std::bit_cast<std::uint64_t>(x[i]) : 0u))
      wrong = static_cast<std::int64_t>(i);
  EXPECT_EQ(wrong, -1) << "first element trimmed wrongly";
  return s;
}

// Every k this suite cares about: the edges and a spread in between.
std::vector<std::int64_t> interesting_ks(std::int64_t n) {
  // (A filtering loop, not erase(remove_if): GCC 12 at -O1 warns falsely
  // (-Warray-bounds) about the latter on this initializer list.)
  std::vector<std::int64_t> ks;
  for (const std::int64_t k : {std::int64_t{0}, std::int64_t{1}, n / 10, n / 3, n / 2, (2 * n) / 3, n - 1, n})
    if (k >= 0 && k <= n) ks.push_back(k);
  return ks;
}

void expect_exact_for_all_ks(const std::vector<double>& x, const std::string& what) {
  for (const std::size_t cap : {kRoomy, kMinSelectionBytes, std::size_t{1} << 16})
    for (const std::int64_t k : interesting_ks(static_cast<std::int64_t>(x.size()))) expect_exact(x, k, cap, what);
}

TEST(MagnitudeSelect, RandomData) {
  expect_exact_for_all_ks(normal_data(20000, 1), "normal");
  expect_exact_for_all_ks(normal_data(777, 2, 1e-3), "small normal");
}

TEST(MagnitudeSelect, ManyTiesFromFewLevels) {
  std::mt19937_64 rng(3);
  const double levels[] = {0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 0.25};
  std::vector<double> x(30000);
  for (auto& v : x) v = levels[rng() % std::size(levels)];
  expect_exact_for_all_ks(x, "few levels");
  // Cut at every level boundary and one off either side of it.
  for (const double level : {2.0, 1.0, 0.5, 0.25}) {
    const auto above = std::count_if(x.begin(), x.end(), [&](double v) { return std::fabs(v) >= level; });
    for (const std::int64_t k : {above - 1, static_cast<std::int64_t>(above), above + 1})
      expect_exact(x, k, kMinSelectionBytes, "level boundary");
  }
}

TEST(MagnitudeSelect, DenormalsAndSignedZeros) {
  std::mt19937_64 rng(4);
  std::vector<double> x(12000);
  for (auto& v : x) {
    const std::uint64_t r = rng();
    switch (r % 4) {
      case 0: v = 0.0; break;
      case 1: v = -0.0; break;
      default:  // a denormal: exponent field 0, random mantissa, random sign
        v = std::bit_cast<double>((r & 0x8000'0000'0000'0000ull) | ((r >> 3) & 0x000F'FFFF'FFFF'FFFFull));
    }
  }
  x[17] = std::numeric_limits<double>::denorm_min();
  x[18] = -std::numeric_limits<double>::denorm_min();
  x[19] = std::numeric_limits<double>::min();  // the smallest normal
  expect_exact_for_all_ks(x, "denormals and zeros");
}

TEST(MagnitudeSelect, NegativeZerosTieWithPositiveZeros) {
  // Only zeros of both signs past the first three: the kept zeros are the
  // lowest-indexed ones whatever their sign.
  std::vector<double> x(5000);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = i % 3 ? -0.0 : 0.0;
  x[4000] = 1.0, x[10] = -3.0, x[2] = 1e-310;
  for (const std::int64_t k : {1, 2, 3, 4, 5, 2500, 4999, 5000}) {
    const MagnitudeSelection s = expect_exact(x, k, kMinSelectionBytes, "signed zeros");
    if (k > 3) {
      EXPECT_EQ(s.threshold, 0.0);
      EXPECT_EQ(s.ties_kept, k - 3);
    }
  }
}

TEST(MagnitudeSelect, HugeExponentsAndInfinities) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> unit(1.0, 2.0);
  std::vector<double> x(9000);
  for (auto& v : x) {
    const int e = static_cast<int>(rng() % 2046) - 1022;  // every normal exponent
    v = std::ldexp(unit(rng), e) * (rng() % 2 ? 1 : -1);
  }
  for (std::size_t i = 0; i < x.size(); i += 97) x[i] = std::numeric_limits<double>::max() * (i % 2 ? 1 : -1);
  for (std::size_t i = 5; i < x.size(); i += 301) x[i] = std::numeric_limits<double>::infinity() * (i % 2 ? 1 : -1);
  expect_exact_for_all_ks(x, "huge exponents");
}

TEST(MagnitudeSelect, AllEqualEndsAfterOnePass) {
  std::vector<double> x(50000, -0.75);
  for (std::size_t i = 0; i < x.size(); i += 2) x[i] = 0.75;
  for (const std::int64_t k : interesting_ks(50000))
    EXPECT_EQ(expect_exact(x, k, kMinSelectionBytes, "all equal").passes, 1);
  const std::vector<double> zeros(50000, 0.0);
  EXPECT_EQ(expect_exact(zeros, 123, kMinSelectionBytes, "all zero").passes, 1);
}

TEST(MagnitudeSelect, EmptyTensor) {
  const std::vector<double> none;
  const MagnitudeSelection s = expect_exact(none, 0, kMinSelectionBytes, "empty");
  EXPECT_EQ(s.passes, 1);
  EXPECT_THROW(select_top_magnitudes(blocks_of(none, {3}), 0, 1, kRoomy), Error);
}

// Three magnitudes one unit in the last place apart, each thousands of times,
// with k inside the middle one: the candidates never fit the cap and never
// collapse to their extremes before the last digit, so every digit takes a
// pass: ceil(63 / b) of them.
TEST(MagnitudeSelect, WorstCaseTakesEveryDigitPass) {
  const std::uint64_t base = std::bit_cast<std::uint64_t>(1.0) + 4;  // a multiple of 4
  for (const auto& [cap, digit_bits] : {std::pair{kMinSelectionBytes, 9}, std::pair{std::size_t{1} << 16, 13},
                                        std::pair{std::size_t{1} << 19, 16}}) {
    const std::size_t copies = cap / 8;  // together three times the collecting room
    std::vector<double> x;
    for (std::size_t i = 0; i < 3 * copies; ++i) x.push_back(std::bit_cast<double>(base + i % 3) * (i % 5 ? 1 : -1));
    x.push_back(3.0), x.push_back(0.5);  // outside the bucket, so the first pass's extremes do not end it
    const auto k = static_cast<std::int64_t>(copies + copies / 2 + 1);
    const MagnitudeSelection s = expect_exact(x, k, cap, "worst case");
    EXPECT_EQ(s.passes, (63 + digit_bits - 1) / digit_bits) << "cap " << cap;
  }
}

TEST(MagnitudeSelect, PassCounts) {
  // Fits the cap: one collecting pass.
  const std::vector<double> small = normal_data(5000, 6);
  EXPECT_EQ(expect_exact(small, 2500, 5000 * 8, "fits").passes, 1);
  EXPECT_EQ(expect_exact(small, 0, kMinSelectionBytes, "k = 0").passes, 1);
  // k = N and k = 1 end at the first histogram's extremes.
  EXPECT_EQ(expect_exact(small, 5000, kMinSelectionBytes, "k = N").passes, 1);
  EXPECT_EQ(expect_exact(small, 1, kMinSelectionBytes, "k = 1").passes, 1);
  // The typical case: a million normal values under a 1 MiB cap, one
  // 65536-bucket histogram, then the k-th element's bucket is collected.
  const std::vector<double> big = normal_data(1'000'000, 7);
  EXPECT_EQ(expect_exact(big, 300'000, std::size_t{1} << 20, "typical").passes, 2);
  // Even when the whole tensor would fit: collecting a million values costs
  // more than the histogram pass that avoids it.
  EXPECT_EQ(expect_exact(big, 300'000, kRoomy, "roomy").passes, 2);
  // Under the smallest cap the same data needs more refinement, within the bound.
  const MagnitudeSelection tight = expect_exact(big, 300'000, kMinSelectionBytes, "tight");
  EXPECT_GT(tight.passes, 2);
  EXPECT_LE(tight.passes, 7);
}

TEST(MagnitudeSelect, BlockSizesDoNotMatter) {
  const std::vector<double> x = normal_data(4099, 8);
  const MagnitudeSelection reference = select_top_magnitudes(blocks_of(x, {4099}), 4099, 1234, kMinSelectionBytes);
  for (const auto& sizes : std::vector<std::vector<std::size_t>>{{1}, {2, 0}, {4098}, {5000}, {0, 0, 17}}) {
    const MagnitudeSelection s = select_top_magnitudes(blocks_of(x, sizes), 4099, 1234, kMinSelectionBytes);
    EXPECT_EQ(s.threshold, reference.threshold);
    EXPECT_EQ(s.ties_kept, reference.ties_kept);
    EXPECT_EQ(first_difference(streamed_mask(x, s, sizes), brute_force_mask(x, 1234)), -1);
  }
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return std::string("InputError: ") + e.what();
  } catch (const Error& e) {
    return std::string("Error: ") + e.what();
  }
  return "no error";
}

TEST(MagnitudeSelect, NanIsRefusedNamingTheElement) {
  std::vector<double> x = normal_data(3000, 9);
  x[2345] = std::numeric_limits<double>::quiet_NaN();
  x[2900] = -std::numeric_limits<double>::quiet_NaN();
  for (const std::int64_t k : {0, 1, 1500, 3000})
    for (const std::size_t cap : {kRoomy, kMinSelectionBytes}) {
      const std::string m = message_of([&] { select_top_magnitudes(blocks_of(x, kOddSizes), 3000, k, cap); });
      EXPECT_NE(m.find("InputError: element 2345 is NaN"), std::string::npos) << m;
    }
  // Every NaN pattern, down to the one just above +infinity's.
  for (const std::uint64_t bits : {0x7FF0'0000'0000'0001ull, 0xFFF0'0000'0000'0001ull, 0x7FFF'FFFF'FFFF'FFFFull,
                                   0xFFF8'0000'0000'0000ull}) {
    std::vector<double> y = normal_data(3000, 9);
    y[77] = std::bit_cast<double>(bits);
    const std::string m = message_of([&] { select_top_magnitudes(blocks_of(y, {64}), 3000, 10, kMinSelectionBytes); });
    EXPECT_NE(m.find("InputError: element 77 is NaN"), std::string::npos) << m;
  }
  // The trim refuses it too (a NaN that appeared after the selection).
  const std::vector<double> clean = normal_data(3000, 9);
  const MagnitudeSelection s = select_top_magnitudes(blocks_of(clean, {3000}), 3000, 10, kRoomy);
  MagnitudeTrim trim(s);
  std::vector<std::uint8_t> mask(3000);
  const std::string m = message_of([&] { trim.keep_mask(x, 0, mask); });
  EXPECT_NE(m.find("InputError: element 2345 is NaN"), std::string::npos) << m;
}

TEST(MagnitudeSelect, RefusesSourcesThatDisagreeWithThemselves) {
  const std::vector<double> x = normal_data(10000, 10);
  // Fewer or more elements than declared.
  EXPECT_NE(message_of([&] { select_top_magnitudes(blocks_of(x, {333}), 10001, 5, kRoomy); }).find("Error: magnitude"),
            std::string::npos);
  EXPECT_NE(message_of([&] { select_top_magnitudes(blocks_of(x, {333}), 9999, 5, kRoomy); }).find("Error: magnitude"),
            std::string::npos);
  // Data that changes between passes (each call perturbs it), caught by a
  // histogram pass (the smallest cap) and by a collecting one (after one
  // histogram of 200000 elements under 1 MiB).
  struct Case {
    std::size_t n, cap;
    bool second_pass_collects;
  };
  for (const Case& c : {Case{10000, kMinSelectionBytes, false}, Case{200000, std::size_t{1} << 20, true}}) {
    const std::size_t n = c.n, cap = c.cap;
    std::vector<double> drifting = normal_data(n, 12);
    int calls = 0;
    const BlockSource drift = [&](const BlockConsumer& consume) {
      if (calls++ > 0)
        for (auto& v : drifting) v *= 1.5;
      consume(drifting);
    };
    const auto count = static_cast<std::int64_t>(n);
    const std::string m = message_of([&] { select_top_magnitudes(drift, count, count / 2, cap); });
    EXPECT_NE(m.find("pass 2 found"), std::string::npos) << m;
    EXPECT_NE(m.find("the data changed between passes"), std::string::npos) << m;
    const std::vector<double> steady = normal_data(n, 12);
    // Unperturbed, the same selection ends with the second pass exactly when that pass collects.
    EXPECT_EQ(select_top_magnitudes(blocks_of(steady, {n}), count, count / 2, cap).passes == 2,
              c.second_pass_collects);
  }
  // Arguments out of range.
  EXPECT_THROW(select_top_magnitudes(blocks_of(x, {7}), 10000, 10001, kRoomy), Error);
  EXPECT_THROW(select_top_magnitudes(blocks_of(x, {7}), 10000, -1, kRoomy), Error);
  EXPECT_THROW(select_top_magnitudes(blocks_of(x, {7}), 10000, 5, kMinSelectionBytes - 1), Error);
}

TEST(MagnitudeSelect, TrimRefusesBlocksOutOfOrderAndChangedData) {
  const std::vector<double> x = normal_data(100, 11);
  const MagnitudeSelection s = select_top_magnitudes(blocks_of(x, {100}), 100, 30, kRoomy);
  std::vector<std::uint8_t> mask(100);
  {
    MagnitudeTrim trim(s);
    trim.keep_mask(std::span<const double>(x.data(), 10), 0, std::span<std::uint8_t>(mask.data(), 10));
    EXPECT_THROW(trim.keep_mask(std::span<const double>(x.data() + 20, 10), 20,
                                std::span<std::uint8_t>(mask.data(), 10)),
                 Error);
    EXPECT_THROW(trim.keep_mask(std::span<const double>(x.data() + 10, 10), 10,
                                std::span<std::uint8_t>(mask.data(), 9)),
                 Error);
    EXPECT_THROW(trim.finish(), Error);  // only 10 of 100 seen
  }
  {
    MagnitudeTrim trim(s);
    std::vector<double> longer(101, 1.0);
    std::vector<std::uint8_t> m(101);
    EXPECT_THROW(trim.keep_mask(longer, 0, m), Error);
  }
  {
    std::vector<double> changed = x;
    for (auto& v : changed) v *= 2;  // every element above the old threshold
    MagnitudeTrim trim(s);
    trim.keep_mask(changed, 0, mask);
    EXPECT_THROW(trim.finish(), Error);
  }
}

TEST(MagnitudeSelect, KeepCountForDensityFollowsPythonInt) {
  EXPECT_EQ(keep_count_for_density(0.29, 100), 28);  // 0.29 * 100 = 28.999999999999996
  EXPECT_EQ(keep_count_for_density(0.3, 10), 3);     // 3.0000000000000004
  EXPECT_EQ(keep_count_for_density(0.5, 7), 3);
  EXPECT_EQ(keep_count_for_density(0.0, 1000), 0);
  EXPECT_EQ(keep_count_for_density(0.01, 99), 0);
  EXPECT_EQ(keep_count_for_density(1.0, 1000), 1000);
  EXPECT_EQ(keep_count_for_density(7.5, 1000), 1000);
  EXPECT_EQ(keep_count_for_density(std::numeric_limits<double>::infinity(), 5), 5);
  EXPECT_EQ(keep_count_for_density(0.999, 0), 0);
  // Python: int(math.nextafter(1, 0) * (2**63 - 1)) == 2**63 - 1024.
  EXPECT_EQ(keep_count_for_density(std::nextafter(1.0, 0.0), std::numeric_limits<std::int64_t>::max()),
            std::numeric_limits<std::int64_t>::max() - 1023);
  EXPECT_THROW(keep_count_for_density(std::nan(""), 10), InputError);
  EXPECT_THROW(keep_count_for_density(-0.1, 10), InputError);
}

}  // namespace
}  // namespace soupkit::linalg
