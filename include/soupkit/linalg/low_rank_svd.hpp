#pragma once
// Thin SVD of a rank-r product dW = scale * L R (L [m, r], R [r, n], r <= m, n)
// without forming dW: thin QRs L = Qa Ra and R^T = Qb Rb (dgeqrf, dorgqr), then
// the r x r SVD of C = scale * Ra Rb^T = Uc S Vc^T (dgesdd), so
//   dW = (Qa Uc) S (Qb Vc)^T.
// Cost O((m + n) r^2 + r^3) instead of O(m n min(m, n)); all in float64.
// Used by MonoSoup for LoRA adapters (docs/monosoup.md, "LoRA adapters").
#include <cstdint>
#include <vector>

namespace soupkit::linalg {

struct LowRankSvd {
  std::int64_t m = 0, n = 0, r = 0;
  std::vector<double> singular;  // r values, descending
  std::vector<double> u;         // m x r, row-major: left singular vectors
  std::vector<double> vt;        // r x n, row-major: right singular vectors, transposed
};

// left: row-major m x r, right: row-major r x n. Throws Error if LAPACK fails
// or r > min(m, n).
LowRankSvd low_rank_svd(const double* left, const double* right, std::int64_t m, std::int64_t n, std::int64_t r,
                        double scale);

// out (row-major m x n, holding W0) += sum_i weight_i s_i u_i v_i^T: the
// reweighted update, weight_i for i < r (one dgemm, O(m n r)).
void add_reweighted(const LowRankSvd& svd, const std::vector<double>& weight, double* out);

}  // namespace soupkit::linalg
