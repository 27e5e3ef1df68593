// eigenvector_slices, the grid route's split of the eigenvectors over its
// ranks, against its definition by brute force: the slices are contiguous
// and cover the range, every boundary lies in a gap wide enough (relative
// and absolute), and no allowed boundary lies nearer to an even share.
#include "soupkit/linalg/pgram_svd.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace soupkit::linalg {
namespace {

bool may_split(const std::vector<double>& w, int b, double largest) {  // between eigenvalues b - 1 and b (1-based)
  const double below = w[b - 2], above = w[b - 1], gap = above - below;
  return gap > 0 && gap >= 1e-3 * std::max(std::abs(below), std::abs(above)) && gap >= 1e-8 * largest;
}

void expect_definition(const std::vector<double>& w, int il, int iu, int parts) {
  const std::vector<int> b = eigenvector_slices(w, il, iu, parts);
  ASSERT_EQ(b.size(), static_cast<std::size_t>(parts) + 1);
  EXPECT_EQ(b.front(), il);
  EXPECT_EQ(b.back(), iu + 1);
  double largest = 0;
  for (double v : w) largest = std::max(largest, std::abs(v));
  for (int p = 1; p <= parts; ++p) ASSERT_LE(b[p - 1], b[p]) << p;
  for (int p = 1; p < parts; ++p) {
    const int at = b[p];
    const bool edge = at == il || at == iu + 1;
    EXPECT_TRUE(edge || may_split(w, at, largest)) << "boundary " << p << " at " << at;
    const double ideal = il + static_cast<double>(iu + 1 - il) * p / parts;
    for (int other = b[p - 1]; other <= iu + 1; ++other) {
      const bool allowed = other == il || other == iu + 1 || may_split(w, other, largest);
      if (allowed) {
        EXPECT_GE(std::abs(other - ideal), std::abs(at - ideal)) << "boundary " << p << ": " << other;
      }
    }
  }
}

TEST(EigenvectorSlices, EvenSharesOfAWellSeparatedSpectrum) {
  std::vector<double> w;
  for (int j = 0; j < 100; ++j) w.push_back(std::pow(1.1, j));
  EXPECT_EQ(eigenvector_slices(w, 1, 100, 4), (std::vector<int>{1, 26, 51, 76, 101}));
  EXPECT_EQ(eigenvector_slices(w, 41, 60, 2), (std::vector<int>{41, 51, 61}));
  for (int parts : {1, 2, 3, 7, 64, 150}) expect_definition(w, 1, 100, parts);
}

TEST(EigenvectorSlices, AClusterIsNeverSplit) {
  // Eigenvalues 45..56 (1-based) within 1e-9 of each other, across the even
  // split at 51, and an exact pair at 20, 21.
  std::vector<double> w;
  for (int j = 0; j < 100; ++j) w.push_back(1.0 + j);
  for (int j = 44; j < 56; ++j) w[j] = 45.0 + 1e-9 * j;
  w[20] = w[19];
  // The even split (51) falls inside; 45 and 57 are as near, the lower wins.
  EXPECT_EQ(eigenvector_slices(w, 1, 100, 2), (std::vector<int>{1, 45, 101}));
  for (int parts : {2, 3, 5, 13, 100}) expect_definition(w, 1, 100, parts);
  for (int parts : {2, 3}) expect_definition(w, 10, 60, parts);
}

TEST(EigenvectorSlices, OneClusterTakesOnePartAndTheRestAreEmpty) {
  std::vector<double> w(50, 3.0);
  for (int j = 0; j < 50; ++j) w[j] += 1e-12 * j;
  EXPECT_EQ(eigenvector_slices(w, 1, 50, 3), (std::vector<int>{1, 1, 51, 51}));
  expect_definition(w, 1, 50, 3);
}

TEST(EigenvectorSlices, NearZeroEigenvaluesSplitOnlyAtAnAbsoluteGap) {
  // Relative gaps of 2x, but absolute ones below 1e-8 of the largest: the
  // vectors of such noise eigenvalues, computed apart, need not be orthogonal.
  std::vector<double> w;
  for (int j = 0; j < 40; ++j) w.push_back(1e-20 * std::pow(2.0, j));
  for (int j = 0; j < 40; ++j) w.push_back(1.0 + 0.5 * j);
  // No boundary among the first 40: the even split at 21 goes to 1 (as near as 41).
  EXPECT_EQ(eigenvector_slices(w, 1, 80, 4), (std::vector<int>{1, 1, 41, 61, 81}));
  expect_definition(w, 1, 80, 4);
}

TEST(EigenvectorSlices, ARelativeGapUnder1e3IsACluster) {
  // Absolute gaps of 0.5 (far above 1e-8 of the largest) but relative ones
  // of 5e-4 among the first 20; 1e-2 and more among the rest.
  std::vector<double> w;
  for (int j = 0; j < 20; ++j) w.push_back(1000 + 0.5 * j);
  for (int j = 0; j < 20; ++j) w.push_back(2000 + 40.0 * j);
  EXPECT_EQ(eigenvector_slices(w, 1, 40, 4), (std::vector<int>{1, 1, 21, 31, 41}));
  expect_definition(w, 1, 40, 4);
}

TEST(EigenvectorSlices, MorePartsThanPairsAndAnEmptyRange) {
  std::vector<double> w = {1, 2, 3, 4, 5};
  EXPECT_EQ(eigenvector_slices(w, 2, 3, 5), (std::vector<int>{2, 2, 3, 3, 4, 4}));
  expect_definition(w, 2, 3, 5);
  EXPECT_EQ(eigenvector_slices(w, 3, 2, 3), (std::vector<int>{3, 3, 3, 3}));
}

}  // namespace
}  // namespace soupkit::linalg
