#include "progress.hpp"

#include "soupkit/util/log.hpp"
#include "soupkit/io/tensor.hpp"

#include <cstdio>
#include <unistd.h>

namespace soupkit {
namespace {
// Plain lines every this many seconds: frequent enough to see a job is
// alive, rare enough not to flood a Slurm log.
constexpr double kLineInterval = 10.0;
constexpr double kBarInterval = 0.1;
}  // namespace

Progress::Progress(std::string label, std::size_t total_tensors, std::uint64_t total_bytes)
    : label_(std::move(label)),
      total_tensors_(total_tensors),
      total_bytes_(total_bytes),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_),
      enabled_(log::enabled(log::Level::Info)),
      terminal_(::isatty(STDERR_FILENO) != 0) {}

void Progress::advance(std::uint64_t bytes, const std::string& tensor) {
  ++done_tensors_;
  done_bytes_ += bytes;
  last_tensor_ = tensor;
  if (!enabled_) return;
  const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_print_).count();
  if (since >= (terminal_ ? kBarInterval : kLineInterval)) print(false);
}

void Progress::skip(std::size_t tensors, std::uint64_t bytes) {
  done_tensors_ += tensors;
  done_bytes_ += bytes;
  skipped_bytes_ += bytes;
}

void Progress::finish() {
  if (enabled_ && terminal_) print(true);
}

void Progress::print(bool final) {
  last_print_ = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(last_print_ - start_).count();
  const double fraction = total_bytes_ ? static_cast<double>(done_bytes_) / static_cast<double>(total_bytes_)
                                       : static_cast<double>(done_tensors_) / std::max<double>(1, total_tensors_);
  const double rate = elapsed > 0 ? static_cast<double>(done_bytes_ - skipped_bytes_) / elapsed : 0;
  const double eta = rate > 0 ? static_cast<double>(total_bytes_ - done_bytes_) / rate : 0;
  const std::string stats = fmt::format("{}/{} tensors, {}/{}, {}/s, ETA {:.0f} s", done_tensors_, total_tensors_,
                                        human_bytes(done_bytes_), human_bytes(total_bytes_),
                                        human_bytes(static_cast<std::uint64_t>(rate)), eta);
  if (terminal_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %3.0f%% %s\x1b[K%s", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), 100 * fraction, stats.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s: %3.0f%% %s (last: %s)\n", label_.c_str(), 100 * fraction, stats.c_str(),
                 last_tensor_.c_str());
  }
  std::fflush(stderr);
}

}  // namespace soupkit
