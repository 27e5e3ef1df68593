#pragma once
// Exact comparisons on float64 data: error-free products and the exact sign
// of a sum of doubles. arcee_fusion compares each importance score with a
// threshold made of three other scores; when scores share a factor (every
// element of a vector has its vector's KL divergence) a tie in exact
// arithmetic is common, and rounded arithmetic would break it by chance,
// differently in every implementation. Exactly, it is decided once.
#include <cmath>
#include <span>

namespace soupkit::linalg {

// a x b exactly, as hi + lo: hi the rounded product, lo its rounding error
// (exact unless the product underflows).
struct ExactProduct {
  double hi = 0, lo = 0;
};
inline ExactProduct exact_product(double a, double b) {
  const double hi = a * b;
  return {hi, std::fma(a, b, -hi)};
}

// The sign (-1, 0 or +1) of the exact sum of `terms` (finite, their sum
// too), by Shewchuk's expansion arithmetic (the sum grown term by term into
// nonoverlapping components, the sign that of the largest). At most 64 terms.
int exact_sum_sign(std::span<const double> terms);

}  // namespace soupkit::linalg
