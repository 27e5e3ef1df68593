#include "soupkit/linalg/gram_svd.hpp"

#include "soupkit/error.hpp"
#include "soupkit/linalg/lapack.hpp"

#include <algorithm>
#include <cmath>

namespace soupkit::linalg {

// Row-major x (m x n) is column-major A = x^T (n x m, leading dimension n).
GramSvd dgram_svd(const double* x, std::int64_t m, std::int64_t n) {
  GramSvd out;
  out.m = m;
  out.n = n;
  out.left = m <= n;
  const int r = to_lapack_int(out.r(), "matrix size");
  const int ni = to_lapack_int(n, "columns"), mi = to_lapack_int(m, "rows");
  std::vector<double> gram(static_cast<std::size_t>(r) * r);
  const double one = 1.0, zero = 0.0;
  // left: G = x x^T = A^T A (m x m); right: G = x^T x = A A^T (n x n).
  if (out.left)
    dsyrk_("L", "T", &r, &ni, &one, x, &ni, &zero, gram.data(), &r);
  else
    dsyrk_("L", "N", &r, &mi, &one, x, &ni, &zero, gram.data(), &r);

  std::vector<double> w(static_cast<std::size_t>(r));
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  dsyevd_("V", "L", &r, gram.data(), &r, w.data(), &work_query, &lwork, &iwork_query, &liwork, &info);
  SOUPKIT_ERROR_IF(info != 0, "dsyevd workspace query failed (info {})", info);
  lwork = workspace_size(work_query);
  liwork = std::max(iwork_query, 1);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  std::vector<int> iwork(static_cast<std::size_t>(liwork));
  dsyevd_("V", "L", &r, gram.data(), &r, w.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  SOUPKIT_ERROR_IF(info != 0, "dsyevd failed to converge (info {}) on a {} x {} Gram matrix", info, r, r);

  // LAPACK returns ascending eigenvalues; we want descending singular values.
  out.singular.resize(static_cast<std::size_t>(r));
  out.basis.resize(gram.size());
  for (int j = 0; j < r; ++j) {
    const int src = r - 1 - j;
    out.singular[j] = std::sqrt(std::max(w[src], 0.0));
    std::copy_n(gram.data() + static_cast<std::size_t>(src) * r, r, out.basis.data() + static_cast<std::size_t>(j) * r);
  }
  return out;
}

void dspectral_reweight(double* x, const GramSvd& svd, std::int64_t k, double lambda_high, double lambda_low) {
  const std::int64_t r64 = svd.r();
  SOUPKIT_ERROR_IF(k < 0 || k > r64, "internal: k = {} outside [0, {}]", k, r64);
  const double c = lambda_high - lambda_low;
  // P_k x = x - P_rest x: project onto the smaller of the two subspaces.
  const bool complement = 2 * k > r64;
  const int cols = static_cast<int>(complement ? r64 - k : k);
  const double* basis = svd.basis.data() + (complement ? static_cast<std::size_t>(k) * r64 : 0);
  // x <- alpha x + beta * Q Q^T-projection of x, with Q the chosen basis columns.
  const double alpha = complement ? lambda_high : lambda_low;
  const double beta = complement ? -c : c;
  const int m = static_cast<int>(svd.m), n = static_cast<int>(svd.n), r = static_cast<int>(r64);
  if (cols == 0 || beta == 0.0) {
    for (std::int64_t i = 0; i < svd.m * svd.n; ++i) x[i] *= alpha;
    return;
  }
  const double one = 1.0, zero = 0.0;
  if (svd.left) {
    // A = x^T (n x m); (Q Q^T x)^T = A Q Q^T. T = A Q (n x cols); A <- alpha A + beta T Q^T.
    std::vector<double> t(static_cast<std::size_t>(n) * cols);
    dgemm_("N", "N", &n, &cols, &m, &one, x, &n, basis, &r, &zero, t.data(), &n);
    dgemm_("N", "T", &n, &m, &cols, &beta, t.data(), &n, basis, &r, &alpha, x, &n);
  } else {
    // (x Q Q^T)^T = Q Q^T A. T = Q^T A (cols x m); A <- alpha A + beta Q T.
    std::vector<double> t(static_cast<std::size_t>(cols) * m);
    dgemm_("T", "N", &cols, &m, &n, &one, basis, &r, x, &n, &zero, t.data(), &cols);
    dgemm_("N", "N", &n, &m, &cols, &beta, basis, &r, t.data(), &cols, &alpha, x, &n);
  }
}

}  // namespace soupkit::linalg
