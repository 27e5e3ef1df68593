#include "soupkit/io/side_file.hpp"

#include "partial_output.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace soupkit {
namespace {

// A fresh name beside `file`, opened exclusively (an existing file or
// symlink of that name is skipped, never opened).
int create_temporary_beside(const fs::path& file, fs::path& temporary) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    temporary = fmt::format("{}.{}-{}.tmp", file.string(), ::getpid(), attempt);
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) return fd;
    SOUPKIT_THROW_IF(errno != EEXIST, SystemError, "cannot write {}: cannot create {}: {}", file.string(),
                     temporary.string(), std::strerror(errno));
  }
  throw SystemError(fmt::format("cannot create a temporary file beside {}: every name tried exists", file.string()));
}

void write_all(int fd, const fs::path& path, std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    SOUPKIT_THROW_IF(n < 0, SystemError, "cannot write {}: {}", path.string(), std::strerror(errno));
    text.remove_prefix(static_cast<std::size_t>(n));
  }
  SOUPKIT_THROW_IF(::fsync(fd) != 0, SystemError, "cannot sync {}: {}", path.string(), std::strerror(errno));
}

}  // namespace

void check_side_file_replaceable(const fs::path& file, const std::string& option, const std::string& kind,
                                 const std::function<bool(const nlohmann::json&)>& written_by_soupkit) {
  struct stat st {};
  if (::lstat(file.c_str(), &st) != 0) return;  // nothing there (or not reachable: the write will say)
  const std::string refusal = fmt::format("{} {} exists and is not a {}: refusing to replace it (choose another "
                                          "path, or move it away)", option, file.string(), kind);
  SOUPKIT_INPUT_ERROR_IF(!S_ISREG(st.st_mode), "{}", refusal);
  SOUPKIT_INPUT_ERROR_IF(static_cast<std::uint64_t>(st.st_size) > kMaxTextFileBytes, "{}", refusal);
  const auto doc = try_parse_untrusted_json(read_text_file(file));
  SOUPKIT_INPUT_ERROR_IF(!doc || !written_by_soupkit(*doc), "{}", refusal);
}

void check_report_replaceable(const fs::path& file) {
  check_side_file_replaceable(file, "--report", "soupkit report", [](const nlohmann::json& doc) {
    return doc.is_object() && (doc.contains("summary") || doc.contains("matrices"));
  });
}

void write_side_file(const fs::path& file, std::string_view text) {
  fs::path temporary;
  const int fd = create_temporary_beside(file, temporary);
  try {
    write_all(fd, temporary, text);
  } catch (...) {
    ::close(fd);
    ::unlink(temporary.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(temporary.c_str(), file.c_str()) != 0) {
    const int err = errno;
    ::unlink(temporary.c_str());
    throw SystemError(fmt::format("cannot rename {} to {}: {}", temporary.string(), file.string(), std::strerror(err)));
  }
  sync_directory(file.has_parent_path() ? file.parent_path() : fs::path("."));
}

}  // namespace soupkit
