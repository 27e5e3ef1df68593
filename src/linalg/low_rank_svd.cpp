#include "soupkit/linalg/low_rank_svd.hpp"

#include "soupkit/linalg/lapack.hpp"
#include "soupkit/util/error.hpp"

namespace soupkit::linalg {
namespace {

// Thin QR of a column-major rows x r matrix in place: returns R (r x r,
// column-major, upper triangular); `a` becomes Q.
std::vector<double> thin_qr(std::vector<double>& a, int rows, int r) {
  std::vector<double> tau(static_cast<std::size_t>(r));
  int info = 0, lwork = -1;
  double query = 0;
  dgeqrf_(&rows, &r, a.data(), &rows, tau.data(), &query, &lwork, &info);
  lwork = workspace_size(query);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  dgeqrf_(&rows, &r, a.data(), &rows, tau.data(), work.data(), &lwork, &info);
  SOUPKIT_ERROR_IF(info != 0, "dgeqrf failed (info {}) on a {} x {} factor", info, rows, r);
  std::vector<double> upper(static_cast<std::size_t>(r) * r, 0.0);
  for (int j = 0; j < r; ++j)
    for (int i = 0; i <= j; ++i) upper[i + static_cast<std::size_t>(j) * r] = a[i + static_cast<std::size_t>(j) * rows];
  lwork = -1;
  dorgqr_(&rows, &r, &r, a.data(), &rows, tau.data(), &query, &lwork, &info);
  lwork = workspace_size(query);
  work.resize(static_cast<std::size_t>(lwork));
  dorgqr_(&rows, &r, &r, a.data(), &rows, tau.data(), work.data(), &lwork, &info);
  SOUPKIT_ERROR_IF(info != 0, "dorgqr failed (info {}) on a {} x {} factor", info, rows, r);
  return upper;
}

}  // namespace

LowRankSvd low_rank_svd(const double* left, const double* right, std::int64_t m64, std::int64_t n64, std::int64_t r64,
                        double scale) {
  SOUPKIT_ERROR_IF(r64 < 1 || r64 > m64 || r64 > n64, "low-rank SVD: rank {} of a {} x {} matrix", r64, m64, n64);
  const int m = to_lapack_int(m64, "rows"), n = to_lapack_int(n64, "columns"), r = to_lapack_int(r64, "rank");
  const std::size_t sm = static_cast<std::size_t>(m), sn = static_cast<std::size_t>(n), sr = static_cast<std::size_t>(r);
  // Column-major copies: L (m x r) and R^T (n x r). Row-major R is R^T column-major.
  std::vector<double> qa(sm * sr), qb(right, right + sr * sn);
  for (std::size_t i = 0; i < sm; ++i)
    for (std::size_t k = 0; k < sr; ++k) qa[i + k * sm] = left[i * sr + k];
  const std::vector<double> ra = thin_qr(qa, m, r), rb = thin_qr(qb, n, r);
  // C = scale * Ra Rb^T (r x r, column-major).
  const double one = 1.0, zero = 0.0;
  std::vector<double> c(sr * sr);
  dgemm_("N", "T", &r, &r, &r, &scale, ra.data(), &r, rb.data(), &r, &zero, c.data(), &r);
  LowRankSvd out;
  out.m = m64;
  out.n = n64;
  out.r = r64;
  out.singular.resize(sr);
  std::vector<double> uc(sr * sr), vct(sr * sr);
  std::vector<int> iwork(8 * sr);
  int info = 0, lwork = -1;
  double query = 0;
  dgesdd_("S", &r, &r, c.data(), &r, out.singular.data(), uc.data(), &r, vct.data(), &r, &query, &lwork, iwork.data(),
          &info);
  lwork = workspace_size(query);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  dgesdd_("S", &r, &r, c.data(), &r, out.singular.data(), uc.data(), &r, vct.data(), &r, work.data(), &lwork,
          iwork.data(), &info);
  SOUPKIT_ERROR_IF(info != 0, "dgesdd failed (info {}) on the {} x {} core of a low-rank update", info, r, r);
  // U = Qa Uc (m x r) and V^T = Vc^T Qb^T (r x n), column-major, then
  // stored row-major.
  std::vector<double> u_cm(sm * sr), vt_cm(sr * sn);
  dgemm_("N", "N", &m, &r, &r, &one, qa.data(), &m, uc.data(), &r, &zero, u_cm.data(), &m);       // m x r
  dgemm_("N", "T", &r, &n, &r, &one, vct.data(), &r, qb.data(), &n, &zero, vt_cm.data(), &r);     // r x n
  out.u.resize(sm * sr);
  out.vt.resize(sr * sn);
  for (std::size_t i = 0; i < sm; ++i)
    for (std::size_t k = 0; k < sr; ++k) out.u[i * sr + k] = u_cm[i + k * sm];
  for (std::size_t k = 0; k < sr; ++k)
    for (std::size_t j = 0; j < sn; ++j) out.vt[k * sn + j] = vt_cm[k + j * sr];
  return out;
}

void add_reweighted(const LowRankSvd& svd, const std::vector<double>& weight, double* out) {
  const int m = to_lapack_int(svd.m, "rows"), n = to_lapack_int(svd.n, "columns"), r = to_lapack_int(svd.r, "rank");
  const std::size_t sr = static_cast<std::size_t>(r);
  SOUPKIT_ERROR_IF(weight.size() < sr, "add_reweighted: {} weights for rank {}", weight.size(), r);
  // Row-major out (m x n) is column-major out^T (n x m): out^T += Vt^T (diag(w s) U^T).
  std::vector<double> scaled(svd.u);  // row-major m x r = column-major r x m (U^T)
  for (std::size_t i = 0; i < static_cast<std::size_t>(m); ++i)
    for (std::size_t k = 0; k < sr; ++k) scaled[i * sr + k] *= weight[k] * svd.singular[k];
  const double one = 1.0;
  // Column-major: Vt row-major r x n is column-major n x r (V): out^T (n x m) += V (n x r) * U^T (r x m).
  dgemm_("N", "N", &n, &m, &r, &one, svd.vt.data(), &n, scaled.data(), &r, &one, out, &n);
}

}  // namespace soupkit::linalg
