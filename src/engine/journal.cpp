#include "journal.hpp"

#include "soupkit/engine/checksum.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/log.hpp"
#include "soupkit/io/tensor.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

namespace soupkit {
namespace {

// Real lines are a few hundred bytes (a transplant record with its token
// ids a few hundred KB); far more than that is not a journal soupkit wrote.
constexpr std::size_t kFixedJournalAllowance = 16u << 20;
constexpr std::size_t kJournalBytesPerTensor = 64u << 10;

std::string hex64(std::uint64_t v) { return fmt::format("{:016x}", v); }

std::optional<std::uint64_t> parse_hex64(const nlohmann::json& j) {
  if (!j.is_string()) return std::nullopt;
  const auto& s = j.get_ref<const std::string&>();
  if (s.size() != 16 || s.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) return std::nullopt;
  return std::stoull(s, nullptr, 16);
}

nlohmann::json header_for(const std::string& fingerprint) {
  return {{"soupkit_journal", 1}, {"fingerprint", fingerprint}};
}

}  // namespace

std::size_t max_journal_bytes(std::size_t tensors) {
  return kFixedJournalAllowance + tensors * kJournalBytesPerTensor;
}

fs::path Journal::path_for(const fs::path& out) {
  fs::path p = out;
  while (p.has_relative_path() && !p.has_filename()) p = p.parent_path();
  p += ".journal";
  return p;
}

Journal::Journal(const fs::path& out, const std::string& fingerprint, bool resume, std::vector<std::string> tensor_names)
    : lock_(path_for(out), out, header_for(fingerprint)), names_(std::move(tensor_names)) {
  try {
    if (!lock_.created()) load(fingerprint, resume);
    if (!lock_.created() && !continuing_)
      restart(fingerprint);
    else
      lock_.write_owner();
  } catch (...) {
    if (lock_.created()) lock_.remove();  // a full disk leaves no empty journal
    throw;
  }
}

// The previous job's partial output (always) and, with --resume, the
// tensors a previous run of the same job finished.
void Journal::load(const std::string& fingerprint, bool resume) {
  std::istringstream lines(read_bounded());
  std::string line;
  std::getline(lines, line);  // the header: OutputLock checked it is soupkit's
  const auto header = try_parse_untrusted_json(line);
  const bool same_job = header && header->is_object() && header->value("fingerprint", nlohmann::json()) == fingerprint;
  SOUPKIT_INPUT_ERROR_IF(resume && !same_job,
                         "{}: cannot resume: the journal was written by a different job (other inputs, options or "
                         "output layout); run without --resume to start over",
                         path().string());
  continuing_ = resume;
  std::size_t damaged = 0;
  while (std::getline(lines, line)) {
    const auto j = try_parse_untrusted_json(line);
    if (!j || !j->is_object()) {
      ++damaged;  // a torn last line, or not soupkit's
    } else if (const auto p = j->find("partial"); p != j->end()) {
      if (p->is_object() && p->value("dev", nlohmann::json()).is_number_unsigned() &&
          p->value("ino", nlohmann::json()).is_number_unsigned())
        partial_ = PartialIdentity{(*p)["dev"].get<std::uint64_t>(), (*p)["ino"].get<std::uint64_t>()};
    } else if (j->contains("tensor") && resume) {
      if (auto entry = parse_entry(*j))
        finished_[entry->first] = std::move(entry->second);
      else
        ++damaged;
    }
  }
  if (damaged && resume)
    log::warn("{}: {} damaged line{} ignored (their tensors are recomputed)", path().string(), damaged,
              damaged == 1 ? "" : "s");
}

// A finished-tensor line, checked field by field against the job's tensors.
std::optional<std::pair<std::size_t, JournalEntry>> Journal::parse_entry(const nlohmann::json& line) const {
  const auto& index = line.at("tensor");
  if (!index.is_number_unsigned() || index.get<std::uint64_t>() >= names_.size()) return std::nullopt;
  const auto i = index.get<std::size_t>();
  const auto name = line.find("name");
  if (name == line.end() || !name->is_string() || name->get_ref<const std::string&>() != names_[i]) return std::nullopt;
  const auto checksum = line.contains("checksum") ? parse_hex64(line["checksum"]) : std::nullopt;
  if (!checksum) return std::nullopt;
  // Methods record an object per tensor, or nothing (null).
  nlohmann::json record = line.value("record", nlohmann::json());
  if (!record.is_object() && !record.is_null()) return std::nullopt;
  return std::pair{i, JournalEntry{*checksum, std::move(record)}};
}

void Journal::restart(const std::string& fingerprint) {
  std::string text = header_for(fingerprint).dump() + "\n";
  // The stale partial output is still this output's: a kill before this
  // run replaces it must not make it a stranger's.
  if (partial_) text += nlohmann::json{{"partial", {{"dev", partial_->dev}, {"ino", partial_->ino}}}}.dump() + "\n";
  rewrite_fd(lock_.fd(), path(), text);
  finished_.clear();
  continuing_ = false;
  lock_.write_owner();
}

bool Journal::owns_partial(const fs::path& partial) const {
  struct stat st {};
  return partial_ && ::lstat(partial.c_str(), &st) == 0 && !S_ISLNK(st.st_mode) &&
         static_cast<std::uint64_t>(st.st_dev) == partial_->dev && static_cast<std::uint64_t>(st.st_ino) == partial_->ino;
}

void Journal::record_partial(const fs::path& partial) {
  struct stat st {};
  SOUPKIT_ERROR_IF(::lstat(partial.c_str(), &st) != 0, "{}: cannot stat {}: {}", path().string(), partial.string(),
                   std::strerror(errno));
  partial_ = PartialIdentity{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
  append({{"partial", {{"dev", partial_->dev}, {"ino", partial_->ino}}}});
}

// Through the lock's own descriptor (see OutputLock::fd); no more than a
// journal of this job can need, so a giant file cannot exhaust memory.
std::string Journal::read_bounded() const {
  const std::size_t limit = max_journal_bytes(names_.size());
  std::string text;
  char buffer[65536];
  while (text.size() <= limit) {
    const ssize_t n = ::pread(lock_.fd(), buffer, sizeof buffer, static_cast<off_t>(text.size()));
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_ERROR_IF(n < 0, "{}: read: {}", path().string(), std::strerror(errno));
    if (n == 0) return text;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  log::warn("{}: longer than the {} a journal of {} tensors needs; only that much is read (the tensors after it are "
            "recomputed)",
            path().string(), human_bytes(limit), names_.size());
  text.resize(text.rfind('\n', limit) == std::string::npos ? 0 : text.rfind('\n', limit) + 1);
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
