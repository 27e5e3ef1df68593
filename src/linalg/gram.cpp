#include "soupkit/linalg/gram.hpp"

#include <cmath>

namespace soupkit::linalg {

double Gram::squared_norm(const std::vector<double>& c) const {
  double q = 0;
  for (std::size_t i = 0; i < n_; ++i) {
    double row = 0;
    for (std::size_t j = 0; j < n_; ++j) row += (*this)(i, j) * c[j];
    q += c[i] * row;
  }
  return q < 0 ? 0.0 : q;  // (NaN stays NaN)
}

std::vector<double> Gram::times(const std::vector<double>& c) const {
  std::vector<double> out(n_, 0.0);
  for (std::size_t i = 0; i < n_; ++i)
    for (std::size_t j = 0; j < n_; ++j) out[i] += (*this)(i, j) * c[j];
  return out;
}

bool Gram::finite() const {
  for (const double v : g_)
    if (!std::isfinite(v)) return false;
  return true;
}

void GramAccumulator::add(const double* const* pieces, std::size_t length) {
  std::size_t pair = 0;
  for (std::size_t i = 0; i < n_; ++i)
    for (std::size_t j = i; j < n_; ++j, ++pair) {
      const double* x = pieces[i];
      const double* y = pieces[j];
      double s = 0;
      for (std::size_t k = 0; k < length; ++k) s += x[k] * y[k];
      partial_[pair] = s;
    }
  for (std::size_t p = 0; p < sums_.size(); ++p) sums_[p].add(partial_[p]);
}

Gram GramAccumulator::result() const {
  Gram g(n_);
  std::size_t pair = 0;
  for (std::size_t i = 0; i < n_; ++i)
    for (std::size_t j = i; j < n_; ++j, ++pair) g.set(i, j, sums_[pair].value());
  return g;
}

}  // namespace soupkit::linalg
