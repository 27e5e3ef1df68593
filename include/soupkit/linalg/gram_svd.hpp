#pragma once
// Thin SVD of an m x n matrix through the eigen-decomposition of its smaller
// Gram matrix (X X^T or X^T X) in float64, and the spectral reweighting
// MonoSoup applies with it. Only the singular values and the singular
// vectors MonoSoup actually uses are formed: never U S V^T in full.
//
// dgram_svd: Gram (dsyrk), tridiagonal reduction (dsytrd), and the
// tridiagonal's eigenvalues (dsterf). dspectral_reweight then computes just
// the k (or r - k) eigenvectors it projects on, by MRRR (dstemr) on the
// tridiagonal and back-transformed (dormtr): for MonoSoup's typical k this is
// 2-3x cheaper than a full dsyevd (docs/monosoup.md).
//
// Accuracy: eigenvalues of the Gram matrix carry absolute error ~eps64 s_1^2,
// so singular values below ~1e-8 s_1 are noise; everything MonoSoup derives
// from them (entropy, energy fractions, projector) is insensitive to that.
#include <cstdint>
#include <vector>

namespace soupkit::linalg {

struct GramSvd {
  std::int64_t m = 0, n = 0;
  bool left = true;               // eigenvectors are left singular vectors (m <= n), else right ones
  std::vector<double> singular;   // r = min(m, n) values, descending
  // The tridiagonal reduction of the Gram matrix: dsytrd's reflectors and
  // the tridiagonal itself (r diagonal, r - 1 off-diagonal entries).
  std::vector<double> reflectors, tau, diagonal, offdiagonal;
  std::int64_t r() const { return m < n ? m : n; }
};

// x: row-major m x n. Throws Error if LAPACK fails.
GramSvd dgram_svd(const double* x, std::int64_t m, std::int64_t n);

// The square roots of the eigenvalues, descending, of the symmetric
// tridiagonal with diagonal d and off-diagonal e (a Gram matrix's reduction).
std::vector<double> gram_singular_values(std::vector<double> d, std::vector<double> e);

// Eigenvectors il..iu (1-based, ascending eigenvalue order) of the
// symmetric tridiagonal with diagonal d (r entries) and off-diagonal e
// (r - 1 entries and one spare), r x (iu - il + 1) column-major, by MRRR.
std::vector<double> tridiagonal_eigenvectors(std::vector<double> d, std::vector<double> e, int il, int iu);
// The same by the index range alone, whatever its share: memory r x
// (iu - il + 1), never r x r (the grid path's replicated copy).
std::vector<double> tridiagonal_eigenvectors_in_range(std::vector<double> d, std::vector<double> e, int il, int iu);

// The eigenvectors for eigenvalues il..iu (1-based, ascending order) as an
// r x (iu - il + 1) column-major matrix.
std::vector<double> dgram_eigenvectors(const GramSvd& svd, int il, int iu);

// In place: x <- lambda_low * x + (lambda_high - lambda_low) * P_k x, where
// P_k x is x's part in its top-k singular subspace (U_k U_k^T x = x V_k V_k^T).
// Projects onto whichever of the top-k or the remaining r-k directions is
// smaller (P_k x = x - P_rest x).
void dspectral_reweight(double* x, const GramSvd& svd, std::int64_t k, double lambda_high, double lambda_low);

}  // namespace soupkit::linalg
