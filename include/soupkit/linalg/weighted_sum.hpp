#pragma once
// The deterministic weighted sum every linear merge accumulates with:
//   acc[j] = w * x[j]   (first term)   or   acc[j] += w * x[j]   (later terms)
// over a raw block of n stored elements x of a floating-point dtype (F64,
// F32, F16 or BF16), each widened exactly to the accumulator's type first.
// The same IEEE operations in the same order on every machine and rank (no
// fused multiply-add, whatever vector unit runs it), so a sum of terms added
// in a fixed order is the same bytes however tensors are distributed.
#include "soupkit/io/dtype.hpp"

#include <cstddef>

namespace soupkit::linalg {

enum class Term { First, Next };  // acc = w x, or acc += w x

// Throws Error for a dtype that is not one of F64, F32, F16, BF16.
void weighted_sum(DType type, double* acc, double w, const std::byte* x, std::size_t n, Term term);
void weighted_sum(DType type, float* acc, float w, const std::byte* x, std::size_t n, Term term);

}  // namespace soupkit::linalg
