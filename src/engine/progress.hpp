#pragma once
// Progress on the coordinator (--progress): a redrawn bar when the user's
// terminal shows stderr, periodic lines otherwise (batch logs), or nothing.
// It counts finished tensors and the fraction done of the tensors still
// being computed (report_tensor_progress, on any rank), so a long tensor
// moves the display before it finishes. A ticker thread prints on time even
// while the coordinator is inside one long computation of its own (an SVD
// is one LAPACK call); it only prints, never communicates.
#include "soupkit/engine/engine.hpp"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cstdint>
#include <map>
#include <string>

namespace soupkit {

// --progress auto: does stderr reach a terminal the user sees? True when it
// is one (a plain run, srun --pty), or when Open MPI's mpirun started this
// process and mpirun's own stderr is one: mpirun forwards a rank's stderr
// through a pipe, so isatty(2) is false on the rank even at a terminal.
bool stderr_reaches_terminal();

// The mode a run uses: auto resolved (nothing when the log level is above
// info, as with --quiet; else a bar at a terminal, lines otherwise); an
// explicit bar or lines is shown whatever the log level.
ProgressMode resolve_progress_mode(ProgressMode requested);

class Progress {
 public:
  Progress(std::string label, std::size_t total_tensors, std::uint64_t total_bytes, ProgressMode mode,
           double line_interval_seconds);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  // Tensor `index` (of `bytes`) is finished.
  void advance(std::size_t index, std::uint64_t bytes, const std::string& tensor);
  // `fraction` of tensor `index` (of `bytes`) is done.
  void partial(std::size_t index, std::uint64_t bytes, double fraction, const std::string& tensor);
  // Counts tensors finished before this run (--resume) as done, without
  // letting them inflate the rate.
  void skip(std::size_t tensors, std::uint64_t bytes);
  void finish();

 private:
  void stop_ticker();
  void maybe_print();  // callers hold mutex_
  void print(bool final);
  std::string label_;
  std::size_t total_tensors_, done_tensors_ = 0;
  std::uint64_t total_bytes_, done_bytes_ = 0, skipped_bytes_ = 0;
  std::map<std::size_t, std::uint64_t> partial_;  // tensors under way: bytes done of each
  std::uint64_t partial_bytes_ = 0;               // their sum
  std::chrono::steady_clock::time_point start_, last_print_;
  std::string last_tensor_;
  double last_fraction_ = -1;  // of last_tensor_, when it is under way
  ProgressMode mode_;
  double interval_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread ticker_;
};

}  // namespace soupkit
