#pragma once
// Dot products of a few vectors that are only ever seen in pieces (the rows
// of tensors streamed block by block): the Gram matrix G_ij = sum_k x_ik x_jk
// of every pair, the one whole-tensor statistic the spherical merges need
// (norms, angles, and the norms of any linear combination: |sum_i c_i x_i|^2
// = c^T G c).
//
// Accuracy and determinism. Each piece's dot products are summed in plain
// float64, in element order; the pieces' partial sums are added with a
// compensated (Neumaier) sum, so the error does not grow with the number of
// pieces: the result is as accurate as one piece's plain sum, about
// length(piece) x 2^-53 relative at worst. A caller that feeds the same
// pieces in the same order gets the same bits, so feeding a tensor one row
// per piece makes the result independent of how rows are grouped into
// blocks (and of the memory budget, and of the rank count).
#include "soupkit/linalg/compensated_sum.hpp"

#include <cstddef>
#include <vector>

namespace soupkit::linalg {

// The symmetric Gram matrix of n vectors.
class Gram {
 public:
  explicit Gram(std::size_t n) : n_(n), g_(n * n, 0.0) {}
  std::size_t size() const { return n_; }
  double operator()(std::size_t i, std::size_t j) const { return g_[i * n_ + j]; }
  void set(std::size_t i, std::size_t j, double v) { g_[i * n_ + j] = g_[j * n_ + i] = v; }
  // |sum_i c_i x_i|^2 = c^T G c, in a fixed order; 0 where rounding makes it negative (NaN stays NaN).
  double squared_norm(const std::vector<double>& c) const;
  // (G c)_i = x_i . sum_j c_j x_j.
  std::vector<double> times(const std::vector<double>& c) const;
  // Whether every entry is a finite number (no input held inf or NaN).
  bool finite() const;

 private:
  std::size_t n_;
  std::vector<double> g_;
};

class GramAccumulator {
 public:
  explicit GramAccumulator(std::size_t n) : n_(n), sums_(n * (n + 1) / 2), partial_(n * (n + 1) / 2) {}
  // Adds one piece: `length` consecutive elements of each of the n vectors
  // (pieces[i] points at vector i's).
  void add(const double* const* pieces, std::size_t length);
  Gram result() const;

 private:
  std::size_t n_;
  std::vector<CompensatedSum> sums_;  // upper triangle, row by row
  std::vector<double> partial_;
};

}  // namespace soupkit::linalg
