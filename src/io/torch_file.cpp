// The two containers of torch.save: the zip archive and the legacy format.
#include "torch_file.hpp"

#include "zip_archive.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <cstring>
#include <map>

namespace soupkit::detail {
namespace {

// The storage of each tensor's name in messages: the first tensor using it.
std::string tensor_of(const TorchStateDict& contents, std::size_t storage) {
  for (const auto& t : contents.tensors)
    if (t.storage == storage) return excerpt(t.info.name);
  return "?";
}

std::uint64_t storage_bytes(const TorchStorageRef& s) { return s.numel * dtype_size(s.dtype); }  // checked when unpickled

class TorchZipFile final : public TorchFile {
 public:
  explicit TorchZipFile(const fs::path& path) : TorchFile(path), zip_(path) {
    const std::string file = path.string();
    SOUPKIT_INPUT_ERROR_IF(zip_.entry_count() == 0, "{}: an empty zip archive, not a torch.save file", file);
    // As torch reads it: the archive's name is its first entry's top folder.
    const std::string first = zip_.entry_name(0);
    const auto slash = first.find('/');
    SOUPKIT_INPUT_ERROR_IF(slash == std::string::npos || slash == 0,
                           "{}: a zip archive, but not one torch.save wrote (its first entry '{}' is not in a folder)",
                           file, excerpt(first));
    archive_ = first.substr(0, slash);
    const auto pickle_index = zip_.find(archive_ + "/data.pkl");
    SOUPKIT_INPUT_ERROR_IF(!pickle_index, "{}: a zip archive, but not one torch.save wrote (no entry '{}/data.pkl')",
                           file, excerpt(archive_));
    read_byteorder();
    const std::string pickle = zip_.read_whole(zip_.stored_entry(*pickle_index), kMaxPickleBytes);
    PickleInput input(std::as_bytes(std::span(pickle)));
    const TorchPickle unpickled = unpickle_torch(input, fmt::format("{}: {}/data.pkl", file, excerpt(archive_)));
    contents_ = torch_state_dict(unpickled, file);
    for (std::size_t i = 0; i < contents_.storages.size(); ++i) {
      const TorchStorageRef& s = contents_.storages[i];
      const std::string name = archive_ + "/data/" + s.key;
      const auto index = zip_.find(name);
      SOUPKIT_INPUT_ERROR_IF(!index, "{}: tensor '{}': its storage '{}' is missing (no entry '{}')", file,
                             tensor_of(contents_, i), s.key, excerpt(name));
      ZipArchive::Entry entry = zip_.stored_entry(*index);
      SOUPKIT_INPUT_ERROR_IF(entry.size != storage_bytes(s),
                             "{}: tensor '{}': storage '{}' declares {} {} elements ({} bytes), but entry '{}' holds {} "
                             "bytes",
                             file, tensor_of(contents_, i), s.key, s.numel, dtype_name(s.dtype), storage_bytes(s),
                             excerpt(name), entry.size);
      entries_.push_back(std::move(entry));
    }
  }

  void read_storage(std::size_t storage, std::uint64_t byte_offset, std::span<std::byte> dst) const override {
    zip_.read(entries_.at(storage), byte_offset, dst);
  }

  std::string storage_location(std::size_t storage) const override {
    return fmt::format("{}:{}", path_.string(), excerpt(entries_.at(storage).name));
  }

 private:
  // ARCHIVE/byteorder ("little" or "big"); torch before 2.1 wrote none, and
  // its files are little-endian (every platform it was released for).
  void read_byteorder() {
    const auto index = zip_.find(archive_ + "/byteorder");
    if (!index) return;
    const std::string text = zip_.read_whole(zip_.stored_entry(*index), 64);
    SOUPKIT_INPUT_ERROR_IF(text != "little" && text != "big", "{}: {}/byteorder is '{}', not 'little' or 'big'",
                           path_.string(), excerpt(archive_), excerpt(text));
    big_endian_ = text == "big";
  }

  ZipArchive zip_;
  std::string archive_;
  std::vector<ZipArchive::Entry> entries_;  // parallel to contents_.storages
};

// torch's legacy magic number 0x1950a86a20f9469cfc6c, as pickle's LONG1
// stores it (little-endian).
constexpr unsigned char kLegacyMagic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
constexpr std::int64_t kLegacyProtocolVersion = 1001;

class TorchLegacyFile final : public TorchFile {
 public:
  explicit TorchLegacyFile(const fs::path& path) : TorchFile(path), file_(File::open_read(path)) {
    const std::string name = path.string();
    PickleInput input(file_, 0);
    const auto next = [&](std::string_view what) {
      return unpickle_torch(input, fmt::format("{} (legacy torch.save format): {} pickle", name, what));
    };
    const TorchPickle magic = next("magic number");
    SOUPKIT_INPUT_ERROR_IF(magic.root.kind != PickleKind::BigInt ||
                               magic.objects.strings[magic.root.index] !=
                                   std::string_view(reinterpret_cast<const char*>(kLegacyMagic), sizeof kLegacyMagic),
                           "{}: starts with a pickle, but not torch's magic number (not a torch.save file)", name);
    const TorchPickle version = next("protocol version");
    SOUPKIT_INPUT_ERROR_IF(version.root.kind != PickleKind::Int || version.root.integer != kLegacyProtocolVersion,
                           "{}: legacy torch.save protocol version is not {} (the only one there is)", name,
                           kLegacyProtocolVersion);
    check_system_info(next("system info"));
    const TorchPickle state = next("state dict");
    contents_ = torch_state_dict(state, name);
    const TorchPickle keys = next("storage keys");
    locate_storages(state, keys, input.position());
  }

  void read_storage(std::size_t storage, std::uint64_t byte_offset, std::span<std::byte> dst) const override {
    file_.pread_exact(offsets_.at(storage) + byte_offset, dst);
  }

  std::string storage_location(std::size_t storage) const override {
    return fmt::format("{}@{}", path_.string(), offsets_.at(storage));
  }

 private:
  // {"protocol_version": 1001, "little_endian": bool, "type_sizes": {...}}.
  void check_system_info(const TorchPickle& info) {
    const std::string name = path_.string();
    SOUPKIT_INPUT_ERROR_IF(info.root.kind != PickleKind::Dict, "{}: legacy system info is not a dict", name);
    for (const auto& [key, value] : info.objects.dicts[info.root.index])
      if (key.kind == PickleKind::String && info.objects.strings[key.index] == "little_endian") {
        SOUPKIT_INPUT_ERROR_IF(value.kind != PickleKind::Bool, "{}: legacy system info's little_endian is not a bool",
                               name);
        SOUPKIT_INPUT_ERROR_IF(!value.integer, "{}: a big-endian legacy torch.save file; not supported (load and "
                               "save it again with torch.save, which writes the zip format)", name);
        return;
      }
    throw InputError(fmt::format("{}: legacy system info does not say the byte order (no little_endian)", name));
  }

  // After the keys pickle, each storage the keys list, in order: its element
  // count (8 bytes, little-endian) and its bytes. Every storage the pickle
  // names (the state dict's and any other's) has a known element size.
  void locate_storages(const TorchPickle& state, const TorchPickle& keys, std::uint64_t position) {
    const std::string name = path_.string();
    SOUPKIT_INPUT_ERROR_IF(keys.root.kind != PickleKind::List, "{}: legacy storage keys are not a list", name);
    std::map<std::string, const TorchStorageRef*> named;
    for (const auto& s : state.objects.storages) named.emplace(s.key, &s);
    std::map<std::string, std::size_t> used;
    for (std::size_t i = 0; i < contents_.storages.size(); ++i) used.emplace(contents_.storages[i].key, i);
    offsets_.assign(contents_.storages.size(), 0);
    std::vector<bool> found(contents_.storages.size(), false);
    const std::uint64_t file_size = file_.size();
    std::map<std::string, bool> seen;
    for (const auto& key_value : keys.objects.sequences[keys.root.index]) {
      SOUPKIT_INPUT_ERROR_IF(key_value.kind != PickleKind::String, "{}: a legacy storage key is not a string", name);
      const std::string& key = keys.objects.strings[key_value.index];
      SOUPKIT_INPUT_ERROR_IF(!seen.emplace(key, true).second, "{}: legacy storage key '{}' is listed twice", name,
                             excerpt(key));
      const auto it = named.find(key);
      SOUPKIT_INPUT_ERROR_IF(it == named.end(), "{}: legacy storage key '{}' names no storage of the pickle", name,
                             excerpt(key));
      const TorchStorageRef& s = *it->second;
      std::array<unsigned char, 8> count_bytes{};
      SOUPKIT_INPUT_ERROR_IF(position > file_size || file_size - position < 8,
                             "{}: storage '{}' is missing: the file ends at byte {}", name, excerpt(key), file_size);
      file_.pread_exact(position, std::as_writable_bytes(std::span(count_bytes)));
      std::uint64_t count = 0;
      for (std::size_t b = 8; b-- > 0;) count = (count << 8) | count_bytes[b];
      SOUPKIT_INPUT_ERROR_IF(count != s.numel, "{}: storage '{}' holds {} elements, but the pickle declares {}", name,
                             excerpt(key), count, s.numel);
      position += 8;
      const std::uint64_t bytes = storage_bytes(s);
      SOUPKIT_INPUT_ERROR_IF(bytes > file_size - position,
                             "{}: storage '{}' declares {} {} elements ({} bytes), but the file has {} bytes after "
                             "byte {}",
                             name, excerpt(key), s.numel, dtype_name(s.dtype), bytes, file_size - position, position);
      if (const auto u = used.find(key); u != used.end()) {
        offsets_[u->second] = position;
        found[u->second] = true;
      }
      position += bytes;
    }
    for (std::size_t i = 0; i < found.size(); ++i)
      SOUPKIT_INPUT_ERROR_IF(!found[i], "{}: tensor '{}': its storage '{}' is not in the file", name,
                             tensor_of(contents_, i), excerpt(contents_.storages[i].key));
  }

  File file_;
  std::vector<std::uint64_t> offsets_;  // parallel to contents_.storages: file offset of the first byte
};

}  // namespace

TorchFormat torch_format(std::span<const std::byte> head) {
  const auto at = [&](std::size_t i) { return i < head.size() ? static_cast<unsigned char>(head[i]) : -1; };
  if (at(0) == 'P' && at(1) == 'K' && at(2) == 3 && at(3) == 4) return TorchFormat::Zip;
  if (at(0) == 0x80 && at(1) >= 2 && at(1) <= 5 && at(8) != '{') return TorchFormat::Legacy;
  return TorchFormat::Other;
}

std::unique_ptr<TorchFile> open_torch_zip(const fs::path& path) { return std::make_unique<TorchZipFile>(path); }

std::unique_ptr<TorchFile> open_torch_legacy(const fs::path& path) { return std::make_unique<TorchLegacyFile>(path); }

std::unique_ptr<TorchFile> open_torch_file(const fs::path& path) {
  const File file = File::open_read(path);
  std::array<std::byte, 16> head{};
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(head.size(), file.size()));
  file.pread_exact(0, std::span(head.data(), n));
  switch (torch_format(std::span(head.data(), n))) {
    case TorchFormat::Zip: return open_torch_zip(path);
    case TorchFormat::Legacy: return open_torch_legacy(path);
    case TorchFormat::Other: break;
  }
  throw InputError(fmt::format("{}: not a PyTorch checkpoint: neither a zip archive (torch.save since 1.6) nor the "
                               "legacy torch.save format",
                               path.string()));
}

}  // namespace soupkit::detail
