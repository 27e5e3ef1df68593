#include "soupkit/linalg/gram_svd.hpp"

#include "soupkit/util/error.hpp"
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
  auto& gram = out.reflectors;
  gram.resize(static_cast<std::size_t>(r) * r);
  const double one = 1.0, zero = 0.0;
  // left: G = x x^T = A^T A (m x m); right: G = x^T x = A A^T (n x n).
  if (out.left)
    dsyrk_("L", "T", &r, &ni, &one, x, &ni, &zero, gram.data(), &r);
  else
    dsyrk_("L", "N", &r, &mi, &one, x, &ni, &zero, gram.data(), &r);

  out.diagonal.resize(static_cast<std::size_t>(r));
  out.offdiagonal.resize(static_cast<std::size_t>(r));  // dstemr wants n entries of e
  out.tau.resize(static_cast<std::size_t>(std::max(r - 1, 1)));
  int info = 0, lwork = -1;
  double query = 0;
  dsytrd_("L", &r, gram.data(), &r, out.diagonal.data(), out.offdiagonal.data(), out.tau.data(), &query, &lwork, &info);
  lwork = workspace_size(query);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  dsytrd_("L", &r, gram.data(), &r, out.diagonal.data(), out.offdiagonal.data(), out.tau.data(), work.data(), &lwork,
          &info);
  SOUPKIT_ERROR_IF(info != 0, "dsytrd failed (info {}) on a {} x {} Gram matrix", info, r, r);

  // Eigenvalues only; the eigenvectors wait until MonoSoup's coefficients
  // say which of them the projection needs (dgram_eigenvectors).
  out.singular = gram_singular_values(out.diagonal, out.offdiagonal);
  return out;
}

std::vector<double> gram_singular_values(std::vector<double> d, std::vector<double> e) {
  // dsterf (root-free QR, no vectors): ~10% of the time of all eigenpairs.
  const int r = static_cast<int>(d.size());
  int info = 0;
  dsterf_(&r, d.data(), e.data(), &info);
  SOUPKIT_ERROR_IF(info != 0, "dsterf failed (info {}) on a {} x {} Gram matrix", info, r, r);
  std::vector<double> singular(static_cast<std::size_t>(r));
  for (int j = 0; j < r; ++j) singular[j] = std::sqrt(std::max(d[r - 1 - j], 0.0));  // ascending -> descending
  return singular;
}

namespace {
// dstemr finds the eigenvalues of an index range by bisection and of the
// whole spectrum by dqds; bisection costs per eigenvalue, so past a share of
// the spectrum asking for all pairs and keeping the wanted columns is faster.
// Measured at r = 2048 (docs/monosoup.md, "Measured routes"): all pairs
// 0.40 s; a range 0.49 ms (lowest eigenvalues) to 0.62 ms (highest) per
// vector, so the crossover is at 0.31-0.40 r.
constexpr double kSubsetShareLimit = 0.3;

std::vector<double> mrrr_eigenvectors(std::vector<double> d, std::vector<double> e, int il, int iu, bool all_if_faster) {
  const int r = static_cast<int>(d.size());
  const int cols = iu - il + 1;
  const bool all = all_if_faster && cols > kSubsetShareLimit * r;
  const char* range = all ? "A" : "I";
  const int nzc = all ? r : cols;
  std::vector<double> w(static_cast<std::size_t>(r));
  std::vector<double> z(static_cast<std::size_t>(r) * static_cast<std::size_t>(nzc));
  std::vector<int> isuppz(static_cast<std::size_t>(2 * r));
  const double vl = 0, vu = 0;
  int found = 0, tryrac = 1, liwork = -1, iquery = 0, info = 0, lwork = -1;
  double query = 0;
  dstemr_("V", range, &r, d.data(), e.data(), &vl, &vu, &il, &iu, &found, w.data(), z.data(), &r, &nzc, isuppz.data(),
          &tryrac, &query, &lwork, &iquery, &liwork, &info);
  lwork = workspace_size(query);
  liwork = std::max(iquery, 1);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  std::vector<int> iwork(static_cast<std::size_t>(liwork));
  tryrac = 1;
  dstemr_("V", range, &r, d.data(), e.data(), &vl, &vu, &il, &iu, &found, w.data(), z.data(), &r, &nzc, isuppz.data(),
          &tryrac, work.data(), &lwork, iwork.data(), &liwork, &info);
  SOUPKIT_ERROR_IF(info != 0 || found != nzc, "dstemr failed (info {}, {} of {} eigenpairs) on a {} x {} Gram matrix",
                   info, found, nzc, r, r);
  if (all) {
    z.erase(z.begin() + static_cast<std::ptrdiff_t>(iu) * r, z.end());
    z.erase(z.begin(), z.begin() + static_cast<std::ptrdiff_t>(il - 1) * r);
  }
  return z;
}
}  // namespace

std::vector<double> tridiagonal_eigenvectors(std::vector<double> d, std::vector<double> e, int il, int iu) {
  return mrrr_eigenvectors(std::move(d), std::move(e), il, iu, true);
}

std::vector<double> tridiagonal_eigenvectors_in_range(std::vector<double> d, std::vector<double> e, int il, int iu) {
  return mrrr_eigenvectors(std::move(d), std::move(e), il, iu, false);
}

std::vector<double> dgram_eigenvectors(const GramSvd& svd, int il, int iu) {
  const int r = static_cast<int>(svd.r());
  SOUPKIT_ERROR_IF(il < 1 || iu > r || il > iu, "internal: eigenvectors {}..{} of {}", il, iu, r);
  int cols = iu - il + 1, info = 0, lwork = -1;
  std::vector<double> z = tridiagonal_eigenvectors(svd.diagonal, svd.offdiagonal, il, iu);
  // Back to the Gram matrix's basis: z <- Q z, Q from dsytrd's reflectors.
  double query = 0;
  dormtr_("L", "L", "N", &r, &cols, svd.reflectors.data(), &r, svd.tau.data(), z.data(), &r, &query, &lwork, &info);
  lwork = workspace_size(query);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  dormtr_("L", "L", "N", &r, &cols, svd.reflectors.data(), &r, svd.tau.data(), z.data(), &r, work.data(), &lwork, &info);
  SOUPKIT_ERROR_IF(info != 0, "dormtr failed (info {})", info);
  return z;
}

void dspectral_reweight(double* x, const GramSvd& svd, std::int64_t k, double lambda_high, double lambda_low) {
  const std::int64_t r64 = svd.r();
  SOUPKIT_ERROR_IF(k < 0 || k > r64, "internal: k = {} outside [0, {}]", k, r64);
  const double c = lambda_high - lambda_low;
  // P_k x = x - P_rest x: project onto the smaller of the two subspaces.
  // Eigenvalues ascend, so the top k are numbers r-k+1..r, the rest 1..r-k.
  const bool complement = 2 * k > r64;
  const int cols = static_cast<int>(complement ? r64 - k : k);
  // x <- alpha x + beta * (projection of x on the chosen columns Q).
  const double alpha = complement ? lambda_high : lambda_low;
  const double beta = complement ? -c : c;
  const int m = static_cast<int>(svd.m), n = static_cast<int>(svd.n), r = static_cast<int>(r64);
  const std::size_t size = static_cast<std::size_t>(svd.m) * static_cast<std::size_t>(svd.n);
  if (cols == 0 || beta == 0.0) {
    for (std::size_t i = 0; i < size; ++i) x[i] *= alpha;
    return;
  }
  const auto basis = complement ? dgram_eigenvectors(svd, 1, r - static_cast<int>(k))
                                : dgram_eigenvectors(svd, r - static_cast<int>(k) + 1, r);
  // The projection runs in float32: sgemm is twice as fast as dgemm, and
  // the projected part carries a relative error of ~1e-7 of ||x||, far
  // inside MonoSoup's 1e-4 tolerance (docs/monosoup.md). The spectrum and
  // the basis come from float64 (above), where precision matters.
  std::vector<float> xf(x, x + size);
  std::vector<float> q(basis.begin(), basis.end());
  const float one = 1.0f, zero = 0.0f;
  if (svd.left) {
    // A = x^T (n x m); (Q Q^T x)^T = A Q Q^T. T = A Q (n x cols); P = T Q^T.
    std::vector<float> t(static_cast<std::size_t>(n) * cols);
    sgemm_("N", "N", &n, &cols, &m, &one, xf.data(), &n, q.data(), &r, &zero, t.data(), &n);
    sgemm_("N", "T", &n, &m, &cols, &one, t.data(), &n, q.data(), &r, &zero, xf.data(), &n);
  } else {
    // (x Q Q^T)^T = Q Q^T A. T = Q^T A (cols x m); P = Q T.
    std::vector<float> t(static_cast<std::size_t>(cols) * m);
    sgemm_("T", "N", &cols, &m, &n, &one, q.data(), &r, xf.data(), &n, &zero, t.data(), &cols);
    sgemm_("N", "N", &n, &m, &cols, &one, q.data(), &r, t.data(), &cols, &zero, xf.data(), &n);
  }
  for (std::size_t i = 0; i < size; ++i) x[i] = alpha * x[i] + beta * static_cast<double>(xf[i]);
}

}  // namespace soupkit::linalg
