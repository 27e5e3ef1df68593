#include "soupkit/engine/output_lock.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace soupkit {
namespace {

// Lock files are a few lines: read no more than this of one (a huge file
// at the path is not soupkit's anyway).
constexpr std::size_t kMaxLockFileRead = 1 << 20;

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

// Up to `limit` bytes from the start of the file behind `fd`.
std::string read_prefix(int fd, std::size_t limit) {
  std::string text;
  char buffer[65536];
  while (text.size() < limit) {
    const ssize_t n = ::pread(fd, buffer, std::min(sizeof buffer, limit - text.size()), static_cast<off_t>(text.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  return text;
}

// A JSON value as plain text (strings without their quotes).
std::string plain(const nlohmann::json& j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

// Who holds the lock, from the last owner line of the file.
std::string describe_owner(int fd) {
  std::istringstream lines(read_prefix(fd, kMaxLockFileRead));
  std::string owner = "another soupkit job";
  for (std::string line; std::getline(lines, line);) {
    const auto j = try_parse_untrusted_json(line);
    if (!j || !j->is_object() || !j->contains("owner") || !(*j)["owner"].is_object()) continue;
    const auto& o = (*j)["owner"];
    owner = fmt::format("soupkit job pid {} on host {} (started {})", plain(o.value("pid", nlohmann::json("?"))),
                        plain(o.value("host", nlohmann::json("?"))), plain(o.value("started", nlohmann::json("?"))));
  }
  return owner;
}

bool same_file(int fd, const fs::path& path) {
  struct stat locked {}, named {};
  return ::fstat(fd, &locked) == 0 && ::lstat(path.c_str(), &named) == 0 && locked.st_dev == named.st_dev &&
         locked.st_ino == named.st_ino;
}

// F_SETLK on the whole file: 0, or the errno.
int try_lock(int fd) {
  struct flock lock {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  return ::fcntl(fd, F_SETLK, &lock) == 0 ? 0 : errno;
}

SystemError cannot_lock(const fs::path& out, const fs::path& path, int err) {
  return SystemError(fmt::format("{}: cannot lock {}: {} (a filesystem without POSIX locks; on Lustre mount with -o flock)",
                                 out.string(), path.string(), std::strerror(err)));
}

}  // namespace

bool is_soupkit_side_file(const std::string& first_line, const std::string& header_key) {
  const auto j = try_parse_untrusted_json(first_line);
  if (!j || !j->is_object()) return false;
  // Greedy locks made before lock files had a header start with an owner line.
  return j->contains(header_key) || (header_key == "soupkit_lock" && j->contains("owner") && (*j)["owner"].is_object());
}

OutputLock::OutputLock(const fs::path& lock_file, const fs::path& out, const nlohmann::json& header)
    : path_(lock_file), header_key_(header.begin().key()) {
  std::error_code ec;
  if (path_.has_parent_path()) fs::create_directories(path_.parent_path(), ec);
  // A finishing job deletes its lock file while still holding the lock, so
  // the file we locked may already be gone from the path: lock again until
  // the locked file is the one the path names, or two jobs could each hold
  // "the" lock.
  for (int attempt = 0;; ++attempt) {
    if (create_new(out, header) || open_existing(out)) return;
    SOUPKIT_ERROR_IF(attempt >= 100, "{}: the lock file {} keeps being replaced by another job", out.string(),
                     path_.string());
  }
}

// The new file is written and locked under a unique name first, then
// linked to the path (which fails if anything is there), so nothing else
// can ever see it empty or lock it first, and a failure (a full disk)
// leaves nothing behind. False if the path exists.
bool OutputLock::create_new(const fs::path& out, const nlohmann::json& header) {
  std::string unique = path_.string() + ".XXXXXX";
  const int fd = ::mkostemp(unique.data(), O_CLOEXEC);
  if (fd < 0)
    throw SystemError(fmt::format("{}: cannot create the lock file {}: {}", out.string(), path_.string(),
                                  std::strerror(errno)));
  int err = 0;
  try {
    ::fchmod(fd, 0644);
    append_to_fd(fd, path_, header.dump() + "\n");
    if (const int lock_err = try_lock(fd)) throw cannot_lock(out, path_, lock_err);
    err = ::link(unique.c_str(), path_.c_str()) == 0 ? 0 : errno;
  } catch (...) {
    ::close(fd);
    ::unlink(unique.c_str());
    throw;
  }
  ::unlink(unique.c_str());
  if (err == 0) {
    fd_ = fd;
    created_ = true;
    return true;
  }
  ::close(fd);
  if (err == EEXIST) return false;
  throw SystemError(fmt::format("{}: cannot create the lock file {}: {}", out.string(), path_.string(),
                                std::strerror(err)));
}

// An existing file at the path: locked, and used only if it is soupkit's.
// False if it vanished or was replaced meanwhile (try again).
bool OutputLock::open_existing(const fs::path& out) {
  const int fd = ::open(path_.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return false;
  SOUPKIT_INPUT_ERROR_IF(fd < 0 && errno == ELOOP,
                         "{}: {} is a symbolic link, not a file soupkit created; move it away or choose another output",
                         out.string(), path_.string());
  if (fd < 0)
    throw SystemError(fmt::format("{}: cannot open the lock file {}: {}", out.string(), path_.string(),
                                  std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(fmt::format("{}: {} is not a regular file, not one soupkit created; move it away or choose "
                                 "another output",
                                 out.string(), path_.string()));
  }
  if (const int err = try_lock(fd)) {
    const std::string owner = describe_owner(fd);
    ::close(fd);
    if (err == EACCES || err == EAGAIN)
      throw InputError(fmt::format("{}: the output is being written by {}; wait for it to finish or choose "
                                   "another output (lock: {})",
                                   out.string(), owner, path_.string()));
    throw cannot_lock(out, path_, err);
  }
  if (!same_file(fd, path_)) {
    ::close(fd);
    return false;
  }
  const std::string start = read_prefix(fd, kMaxLockFileRead);
  if (!is_soupkit_side_file(start.substr(0, start.find('\n')), header_key_)) {
    ::close(fd);
    throw InputError(fmt::format("{}: {} exists but soupkit did not create it (it does not start with a soupkit "
                                 "record); move it away or choose another output",
                                 out.string(), path_.string()));
  }
  fd_ = fd;
  return true;
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
  if (fd_ < 0) return;
  if (same_file(fd_, path_)) ::unlink(path_.c_str());
  ::close(fd_);
  fd_ = -1;
}

void append_to_fd(int fd, const fs::path& path, const std::string& text) {
  SOUPKIT_ERROR_IF(::lseek(fd, 0, SEEK_END) < 0, "{}: seek: {}", path.string(), std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n <= 0, "{}: write: {}", path.string(), std::strerror(n < 0 ? errno : ENOSPC));
    done += static_cast<std::size_t>(n);
  }
}

void rewrite_fd(int fd, const fs::path& path, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pwrite(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n <= 0, "{}: write: {}", path.string(), std::strerror(n < 0 ? errno : ENOSPC));
    done += static_cast<std::size_t>(n);
  }
  SOUPKIT_ERROR_IF(::ftruncate(fd, static_cast<off_t>(text.size())) != 0, "{}: cannot truncate: {}", path.string(),
                   std::strerror(errno));
}

}  // namespace soupkit
