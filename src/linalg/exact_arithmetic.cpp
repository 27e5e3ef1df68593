#include "soupkit/linalg/exact_arithmetic.hpp"

#include "soupkit/util/error.hpp"

#include <array>

namespace soupkit::linalg {

int exact_sum_sign(std::span<const double> terms) {
  constexpr std::size_t kMaxTerms = 64;
  SOUPKIT_ERROR_IF(terms.size() > kMaxTerms, "exact sum of {} terms (at most {})", terms.size(), kMaxTerms);
  // Components of increasing magnitude, nonoverlapping (Shewchuk's
  // GROW-EXPANSION: each term added exactly by two-sums along them).
  std::array<double, kMaxTerms> expansion{};
  std::size_t size = 0;
  for (const double term : terms) {
    double q = term;
    for (std::size_t i = 0; i < size; ++i) {
      const double sum = q + expansion[i];
      const double virtual_e = sum - q;
      const double error = (q - (sum - virtual_e)) + (expansion[i] - virtual_e);
      expansion[i] = error;
      q = sum;
    }
    expansion[size++] = q;
  }
  for (std::size_t i = size; i-- > 0;)
    if (expansion[i] != 0) return expansion[i] > 0 ? 1 : -1;
  return 0;
}

}  // namespace soupkit::linalg
