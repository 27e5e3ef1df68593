#include "soupkit/linalg/lapack.hpp"

#include "soupkit/util/error.hpp"

#include <climits>
#include <cmath>

namespace soupkit::linalg {

int to_lapack_int(std::int64_t value, const char* what) {
  SOUPKIT_ERROR_IF(value < 0 || value > INT_MAX, "{} = {} does not fit LAPACK's 32-bit integers", what, value);
  return static_cast<int>(value);
}

int workspace_size(double query_result) {
  const double padded = std::ceil(query_result * (1.0 + 1e-6)) + 1.0;
  SOUPKIT_ERROR_IF(!(padded < static_cast<double>(INT_MAX)), "LAPACK workspace of {} elements is too large", padded);
  return static_cast<int>(padded);
}

}  // namespace soupkit::linalg
