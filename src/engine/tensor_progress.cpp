#include "tensor_progress_scope.hpp"

#include <algorithm>

namespace soupkit {
namespace {
// thread_local: a report from any other thread than the engine's finds no
// scope and does nothing (MPI is initialised FUNNELED).
thread_local TensorProgressScope* current = nullptr;
}  // namespace

TensorProgressScope::TensorProgressScope(Sink sink, std::chrono::duration<double> min_interval)
    : sink_(std::move(sink)),
      min_interval_(std::chrono::duration_cast<std::chrono::steady_clock::duration>(min_interval)),
      previous_(current) {
  current = this;
}

TensorProgressScope::~TensorProgressScope() { current = previous_; }

void TensorProgressScope::rows_written(std::uint64_t rows, std::uint64_t total_rows) {
  rows_ += rows;
  if (!explicit_ && total_rows > 0) offer(static_cast<double>(rows_) / static_cast<double>(total_rows));
}

void TensorProgressScope::offer(double fraction) {
  if (fraction >= 1) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < min_interval_) return;
  last_ = now;
  if (sink_) sink_(std::clamp(fraction, 0.0, 1.0));
}

void report_tensor_progress(std::uint64_t done, std::uint64_t total) {
  if (!current || total == 0) return;
  current->explicit_ = true;
  current->offer(static_cast<double>(done) / static_cast<double>(total));
}

}  // namespace soupkit
