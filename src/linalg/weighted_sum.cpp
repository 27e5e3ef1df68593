#include "soupkit/linalg/weighted_sum.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"

#include <cstdint>
#include <cstring>

namespace soupkit::linalg {
namespace {

// Widens one stored element to the accumulator's type.
template <class Acc, DType D>
inline Acc widen(const std::byte* p) {
  if constexpr (D == DType::F64) {
    double v;
    std::memcpy(&v, p, 8);
    return static_cast<Acc>(v);
  } else if constexpr (D == DType::F32) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  } else {
    std::uint16_t b;
    std::memcpy(&b, p, 2);
    return D == DType::BF16 ? bf16_to_f32(b) : f16_to_f32(b);
  }
}

// Compiled for AVX-512, AVX2 and baseline x86-64, chosen at run time: the
// sum is memory-bound, but with 2-wide SSE2 vectors the widening and
// multiply-add cost as much as the reading (docs/benchmarks.md). Every
// version does the same IEEE operations per element (this file is compiled
// with -ffp-contract=off: no fused multiply-add), so results do not depend
// on the machine's vector units.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SOUPKIT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SOUPKIT_VECTOR_CLONES
#endif

template <class Acc, DType D>
SOUPKIT_VECTOR_CLONES void accumulate_typed(Acc* acc, Acc w, const std::byte* src, std::size_t n, bool first) {
  constexpr std::size_t size = D == DType::F64 ? 8 : D == DType::F32 ? 4 : 2;
  if (first)
    for (std::size_t j = 0; j < n; ++j) acc[j] = w * widen<Acc, D>(src + size * j);
  else
    for (std::size_t j = 0; j < n; ++j) acc[j] += w * widen<Acc, D>(src + size * j);
}

template <class Acc>
void accumulate(DType type, Acc* acc, Acc w, const std::byte* src, std::size_t n, Term term) {
  const bool first = term == Term::First;
  switch (type) {
    case DType::F64: return accumulate_typed<Acc, DType::F64>(acc, w, src, n, first);
    case DType::F32: return accumulate_typed<Acc, DType::F32>(acc, w, src, n, first);
    case DType::BF16: return accumulate_typed<Acc, DType::BF16>(acc, w, src, n, first);
    case DType::F16: return accumulate_typed<Acc, DType::F16>(acc, w, src, n, first);
    default: throw Error(fmt::format("internal: cannot sum {} tensors", dtype_name(type)));
  }
}

}  // namespace

void weighted_sum(DType type, double* acc, double w, const std::byte* x, std::size_t n, Term term) {
  accumulate<double>(type, acc, w, x, n, term);
}

void weighted_sum(DType type, float* acc, float w, const std::byte* x, std::size_t n, Term term) {
  accumulate<float>(type, acc, w, x, n, term);
}

}  // namespace soupkit::linalg
