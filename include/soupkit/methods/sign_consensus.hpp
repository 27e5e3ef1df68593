#pragma once
// mergekit's sign consensus, get_mask(..., method="sum")
// (mergekit/merge_methods/generalized_task_arithmetic.py), per element: the
// elected sign is +1 where the sum of the models' values is >= 0 (a zero sum
// elects +1), else -1; a model agrees where the sign of its value equals it,
// so a zero value (pruned, unchanged, or weighted by 0) never agrees.
// TIES-style methods and SCE vote with it.

namespace soupkit {

inline double elected_sign(double sum) { return sum >= 0 ? 1.0 : -1.0; }

inline bool agrees(double value, double elected) {
  const double sign = value > 0 ? 1.0 : value < 0 ? -1.0 : 0.0;
  return sign == elected;
}

}  // namespace soupkit
