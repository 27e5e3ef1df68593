// The batched OMP kernel: planted sparse combinations are recovered (atoms
// and coefficients), a target's result does not depend on its batch, the
// refit is the least-squares solution (residual orthogonal to the chosen
// atoms, checked directly), and degenerate inputs stop cleanly.
#include "soupkit/linalg/omp.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace soupkit::linalg {
namespace {

struct Problem {
  std::int64_t atoms = 300, dim = 40, targets = 37;
  std::vector<float> dict, x;
  std::vector<std::vector<std::pair<std::int32_t, double>>> planted;  // per target: (atom, coefficient)
};

Problem planted_problem(int sparsity, unsigned seed) {
  Problem p;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> magnitude(0.5, 1.5);
  p.dict.resize(static_cast<std::size_t>(p.atoms * p.dim));
  for (auto& v : p.dict) v = normal(rng);
  p.x.assign(static_cast<std::size_t>(p.targets * p.dim), 0.0f);
  std::vector<std::int32_t> order(static_cast<std::size_t>(p.atoms));
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int32_t>(i);
  for (std::int64_t t = 0; t < p.targets; ++t) {
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<double> row(static_cast<std::size_t>(p.dim), 0.0);
    p.planted.emplace_back();
    for (int s = 0; s < sparsity; ++s) {
      const double c = magnitude(rng) * (rng() % 2 ? 1 : -1);
      p.planted.back().push_back({order[static_cast<std::size_t>(s)], c});
      for (std::int64_t i = 0; i < p.dim; ++i)
        row[static_cast<std::size_t>(i)] += c * p.dict[static_cast<std::size_t>(order[static_cast<std::size_t>(s)] * p.dim + i)];
    }
    for (std::int64_t i = 0; i < p.dim; ++i) p.x[static_cast<std::size_t>(t * p.dim + i)] = static_cast<float>(row[static_cast<std::size_t>(i)]);
  }
  return p;
}

TEST(Omp, RecoversPlantedSparseCombinations) {
  const Problem p = planted_problem(3, 1);
  OmpOptions o;
  o.k = 8;
  const OmpResult r = batched_omp(p.dict.data(), p.atoms, p.dim, p.x.data(), p.targets, o);
  for (std::int64_t t = 0; t < p.targets; ++t) {
    const auto ts = static_cast<std::size_t>(t);
    EXPECT_LT(r.relative_residual[ts], 1e-6) << "target " << t;
    for (const auto& [atom, coef] : p.planted[ts]) {
      const auto* begin = r.atoms.data() + ts * 8;
      const auto* it = std::find(begin, begin + r.used[ts], atom);
      ASSERT_NE(it, begin + r.used[ts]) << "target " << t << " misses planted atom " << atom;
      EXPECT_NEAR(r.coefficients[ts * 8 + static_cast<std::size_t>(it - begin)], coef, 1e-5 * std::fabs(coef));
    }
  }
}

// Progress (transplant's, inside one tensor): told after every batch, the
// targets fitted so far, ending with all of them.
TEST(Omp, TellsAfterEveryBatchHowManyTargetsAreFitted) {
  const Problem p = planted_problem(3, 3);
  OmpOptions o;
  o.k = 8;
  o.batch = 7;
  std::vector<std::int64_t> told;
  o.on_batch = [&](std::int64_t done, std::int64_t total) {
    EXPECT_EQ(total, p.targets);
    told.push_back(done);
  };
  batched_omp(p.dict.data(), p.atoms, p.dim, p.x.data(), p.targets, o);
  std::vector<std::int64_t> expected;
  for (std::int64_t done = 7; done < p.targets; done += 7) expected.push_back(done);
  expected.push_back(p.targets);
  EXPECT_EQ(told, expected);
  EXPECT_GT(told.size(), 1u);
}

TEST(Omp, ResultDoesNotDependOnBatch) {
  Problem p = planted_problem(3, 2);
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  for (std::size_t i = 0; i < p.x.size() / 2; ++i) p.x[i] = normal(rng);  // half the targets: no exact answer
  OmpOptions o;
  o.k = 12;
  o.batch = 1;
  const OmpResult one = batched_omp(p.dict.data(), p.atoms, p.dim, p.x.data(), p.targets, o);
  for (std::int64_t batch : {5, 16, 0}) {
    o.batch = batch;
    const OmpResult other = batched_omp(p.dict.data(), p.atoms, p.dim, p.x.data(), p.targets, o);
    EXPECT_EQ(one.atoms, other.atoms) << "batch " << batch;
    EXPECT_EQ(one.coefficients, other.coefficients) << "batch " << batch;
    EXPECT_EQ(one.used, other.used) << "batch " << batch;
  }
}

TEST(Omp, RefitIsLeastSquares) {
  // Random targets use all k atoms; the least-squares residual is orthogonal
  // to every chosen atom, and each step's pick had the largest correlation.
  Problem p = planted_problem(1, 3);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (auto& v : p.x) v = normal(rng);
  OmpOptions o;
  o.k = 10;
  const OmpResult r = batched_omp(p.dict.data(), p.atoms, p.dim, p.x.data(), p.targets, o);
  for (std::int64_t t = 0; t < p.targets; ++t) {
    const auto ts = static_cast<std::size_t>(t);
    ASSERT_EQ(r.used[ts], 10);
    std::vector<double> res(static_cast<std::size_t>(p.dim));
    double xnorm = 0;
    for (std::int64_t i = 0; i < p.dim; ++i) {
      res[static_cast<std::size_t>(i)] = p.x[ts * static_cast<std::size_t>(p.dim) + static_cast<std::size_t>(i)];
      xnorm += res[static_cast<std::size_t>(i)] * res[static_cast<std::size_t>(i)];
    }
    for (int s = 0; s < 10; ++s) {
      const auto atom = static_cast<std::size_t>(r.atoms[ts * 10 + static_cast<std::size_t>(s)]);
      for (std::int64_t i = 0; i < p.dim; ++i)
        res[static_cast<std::size_t>(i)] -= r.coefficients[ts * 10 + static_cast<std::size_t>(s)] *
                                            p.dict[atom * static_cast<std::size_t>(p.dim) + static_cast<std::size_t>(i)];
    }
    double rnorm = 0;
    for (double v : res) rnorm += v * v;
    EXPECT_NEAR(std::sqrt(rnorm / xnorm), r.relative_residual[ts], 1e-9);
    for (int s = 0; s < 10; ++s) {
      const auto atom = static_cast<std::size_t>(r.atoms[ts * 10 + static_cast<std::size_t>(s)]);
      double c = 0, anorm = 0;
      for (std::int64_t i = 0; i < p.dim; ++i) {
        const double a = p.dict[atom * static_cast<std::size_t>(p.dim) + static_cast<std::size_t>(i)];
        c += a * res[static_cast<std::size_t>(i)];
        anorm += a * a;
      }
      EXPECT_LT(std::fabs(c), 1e-9 * std::sqrt(anorm * xnorm)) << "residual not orthogonal to atom " << atom;
    }
  }
}

TEST(Omp, DegenerateInputsStop) {
  // A zero target uses no atom; a dictionary of one repeated atom gives one
  // atom and then stops (the copies add nothing).
  std::vector<float> dict(4 * 3);
  for (int a = 0; a < 4; ++a)
    for (int i = 0; i < 3; ++i) dict[static_cast<std::size_t>(a * 3 + i)] = static_cast<float>(i + 1);
  const std::vector<float> x = {0, 0, 0, 1, 0, 0};
  OmpOptions o;
  o.k = 3;
  const OmpResult r = batched_omp(dict.data(), 4, 3, x.data(), 2, o);
  EXPECT_EQ(r.used[0], 0);
  EXPECT_EQ(r.relative_residual[0], 0);
  EXPECT_EQ(r.used[1], 1);
  EXPECT_EQ(r.atoms[3], 0);
  EXPECT_EQ(r.atoms[4], -1);
  EXPECT_NEAR(r.coefficients[3], 1.0 / 14.0, 1e-12);  // least squares of e1 on (1, 2, 3)
}

}  // namespace
}  // namespace soupkit::linalg
