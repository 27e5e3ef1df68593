#include "soupkit/io/file.hpp"

#include "soupkit/util/error.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace soupkit {
namespace {

[[noreturn]] void throw_errno(const fs::path& path, const char* what) {
  throw SystemError(fmt::format("{}: {}: {}", path.string(), what, std::strerror(errno)));
}

}  // namespace

File File::open_read(const fs::path& path) {
  // O_NONBLOCK: opening a FIFO (or a device) named like a checkpoint file
  // must not wait forever for a writer; only regular files are read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) throw InputError(fmt::format("{}: no such file", path.string()));
    throw_errno(path, "cannot open for reading");
  }
  File file(fd, path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno(path, "cannot stat");
  SOUPKIT_INPUT_ERROR_IF(S_ISDIR(st.st_mode), "{}: is a directory, expected a file", path.string());
  SOUPKIT_INPUT_ERROR_IF(!S_ISREG(st.st_mode), "{}: not a regular file (a FIFO, socket or device)", path.string());
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) throw_errno(path, "cannot set blocking reads");
  return file;
}

File File::open_write(const fs::path& path, bool create) {
  const int flags = O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0);
  const int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) throw_errno(path, "cannot open for writing");
  return File(fd, path);
}

File::File(File&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) { other.fd_ = -1; }

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

std::uint64_t File::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw_errno(path_, "cannot stat");
  return static_cast<std::uint64_t>(st.st_size);
}

void File::pread_exact(std::uint64_t offset, std::span<std::byte> dst) const {
  std::size_t done = 0;
  while (done < dst.size()) {
    const ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(path_, "read failed");
    }
    // End of file: say where it really is (the read may have started past it).
    if (n == 0)
      throw InputError(fmt::format("{}: file is truncated (wanted {} bytes at offset {}, file ends at {})",
                                   path_.string(), dst.size(), offset, size()));
    done += static_cast<std::size_t>(n);
  }
}

void File::pwrite_all(std::uint64_t offset, std::span<const std::byte> src) const {
  std::size_t done = 0;
  while (done < src.size()) {
    const ssize_t n = ::pwrite(fd_, src.data() + done, src.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(path_, "write failed");
    }
    done += static_cast<std::size_t>(n);
  }
}

void File::truncate(std::uint64_t size) const {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw_errno(path_, "cannot set size");
}

void File::sync() const {
  if (::fsync(fd_) != 0) throw_errno(path_, "fsync failed");
}

void File::close() {
  if (fd_ >= 0 && ::close(fd_) != 0) {
    fd_ = -1;
    throw_errno(path_, "close failed");
  }
  fd_ = -1;
}

std::string read_text_file(const fs::path& path) {
  File f = File::open_read(path);
  const std::uint64_t size = f.size();
  SOUPKIT_INPUT_ERROR_IF(size > kMaxTextFileBytes, "{}: {} bytes, more than the {} MiB soupkit reads into memory to parse",
                         path.string(), size, kMaxTextFileBytes >> 20);
  std::string text(size, '\0');
  f.pread_exact(0, std::as_writable_bytes(std::span(text)));
  return text;
}

void write_text_file(const fs::path& path, std::string_view text) {
  File f = File::open_write(path, true);
  f.pwrite_all(0, std::as_bytes(std::span(text.data(), text.size())));
  f.sync();
  f.close();
}

}  // namespace soupkit
