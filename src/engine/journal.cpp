#include "journal.hpp"

#include "soupkit/checksum.hpp"
#include "soupkit/error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

namespace soupkit {
namespace {

std::string hex64(std::uint64_t v) { return fmt::format("{:016x}", v); }

}  // namespace

fs::path Journal::path_for(const fs::path& out) {
  fs::path p = out;
  while (p.has_relative_path() && !p.has_filename()) p = p.parent_path();
  p += ".journal";
  return p;
}

Journal::Journal(const fs::path& out, const std::string& fingerprint, bool resume) : lock_(path_for(out), out) {
  if (resume) load(fingerprint);
  if (finished_.empty() && !continuing_) {
    restart(fingerprint);
  } else {
    lock_.write_owner();
  }
}

// With --resume: the tensors a previous run of the same job finished.
void Journal::load(const std::string& fingerprint) {
  std::istringstream lines(read_all());
  std::string line;
  if (!std::getline(lines, line)) return;  // empty: a new journal
  const auto header = nlohmann::json::parse(line, nullptr, false);
  SOUPKIT_INPUT_ERROR_IF(!header.is_object() || !header.contains("soupkit_journal"),
                         "{}: not a soupkit journal; remove it to start over", path().string());
  SOUPKIT_INPUT_ERROR_IF(header.value("fingerprint", "") != fingerprint,
                         "{}: cannot resume: the journal was written by a different job (other inputs, options or "
                         "output layout); run without --resume to start over",
                         path().string());
  continuing_ = true;
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

void Journal::restart(const std::string& fingerprint) {
  SOUPKIT_ERROR_IF(::ftruncate(lock_.fd(), 0) != 0, "{}: cannot truncate: {}", path().string(), std::strerror(errno));
  finished_.clear();
  append({{"soupkit_journal", 1}, {"fingerprint", fingerprint}});
  lock_.write_owner();
}

// Through the lock's own descriptor (see OutputLock::fd).
std::string Journal::read_all() const {
  std::string text;
  char buffer[65536];
  for (off_t offset = 0;;) {
    const ssize_t n = ::pread(lock_.fd(), buffer, sizeof buffer, offset);
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n < 0, "{}: read: {}", path().string(), std::strerror(errno));
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    offset += n;
  }
  return text;
}

void Journal::record(std::size_t index, const std::string& name, std::uint64_t checksum, const nlohmann::json& record) {
  append({{"tensor", index}, {"name", name}, {"checksum", hex64(checksum)}, {"record", record}});
  finished_[index] = {checksum, record};
}

// One write() per line at the end of the file. No fsync: data and journal
// both sit in the page cache after a process dies, and after a node crash
// --resume re-verifies every journaled tensor by checksum anyway.
void Journal::append(const nlohmann::json& line) { append_to_fd(lock_.fd(), path(), line.dump() + "\n"); }

void Journal::remove() { lock_.remove(); }

std::string fingerprint_of(const nlohmann::json& j) {
  const std::string text = j.dump();
  return hex64(hash_row(0, std::as_bytes(std::span(text))));
}

}  // namespace soupkit
