// The sparsifiers of the generalized task arithmetic methods against brute
// forces written from mergekit's code (mergekit/sparsify.py): breadcrumbs'
// integer arithmetic and Python slice over a full sort, DELLA's ranks and
// probabilities, DARE's Bernoulli draws; and the counter-based random
// stream against SplitMix64's and FNV-1a's published values.
#include "soupkit/linalg/counter_random.hpp"
#include "soupkit/methods/delta_sparsifier.hpp"

#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace soupkit {
namespace {

TEST(CounterRandom, SplitMix64AndFnv1aReferenceValues) {
  // SplitMix64 seeded with 0: its first outputs are mix(k * 0x9E3779B97F4A7C15).
  EXPECT_EQ(linalg::splitmix64_mix(0x9E3779B97F4A7C15ull), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(linalg::splitmix64_mix(2 * 0x9E3779B97F4A7C15ull), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(linalg::fnv1a64(""), 0xCBF29CE484222325ull);
  EXPECT_EQ(linalg::fnv1a64("a"), 0xAF63DC4C8601EC8Cull);
  EXPECT_EQ(linalg::fnv1a64("foobar"), 0x85944171F73967E8ull);
}

TEST(CounterRandom, ADrawDependsOnSeedNameModelAndIndexOnly) {
  const linalg::CounterStream s(7, "model.layers.0.mlp.up_proj.weight", 2);
  const std::uint64_t key = linalg::splitmix64_mix(
      linalg::splitmix64_mix(linalg::splitmix64_mix(7) ^ linalg::fnv1a64("model.layers.0.mlp.up_proj.weight")) ^ 2);
  EXPECT_EQ(s.key(), key);
  EXPECT_EQ(s.bits(41), linalg::splitmix64_mix(key + 42 * 0x9E3779B97F4A7C15ull));
  EXPECT_EQ(s.uniform(41), static_cast<double>(s.bits(41) >> 11) / 9007199254740992.0);
  EXPECT_EQ(s.bits(5), linalg::CounterStream(7, "model.layers.0.mlp.up_proj.weight", 2).bits(5));
  EXPECT_NE(s.key(), linalg::CounterStream(8, "model.layers.0.mlp.up_proj.weight", 2).key());
  EXPECT_NE(s.key(), linalg::CounterStream(7, "model.layers.1.mlp.up_proj.weight", 2).key());
  EXPECT_NE(s.key(), linalg::CounterStream(7, "model.layers.0.mlp.up_proj.weight", 3).key());
  double low = 1, high = 0;
  for (std::uint64_t j = 0; j < 10000; ++j) {
    low = std::min(low, s.uniform(j));
    high = std::max(high, s.uniform(j));
  }
  EXPECT_GE(low, 0.0);
  EXPECT_LT(high, 1.0);
  EXPECT_LT(low, 0.001);
  EXPECT_GT(high, 0.999);
}

TensorInfo tensor(std::string name, Shape shape) {
  TensorInfo t;
  t.name = std::move(name);
  t.dtype = DType::F32;
  t.shape = std::move(shape);
  return t;
}

linalg::BlockSource whole(const std::vector<double>& x) {
  return [&x](const linalg::BlockConsumer& consume) { consume(x); };
}

// The mask a sparsifier gives x (one pass, blocks of `rows_per_block` rows);
// all ones for nullptr.
std::vector<std::uint8_t> mask_of(const SparsifyRequest& r, const std::vector<double>& x, std::uint64_t row = 1,
                                  std::uint64_t rows_per_block = 3) {
  const auto s = make_sparsifier(r);
  std::vector<std::uint8_t> mask(x.size(), 1);
  if (!s) return mask;
  s->prepare(whole(x), linalg::kMinSelectionBytes);
  s->begin_pass();
  for (std::uint64_t at = 0; at < x.size(); at += row * rows_per_block) {
    const std::uint64_t n = std::min<std::uint64_t>(row * rows_per_block, x.size() - at);
    s->keep_mask(std::span<const double>(x.data() + at, n), at, std::span<std::uint8_t>(mask.data() + at, n));
  }
  s->end_pass();
  return mask;
}

// Ascending magnitude order, equal magnitudes with the higher index first
// (so the lower index counts as the larger, as in every soupkit selection).
std::vector<std::size_t> ascending(const std::vector<double>& x) {
  std::vector<std::size_t> order(x.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return std::fabs(x[a]) != std::fabs(x[b]) ? std::fabs(x[a]) < std::fabs(x[b]) : a > b;
  });
  return order;
}

// mergekit's magnitude_outliers line by line, with Python's int() and slice.
std::vector<std::uint8_t> outliers_brute_force(const std::vector<double>& x, double density, double gamma) {
  const auto n = static_cast<long long>(x.size());
  if (density >= 1) return std::vector<std::uint8_t>(x.size(), 1);
  const auto target = static_cast<long long>(std::trunc(density * static_cast<double>(n)));
  auto n_top = static_cast<long long>(std::trunc(gamma * static_cast<double>(n)));
  auto n_bot = n - target - n_top;
  if (n_bot < 0) {
    n_top += n_bot;
    n_bot = 0;
  }
  auto clamp_index = [n](long long i) { return i < 0 ? std::max(i + n, 0LL) : std::min(i, n); };
  const long long start = clamp_index(n_bot), stop = clamp_index(-n_top);
  const auto order = ascending(x);
  std::vector<std::uint8_t> mask(x.size(), 0);
  for (long long i = start; i < stop; ++i) mask[order[static_cast<std::size_t>(i)]] = 1;
  return mask;
}

TEST(DeltaSparsifier, BreadcrumbsKeepsMergekitsSlice) {
  std::mt19937_64 rng(11);
  const double values[] = {0.0, -0.0, 0.25, -0.25, 1.0, -1.0, 3.0, 1e-300};
  const double densities[] = {0.0, 0.1, 0.5, 0.9, 0.99, 1.0, -0.2};
  const double gammas[] = {0.0, 0.01, 0.05, 0.2, 0.6, 1.5, -0.1};
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t size = 1 + rng() % 300;
    std::vector<double> x(size);
    for (auto& v : x) v = values[rng() % std::size(values)] * (trial % 3 == 0 ? 1.0 : 1.0 + double(rng() % 97));
    const TensorInfo t = tensor("w", {size});
    for (const double density : densities)
      for (const double gamma : gammas) {
        SparsifyRequest r{.method = Sparsification::MagnitudeOutliers, .tensor = &t, .model = "m", .density = density,
                          .gamma = gamma};
        EXPECT_EQ(mask_of(r, x), outliers_brute_force(x, density, gamma))
            << "size " << size << " density " << density << " gamma " << gamma;
      }
  }
}

TEST(DeltaSparsifier, BreadcrumbsWithoutOutliersKeepsNothing) {
  // n_top = int(0.01 * 50) = 0: indices[n_bot:-0] is empty.
  const TensorInfo t = tensor("w", {50});
  std::vector<double> x(50);
  std::iota(x.begin(), x.end(), 1.0);
  SparsifyRequest r{.method = Sparsification::MagnitudeOutliers, .tensor = &t, .model = "m", .density = 0.5,
                    .gamma = 0.01};
  const auto s = make_sparsifier(r);
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->keeps_nothing());
  r.gamma = 0.02;  // n_top = 1: the largest dropped, the next 25 kept
  const auto mask = mask_of(r, x);
  EXPECT_EQ(std::count(mask.begin(), mask.end(), 1), 25);
  EXPECT_EQ(mask[49], 0);
  EXPECT_EQ(mask[48], 1);
  EXPECT_EQ(mask[24], 1);
  EXPECT_EQ(mask[23], 0);
}

TEST(DeltaSparsifier, DareKeepsWhereTheStreamFallsBelowDensity) {
  const TensorInfo t = tensor("model.embed_tokens.weight", {40, 7});
  std::vector<double> x(280, 0.5);
  SparsifyRequest r{.method = Sparsification::Random, .tensor = &t, .model = "m", .model_index = 3, .density = 0.3,
                    .seed = 99};
  const auto mask = mask_of(r, x, 7);
  const linalg::CounterStream stream(99, t.name, 3);
  for (std::size_t j = 0; j < x.size(); ++j) EXPECT_EQ(mask[j], stream.uniform(j) < 0.3 ? 1 : 0) << j;
  r.density = 1.0;
  EXPECT_FALSE(make_sparsifier(r));
  r.density = -0.1;
  EXPECT_THROW(make_sparsifier(r), InputError);
}

// DELLA's probabilities from ranks in a row, computed the way mergekit writes them.
std::vector<double> della_probabilities(const std::vector<double>& row, double density, double epsilon) {
  const auto order = ascending(row);
  std::vector<double> p(row.size());
  const double span = static_cast<double>(row.size() - 1);
  for (std::size_t k = 0; k < order.size(); ++k) {
    const double rank = static_cast<double>(k + 1);  // ranks 1..L; min 1, max L
    p[order[k]] = (density - epsilon) + (rank - 1.0) / span * 2.0 * epsilon;
  }
  return p;
}

TEST(DeltaSparsifier, DellaRanksEachRowAndDrawsItsProbabilities) {
  std::mt19937_64 rng(5);
  const double values[] = {0.0, 0.5, -0.5, 2.0, -3.0, 0.125};
  for (const Shape& shape : {Shape{6, 9}, Shape{33}, Shape{4, 5, 3}}) {
    const TensorInfo t = tensor("della.w", shape);
    std::vector<double> x(t.numel());
    for (auto& v : x) v = values[rng() % std::size(values)];
    SparsifyRequest r{.method = Sparsification::DellaMagprune, .tensor = &t, .model = "m", .model_index = 1,
                      .density = 0.4, .epsilon = 0.3, .seed = 3};
    const std::uint64_t row = shape.size() == 1 ? 1 : t.numel() / shape[0];
    const auto mask = mask_of(r, x, row, 2);
    // Groups: the whole of a 1-D tensor; else each (row, trailing index) along dim 1.
    std::vector<double> p(x.size());
    const std::uint64_t stride = shape.size() == 3 ? shape[2] : 1, length = shape.size() == 1 ? shape[0] : shape[1];
    const std::uint64_t rows = shape.size() == 1 ? 1 : shape[0];
    for (std::uint64_t i = 0; i < rows; ++i)
      for (std::uint64_t g = 0; g < stride; ++g) {
        std::vector<double> group;
        for (std::uint64_t k = 0; k < length; ++k) group.push_back(x[i * length * stride + k * stride + g]);
        const auto q = della_probabilities(group, 0.4, 0.3);
        for (std::uint64_t k = 0; k < length; ++k) p[i * length * stride + k * stride + g] = q[k];
      }
    const linalg::CounterStream stream(3, t.name, 1);
    for (std::size_t j = 0; j < x.size(); ++j)
      EXPECT_EQ(mask[j], stream.uniform(j) < p[j] ? 1 : 0) << shape_string(shape) << " element " << j;
  }
}

std::string refusal(const SparsifyRequest& r) {
  try {
    (void)make_sparsifier(r);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no refusal";
}

TEST(DeltaSparsifier, RefusesWhereMergekitStops) {
  const TensorInfo t = tensor("model.norm.weight", {10});
  SparsifyRequest r{.method = Sparsification::DellaMagprune, .tensor = &t, .model = "models[1] (b)", .density = 0.5,
                    .epsilon = 0.5};
  EXPECT_NE(refusal(r).find("epsilon 0.5 with density 0.5"), std::string::npos) << refusal(r);
  EXPECT_NE(refusal(r).find("model.norm.weight"), std::string::npos);
  EXPECT_NE(refusal(r).find("models[1] (b)"), std::string::npos);
  r.epsilon = 0.1;
  EXPECT_TRUE(make_sparsifier(r));
  r.density = 0;  // mergekit: zeros
  EXPECT_TRUE(make_sparsifier(r)->keeps_nothing());
  const TensorInfo column = tensor("lm_head.bias", {8, 1});
  r.tensor = &column;
  r.density = 0.5;
  EXPECT_NE(refusal(r).find("a row of 1 has no rank range"), std::string::npos) << refusal(r);
  r.method = Sparsification::Magnitude;
  r.density = 0.1;  // int(0.1 x 8) = 0
  EXPECT_NE(refusal(r).find("keeps no element"), std::string::npos) << refusal(r);
  r.density = -1;
  EXPECT_NE(refusal(r).find("density -1"), std::string::npos) << refusal(r);
}

}  // namespace
}  // namespace soupkit
