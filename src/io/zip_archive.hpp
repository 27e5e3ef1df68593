#pragma once
// Reading entries of a zip archive through libzip, with errors that name
// the archive and the entry. Only entries stored as is (no compression, no
// encryption) are read, and at any offset: a tensor's bytes are read
// without reading the rest of its entry.
#include "soupkit/io/file.hpp"

#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>

struct zip;

namespace soupkit::detail {

class ZipArchive {
 public:
  // Opens and checks the central directory against the local headers
  // (libzip's ZIP_CHECKCONS); throws InputError naming the file.
  explicit ZipArchive(const fs::path& path);
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;
  ~ZipArchive();

  const fs::path& path() const { return path_; }
  std::uint64_t entry_count() const { return count_; }
  // The entry's name as stored (no re-encoding).
  std::string entry_name(std::uint64_t index) const;
  std::optional<std::uint64_t> find(const std::string& name) const;

  struct Entry {
    std::uint64_t index = 0;
    std::uint64_t size = 0;  // uncompressed = stored bytes
    std::string name;
  };
  // Entry `index`, which must be stored uncompressed and unencrypted, and
  // no larger than the archive; InputError naming the archive and entry
  // otherwise.
  Entry stored_entry(std::uint64_t index) const;
  // Bytes [offset, offset + dst.size()) of a stored entry; thread-safe.
  void read(const Entry& entry, std::uint64_t offset, std::span<std::byte> dst) const;
  // A whole stored entry, refused above `max_bytes` before allocating.
  std::string read_whole(const Entry& entry, std::uint64_t max_bytes) const;

 private:
  fs::path path_;
  struct zip* zip_ = nullptr;
  std::uint64_t count_ = 0;
  std::uint64_t file_size_ = 0;
  mutable std::mutex mutex_;  // a libzip archive is not safe to use from two threads at once
};

}  // namespace soupkit::detail
