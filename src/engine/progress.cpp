#include "progress.hpp"

#include "soupkit/util/log.hpp"
#include "soupkit/io/tensor.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

namespace soupkit {
namespace {
// The bar is redrawn at most this often: smooth, and cheap over mpirun's pipe.
constexpr double kBarInterval = 0.1;

// The launchers whose stderr is the user's when they start us directly
// (Open MPI's mpirun under its names; prterun for Open MPI 5).
bool is_mpi_launcher(const std::string& comm) {
  for (const char* name : {"mpirun", "mpiexec", "orterun", "prterun", "prte"})
    if (comm == name) return true;
  return false;
}

bool parent_stderr_is_terminal() {
  const pid_t parent = ::getppid();
  std::ifstream comm_file(fmt::format("/proc/{}/comm", parent));
  std::string comm;
  if (!std::getline(comm_file, comm) || !is_mpi_launcher(comm)) return false;
  const int fd = ::open(fmt::format("/proc/{}/fd/2", parent).c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool terminal = ::isatty(fd) != 0;
  ::close(fd);
  return terminal;
}
}  // namespace

std::optional<ProgressMode> parse_progress_mode(const std::string& text) {
  if (text == "auto") return ProgressMode::Auto;
  if (text == "bar") return ProgressMode::Bar;
  if (text == "lines") return ProgressMode::Lines;
  if (text == "none") return ProgressMode::None;
  return std::nullopt;
}

bool stderr_reaches_terminal() { return ::isatty(STDERR_FILENO) != 0 || parent_stderr_is_terminal(); }

ProgressMode resolve_progress_mode(ProgressMode requested) {
  if (requested != ProgressMode::Auto) return requested;
  if (!log::enabled(log::Level::Info)) return ProgressMode::None;
  return stderr_reaches_terminal() ? ProgressMode::Bar : ProgressMode::Lines;
}

Progress::Progress(std::string label, std::size_t total_tensors, std::uint64_t total_bytes, ProgressMode mode,
                   double line_interval_seconds)
    : label_(std::move(label)),
      total_tensors_(total_tensors),
      total_bytes_(total_bytes),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_),
      mode_(resolve_progress_mode(mode)),
      interval_(mode_ == ProgressMode::Bar ? kBarInterval : line_interval_seconds) {
  if (mode_ == ProgressMode::None) return;
  // The bar's clock-driven redraw (rate, ETA) once a second is enough.
  const auto tick = std::chrono::duration<double>(mode_ == ProgressMode::Bar ? 1.0 : interval_);
  ticker_ = std::thread([this, tick] {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, tick, [this] { return stopping_; })) maybe_print();
  });
}

Progress::~Progress() { stop_ticker(); }

void Progress::stop_ticker() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (ticker_.joinable()) ticker_.join();
}

void Progress::advance(std::size_t index, std::uint64_t bytes, const std::string& tensor) {
  std::lock_guard lock(mutex_);
  if (const auto it = partial_.find(index); it != partial_.end()) {
    partial_bytes_ -= it->second;
    partial_.erase(it);
  }
  ++done_tensors_;
  done_bytes_ += bytes;
  last_tensor_ = tensor;
  last_fraction_ = -1;
  maybe_print();
}

void Progress::partial(std::size_t index, std::uint64_t bytes, double fraction, const std::string& tensor) {
  std::lock_guard lock(mutex_);
  const auto now_done = static_cast<std::uint64_t>(std::clamp(fraction, 0.0, 1.0) * static_cast<double>(bytes));
  std::uint64_t& was = partial_[index];
  partial_bytes_ += now_done;
  partial_bytes_ -= was;
  was = now_done;
  last_tensor_ = tensor;
  last_fraction_ = fraction;
  maybe_print();
}

void Progress::skip(std::size_t tensors, std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  done_tensors_ += tensors;
  done_bytes_ += bytes;
  skipped_bytes_ += bytes;
}

void Progress::finish() {
  stop_ticker();
  if (mode_ == ProgressMode::Bar) print(true);
}

void Progress::maybe_print() {
  if (mode_ == ProgressMode::None) return;
  const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_print_).count();
  if (since >= interval_) print(false);
}

void Progress::print(bool final) {
  last_print_ = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(last_print_ - start_).count();
  const std::uint64_t done = done_bytes_ + partial_bytes_;
  const double fraction = total_bytes_ ? static_cast<double>(done) / static_cast<double>(total_bytes_)
                                       : static_cast<double>(done_tensors_) / std::max<double>(1, total_tensors_);
  const double rate = elapsed > 0 ? static_cast<double>(done - skipped_bytes_) / elapsed : 0;
  // Below 1% the rate says little (the first reports of a tensor whose
  // SVD is most of its cost): no ETA rather than a wild one.
  const std::string eta = rate > 0 && fraction >= 0.01 ? fmt::format("ETA {:.0f} s", static_cast<double>(total_bytes_ - done) / rate)
                                   : std::string("ETA unknown");
  const std::string stats = fmt::format("{}/{} tensors, {}/{}, {}/s, {}", done_tensors_, total_tensors_,
                                        human_bytes(done), human_bytes(total_bytes_),
                                        human_bytes(static_cast<std::uint64_t>(rate)), eta);
  if (mode_ == ProgressMode::Bar) {
    constexpr int kWidth = 30;
    const int filled = std::clamp(static_cast<int>(fraction * kWidth), 0, kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %3.0f%% %s\x1b[K%s", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), 100 * fraction, stats.c_str(), final ? "\n" : "");
  } else {
    const std::string current =
        last_tensor_.empty()    ? std::string()
        : last_fraction_ >= 0   ? fmt::format(" (computing {}: {:.0f}%)", printable(last_tensor_), 100 * last_fraction_)
                                : fmt::format(" (last finished: {})", printable(last_tensor_));
    std::fprintf(stderr, "%s: %.1f%% %s%s\n", label_.c_str(), 100 * fraction, stats.c_str(), current.c_str());
  }
  std::fflush(stderr);
}

}  // namespace soupkit
