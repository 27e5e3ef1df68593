#pragma once
// A float64 sum whose error does not grow with the number of terms:
// Neumaier's variant of Kahan summation. Whole-tensor statistics (the Gram
// matrices of gram.hpp, the softmax sums and KL divergences of
// arcee_fusion) add up millions of terms in flat order; a plain running sum
// loses about log2(n) bits there, this one stays within about an ulp of the
// exact sum of the terms whatever n, and the order of the terms is fixed by
// the tensor, so the result does not depend on how rows are split into
// blocks or over ranks.
#include <cmath>

namespace soupkit::linalg {

class CompensatedSum {
 public:
  void add(double x) {
    const double t = sum_ + x;
    // The low-order part lost by the addition, from whichever term is smaller.
    if (std::fabs(sum_) >= std::fabs(x))
      compensation_ += (sum_ - t) + x;
    else
      compensation_ += (x - t) + sum_;
    sum_ = t;
  }
  // The sum; an infinite or NaN running sum as it is (its compensation
  // would be NaN).
  double value() const { return std::isfinite(sum_) ? sum_ + compensation_ : sum_; }

 private:
  double sum_ = 0, compensation_ = 0;
};

}  // namespace soupkit::linalg
