// GoogleTest main for MPI tests. Only rank 0 prints GoogleTest's report; a
// failure on any other rank is printed with its rank number. A fatal
// assertion (ASSERT_*) on one rank aborts the whole job, because that rank
// would skip collectives the others are waiting in; the final result is the
// reduction of every rank's pass/fail.
#include "soupkit/parallel/communicator.hpp"

#include <gtest/gtest.h>

#include <cstdio>

namespace {

class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(const soupkit::Communicator& world) : world_(world) {}
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (!result.failed()) return;
    if (world_.rank() != 0)
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", world_.rank(),
                   result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
    if (result.fatally_failed()) {
      std::fprintf(stderr, "[rank %d] fatal assertion failed: aborting all ranks\n", world_.rank());
      std::fflush(stderr);
      world_.abort_job(1);
    }
  }

 private:
  const soupkit::Communicator& world_;
};

}  // namespace

int main(int argc, char** argv) {
  const soupkit::MpiSession mpi(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  const soupkit::Communicator world;
  auto& listeners = testing::UnitTest::GetInstance()->listeners();
  if (!world.is_root()) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankFailurePrinter(world));
  const bool passed = RUN_ALL_TESTS() == 0;
  const bool all_passed = world.all(passed);
  if (world.is_root() && !all_passed && passed) std::fprintf(stderr, "tests failed on another rank (see above)\n");
  return all_passed ? 0 : 1;
}
