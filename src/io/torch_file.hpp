#pragma once
// One file written by torch.save: the zip archive of torch 1.6 and later
// (ARCHIVE/data.pkl, ARCHIVE/data/KEY per storage, ARCHIVE/byteorder), or
// the legacy format (_use_new_zipfile_serialization=False: pickles of the
// magic number, protocol version and system info, the state dict, the
// storage keys, then each storage as an 8-byte element count and its
// bytes). Opening reads the pickle and checks every storage the state dict
// uses against the bytes present; tensor data is read later, per request.
#include "torch_state_dict.hpp"

#include "soupkit/io/file.hpp"

#include <memory>
#include <span>
#include <string>

namespace soupkit::detail {

class TorchFile {
 public:
  virtual ~TorchFile() = default;
  const fs::path& path() const { return path_; }
  const TorchStateDict& contents() const { return contents_; }
  // Storages hold big-endian elements (the zip's byteorder says "big").
  bool big_endian() const { return big_endian_; }
  // Bytes [byte_offset, byte_offset + dst.size()) of storage `storage`
  // (an index into contents().storages), which the caller keeps in range.
  virtual void read_storage(std::size_t storage, std::uint64_t byte_offset, std::span<std::byte> dst) const = 0;
  // Where a storage is, for plans and messages: "FILE:ARCHIVE/data/KEY" or
  // "FILE@OFFSET".
  virtual std::string storage_location(std::size_t storage) const = 0;

 protected:
  explicit TorchFile(fs::path path) : path_(std::move(path)) {}
  fs::path path_;
  TorchStateDict contents_;
  bool big_endian_ = false;
};

enum class TorchFormat { Zip, Legacy, Other };
// From a file's first 16 bytes (fewer if the file is shorter): a zip's local
// header signature, or a pickle's PROTO opcode that is not the start of a
// safetensors header (whose JSON begins at byte 8 with '{').
TorchFormat torch_format(std::span<const std::byte> head);

std::unique_ptr<TorchFile> open_torch_zip(const fs::path& path);
std::unique_ptr<TorchFile> open_torch_legacy(const fs::path& path);
// Either, by torch_format; a file of neither format is refused naming it.
std::unique_ptr<TorchFile> open_torch_file(const fs::path& path);

}  // namespace soupkit::detail
