#pragma once
// Thin SVD of an m x n matrix through the eigen-decomposition of its smaller
// Gram matrix (X X^T or X^T X) in float64, and the spectral reweighting
// MonoSoup applies with it. Only the singular values and the singular basis
// of the smaller side are formed: never U S V^T in full.
//
// Accuracy: eigenvalues of the Gram matrix carry absolute error ~eps64 s_1^2,
// so singular values below ~1e-8 s_1 are noise; everything MonoSoup derives
// from them (entropy, energy fractions, projector) is insensitive to that.
// See docs/monosoup.md for the measurements behind choosing this route.
#include <cstdint>
#include <vector>

namespace soupkit::linalg {

struct GramSvd {
  std::int64_t m = 0, n = 0;
  bool left = true;               // basis holds left singular vectors (m <= n), else right ones
  std::vector<double> singular;   // r = min(m, n) values, descending
  std::vector<double> basis;      // r x r, column-major; column j goes with singular[j]
  std::int64_t r() const { return m < n ? m : n; }
};

// x: row-major m x n. Throws Error if LAPACK fails.
GramSvd dgram_svd(const double* x, std::int64_t m, std::int64_t n);

// In place: x <- lambda_low * x + (lambda_high - lambda_low) * P_k x, where
// P_k x is x's part in its top-k singular subspace (U_k U_k^T x = x V_k V_k^T).
// Projects onto whichever of the top-k or the remaining r-k directions is
// smaller (P_k x = x - P_rest x).
void dspectral_reweight(double* x, const GramSvd& svd, std::int64_t k, double lambda_high, double lambda_low);

}  // namespace soupkit::linalg
