#pragma once
// Element conversions between the floating-point dtypes, rounding to nearest
// even. Half types are held as their raw 16-bit patterns.
#include "soupkit/io/dtype.hpp"

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace soupkit {

inline float bf16_to_f32(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

inline std::uint16_t f32_to_bf16(float value) {
  const auto u = std::bit_cast<std::uint32_t>(value);
  if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN: keep sign, force a quiet payload
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  const std::uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding_bias) >> 16);
}

// Software IEEE half conversions (round to nearest even, NaN payloads kept
// and quietened, as GCC's _Float16 does): the fallback for compilers without
// _Float16 on this target (clang before 15 on x86-64), and
// checked bit for bit against _Float16 by the unit tests.
float f16_to_f32_soft(std::uint16_t bits);
std::uint16_t f64_to_f16_soft(double value);

#if defined(__FLT16_MANT_DIG__)
inline float f16_to_f32(std::uint16_t bits) {
  return static_cast<float>(std::bit_cast<_Float16>(bits));
}

inline std::uint16_t f32_to_f16(float value) {
  return std::bit_cast<std::uint16_t>(static_cast<_Float16>(value));
}

inline std::uint16_t f64_to_f16(double value) {
  // GCC converts double -> _Float16 directly (no double rounding through float).
  return std::bit_cast<std::uint16_t>(static_cast<_Float16>(value));
}
#else
inline float f16_to_f32(std::uint16_t bits) { return f16_to_f32_soft(bits); }
// float -> double is exact, so this rounds once, as the direct conversion does.
inline std::uint16_t f32_to_f16(float value) { return f64_to_f16_soft(value); }
inline std::uint16_t f64_to_f16(double value) { return f64_to_f16_soft(value); }
#endif

// Rounds a double straight to bf16 (going through float could round twice).
std::uint16_t f64_to_bf16(double value);

// Widen `n` elements of a float-arith dtype to float / double.
void load_as_f32(DType type, const std::byte* src, std::size_t n, float* dst);
void load_as_f64(DType type, const std::byte* src, std::size_t n, double* dst);
// Narrow `n` elements to a float-arith dtype, rounding to nearest even.
void store_from_f32(DType type, const float* src, std::size_t n, std::byte* dst);
void store_from_f64(DType type, const double* src, std::size_t n, std::byte* dst);

// Converts `n` elements from one dtype to another. Same dtype: a byte copy.
// Otherwise both must be float-arith types (throws InputError if not).
void cast_elements(DType from, DType to, const std::byte* src, std::size_t n, std::byte* dst);

}  // namespace soupkit
