// The distributed Gram-eigen SVD and reweighting on a P x 1 process grid
// agree with the single-rank LAPACK kernels on the same matrices.
#include "soupkit/parallel/communicator.hpp"
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/pgram_svd.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace soupkit::linalg {
namespace {

// Deterministic pseudo-random entries with a decaying column scale: a
// spectrum without exact ties, like a real fine-tuning update.
double entry(std::int64_t i, std::int64_t j) {
  std::uint64_t h = static_cast<std::uint64_t>(i) * 0x9e3779b97f4a7c15ull ^ static_cast<std::uint64_t>(j) * 0xc2b2ae3d27d4eb4full;
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  const double u = static_cast<double>(h >> 11) * 0x1.0p-53 - 0.5;
  return u * (1.0 + 4.0 * std::exp(-0.2 * static_cast<double>(j)));
}

struct Case {
  std::int64_t m, n, k;
};

class DistributedGramSvd : public testing::TestWithParam<Case> {};

// The grid route on `full` (row-major m x n, the same on every rank)
// against the local kernels: the spectrum, then the relative error of the
// reweighted matrix (every rank gets the same numbers).
void expect_grid_matches_local(std::vector<double> full, std::int64_t m, std::int64_t n, std::int64_t k) {
  const Communicator world;
  const ProcessGrid grid(world, world.size(), 1);
  constexpr int kBlock = 16;
  const MatrixLayout xl = make_layout(grid, m, n, kBlock, kBlock);
  std::vector<double> x(std::max<std::size_t>(xl.local_size(), 1));
  for (std::int64_t lr = 0; lr < xl.local_rows; ++lr)
    for (std::int64_t j = 0; j < n; ++j) x[lr + j * xl.lld()] = full[global_index(lr, kBlock, grid.my_row(), grid.rows()) * n + j];

  const GramSvd local = dgram_svd(full.data(), m, n);
  const auto dist = pdgram_svd(grid, xl, x.data());
  ASSERT_EQ(dist.singular.size(), local.singular.size());
  for (std::size_t i = 0; i < local.singular.size(); ++i)
    EXPECT_NEAR(dist.singular[i], local.singular[i], 1e-7 * local.singular[0]) << i;  // ~sqrt(eps) s_1: Gram route

  dspectral_reweight(full.data(), local, k, 0.8, 0.2);
  pdspectral_reweight(grid, xl, x.data(), dist, k, 0.8, 0.2);
  double err = 0, norm = 0;
  for (std::int64_t lr = 0; lr < xl.local_rows; ++lr)
    for (std::int64_t j = 0; j < n; ++j) {
      const double want = full[global_index(lr, kBlock, grid.my_row(), grid.rows()) * n + j];
      err += std::pow(x[lr + j * xl.lld()] - want, 2);
      norm += want * want;
    }
  err = grid.comm().sum(err);
  norm = grid.comm().sum(norm);
  EXPECT_LE(std::sqrt(err / norm), 1e-6);  // the local kernel projects in float32
}

TEST_P(DistributedGramSvd, MatchesTheLocalKernels) {
  const auto [m, n, k] = GetParam();
  std::vector<double> full(static_cast<std::size_t>(m * n));  // row-major, for the local kernels
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) full[i * n + j] = entry(i, j);
  expect_grid_matches_local(std::move(full), m, n, k);
}

// y <- (I - 2 v v^T / v^T v) y for every column (left) or row (right) of
// the row-major m x n matrix a.
void reflect(std::vector<double>& a, std::int64_t m, std::int64_t n, bool left, std::int64_t seed) {
  const std::int64_t len = left ? m : n, count = left ? n : m;
  std::vector<double> v(static_cast<std::size_t>(len));
  double vv = 0;
  for (std::int64_t i = 0; i < len; ++i) {
    v[i] = entry(seed, i);
    vv += v[i] * v[i];
  }
  for (std::int64_t c = 0; c < count; ++c) {
    auto at = [&](std::int64_t i) -> double& { return left ? a[i * n + c] : a[c * n + i]; };
    double dot = 0;
    for (std::int64_t i = 0; i < len; ++i) dot += v[i] * at(i);
    for (std::int64_t i = 0; i < len; ++i) at(i) -= 2 * dot / vv * v[i];
  }
}

// U diag(s) V^T with U, V products of three reflections each: singular
// values s (descending) to rounding, dense singular vectors.
std::vector<double> with_singular_values(std::int64_t m, std::int64_t n, const std::vector<double>& s) {
  std::vector<double> a(static_cast<std::size_t>(m * n), 0.0);
  for (std::size_t j = 0; j < s.size(); ++j) a[j * n + j] = s[j];
  for (int h = 0; h < 3; ++h) {
    reflect(a, m, n, true, 1000 + h);
    reflect(a, m, n, false, 2000 + h);
  }
  return a;
}

// Each rank computes a slice of the eigenvectors: a cluster (26 equal
// singular values) across the even split of the projected range moves the
// boundary out of it, and the result still matches the single-rank
// kernels, for the top k and for the complement, on the Gram of either
// side. On 2 and 3 ranks at least two slices are not empty, so rows do
// travel between ranks.
TEST(DistributedGramSvd, SlicesAroundAClusterMatchTheLocalKernels) {
  const Communicator world;
  for (const auto& [m, n, k] : {Case{300, 200, 60}, Case{200, 300, 60}, Case{300, 200, 150}}) {
    const std::int64_t r = std::min(m, n);
    const bool complement = 2 * k > r;
    const int il = complement ? 1 : static_cast<int>(r - k + 1), iu = complement ? static_cast<int>(r - k) : static_cast<int>(r);
    // The cluster: ascending eigenvalues first..first+25, around the middle of il..iu.
    const int first = (il + iu) / 2 - 12;
    std::vector<double> s(static_cast<std::size_t>(r));
    for (std::int64_t j = 0; j < r; ++j) s[j] = std::pow(1e-2, static_cast<double>(j) / static_cast<double>(r));
    for (int a = first; a < first + 26; ++a) s[r - a] = s[r - first];  // ascending a is descending r - a
    std::vector<double> ascending(s.rbegin(), s.rend());
    for (double& v : ascending) v *= v;
    const std::vector<int> slices = eigenvector_slices(ascending, il, iu, world.size());
    int nonempty = 0;
    for (std::size_t p = 0; p + 1 < slices.size(); ++p) nonempty += slices[p + 1] > slices[p];
    EXPECT_EQ(nonempty, std::min(world.size(), 3)) << m << " x " << n << ", k " << k;
    for (int p = 1; p < world.size(); ++p)  // no boundary inside the cluster
      EXPECT_FALSE(slices[p] > first && slices[p] < first + 26) << slices[p];
    expect_grid_matches_local(with_singular_values(m, n, s), m, n, k);
  }
}

// The distributed eigenvectors themselves, column by column, against the
// single-rank MRRR of the same range (a well-separated spectrum: each
// vector unique up to sign): a column in the wrong place or a row sent to
// the wrong rank fails, which the projection test above cannot see.
TEST(DistributedGramSvd, SlicedEigenvectorsAreTheLocalOnesInPlace) {
  const Communicator world;
  const ProcessGrid grid(world, world.size(), 1);
  for (const auto& [r, il, iu] : {std::array{200, 1, 200}, std::array{200, 37, 151}, std::array{130, 129, 130}}) {
    std::vector<double> d(static_cast<std::size_t>(r)), e(static_cast<std::size_t>(r), 0.0);
    for (int i = 0; i < r; ++i) d[i] = 1.0 + i + 0.3 * entry(i, 1);
    for (int i = 0; i + 1 < r; ++i) e[i] = 0.05 * entry(i, 2);
    const std::vector<double> singular = gram_singular_values(d, e);
    const MatrixLayout zl = make_layout(grid, r, iu - il + 1, 64, 64);
    std::vector<double> z(std::max<std::size_t>(zl.local_size(), 1), 0.0);
    pdtridiagonal_eigenvectors(grid, d, e, singular, il, iu, zl, z.data());
    const std::vector<double> want = tridiagonal_eigenvectors_in_range(d, e, il, iu);
    std::vector<double> dots(static_cast<std::size_t>(iu - il + 1), 0.0);
    for (int j = 0; j <= iu - il; ++j)
      for (int lr = 0; lr < zl.local_rows; ++lr)
        dots[j] += z[lr + static_cast<std::size_t>(j) * zl.lld()] *
                   want[global_index(lr, 64, grid.my_row(), grid.rows()) + static_cast<std::size_t>(j) * r];
    grid.comm().sum_in_place(dots);
    for (int j = 0; j <= iu - il; ++j) EXPECT_NEAR(std::abs(dots[j]), 1.0, 1e-10) << "column " << j << " of " << il << ".." << iu;
  }
}

// Refusals are raised on every rank alike (a rank throwing alone would
// leave the others in the next collective).
TEST(ProcessGrid, RefusesAShapeThatIsNotItsRanks) {
  const Communicator world;
  EXPECT_THROW(ProcessGrid(world, world.size() + 1, 1), Error);
  EXPECT_THROW(ProcessGrid(world, 0, world.size()), Error);
  const ProcessGrid grid(world, 1, world.size());  // the other orientation is fine
  EXPECT_EQ(grid.rows(), 1);
  EXPECT_EQ(grid.cols(), world.size());
  EXPECT_EQ(grid.my_col(), world.rank());
}

TEST(ProcessGrid, RefusesALayoutBeyondScalapacksIntegers) {
  const Communicator world;
  const ProcessGrid grid(world, world.size(), 1);
  try {
    make_layout(grid, std::int64_t{1} << 31, 4, 16, 16);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit LAPACK's 32-bit integers"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DistributedGramSvd,
                         testing::Values(Case{64, 48, 3}, Case{100, 300, 7}, Case{300, 100, 60}, Case{130, 130, 1},
                                         Case{10, 5, 2}, Case{5, 10, 4}, Case{40, 40, 40}, Case{1, 17, 1},
                                         // The Gram of distributed rows summed in 256-column panels: 2 and 3 panels.
                                         Case{700, 300, 100}, Case{600, 520, 400}));

}  // namespace
}  // namespace soupkit::linalg
