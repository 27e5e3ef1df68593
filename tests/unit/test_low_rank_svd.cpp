// The SVD of a rank-r product s L R from its factors, against LAPACK's dgesdd
// of the dense product (formed by a plain triple loop here), and the
// reweighted sum against the same dense computation; also a rank-deficient
// factor (a LoRA B with zero columns, as at PEFT's initialisation).
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/low_rank_svd.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace soupkit::linalg {
namespace {

struct Dense {
  std::vector<double> rowmajor;  // m x n
  std::vector<double> singular;  // min(m, n), from dgesdd
};

Dense dense_product(const std::vector<double>& l, const std::vector<double>& r, int m, int n, int k, double scale) {
  Dense d;
  d.rowmajor.assign(static_cast<std::size_t>(m) * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double acc = 0;
      for (int t = 0; t < k; ++t) acc += l[i * k + t] * r[t * n + j];
      d.rowmajor[static_cast<std::size_t>(i) * n + j] = scale * acc;
    }
  std::vector<double> a(d.rowmajor.size());  // column-major copy
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) a[i + static_cast<std::size_t>(j) * m] = d.rowmajor[static_cast<std::size_t>(i) * n + j];
  const int p = std::min(m, n);
  d.singular.resize(p);
  std::vector<int> iwork(8 * p);
  int info = 0, lwork = -1;
  double query = 0, dummy = 0;
  const int one = 1;
  dgesdd_("N", &m, &n, a.data(), &m, d.singular.data(), &dummy, &one, &dummy, &one, &query, &lwork, iwork.data(), &info);
  lwork = static_cast<int>(query) + 1;
  std::vector<double> work(lwork);
  dgesdd_("N", &m, &n, a.data(), &m, d.singular.data(), &dummy, &one, &dummy, &one, work.data(), &lwork, iwork.data(),
          &info);
  EXPECT_EQ(info, 0);
  return d;
}

std::vector<double> random_matrix(std::mt19937_64& rng, std::size_t size) {
  std::normal_distribution<double> normal;
  std::vector<double> v(size);
  for (auto& x : v) x = normal(rng);
  return v;
}

void check(int m, int n, int r, bool zero_column) {
  std::mt19937_64 rng(static_cast<std::uint64_t>(m * 131 + n * 7 + r));
  auto left = random_matrix(rng, static_cast<std::size_t>(m) * r);
  const auto right = random_matrix(rng, static_cast<std::size_t>(r) * n);
  if (zero_column)
    for (int i = 0; i < m; ++i) left[static_cast<std::size_t>(i) * r + 1] = 0.0;
  const double scale = 0.75;
  const Dense dense = dense_product(left, right, m, n, r, scale);
  const LowRankSvd svd = low_rank_svd(left.data(), right.data(), m, n, r, scale);
  ASSERT_EQ(svd.singular.size(), static_cast<std::size_t>(r));
  const double s1 = dense.singular[0];
  for (int i = 0; i < r; ++i) EXPECT_NEAR(svd.singular[i], dense.singular[i], 1e-12 * s1) << i;
  for (std::size_t i = r; i < dense.singular.size(); ++i) EXPECT_LT(dense.singular[i], 1e-12 * s1);
  // Orthonormal columns where the singular value is not zero.
  for (int a = 0; a < r; ++a)
    for (int b = 0; b < r; ++b) {
      if (svd.singular[a] < 1e-12 * s1 || svd.singular[b] < 1e-12 * s1) continue;
      double uu = 0, vv = 0;
      for (int i = 0; i < m; ++i) uu += svd.u[i * r + a] * svd.u[i * r + b];
      for (int j = 0; j < n; ++j) vv += svd.vt[a * n + j] * svd.vt[b * n + j];
      EXPECT_NEAR(uu, a == b ? 1.0 : 0.0, 1e-12);
      EXPECT_NEAR(vv, a == b ? 1.0 : 0.0, 1e-12);
    }
  // Weights 1 rebuild s L R; weights (0.3 for the top 2, 0.9 beyond) are
  // that reweighting of the dense SVD's terms.
  std::vector<double> out(static_cast<std::size_t>(m) * n, 1.0), weight(r, 1.0);
  add_reweighted(svd, weight, out.data());
  for (std::size_t e = 0; e < out.size(); ++e) EXPECT_NEAR(out[e], 1.0 + dense.rowmajor[e], 1e-12 * s1) << e;
  for (int i = 0; i < r; ++i) weight[i] = i < 2 ? 0.3 : 0.9;
  std::fill(out.begin(), out.end(), 0.0);
  add_reweighted(svd, weight, out.data());
  // 0.9 dW - 0.6 (top-2 part): the top-2 part from the rank-1 terms.
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double top = 0;
      for (int t = 0; t < 2; ++t) top += svd.singular[t] * svd.u[i * r + t] * svd.vt[t * n + j];
      const double want = 0.9 * dense.rowmajor[static_cast<std::size_t>(i) * n + j] - 0.6 * top;
      EXPECT_NEAR(out[static_cast<std::size_t>(i) * n + j], want, 1e-12 * s1);
    }
}

TEST(LowRankSvd, MatchesTheDenseSvdOfTheProduct) {
  check(40, 25, 6, false);
  check(17, 60, 5, false);
  check(30, 30, 30, false);  // r = min(m, n)
}

TEST(LowRankSvd, RankDeficientFactor) { check(35, 20, 4, true); }

TEST(LowRankSvd, RefusesARankAboveTheSmallerSide) {
  std::vector<double> l(10 * 6), r(6 * 4);
  EXPECT_THROW(low_rank_svd(l.data(), r.data(), 10, 4, 6, 1.0), std::exception);
}

}  // namespace
}  // namespace soupkit::linalg
