#include "soupkit/io/cast.hpp"

#include "soupkit/util/error.hpp"

#include <cmath>
#include <limits>
#include <vector>

namespace soupkit {

namespace {

// Rounding by scaling: exact for every double, including results that are
// bf16 subnormals, but ~20x slower than the bit manipulation below.
std::uint16_t f64_to_bf16_scaled(double value) {
  const std::uint16_t sign = std::signbit(value) ? 0x8000u : 0u;
  if (std::isnan(value)) return sign | 0x7fc0u;
  const double a = std::fabs(value);
  if (std::isinf(a)) return sign | 0x7f80u;
  if (a == 0.0) return sign;
  constexpr int kMantissaBits = 7, kBias = 127, kMinExp = 1 - kBias;
  int e2 = 0;
  std::frexp(a, &e2);  // a = f * 2^e2, f in [0.5, 1)
  const int exponent = std::max(e2 - 1, kMinExp);
  // Quantum of the target format at this exponent; dividing by a power of two
  // is exact, so nearbyint (round-to-nearest-even mode) rounds exactly once.
  const double quantum = std::ldexp(1.0, exponent - kMantissaBits);
  const double rounded = std::nearbyint(a / quantum) * quantum;
  const double max_finite = std::ldexp(255.0 / 128.0, 127);  // (2 - 2^-7) * 2^127
  if (rounded > max_finite) return sign | 0x7f80u;
  // `rounded` is exactly representable as float, whose top 16 bits are the answer.
  return sign | static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(static_cast<float>(rounded)) >> 16);
}

// Where the result is a normal bf16, zero or an overflow, bf16's quantum is
// 2^-7 of the value's binade, i.e. bit 45 of the double's mantissa: round
// the 64-bit pattern to nearest even at that bit (a carry into the exponent
// is the correct next binade); the value is then exact in float, or beyond
// its range and converts to infinity. (Double subnormals round to a signed
// zero here too, correctly.) Branch-free, so loops over it vectorise.
inline std::uint16_t f64_to_bf16_bits(double value) {
  constexpr std::uint64_t kDropped = (std::uint64_t{1} << 45) - 1, kHalf = std::uint64_t{1} << 44;
  std::uint64_t u = std::bit_cast<std::uint64_t>(value);
  u += kHalf - 1 + ((u >> 45) & 1);  // past the midpoint, or on it with an odd kept bit: carry
  u &= ~kDropped;
  return static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(static_cast<float>(std::bit_cast<double>(u))) >> 16);
}

// Values f64_to_bf16_bits does not handle: results that are bf16
// subnormals (exponent below float's smallest normal, but not a double
// zero/subnormal), and NaN/infinity.
inline bool needs_scaled_bf16(double value) {
  const std::uint64_t exponent = (std::bit_cast<std::uint64_t>(value) >> 52) & 0x7ff;
  return (exponent != 0 && exponent < 1023 - 126) || exponent == 0x7ff;
}

// memcpy with a null pointer is undefined even for 0 bytes, and an empty
// std::vector's data() may be null (found by UBSan: transplant copying the
// rows of no tokens).
inline void copy_bytes(void* dst, const void* src, std::size_t bytes) {
  if (bytes != 0) std::memcpy(dst, src, bytes);
}

}  // namespace

float f16_to_f32_soft(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0x1f)  // infinity, or NaN made quiet with its payload kept
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa ? 0x400000u | (mantissa << 13) : 0u));
  // Zero, subnormal (mantissa * 2^-24) and normal values are all exact in float.
  const float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -24)
                                        : std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(magnitude));
}

std::uint16_t f64_to_f16_soft(double value) {
  const auto u = std::bit_cast<std::uint64_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 48) & 0x8000u);
  if (std::isnan(value)) return sign | 0x7e00u | static_cast<std::uint16_t>((u >> 42) & 0x3ffu);
  const double a = std::fabs(value);
  if (std::isinf(a)) return sign | 0x7c00u;
  if (a == 0.0) return sign;
  // As f64_to_bf16_scaled: divide by the half quantum at a's exponent (exact,
  // a power of two), round once to nearest even, and encode.
  constexpr int kMantissaBits = 10, kMinExp = -14;
  int e2 = 0;
  std::frexp(a, &e2);
  const int exponent = std::max(e2 - 1, kMinExp);
  const double steps = std::nearbyint(std::ldexp(a, kMantissaBits - exponent));  // in units of the quantum
  if (std::ldexp(steps, exponent - kMantissaBits) > 65504.0) return sign | 0x7c00u;
  // steps is in [2^10, 2^11] for normals (2^11: rounded up into the next
  // binade) and below 2^10 for subnormals; adding the biased exponent field
  // (exponent + 14 for normals) to the steps encodes both, carry included.
  const auto field = static_cast<std::uint16_t>(exponent - kMinExp);
  return sign | static_cast<std::uint16_t>((field << kMantissaBits) + static_cast<std::uint16_t>(steps));
}

std::uint16_t f64_to_bf16(double value) {
  return needs_scaled_bf16(value) ? f64_to_bf16_scaled(value) : f64_to_bf16_bits(value);
}

void load_as_f32(DType type, const std::byte* src, std::size_t n, float* dst) {
  switch (type) {
    case DType::F32: copy_bytes(dst, src, n * 4); return;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = bf16_to_f32(b);
      }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = f16_to_f32(b);
      }
      return;
    default: throw InputError(fmt::format("cannot read {} as floating point", dtype_name(type)));
  }
}

void load_as_f64(DType type, const std::byte* src, std::size_t n, double* dst) {
  if (type == DType::F64) {
    copy_bytes(dst, src, n * 8);
    return;
  }
  // Chunked through float: F32/F16/BF16 are exact in float, and float in double.
  constexpr std::size_t kChunk = 4096;
  float buf[kChunk];
  for (std::size_t i = 0; i < n; i += kChunk) {
    const std::size_t m = std::min(kChunk, n - i);
    load_as_f32(type, src + i * dtype_size(type), m, buf);
    for (std::size_t j = 0; j < m; ++j) dst[i + j] = buf[j];
  }
}

void store_from_f32(DType type, const float* src, std::size_t n, std::byte* dst) {
  switch (type) {
    case DType::F32: copy_bytes(dst, src, n * 4); return;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        const double v = src[i];
        std::memcpy(dst + 8 * i, &v, 8);
      }
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t b = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t b = f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    default: throw InputError(fmt::format("cannot write floating point as {}", dtype_name(type)));
  }
}

void store_from_f64(DType type, const double* src, std::size_t n, std::byte* dst) {
  switch (type) {
    case DType::F64: copy_bytes(dst, src, n * 8); return;
    case DType::F32:
      for (std::size_t i = 0; i < n; ++i) {
        const float v = static_cast<float>(src[i]);
        std::memcpy(dst + 4 * i, &v, 4);
      }
      return;
    case DType::BF16:
      // The common case in a vectorised pass, then the rare values that need
      // scaling (measured: per-element f64_to_bf16 was 40-80% of a bf16 soup).
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t b = f64_to_bf16_bits(src[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      for (std::size_t i = 0; i < n; ++i)
        if (needs_scaled_bf16(src[i])) {
          const std::uint16_t b = f64_to_bf16_scaled(src[i]);
          std::memcpy(dst + 2 * i, &b, 2);
        }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t b = f64_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    default: throw InputError(fmt::format("cannot write floating point as {}", dtype_name(type)));
  }
}

void cast_elements(DType from, DType to, const std::byte* src, std::size_t n, std::byte* dst) {
  if (from == to) {
    copy_bytes(dst, src, n * dtype_size(from));
    return;
  }
  SOUPKIT_INPUT_ERROR_IF(!is_float_arith(from) || !is_float_arith(to), "cannot cast {} to {}",
                         dtype_name(from), dtype_name(to));
  constexpr std::size_t kChunk = 4096;
  if (from == DType::F64) {  // straight from double: one rounding only
    double buf[kChunk];
    for (std::size_t i = 0; i < n; i += kChunk) {
      const std::size_t m = std::min(kChunk, n - i);
      std::memcpy(buf, src + i * 8, m * 8);
      store_from_f64(to, buf, m, dst + i * dtype_size(to));
    }
    return;
  }
  float buf[kChunk];
  for (std::size_t i = 0; i < n; i += kChunk) {
    const std::size_t m = std::min(kChunk, n - i);
    load_as_f32(from, src + i * dtype_size(from), m, buf);
    store_from_f32(to, buf, m, dst + i * dtype_size(to));
  }
}

}  // namespace soupkit
