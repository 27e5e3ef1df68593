#pragma once
// Distributed counterpart of gram_svd.hpp on a BLACS grid: the Gram matrix
// by PBLAS pdsyrk, its eigen-decomposition by ScaLAPACK pdsyevd (float64),
// and the spectral reweighting by pdgemm. Every rank of the grid calls each
// function with its local piece of the same global matrix; a failure is
// raised on every rank.
#include "soupkit/linalg/process_grid.hpp"

#include <vector>

namespace soupkit::linalg {

struct DistributedGramSvd {
  bool left = true;              // eigenvectors are left singular vectors (m <= n)
  std::int64_t m = 0, n = 0;
  std::vector<double> singular;  // all r values, descending, on every rank
  MatrixLayout z_layout;         // r x r eigenvectors, ascending eigenvalue order (ScaLAPACK's)
  std::vector<double> z;         // local piece of the eigenvectors
  std::int64_t r() const { return m < n ? m : n; }
};

// x: local piece (column-major, x_layout.lld()) of the global m x n matrix.
DistributedGramSvd pdgram_svd(const ProcessGrid& grid, const MatrixLayout& x_layout, const double* x);

// x <- lambda_low x + (lambda_high - lambda_low) P_k x, distributed.
void pdspectral_reweight(const ProcessGrid& grid, const MatrixLayout& x_layout, double* x, const DistributedGramSvd& svd,
                         std::int64_t k, double lambda_high, double lambda_low);

}  // namespace soupkit::linalg
