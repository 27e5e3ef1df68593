#pragma once
// A BLACS process grid over the ranks of one communicator (which may be a
// sub-communicator of the job), and block-cyclic matrix layouts on it.
// Move-only: the grid is released exactly once. Never calls Cblacs_exit
// (it would finalize MPI under us). Used through ProcessGrid
// (process_grid.hpp), which agrees on its construction over the ranks.
#include "soupkit/parallel/communicator.hpp"

#include <array>
#include <cstdint>

namespace soupkit::linalg {

class BlacsGrid {
 public:
  // Every rank of `comm` must construct the grid (collective). rows x cols
  // must equal the communicator's size.
  BlacsGrid(const Communicator& comm, int rows, int cols);
  BlacsGrid(BlacsGrid&& other) noexcept;
  BlacsGrid& operator=(BlacsGrid&&) = delete;
  BlacsGrid(const BlacsGrid&) = delete;
  BlacsGrid& operator=(const BlacsGrid&) = delete;
  ~BlacsGrid();

  int context() const { return context_; }
  int rows() const { return rows_; }
  int cols() const { return cols_; }
  int my_row() const { return my_row_; }
  int my_col() const { return my_col_; }

 private:
  void release() noexcept;

  // BLACS's own copy of the ranks: BLACS and ScaLAPACK never check MPI's
  // return codes, so an MPI error there aborts the job instead.
  Communicator blacs_comm_;
  int handle_ = -1;
  int context_ = -1;
  int rows_ = 0, cols_ = 0, my_row_ = -1, my_col_ = -1;
};

// A global m x n matrix distributed block-cyclically (mb x nb blocks) on a grid.
struct MatrixLayout {
  std::array<int, 9> desc{};
  int m = 0, n = 0, mb = 0, nb = 0;
  int local_rows = 0, local_cols = 0;  // this rank's piece, column-major, leading dimension max(1, local_rows)
  std::size_t local_size() const { return static_cast<std::size_t>(local_rows) * static_cast<std::size_t>(local_cols); }
  int lld() const { return local_rows > 1 ? local_rows : 1; }
};

// Global index of local index `local` along a dimension of block size nb
// distributed over `procs` processes, for process `proc` (source process 0).
inline std::int64_t global_index(std::int64_t local, int nb, int proc, int procs) {
  return (local / nb) * static_cast<std::int64_t>(nb) * procs + static_cast<std::int64_t>(proc) * nb + local % nb;
}

}  // namespace soupkit::linalg
