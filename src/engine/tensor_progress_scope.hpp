#pragma once
// The engine's side of report_tensor_progress: while a TensorProgressScope
// lives, this thread's reports (and the rows it writes, for a tensor on one
// rank) go to its sink as the fraction of the tensor done.
#include "soupkit/engine/tensor_progress.hpp"

#include <chrono>
#include <functional>

namespace soupkit {

class TensorProgressScope {
 public:
  using Sink = std::function<void(double fraction)>;
  // The first report goes at once (the tensor has started); later ones
  // closer together than `min_interval` are dropped, and so is a report of
  // the whole tensor (its "done" follows at once).
  TensorProgressScope(Sink sink, std::chrono::duration<double> min_interval);
  ~TensorProgressScope();
  TensorProgressScope(const TensorProgressScope&) = delete;
  TensorProgressScope& operator=(const TensorProgressScope&) = delete;

  // Rows written by the engine's writer (not by the method's own report).
  void rows_written(std::uint64_t rows, std::uint64_t total_rows);

 private:
  friend void report_tensor_progress(std::uint64_t, std::uint64_t);
  void offer(double fraction);
  Sink sink_;
  std::chrono::steady_clock::duration min_interval_;
  std::chrono::steady_clock::time_point last_{};  // of the last report sent (none: the epoch)
  std::uint64_t rows_ = 0;
  bool explicit_ = false;  // the method reports itself: written rows no longer count
  TensorProgressScope* previous_;
};

}  // namespace soupkit
