// The weighted-sum kernel of linear merges: acc = w x, then acc += w x, for
// every float dtype's raw elements, in double and in float. Values and
// weights are chosen so every product and sum is exact, so the expected
// results are exact whatever the order of rounding.
#include "soupkit/io/cast.hpp"
#include "soupkit/linalg/weighted_sum.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace soupkit::linalg {
namespace {

// Small integers and halves: exact in every float dtype.
const std::vector<double> kX = {0, 1, -2, 0.5, 3, -7.5, 64, 0.25, -1};
const std::vector<double> kY = {1, -1, 4, 2, -0.5, 1.5, -8, 0.75, 16};

std::vector<std::byte> stored(DType type, const std::vector<double>& values) {
  std::vector<std::byte> raw(values.size() * dtype_size(type));
  store_from_f64(type, values.data(), values.size(), raw.data());
  return raw;
}

template <class Acc>
void check(DType type) {
  const auto x = stored(type, kX), y = stored(type, kY);
  std::vector<Acc> acc(kX.size(), Acc(99));
  weighted_sum(type, acc.data(), Acc(0.75), x.data(), kX.size(), Term::First);
  for (std::size_t j = 0; j < kX.size(); ++j) EXPECT_EQ(acc[j], Acc(0.75 * kX[j])) << dtype_name(type) << " " << j;
  weighted_sum(type, acc.data(), Acc(-3), y.data(), kY.size(), Term::Next);
  for (std::size_t j = 0; j < kX.size(); ++j)
    EXPECT_EQ(acc[j], Acc(0.75 * kX[j] - 3 * kY[j])) << dtype_name(type) << " " << j;
  // n counts elements: nothing past them is touched.
  acc.assign(kX.size(), Acc(5));
  weighted_sum(type, acc.data(), Acc(2), x.data(), 3, Term::First);
  EXPECT_EQ(acc[2], Acc(-4));
  EXPECT_EQ(acc[3], Acc(5));
}

TEST(WeightedSum, EveryFloatDtypeInDoubleAndFloat) {
  for (DType type : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
    check<double>(type);
    check<float>(type);
  }
}

TEST(WeightedSum, OtherDtypesAreRefused) {
  std::vector<std::byte> raw(8);
  double acc = 0;
  EXPECT_THROW(weighted_sum(DType::I32, &acc, 1.0, raw.data(), 1, Term::First), Error);
  float acc32 = 0;
  EXPECT_THROW(weighted_sum(DType::BOOL, &acc32, 1.0f, raw.data(), 1, Term::Next), Error);
}

}  // namespace
}  // namespace soupkit::linalg
