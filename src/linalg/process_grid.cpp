#include "soupkit/linalg/process_grid.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/scalapack.hpp"

#include <optional>

namespace soupkit::linalg {
namespace {

BlacsGrid agreed_blacs_grid(const Communicator& comm, int rows, int cols) {
  std::optional<BlacsGrid> grid;
  collectively(comm, [&] { grid.emplace(comm, rows, cols); });
  return std::move(*grid);
}

}  // namespace

ProcessGrid::ProcessGrid(const Communicator& ranks, int rows, int cols)
    : comm_(ranks.split(0, ranks.rank())), blacs_(agreed_blacs_grid(comm_, rows, cols)) {}

MatrixLayout make_layout(const ProcessGrid& grid, std::int64_t m, std::int64_t n, int mb, int nb) {
  MatrixLayout l;
  collectively(grid.comm(), [&] {
    l.m = to_lapack_int(m, "distributed matrix rows");
    l.n = to_lapack_int(n, "distributed matrix columns");
    l.mb = mb;
    l.nb = nb;
    const int zero = 0, my_row = grid.my_row(), my_col = grid.my_col(), rows = grid.rows(), cols = grid.cols();
    l.local_rows = numroc_(&l.m, &l.mb, &my_row, &zero, &rows);
    l.local_cols = numroc_(&l.n, &l.nb, &my_col, &zero, &cols);
    const int lld = l.lld(), context = grid.blacs().context();
    int info = 0;
    descinit_(l.desc.data(), &l.m, &l.n, &l.mb, &l.nb, &zero, &zero, &context, &lld, &info);
    SOUPKIT_ERROR_IF(info != 0, "descinit failed (info {}) for a {} x {} matrix", info, m, n);
  });
  return l;
}

}  // namespace soupkit::linalg
