#pragma once
// Tensors are computed and written row range by row range, so memory does
// not depend on their size.
#include <algorithm>
#include <cstdint>

namespace soupkit {

// Calls body(first, count) for consecutive ranges of at most `step` (>= 1)
// rows covering [0, rows), and once with count 0 for a tensor without rows
// (which must still be written).
template <class Body>
void for_each_row_range(std::uint64_t rows, std::uint64_t step, Body&& body) {
  for (std::uint64_t first = 0; first < rows || (rows == 0 && first == 0); first += step) {
    body(first, std::min(step, rows - first));
    if (rows == 0) break;
  }
}

}  // namespace soupkit
