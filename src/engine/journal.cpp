#include "journal.hpp"

#include "soupkit/checksum.hpp"
#include "soupkit/error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

namespace soupkit {
namespace {

std::string hex64(std::uint64_t v) { return fmt::format("{:016x}", v); }

std::string host_name() {
  char buffer[256] = {};
  ::gethostname(buffer, sizeof buffer - 1);
  return buffer;
}

// Who holds the lock, from the last owner line of the journal.
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
    if (j.is_object() && j.contains("owner"))
      owner = fmt::format("soupkit job pid {} on host {} (started {})", j["owner"].value("pid", 0),
                          j["owner"].value("host", "?"), j["owner"].value("started", "?"));
  }
  return owner;
}

std::string now_text() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char buffer[64];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&t));
  return buffer;
}

}  // namespace

fs::path Journal::path_for(const fs::path& out) {
  fs::path p = out;
  while (p.has_relative_path() && !p.has_filename()) p = p.parent_path();
  p += ".journal";
  return p;
}

Journal::Journal(const fs::path& out, const std::string& fingerprint, bool resume) : path_(path_for(out)) {
  std::error_code ec;
  if (path_.has_parent_path()) fs::create_directories(path_.parent_path(), ec);
  lock(out);
  try {
    load_or_start(fingerprint, resume);
  } catch (...) {
    ::close(fd_);  // releases the lock; a journal we could not use stays as it was
    fd_ = -1;
    throw;
  }
}

// Opens the journal file and takes its lock. A finishing job unlinks its
// journal while still holding the lock, so a file we locked may already be
// gone from the path: lock again until the locked file is the one the path
// names, or two jobs could each hold "the" lock.
void Journal::lock(const fs::path& out) {
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw SystemError(fmt::format("{}: cannot create the job journal {}: {}", out.string(), path_.string(),
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
    SOUPKIT_ERROR_IF(attempt >= 100, "{}: the journal {} keeps being replaced by another job", out.string(),
                     path_.string());
  }
}

void Journal::load_or_start(const std::string& fingerprint, bool resume) {
  bool continuing = false;
  if (resume) {
    std::istringstream lines(read_all());
    std::string line;
    if (std::getline(lines, line)) {
      const auto header = nlohmann::json::parse(line, nullptr, false);
      SOUPKIT_INPUT_ERROR_IF(!header.is_object() || !header.contains("soupkit_journal"),
                             "{}: not a soupkit journal; remove it to start over", path_.string());
      SOUPKIT_INPUT_ERROR_IF(header.value("fingerprint", "") != fingerprint,
                             "{}: cannot resume: the journal was written by a different job (other inputs, options "
                             "or output layout); run without --resume to start over",
                             path_.string());
      continuing = true;
      while (std::getline(lines, line)) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_object() || !j.contains("tensor")) continue;  // owner lines, a torn last line
        try {
          JournalEntry entry;
          entry.checksum = std::stoull(j.at("checksum").get<std::string>(), nullptr, 16);
          entry.record = j.value("record", nlohmann::json());
          finished_[j.at("tensor").get<std::size_t>()] = std::move(entry);
        } catch (const std::exception&) {
          continue;  // a damaged entry: that tensor is simply recomputed
        }
      }
    }
  }
  if (!continuing) restart(fingerprint);
  else append_owner();
}

void Journal::restart(const std::string& fingerprint) {
  SOUPKIT_ERROR_IF(::ftruncate(fd_, 0) != 0, "{}: cannot truncate: {}", path_.string(), std::strerror(errno));
  finished_.clear();
  append({{"soupkit_journal", 1}, {"fingerprint", fingerprint}});
  append_owner();
}

void Journal::append_owner() {
  append({{"owner", {{"host", host_name()}, {"pid", ::getpid()}, {"started", now_text()}}}});
}

// Through our own descriptor: closing any other descriptor of this file
// would drop the process's lock on it (POSIX record-lock semantics).
std::string Journal::read_all() const {
  std::string text;
  char buffer[65536];
  for (off_t offset = 0;;) {
    const ssize_t n = ::pread(fd_, buffer, sizeof buffer, offset);
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n < 0, "{}: read: {}", path_.string(), std::strerror(errno));
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    offset += n;
  }
  return text;
}

Journal::~Journal() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the journal stays for --resume
}

void Journal::record(std::size_t index, const std::string& name, std::uint64_t checksum, const nlohmann::json& record) {
  append({{"tensor", index}, {"name", name}, {"checksum", hex64(checksum)}, {"record", record}});
  finished_[index] = {checksum, record};
}

void Journal::append(const nlohmann::json& line) {
  // One write() per line at the end of the file. No fsync: data and journal
  // both sit in the page cache after a process dies, and after a node crash
  // --resume re-verifies every journaled tensor by checksum anyway.
  const std::string text = line.dump() + "\n";
  SOUPKIT_ERROR_IF(::lseek(fd_, 0, SEEK_END) < 0, "{}: seek: {}", path_.string(), std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n <= 0, "{}: write: {}", path_.string(), std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
}

void Journal::remove() {
  std::error_code ec;
  fs::remove(path_, ec);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string fingerprint_of(const nlohmann::json& j) {
  const std::string text = j.dump();
  return hex64(hash_row(0, std::as_bytes(std::span(text))));
}

}  // namespace soupkit
