#pragma once
// POSIX file access with errors that name the file.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace soupkit {

namespace fs = std::filesystem;

// Owns one file descriptor.
class File {
 public:
  static File open_read(const fs::path& path);
  // Opens for writing; `create` makes (or truncates) the file.
  static File open_write(const fs::path& path, bool create);

  File() = default;
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  const fs::path& path() const { return path_; }
  std::uint64_t size() const;
  // Reads exactly dst.size() bytes at `offset`; throws (naming the file) on
  // a short read, which means the file is truncated.
  void pread_exact(std::uint64_t offset, std::span<std::byte> dst) const;
  void pwrite_all(std::uint64_t offset, std::span<const std::byte> src) const;
  void truncate(std::uint64_t size) const;
  void sync() const;
  void close();

 private:
  File(int fd, fs::path path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  fs::path path_;
};

// Text files soupkit parses whole (index, job, scores and log files) are
// refused above this size before anything is allocated.
inline constexpr std::uint64_t kMaxTextFileBytes = 256ull << 20;
std::string read_text_file(const fs::path& path);
// Writes a whole file (create/truncate) and fsyncs it.
void write_text_file(const fs::path& path, std::string_view text);

}  // namespace soupkit
