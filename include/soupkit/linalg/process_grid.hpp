#pragma once
// A process grid for ScaLAPACK: the ranks of a group, on a communicator of
// their own, arranged as a BLACS grid. Move-only. Everything here is
// collective over the grid's ranks and agreed: a failure on any rank (a bad
// size, BLACS refusing a rank) throws the same error on every rank, so no
// rank is left alone in the next collective.
#include "soupkit/linalg/blacs_grid.hpp"
#include "soupkit/parallel/communicator.hpp"

#include <cstdint>

namespace soupkit::linalg {

class ProcessGrid {
 public:
  // The ranks of `ranks` as a rows x cols grid (rows x cols must be its size).
  ProcessGrid(const Communicator& ranks, int rows, int cols);
  ProcessGrid(ProcessGrid&&) noexcept = default;
  ProcessGrid& operator=(ProcessGrid&&) = delete;
  ProcessGrid(const ProcessGrid&) = delete;
  ProcessGrid& operator=(const ProcessGrid&) = delete;

  // The grid's own communicator, for soupkit's collectives among its ranks.
  const Communicator& comm() const { return comm_; }
  const BlacsGrid& blacs() const { return blacs_; }
  int rows() const { return blacs_.rows(); }
  int cols() const { return blacs_.cols(); }
  int my_row() const { return blacs_.my_row(); }
  int my_col() const { return blacs_.my_col(); }

 private:
  Communicator comm_;
  BlacsGrid blacs_;
};

// Throws Error on every rank if a dimension does not fit ScaLAPACK's 32-bit
// integers or ScaLAPACK refuses the layout.
MatrixLayout make_layout(const ProcessGrid& grid, std::int64_t m, std::int64_t n, int mb, int nb);

}  // namespace soupkit::linalg
