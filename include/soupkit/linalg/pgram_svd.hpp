#pragma once
// Distributed counterpart of gram_svd.hpp on a P x 1 BLACS grid (rows of the
// matrix in block-cyclic row blocks): the Gram matrix of the smaller side, its
// tridiagonal reduction (ScaLAPACK pdsytrd) and eigenvalues, and the spectral
// reweighting, which computes only the eigenvectors it projects on, back-
// transforms them (pdormtr) and projects (pdgemm), all in float64. Every rank
// of the grid calls each function with its local piece of the same global
// matrix; a failure is raised on every rank.
#include "soupkit/linalg/process_grid.hpp"

#include <vector>

namespace soupkit::linalg {

struct DistributedGramSvd {
  bool left = true;              // eigenvectors are left singular vectors (m <= n)
  std::int64_t m = 0, n = 0;
  std::vector<double> singular;  // all r values, descending, on every rank
  // The reduced Gram matrix: this rank's piece of pdsytrd's reflectors (r x r)
  // and of their scalars, and the tridiagonal on every rank.
  MatrixLayout gram_layout;
  std::vector<double> reflectors, tau, diagonal, offdiagonal;
  std::int64_t r() const { return m < n ? m : n; }
};

// x: local piece (column-major, x_layout.lld()) of the global m x n matrix.
DistributedGramSvd pdgram_svd(const ProcessGrid& grid, const MatrixLayout& x_layout, const double* x);

// The Gram G = X^T X of an m x n matrix with m > n whose rows are spread
// over the P x 1 grid (x_layout), into g: the lower triangle of gram_layout's
// piece (r = n, 64 x 64 blocks). Each rank's rows by dgemm, summed over the
// ranks by one reduce-scatter per 256-column panel. Exposed for the step
// benchmark (tests/bench/grid_steps.cpp).
void pdgram_of_distributed_rows(const ProcessGrid& grid, const MatrixLayout& x_layout, const double* x,
                                const MatrixLayout& gram_layout, double* g);

// x <- lambda_low x + (lambda_high - lambda_low) P_k x, distributed. Each
// rank computes a slice of the eigenvectors it projects on (MRRR on the
// tridiagonal, eigenvector_slices) and sends every other rank its rows.
void pdspectral_reweight(const ProcessGrid& grid, const MatrixLayout& x_layout, double* x, const DistributedGramSvd& svd,
                         std::int64_t k, double lambda_high, double lambda_low);

// Eigenvectors il..iu (1-based, ascending) of the tridiagonal (diagonal,
// offdiagonal; `singular`, the square roots of its eigenvalues, descending)
// into z: this rank's rows (z_layout, kBlock row blocks) of the r x
// (iu - il + 1) matrix. Each rank computes the slice eigenvector_slices
// gives it by MRRR and sends every other rank its rows of it: the work per
// rank falls with the ranks unless no gap allows a split. Every argument is
// the same on every rank (z_layout up to the local piece). Exposed for the
// step benchmark.
void pdtridiagonal_eigenvectors(const ProcessGrid& grid, const std::vector<double>& diagonal,
                                const std::vector<double>& offdiagonal, const std::vector<double>& singular, int il,
                                int iu, const MatrixLayout& z_layout, double* z);

// Splits eigenpairs il..iu (1-based, of the ascending eigenvalues
// `ascending`) into `parts` contiguous slices, one MRRR run each: part p
// takes bounds[p] .. bounds[p + 1] - 1, bounds[0] = il, bounds[parts] =
// iu + 1, and a part may be empty. A boundary falls only between eigenvalues
// whose gap is at least kSliceRelativeGap of the larger (MRRR's own cluster
// threshold, so no cluster is split) and kSliceAbsoluteGap of the largest
// magnitude (vectors computed apart are orthogonal to ~eps ||T|| / gap, here
// <= 1e-8); of those, the nearest to an even share. The same spectrum gives
// the same slices on every rank.
inline constexpr double kSliceRelativeGap = 1e-3;
inline constexpr double kSliceAbsoluteGap = 1e-8;
std::vector<int> eigenvector_slices(const std::vector<double>& ascending, int il, int iu, int parts);

}  // namespace soupkit::linalg
