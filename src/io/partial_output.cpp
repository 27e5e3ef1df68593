#include "partial_output.hpp"

#include "soupkit/error.hpp"

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

void PartialOutput::prepare() const {
  std::error_code ec;
  SOUPKIT_INPUT_ERROR_IF(fs::exists(final_, ec) && !overwrite_,
                         "{}: output already exists (pass --overwrite to replace it)", final_.string());
  const fs::path parent = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec || !fs::is_directory(parent))
    throw SystemError(fmt::format("{}: cannot create output directory {}: {}", final_.string(), parent.string(),
                                  ec ? ec.message() : "not a directory"));
  fs::remove_all(partial_, ec);
  if (ec) throw SystemError(fmt::format("{}: cannot remove stale {}: {}", final_.string(), partial_.string(), ec.message()));
  if (is_directory_) {
    fs::create_directory(partial_, ec);
    if (ec) throw SystemError(fmt::format("{}: cannot create output: {}", partial_.string(), ec.message()));
  } else {
    // Probe that the directory is writable now, before any heavy work.
    try {
      File::open_write(partial_, true);
    } catch (const SystemError& e) {
      throw SystemError(fmt::format("{}: cannot write the output: {}", final_.string(), e.what()));
    }
  }
}

void PartialOutput::prepare_resume() const {
  std::error_code ec;
  SOUPKIT_INPUT_ERROR_IF(fs::exists(final_, ec) && !overwrite_,
                         "{}: output already exists (pass --overwrite to replace it)", final_.string());
  SOUPKIT_INPUT_ERROR_IF(!fs::exists(partial_, ec) || fs::is_directory(partial_, ec) != is_directory_,
                         "{}: nothing to resume: {} is missing", final_.string(), partial_.string());
}

void PartialOutput::commit() const {
  std::error_code ec;
  fs::path old;
  if (fs::exists(final_, ec) && fs::is_directory(final_) && is_directory_) {
    // rename() cannot replace a non-empty directory: move the old one aside first.
    old = final_;
    old += ".old";
    fs::remove_all(old, ec);
    fs::rename(final_, old, ec);
    if (ec) throw SystemError(fmt::format("{}: cannot move the old output aside: {}", final_.string(), ec.message()));
  } else if (fs::exists(final_, ec) && (fs::is_directory(final_) != is_directory_)) {
    fs::remove_all(final_, ec);
  }
  fs::rename(partial_, final_, ec);
  if (ec) throw SystemError(fmt::format("{}: cannot rename {} into place: {}", final_.string(), partial_.string(), ec.message()));
  if (!old.empty()) fs::remove_all(old, ec);
  sync_directory(final_.has_parent_path() ? final_.parent_path() : fs::path("."));
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
