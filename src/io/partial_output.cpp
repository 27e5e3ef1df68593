#include "partial_output.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <stdio.h>
#include <stdlib.h>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

namespace soupkit {

PartialOutput::PartialOutput(fs::path final_path, bool is_directory, bool overwrite)
    : final_(std::move(final_path)), is_directory_(is_directory), overwrite_(overwrite) {
  // Trailing slashes would put ".partial" inside the directory.
  while (final_.has_relative_path() && !final_.has_filename()) final_ = final_.parent_path();
  partial_ = final_;
  partial_ += ".partial";
}

namespace {

bool lexists(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found;
}

bool is_real_directory(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() == fs::file_type::directory;
}

// renameat2's flags are Linux-only and not on every filesystem (older NFS,
// some FUSE): callers fall back when this says so.
bool flags_unsupported(int err) { return err == EINVAL || err == ENOSYS || err == ENOTSUP; }

// Without RENAME_EXCHANGE: the old output is moved into a directory this
// process just created (mkdtemp, so the name cannot be anyone's file),
// then the new one into place, then the old one is removed.
void replace_through_private_directory(const fs::path& partial, const fs::path& final_path) {
  std::string aside = final_path.string() + ".soupkit-old-XXXXXX";
  if (!::mkdtemp(aside.data()))
    throw SystemError(fmt::format("{}: cannot create a directory to move the old output aside: {}",
                                  final_path.string(), std::strerror(errno)));
  const fs::path old = fs::path(aside) / "old";
  std::error_code ec;
  fs::rename(final_path, old, ec);
  if (!ec) {
    fs::rename(partial, final_path, ec);
    if (ec) fs::rename(old, final_path);  // put the old output back
  }
  std::error_code ignored;
  fs::remove_all(aside, ignored);
  if (ec) throw SystemError(fmt::format("{}: cannot replace the old output: {}", final_path.string(), ec.message()));
}

}  // namespace

void PartialOutput::prepare() const {
  SOUPKIT_INPUT_ERROR_IF(lexists(final_) && !overwrite_, "{}: output already exists (pass --overwrite to replace it)",
                         final_.string());
  std::error_code ec;
  const fs::path parent = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec || !fs::is_directory(parent))
    throw SystemError(fmt::format("{}: cannot create output directory {}: {}", final_.string(), parent.string(),
                                  ec ? ec.message() : "not a directory"));
  // The engine removes (or refuses) a stale partial output only after its
  // journal proved it soupkit's; this is that proven one.
  fs::remove_all(partial_, ec);
  if (ec) throw SystemError(fmt::format("{}: cannot remove stale {}: {}", final_.string(), partial_.string(), ec.message()));
  if (is_directory_) {
    fs::create_directory(partial_, ec);
    if (ec) throw SystemError(fmt::format("{}: cannot create output: {}", partial_.string(), ec.message()));
    return;
  }
  // Created here, exclusively and never through a link, before any heavy
  // work (which also probes that the directory is writable).
  const int fd = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0)
    throw SystemError(fmt::format("{}: cannot write the output: {}: {}", final_.string(), partial_.string(),
                                  std::strerror(errno)));
  ::close(fd);
}

void PartialOutput::prepare_resume() const {
  SOUPKIT_INPUT_ERROR_IF(lexists(final_) && !overwrite_, "{}: output already exists (pass --overwrite to replace it)",
                         final_.string());
  SOUPKIT_INPUT_ERROR_IF(!lexists(partial_) || is_real_directory(partial_) != is_directory_,
                         "{}: nothing to resume: {} is missing", final_.string(), partial_.string());
}

void PartialOutput::commit() const {
  if (lexists(final_))
    replace_old_output();
  else
    move_into_place();
  sync_directory(final_.has_parent_path() ? final_.parent_path() : fs::path("."));
}

// The final path is free: rename without replacing anything that appeared
// there meanwhile.
void PartialOutput::move_into_place() const {
  if (::renameat2(AT_FDCWD, partial_.c_str(), AT_FDCWD, final_.c_str(), RENAME_NOREPLACE) == 0) return;
  const int err = errno;
  SOUPKIT_INPUT_ERROR_IF(err == EEXIST || err == ENOTEMPTY,
                         "{}: the output appeared while this job was writing it; not replaced", final_.string());
  if (!flags_unsupported(err) || ::rename(partial_.c_str(), final_.c_str()) != 0)
    throw SystemError(fmt::format("{}: cannot rename {} into place: {}", final_.string(), partial_.string(),
                                  std::strerror(flags_unsupported(err) ? errno : err)));
}

// --overwrite: swap the new output and the old one atomically (any kinds:
// a directory for a file too), then remove the old one, now at the partial
// path. Nothing but the output itself is touched.
void PartialOutput::replace_old_output() const {
  SOUPKIT_INPUT_ERROR_IF(!overwrite_, "{}: the output appeared while this job was writing it; not replaced", final_.string());
  if (::renameat2(AT_FDCWD, partial_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE) == 0) {
    std::error_code ec;
    fs::remove_all(partial_, ec);
    if (ec) log::warn("{}: cannot remove the old output (now at {}): {}", final_.string(), partial_.string(), ec.message());
    return;
  }
  const int err = errno;
  if (!flags_unsupported(err))
    throw SystemError(fmt::format("{}: cannot swap {} into place: {}", final_.string(), partial_.string(),
                                  std::strerror(err)));
  // rename() replaces a file atomically, but not a directory or another kind.
  if (!is_directory_ && !is_real_directory(final_) && ::rename(partial_.c_str(), final_.c_str()) == 0) return;
  replace_through_private_directory(partial_, final_);
}

void PartialOutput::discard() const noexcept {
  std::error_code ec;
  fs::remove_all(partial_, ec);
}

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace soupkit
