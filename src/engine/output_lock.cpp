#include "soupkit/output_lock.hpp"

#include "soupkit/error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

namespace soupkit {
namespace {

std::string host_name() {
  char buffer[256] = {};
  ::gethostname(buffer, sizeof buffer - 1);
  return buffer;
}

std::string now_text() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char buffer[64];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&t));
  return buffer;
}

// Who holds the lock, from the last owner line of the file (read by a
// process that does not hold it, so opening it again is harmless).
std::string describe_owner(const fs::path& path) {
  std::string text;
  try {
    text = read_text_file(path);
  } catch (...) {
    return "another soupkit job";
  }
  std::istringstream lines(text);
  std::string owner = "another soupkit job";
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("owner") && j["owner"].is_object())
      owner = fmt::format("soupkit job pid {} on host {} (started {})", j["owner"].value("pid", 0),
                          j["owner"].value("host", "?"), j["owner"].value("started", "?"));
  }
  return owner;
}

}  // namespace

OutputLock::OutputLock(const fs::path& lock_file, const fs::path& out) : path_(lock_file) {
  std::error_code ec;
  if (path_.has_parent_path()) fs::create_directories(path_.parent_path(), ec);
  // A finishing job deletes its lock file while still holding the lock, so
  // the file we locked may already be gone from the path: lock again until
  // the locked file is the one the path names, or two jobs could each hold
  // "the" lock.
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw SystemError(fmt::format("{}: cannot create the lock file {}: {}", out.string(), path_.string(),
                                    std::strerror(errno)));
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    if (::fcntl(fd_, F_SETLK, &lock) != 0) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      if (err == EACCES || err == EAGAIN)
        throw InputError(fmt::format("{}: the output is being written by {}; wait for it to finish or choose "
                                     "another output (lock: {})",
                                     out.string(), describe_owner(path_), path_.string()));
      throw SystemError(fmt::format("{}: cannot lock {}: {} (a filesystem without POSIX locks; on Lustre mount "
                                    "with -o flock)",
                                    out.string(), path_.string(), std::strerror(err)));
    }
    struct stat locked {}, named {};
    if (::fstat(fd_, &locked) == 0 && ::stat(path_.c_str(), &named) == 0 && locked.st_dev == named.st_dev &&
        locked.st_ino == named.st_ino)
      return;
    ::close(fd_);
    fd_ = -1;
    SOUPKIT_ERROR_IF(attempt >= 100, "{}: the lock file {} keeps being replaced by another job", out.string(),
                     path_.string());
  }
}

OutputLock::~OutputLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (a journal, for --resume)
}

void OutputLock::write_owner() {
  append_to_fd(fd_, path_,
               nlohmann::json{{"owner", {{"host", host_name()}, {"pid", ::getpid()}, {"started", now_text()}}}}.dump() +
                   "\n");
}

void OutputLock::remove() {
  std::error_code ec;
  fs::remove(path_, ec);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void append_to_fd(int fd, const fs::path& path, const std::string& text) {
  SOUPKIT_ERROR_IF(::lseek(fd, 0, SEEK_END) < 0, "{}: seek: {}", path.string(), std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n <= 0, "{}: write: {}", path.string(), std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace soupkit
