// The distributed Gram-eigen SVD and reweighting on a P x 1 process grid
// agree with the single-rank LAPACK kernels on the same matrices.
#include "soupkit/parallel/communicator.hpp"
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/pgram_svd.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

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

TEST_P(DistributedGramSvd, MatchesTheLocalKernels) {
  const auto [m, n, k] = GetParam();
  const Communicator world;
  const ProcessGrid grid(world, world.size(), 1);
  constexpr int kBlock = 16;
  const MatrixLayout xl = make_layout(grid, m, n, kBlock, kBlock);
  std::vector<double> x(std::max<std::size_t>(xl.local_size(), 1));
  for (std::int64_t lr = 0; lr < xl.local_rows; ++lr)
    for (std::int64_t j = 0; j < n; ++j)
      x[lr + j * xl.lld()] = entry(global_index(lr, kBlock, grid.my_row(), grid.rows()), j);

  std::vector<double> full(static_cast<std::size_t>(m * n));  // row-major, for the local kernels
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) full[i * n + j] = entry(i, j);
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
