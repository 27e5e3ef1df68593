#include "soupkit/linalg/blacs_grid.hpp"

#include "soupkit/util/error.hpp"
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

// Checked before any collective, on every rank alike.
const Communicator& checked_size(const Communicator& comm, int rows, int cols) {
  SOUPKIT_ERROR_IF(rows < 1 || cols < 1 || static_cast<long long>(rows) * cols != comm.size(),
                   "internal: a {} x {} grid needs {} ranks, the communicator has {}", rows, cols,
                   static_cast<long long>(rows) * cols, comm.size());
  return comm;
}
}  // namespace

BlacsGrid::BlacsGrid(const Communicator& comm, int rows, int cols)
    : blacs_comm_(checked_size(comm, rows, cols).duplicate_aborting_on_error()), rows_(rows), cols_(cols) {
  handle_ = Csys2blacs_handle(blacs_comm_.get());
  context_ = handle_;
  Cblacs_gridinit(&context_, "R", rows, cols);
  Cblacs_gridinfo(context_, &rows_, &cols_, &my_row_, &my_col_);
  if (my_row_ < 0) {
    release();
    throw Error(fmt::format("BLACS could not place this rank in a {} x {} grid", rows, cols));
  }
  int on = 1;
  Cblacs_set(context_, kBlacsTopsRepeat, &on);
  Cblacs_set(context_, kBlacsTopsCoherent, &on);
}

BlacsGrid::BlacsGrid(BlacsGrid&& other) noexcept
    : blacs_comm_(std::move(other.blacs_comm_)),
      handle_(std::exchange(other.handle_, -1)),
      context_(std::exchange(other.context_, -1)),
      rows_(other.rows_),
      cols_(other.cols_),
      my_row_(other.my_row_),
      my_col_(other.my_col_) {}

BlacsGrid::~BlacsGrid() { release(); }

void BlacsGrid::release() noexcept {
  if (context_ >= 0) Cblacs_gridexit(context_);
  if (handle_ >= 0) Cfree_blacs_system_handle(handle_);
  context_ = handle_ = -1;
}

}  // namespace soupkit::linalg
