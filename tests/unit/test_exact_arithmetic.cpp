// Error-free products and the exact sign of a sum against integer
// arithmetic: terms m x 2^e with small integers m and exponents over 80
// binades, whose exact sum a 128-bit integer holds; sums that cancel to 0,
// that cancel to one unit of the smallest term, and ties broken only by the
// low parts of products.
#include "soupkit/linalg/exact_arithmetic.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace soupkit::linalg {
namespace {

__extension__ typedef __int128 Wide;

int sign_of(Wide x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }

TEST(ExactArithmetic, SignOfSumsAgainstIntegers) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 20000; ++trial) {
    const std::size_t n = 1 + rng() % 16;
    std::vector<double> terms;
    Wide exact = 0;  // in units of 2^-40
    for (std::size_t i = 0; i < n; ++i) {
      const auto m = static_cast<std::int64_t>(rng() % (1u << 20)) - (1 << 19);
      const int e = static_cast<int>(rng() % 81) - 40;
      terms.push_back(std::ldexp(static_cast<double>(m), e));
      exact += static_cast<Wide>(m) << (e + 40);
    }
    if (trial % 3 == 0) {  // cancel it to exactly 0, or to one unit of 2^-40
      const double rest = -static_cast<double>(exact) * std::ldexp(1.0, -40);
      const Wide back = static_cast<Wide>(std::ldexp(rest, 40));
      if (back == -exact) {
        terms.push_back(rest);
        exact = 0;
        if (trial % 2) terms.push_back(std::ldexp(1.0, -40)), exact = 1;
      }
    }
    ASSERT_EQ(exact_sum_sign(terms), sign_of(exact)) << "trial " << trial;
  }
}

TEST(ExactArithmetic, ProductsAndTiesOnlyTheLowPartsDecide) {
  // a b - a b' with b' the next double after b: both products often round
  // to the same double, and only their low parts tell them apart.
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<double> uniform(1, 2);
  int same_rounding = 0;
  for (int trial = 0; trial < 1000; ++trial) {
    const double a = uniform(rng), b = uniform(rng), b_next = std::nextafter(b, 3.0);
    const ExactProduct p = exact_product(a, b), q = exact_product(a, b_next);
    same_rounding += p.hi == q.hi;
    EXPECT_EQ(exact_sum_sign(std::vector<double>{p.hi, p.lo, -q.hi, -q.lo}), -1);
    EXPECT_EQ(exact_sum_sign(std::vector<double>{q.hi, q.lo, -p.hi, -p.lo}), 1);
    EXPECT_EQ(exact_sum_sign(std::vector<double>{p.hi, p.lo, -p.hi, -p.lo}), 0);
  }
  EXPECT_GT(same_rounding, 100);
  // k d_j against k (d_m + 1.5 (d_3 - d_1)) when d_j equals it exactly: 0, whatever k rounds products to.
  const double k = 0.1, dj = 0.078125, dm = 0.03125, d3 = 0.046875, d1 = 0.015625;
  const ExactProduct sj = exact_product(k, dj), sm = exact_product(k, dm), s3 = exact_product(k, d3),
                     s1 = exact_product(k, d1);
  EXPECT_EQ(exact_sum_sign(std::vector<double>{2 * sj.hi, 2 * sj.lo, -2 * sm.hi, -2 * sm.lo, -s3.hi, -s3.hi, -s3.hi,
                                               -s3.lo, -s3.lo, -s3.lo, s1.hi, s1.hi, s1.hi, s1.lo, s1.lo, s1.lo}),
            0);
  EXPECT_EQ(exact_sum_sign(std::vector<double>{}), 0);
}

}  // namespace
}  // namespace soupkit::linalg
