#include "soupkit/linalg/blacs_grid.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/scalapack.hpp"

#include <utility>

namespace soupkit::linalg {
namespace {
// BLACS_SET settings (BLACS's Bdef.h). Left at their defaults, combines
// (dgsum2d, used by pdsyevd's reduction and solver) may take a topology
// whose summation order depends on message arrival: on a 3 x 1 grid the
// same 768 x 768 eigenproblem gave a different result in most runs
// (measured; docs/architecture.md). Repeatable combines sum in a fixed
// order; coherent ones leave the same result on every process.
constexpr int kBlacsTopsRepeat = 15;
constexpr int kBlacsTopsCoherent = 16;
}  // namespace

BlacsGrid::BlacsGrid(MPI_Comm comm, int rows, int cols) : comm_(comm), rows_(rows), cols_(cols) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  SOUPKIT_ERROR_IF(rows * cols != size, "internal: a {} x {} grid needs {} ranks, the communicator has {}", rows, cols,
                   rows * cols, size);
  handle_ = Csys2blacs_handle(comm);
  context_ = handle_;
  Cblacs_gridinit(&context_, "R", rows, cols);
  Cblacs_gridinfo(context_, &rows_, &cols_, &my_row_, &my_col_);
  SOUPKIT_ERROR_IF(my_row_ < 0, "BLACS could not place this rank in a {} x {} grid", rows, cols);
  int on = 1;
  Cblacs_set(context_, kBlacsTopsRepeat, &on);
  Cblacs_set(context_, kBlacsTopsCoherent, &on);
}

BlacsGrid::BlacsGrid(BlacsGrid&& other) noexcept
    : comm_(other.comm_),
      handle_(std::exchange(other.handle_, -1)),
      context_(std::exchange(other.context_, -1)),
      rows_(other.rows_),
      cols_(other.cols_),
      my_row_(other.my_row_),
      my_col_(other.my_col_) {}

BlacsGrid::~BlacsGrid() {
  if (context_ >= 0) Cblacs_gridexit(context_);
  if (handle_ >= 0) Cfree_blacs_system_handle(handle_);
}

MatrixLayout make_layout(const BlacsGrid& grid, std::int64_t m, std::int64_t n, int mb, int nb) {
  MatrixLayout l;
  l.m = to_lapack_int(m, "distributed matrix rows");
  l.n = to_lapack_int(n, "distributed matrix columns");
  l.mb = mb;
  l.nb = nb;
  const int zero = 0, my_row = grid.my_row(), my_col = grid.my_col(), rows = grid.rows(), cols = grid.cols();
  l.local_rows = numroc_(&l.m, &l.mb, &my_row, &zero, &rows);
  l.local_cols = numroc_(&l.n, &l.nb, &my_col, &zero, &cols);
  const int lld = l.lld(), context = grid.context();
  int info = 0;
  descinit_(l.desc.data(), &l.m, &l.n, &l.mb, &l.nb, &zero, &zero, &context, &lld, &info);
  SOUPKIT_ERROR_IF(info != 0, "descinit failed (info {}) for a {} x {} matrix", info, m, n);
  return l;
}

}  // namespace soupkit::linalg
