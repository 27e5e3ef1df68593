#include "zip_archive.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <zip.h>

#include <cstdio>
#include <memory>

namespace soupkit::detail {
namespace {

std::string zip_error_text(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string text = zip_error_strerror(&error);
  zip_error_fini(&error);
  return text;
}

std::string_view method_name(zip_uint16_t method) {
  switch (method) {
    case ZIP_CM_DEFLATE: return "deflate";
    case ZIP_CM_DEFLATE64: return "deflate64";
    case ZIP_CM_BZIP2: return "bzip2";
    case ZIP_CM_LZMA: return "lzma";
    case ZIP_CM_XZ: return "xz";
    case 93: return "zstd";  // ZIP_CM_ZSTD, named by libzip from 1.8 on
    default: return "an unknown method";
  }
}

struct ZipFileCloser {
  void operator()(zip_file_t* f) const { zip_fclose(f); }
};

}  // namespace

ZipArchive::ZipArchive(const fs::path& path) : path_(path) {
  int code = 0;
  zip_ = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
  SOUPKIT_INPUT_ERROR_IF(!zip_, "{}: not a readable zip archive: {}", path.string(), zip_error_text(code));
  const zip_int64_t count = zip_get_num_entries(zip_, 0);
  if (count < 0) {
    zip_discard(zip_);
    throw InputError(fmt::format("{}: cannot count the zip archive's entries", path.string()));
  }
  count_ = static_cast<std::uint64_t>(count);
  std::error_code ec;
  file_size_ = fs::file_size(path, ec);
  if (ec) {
    zip_discard(zip_);
    throw SystemError(fmt::format("{}: cannot stat: {}", path.string(), ec.message()));
  }
}

ZipArchive::~ZipArchive() {
  if (zip_) zip_discard(zip_);  // read-only: nothing to write back
}

std::string ZipArchive::entry_name(std::uint64_t index) const {
  std::lock_guard lock(mutex_);
  const char* name = zip_get_name(zip_, index, ZIP_FL_ENC_RAW);
  SOUPKIT_INPUT_ERROR_IF(!name, "{}: zip entry {} has no name: {}", path_.string(), index, zip_strerror(zip_));
  return name;
}

std::optional<std::uint64_t> ZipArchive::find(const std::string& name) const {
  std::lock_guard lock(mutex_);
  const zip_int64_t index = zip_name_locate(zip_, name.c_str(), ZIP_FL_ENC_RAW);
  if (index < 0) return std::nullopt;
  return static_cast<std::uint64_t>(index);
}

ZipArchive::Entry ZipArchive::stored_entry(std::uint64_t index) const {
  const std::string name = entry_name(index);
  std::lock_guard lock(mutex_);
  zip_stat_t st;
  zip_stat_init(&st);
  SOUPKIT_INPUT_ERROR_IF(zip_stat_index(zip_, index, ZIP_FL_ENC_RAW, &st) != 0, "{}: entry '{}': {}", path_.string(),
                         excerpt(name), zip_strerror(zip_));
  const bool known = (st.valid & ZIP_STAT_SIZE) && (st.valid & ZIP_STAT_COMP_METHOD) &&
                     (st.valid & ZIP_STAT_ENCRYPTION_METHOD);
  SOUPKIT_INPUT_ERROR_IF(!known, "{}: entry '{}': libzip gives no size or method", path_.string(), excerpt(name));
  SOUPKIT_INPUT_ERROR_IF(st.encryption_method != ZIP_EM_NONE, "{}: entry '{}' is encrypted; torch.save never encrypts",
                         path_.string(), excerpt(name));
  SOUPKIT_INPUT_ERROR_IF(st.comp_method != ZIP_CM_STORE,
                         "{}: entry '{}' is compressed ({}); torch.save stores entries uncompressed, and soupkit reads "
                         "only such entries (a tensor's bytes are read in place): save it again with torch.save",
                         path_.string(), excerpt(name), method_name(st.comp_method));
  // A stored entry's bytes are in the file: a larger declared size is a lie,
  // refused before anything is allocated or read for it.
  SOUPKIT_INPUT_ERROR_IF(st.size > file_size_, "{}: entry '{}' declares {} bytes, more than the whole file ({} bytes)",
                         path_.string(), excerpt(name), st.size, file_size_);
  return {index, st.size, name};
}

void ZipArchive::read(const Entry& entry, std::uint64_t offset, std::span<std::byte> dst) const {
  SOUPKIT_ERROR_IF(offset > entry.size || dst.size() > entry.size - offset,
                   "{}: entry '{}': read of {} bytes at {} past its {} bytes", path_.string(), excerpt(entry.name),
                   dst.size(), offset, entry.size);
  if (dst.empty()) return;
  std::lock_guard lock(mutex_);
  std::unique_ptr<zip_file_t, ZipFileCloser> file(zip_fopen_index(zip_, entry.index, 0));
  SOUPKIT_INPUT_ERROR_IF(!file, "{}: cannot open entry '{}': {}", path_.string(), excerpt(entry.name),
                         zip_strerror(zip_));
  SOUPKIT_INPUT_ERROR_IF(offset > 0 && zip_fseek(file.get(), static_cast<zip_int64_t>(offset), SEEK_SET) != 0,
                         "{}: entry '{}': cannot seek to byte {}: {}", path_.string(), excerpt(entry.name), offset,
                         zip_file_strerror(file.get()));
  std::size_t done = 0;
  while (done < dst.size()) {
    const zip_int64_t n = zip_fread(file.get(), dst.data() + done, dst.size() - done);
    SOUPKIT_INPUT_ERROR_IF(n < 0, "{}: entry '{}': read failed at byte {}: {}", path_.string(), excerpt(entry.name),
                           offset + done, zip_file_strerror(file.get()));
    SOUPKIT_INPUT_ERROR_IF(n == 0, "{}: entry '{}' is truncated (ends before byte {} of its {})", path_.string(),
                           excerpt(entry.name), offset + done, entry.size);
    done += static_cast<std::size_t>(n);
  }
}

std::string ZipArchive::read_whole(const Entry& entry, std::uint64_t max_bytes) const {
  SOUPKIT_INPUT_ERROR_IF(entry.size > max_bytes, "{}: entry '{}' is {} bytes, more than the {} MiB soupkit reads "
                         "into memory", path_.string(), excerpt(entry.name), entry.size, max_bytes >> 20);
  std::string bytes(entry.size, '\0');
  read(entry, 0, std::as_writable_bytes(std::span(bytes)));
  return bytes;
}

}  // namespace soupkit::detail
