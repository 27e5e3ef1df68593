// Rounding of the dtype conversions, checked against the definition of
// round-to-nearest-even (nearest neighbour, ties to the even pattern).
#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace soupkit {
namespace {

// The two bf16 values around x (as doubles): truncation and the next one up.
void expect_nearest_even_bf16(double x, std::uint16_t got) {
  const double value = bf16_to_f32(got);
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  // Neighbours of the result in the same sign's direction.
  const std::uint16_t mag = got & 0x7fff;
  for (int delta : {-1, 1}) {
    if ((mag == 0 && delta < 0) || mag + delta >= 0x7f80) continue;
    const double other = bf16_to_f32(static_cast<std::uint16_t>(sign | (mag + delta)));
    const double d_got = std::fabs(x - value), d_other = std::fabs(x - other);
    ASSERT_LE(d_got, d_other) << "x=" << x << " got " << value << " but " << other << " is nearer";
    if (d_got == d_other) {
      ASSERT_EQ(got & 1, 0) << "tie must go to even for x=" << x;
    }
  }
}

TEST(Cast, Bf16RoundTripsEveryFinitePattern) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = bf16_to_f32(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f), bits);
    ASSERT_EQ(f64_to_bf16(static_cast<double>(f)), bits);
  }
}

TEST(Cast, FloatToBf16IsNearestEven) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(bits(rng));
    if (!std::isfinite(x) || std::fabs(x) > 3.3e38f) continue;
    expect_nearest_even_bf16(x, f32_to_bf16(x));
  }
  // Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);           // to even (1.0)
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);       // to even (1 + 2^-6)
}

TEST(Cast, DoubleToBf16RoundsOnce) {
  // Through float, 1 + 2^-8 + 2^-30 becomes the tie 1 + 2^-8 and then 1.0;
  // rounded directly it is above the midpoint and must go up.
  EXPECT_EQ(f64_to_bf16(1.0 + 0x1p-8 + 0x1p-30), 0x3f81);
  EXPECT_EQ(f32_to_bf16(static_cast<float>(1.0 + 0x1p-8 + 0x1p-30)), 0x3f80);
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  for (int i = 0; i < 100000; ++i) {
    const double x = normal(rng) * std::ldexp(1.0, static_cast<int>(rng() % 200) - 100);
    expect_nearest_even_bf16(x, f64_to_bf16(x));
  }
  EXPECT_EQ(f64_to_bf16(1e300), 0x7f80);
  EXPECT_EQ(f64_to_bf16(-1e300), 0xff80);
  EXPECT_EQ(f64_to_bf16(1e-300), 0x0000);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f64_to_bf16(std::nan("")))));
  // Subnormal bf16: 2^-133 is the smallest.
  EXPECT_EQ(f64_to_bf16(0x1p-133), 0x0001);
  EXPECT_EQ(f64_to_bf16(0x1p-134), 0x0000);  // tie between 0 and 2^-133 -> even (0)
  EXPECT_EQ(f64_to_bf16(0x1.8p-134), 0x0001);
}

TEST(Cast, DoubleToBf16TiesCarriesAndOverflow) {
  // Exact ties between neighbours in many binades go to the even pattern;
  // a hair above a tie goes up, a hair below goes down.
  std::mt19937_64 rng(5);
  for (int i = 0; i < 20000; ++i) {
    const auto lo_bits = static_cast<std::uint16_t>(0x0080 + rng() % (0x7f7f - 0x0080));  // normal, below max
    const double lo = bf16_to_f32(lo_bits), hi = bf16_to_f32(static_cast<std::uint16_t>(lo_bits + 1));
    const double mid = (lo + hi) / 2;  // exact in double
    const std::uint16_t even = (lo_bits & 1) ? lo_bits + 1 : lo_bits;
    ASSERT_EQ(f64_to_bf16(mid), even) << mid;
    ASSERT_EQ(f64_to_bf16(-mid), even | 0x8000) << -mid;
    ASSERT_EQ(f64_to_bf16(std::nextafter(mid, 1e300)), lo_bits + 1) << mid;
    ASSERT_EQ(f64_to_bf16(std::nextafter(mid, 0.0)), lo_bits) << mid;
  }
  // Rounding up carries into the next binade: 2 - 2^-9 -> 2.0.
  EXPECT_EQ(f64_to_bf16(2.0 - 0x1p-9), 0x4000);
  // The largest bf16, the tie above it (-> infinity), values just below.
  const double max = bf16_to_f32(0x7f7f);
  EXPECT_EQ(f64_to_bf16(max), 0x7f7f);
  EXPECT_EQ(f64_to_bf16(max + 0x1p119), 0x7f80);  // halfway to 2^128: even is infinity
  EXPECT_EQ(f64_to_bf16(max + 0x1p118), 0x7f7f);
  EXPECT_EQ(f64_to_bf16(0x1p128), 0x7f80);
  EXPECT_EQ(f64_to_bf16(-0x1p200), 0xff80);
  // Around the smallest normal (the boundary of the fast path).
  EXPECT_EQ(f64_to_bf16(0x1p-126), 0x0080);
  EXPECT_EQ(f64_to_bf16(std::nextafter(0x1p-126, 0.0)), 0x0080);  // rounds up to the smallest normal
  EXPECT_EQ(f64_to_bf16(0x1p-127), 0x0040);                        // subnormal
  EXPECT_EQ(f64_to_bf16(-0.0), 0x8000);
}

TEST(Cast, HalfConversionsAreNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);          // halfway to the next binade: overflows to inf
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);   // tie to even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(f64_to_f16(1.0 + 0x1p-11 + 0x1p-40), 0x3c01);  // no double rounding from double
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f = f16_to_f32(bits);
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_f16(f), bits);
    }
  }
}

TEST(Cast, CastElementsConvertsBuffersAndRejectsIntegers) {
  const float in[3] = {1.0f, -2.5f, 0.1f};
  std::byte bf[6], back[12];
  cast_elements(DType::F32, DType::BF16, reinterpret_cast<const std::byte*>(in), 3, bf);
  cast_elements(DType::BF16, DType::F32, bf, 3, back);
  float out[3];
  std::memcpy(out, back, 12);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.5f);
  EXPECT_NEAR(out[2], 0.1f, 0.001f);
  EXPECT_THROW(cast_elements(DType::I32, DType::F32, bf, 1, back), InputError);
}

// An empty tensor (a transplant with no new tokens) hands these functions
// the data() of empty vectors, which is null: memcpy(null, null, 0) is
// undefined behaviour, reported by the sanitizer build (UBSan nonnull-attribute).
TEST(Cast, NoElementsFromEmptyVectorsIsANoOp) {
  const std::vector<std::byte> no_bytes;
  std::vector<float> no_floats;
  std::vector<double> no_doubles;
  std::vector<std::byte> no_output;
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    load_as_f32(t, no_bytes.data(), 0, no_floats.data());
    load_as_f64(t, no_bytes.data(), 0, no_doubles.data());
    store_from_f32(t, no_floats.data(), 0, no_output.data());
    store_from_f64(t, no_doubles.data(), 0, no_output.data());
    cast_elements(t, t, no_bytes.data(), 0, no_output.data());
    cast_elements(t, DType::F32, no_bytes.data(), 0, no_output.data());
  }
  EXPECT_TRUE(no_output.empty());
}

#if defined(__FLT16_MANT_DIG__)
// The software half conversions (used where the compiler has no _Float16)
// must give exactly _Float16's bits: every half pattern, and floats/doubles
// at, just below and just above every rounding midpoint, plus a sweep.
TEST(Cast, SoftwareHalfMatchesFloat16BitForBit) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    ASSERT_EQ(std::bit_cast<std::uint32_t>(f16_to_f32_soft(bits)), std::bit_cast<std::uint32_t>(f16_to_f32(bits)))
        << std::hex << "half 0x" << b;
  }
  const auto check_float = [](std::uint32_t u) {
    const float f = std::bit_cast<float>(u);
    ASSERT_EQ(f64_to_f16_soft(f), f32_to_f16(f)) << std::hex << "float 0x" << u;
  };
  const auto check_double = [](std::uint64_t u) {
    const double d = std::bit_cast<double>(u);
    ASSERT_EQ(f64_to_f16_soft(d), f64_to_f16(d)) << std::hex << "double 0x" << u;
  };
  // A half has 10 mantissa bits: a float drops 13, a double 42; midpoints
  // sit at bit 12 / bit 41 (and lower for results that are subnormal halves).
  for (std::uint32_t high = 0; high < (1u << 19); ++high)
    for (std::uint32_t low : {0x0000u, 0x0001u, 0x0fffu, 0x1000u, 0x1001u, 0x1fffu})
      check_float(high << 13 | low);
  for (std::uint32_t u = 0; u < 0xffffffffu - 4093u; u += 4093u) check_float(u);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1'000'000; ++i) {
    const std::uint64_t u = rng();
    check_double(u);
    // The same sign and exponent with the dropped bits at a midpoint +-1.
    for (std::uint64_t low : {(std::uint64_t{1} << 41) - 1, std::uint64_t{1} << 41, (std::uint64_t{1} << 41) + 1})
      check_double((u & ~((std::uint64_t{1} << 42) - 1)) | low);
  }
  for (int exponent = 1023 - 30; exponent < 1023 + 17; ++exponent)  // halves' range, subnormals included
    for (int i = 0; i < 20'000; ++i) check_double((std::uint64_t(exponent) << 52) | (rng() >> 12) | (rng() & (std::uint64_t{1} << 63)));
}
#endif

}  // namespace
}  // namespace soupkit
