// The Gram route's spectrum and reweighting against LAPACK's dgesdd of the
// same matrix (a different algorithm: bidiagonalisation of the matrix
// itself, not of its Gram matrix), for every k a projection can take
// (the top k, or the other r - k when fewer), for wide, tall and square
// matrices, and for a matrix with zero rows, whose Gram matrix's
// tridiagonal splits into blocks.
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace soupkit::linalg {
namespace {

struct Reference {
  std::vector<double> singular;  // descending
  std::vector<double> u;         // m x p column-major, left singular vectors
};

Reference dgesdd_reference(const std::vector<double>& x, int m, int n) {
  std::vector<double> a(x.size());  // column-major copy of the row-major x
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) a[i + static_cast<std::size_t>(j) * m] = x[static_cast<std::size_t>(i) * n + j];
  const int p = std::min(m, n);
  Reference ref;
  ref.singular.resize(p);
  ref.u.resize(static_cast<std::size_t>(m) * p);
  std::vector<double> vt(static_cast<std::size_t>(p) * n);
  std::vector<int> iwork(8 * p);
  int info = 0, lwork = -1;
  double query = 0;
  dgesdd_("S", &m, &n, a.data(), &m, ref.singular.data(), ref.u.data(), &m, vt.data(), &p, &query, &lwork,
          iwork.data(), &info);
  lwork = static_cast<int>(query) + 1;
  std::vector<double> work(lwork);
  dgesdd_("S", &m, &n, a.data(), &m, ref.singular.data(), ref.u.data(), &m, vt.data(), &p, work.data(), &lwork,
          iwork.data(), &info);
  EXPECT_EQ(info, 0);
  return ref;
}

// Row-major m x n: a decaying rank-8 part plus noise, like a fine-tune's update.
std::vector<double> update_like(int m, int n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> x(static_cast<std::size_t>(m) * n);
  std::vector<double> a(static_cast<std::size_t>(m) * 8), b(static_cast<std::size_t>(n) * 8);
  for (auto& v : a) v = g(rng);
  for (auto& v : b) v = g(rng);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int t = 0; t < 8; ++t) s += a[i * 8 + t] * b[j * 8 + t] * std::exp(-0.5 * t);
      x[static_cast<std::size_t>(i) * n + j] = s + 0.3 * g(rng);
    }
  return x;
}

// lambda_low x + (lambda_high - lambda_low) U_k U_k^T x, from dgesdd's U.
std::vector<double> reference_reweight(const std::vector<double>& x, const Reference& ref, int m, int n, int k,
                                       double high, double low) {
  std::vector<double> out(x.size());
  std::vector<double> t(static_cast<std::size_t>(k) * n, 0.0);  // U_k^T x
  for (int c = 0; c < k; ++c)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j)
        t[static_cast<std::size_t>(c) * n + j] += ref.u[i + static_cast<std::size_t>(c) * m] * x[static_cast<std::size_t>(i) * n + j];
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double p = 0;
      for (int c = 0; c < k; ++c) p += ref.u[i + static_cast<std::size_t>(c) * m] * t[static_cast<std::size_t>(c) * n + j];
      out[static_cast<std::size_t>(i) * n + j] = low * x[static_cast<std::size_t>(i) * n + j] + (high - low) * p;
    }
  return out;
}

double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(err / norm);
}

struct Shape {
  int m, n;
  int zero_rows;  // the first rows set to zero
};

class GramSvdRoute : public testing::TestWithParam<Shape> {};

TEST_P(GramSvdRoute, MatchesDgesddForEveryK) {
  const auto [m, n, zero_rows] = GetParam();
  std::vector<double> x = update_like(m, n, 7 + m + n);
  std::fill(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(zero_rows) * n, 0.0);
  const Reference ref = dgesdd_reference(x, m, n);
  const GramSvd svd = dgram_svd(x.data(), m, n);
  const int r = std::min(m, n);
  ASSERT_EQ(static_cast<int>(svd.singular.size()), r);
  for (int i = 0; i < r; ++i) EXPECT_NEAR(svd.singular[i], ref.singular[i], 1e-7 * ref.singular[0]) << i;
  // k where the projection takes the top k, the other r - k, both halves
  // alike, and the ends. Singular values within rounding of each other would
  // make the split between k and k+1 arbitrary: the noisy spectrum has none.
  for (int k : {1, 2, r / 4, r / 2, r / 2 + 1, r - 3, r - 1, r}) {
    if (k < 1 || k > r || (k < r && ref.singular[k - 1] - ref.singular[k] < 1e-6 * ref.singular[0])) continue;
    std::vector<double> got = x;
    dspectral_reweight(got.data(), svd, k, 0.8, 0.3);
    EXPECT_LE(relative_error(got, reference_reweight(x, ref, m, n, k, 0.8, 0.3)), 1e-6) << "k = " << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GramSvdRoute,
                         testing::Values(Shape{60, 90, 0}, Shape{90, 60, 0}, Shape{70, 70, 0}, Shape{40, 120, 5},
                                         Shape{120, 40, 0}));

// Any range of eigenvectors, including all of them (the route that asks
// dstemr for every pair and keeps the wanted columns), is an orthonormal
// eigenbasis of the Gram matrix for the eigenvalues the spectrum lists.
TEST(GramSvd, EigenvectorRangesAreEigenvectorsOfTheGram) {
  const int m = 50, n = 80;
  const std::vector<double> x = update_like(m, n, 3);
  const GramSvd svd = dgram_svd(x.data(), m, n);
  std::vector<double> gram(static_cast<std::size_t>(m) * m, 0.0);  // x x^T, plain loops
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j)
      for (int t = 0; t < n; ++t) gram[i + static_cast<std::size_t>(j) * m] += x[i * n + t] * x[j * n + t];
  for (auto [il, iu] : {std::pair{1, m}, std::pair{1, 10}, std::pair{m - 9, m}, std::pair{20, 30}}) {
    const std::vector<double> z = dgram_eigenvectors(svd, il, iu);
    ASSERT_EQ(z.size(), static_cast<std::size_t>(m) * (iu - il + 1));
    for (int c = 0; c <= iu - il; ++c) {
      const double lambda = svd.singular[m - (il + c)] * svd.singular[m - (il + c)];  // ascending index il + c
      double residual = 0, norm = 0;
      for (int i = 0; i < m; ++i) {
        double gz = 0;
        for (int j = 0; j < m; ++j) gz += gram[i + static_cast<std::size_t>(j) * m] * z[j + static_cast<std::size_t>(c) * m];
        residual += std::pow(gz - lambda * z[i + static_cast<std::size_t>(c) * m], 2);
        norm += z[i + static_cast<std::size_t>(c) * m] * z[i + static_cast<std::size_t>(c) * m];
      }
      EXPECT_NEAR(norm, 1.0, 1e-12);
      EXPECT_LE(std::sqrt(residual), 1e-10 * svd.singular[0] * svd.singular[0]) << il << ".." << iu << " column " << c;
    }
  }
  EXPECT_THROW(dgram_eigenvectors(svd, 0, 3), Error);
  EXPECT_THROW(dgram_eigenvectors(svd, 5, m + 1), Error);
}

}  // namespace
}  // namespace soupkit::linalg
