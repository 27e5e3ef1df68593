#pragma once
// Progress on the coordinator: a live bar when stderr is a terminal, plain
// periodic lines otherwise (Slurm logs), nothing when quiet.
#include <chrono>
#include <cstdint>
#include <string>

namespace soupkit {

class Progress {
 public:
  Progress(std::string label, std::size_t total_tensors, std::uint64_t total_bytes);
  void advance(std::uint64_t bytes, const std::string& tensor);
  // Counts tensors finished before this run (--resume) as done, without
  // letting them inflate the rate.
  void skip(std::size_t tensors, std::uint64_t bytes);
  void finish();

 private:
  void print(bool final);
  std::string label_;
  std::size_t total_tensors_, done_tensors_ = 0;
  std::uint64_t total_bytes_, done_bytes_ = 0, skipped_bytes_ = 0;
  std::chrono::steady_clock::time_point start_, last_print_;
  std::string last_tensor_;
  bool enabled_, terminal_;
};

}  // namespace soupkit
