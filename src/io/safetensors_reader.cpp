// Reads a .safetensors file or a Hugging Face model directory (one
// model.safetensors, or shards listed by model.safetensors.index.json).
// Tensor data is read with pread, tensor by tensor, row range by row range.
#include "checkpoint_formats.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>
#include <set>

namespace soupkit::detail {
namespace {

using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// A shard named by an index must be a file in the model directory itself:
// no separator, not "." or "..", no NUL (which would cut the name short).
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find_first_of(std::string("/\0", 2)) == std::string::npos;
}

// A model directory's files may be symbolic links, as in Hugging Face's
// cache (models--ORG--NAME/snapshots/REV/FILE -> ../../blobs/HASH), but
// only to files inside the directory (or that cache repository): a crafted
// directory must not carry, say, ~/.ssh/id_rsa into a merged model that is
// then published.
void check_link_stays_inside(const fs::path& dir, const fs::path& file) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(file, ec))) return;
  const fs::path target = fs::canonical(file, ec);
  SOUPKIT_INPUT_ERROR_IF(ec, "{}: a symbolic link that does not resolve ({})", file.string(), ec.message());
  fs::path allowed = fs::canonical(dir, ec);
  SOUPKIT_INPUT_ERROR_IF(ec, "{}: cannot resolve the model directory ({})", dir.string(), ec.message());
  const fs::path snapshots = allowed.parent_path();
  if (snapshots.filename() == "snapshots" && snapshots.parent_path().filename().string().starts_with("models--"))
    allowed = snapshots.parent_path();
  const fs::path relative = target.lexically_relative(allowed);
  SOUPKIT_INPUT_ERROR_IF(relative.empty() || *relative.begin() == "..",
                         "{}: a symbolic link to {}, outside the model directory {}; soupkit reads only files inside "
                         "it (copy the file in if it belongs to the model)",
                         file.string(), target.string(), dir.string());
}

class SafetensorsReader final : public CheckpointReader {
 public:
  explicit SafetensorsReader(fs::path path, bool directory) : CheckpointReader(std::move(path)), directory_(directory) {}

  std::string_view format_name() const override { return directory_ ? "model directory (safetensors)" : "safetensors"; }

  // Adds a shard; `expected` (from an index) lists the tensors it must hold.
  void add_shard(const fs::path& file_path, const std::set<std::string>* expected) {
    shards_.push_back(File::open_read(file_path));
    const File& file = shards_.back();
    SafetensorsHeader header = read_safetensors_header(file);
    if (expected) {
      std::set<std::string> present;
      for (const auto& e : header.entries) present.insert(e.info.name);
      for (const auto& name : *expected)
        SOUPKIT_INPUT_ERROR_IF(!present.count(name), "{}: index {} maps tensor '{}' to {}, which does not contain it",
                               path_.string(), kIndexFile, excerpt(name), excerpt(file_path.filename().string()));
    }
    for (const auto& [k, v] : header.metadata) metadata_.emplace(k, v);  // first shard wins
    for (auto& e : header.entries) {
      locations_.push_back({shards_.size() - 1, e.file_offset});
      add_tensor(std::move(e.info), file_path.string());
    }
  }

  void read_rows(const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                 std::span<std::byte> dst) const override {
    const auto& loc = locations_.at(index_of(t));
    const std::uint64_t rb = row_bytes(t);
    SOUPKIT_ERROR_IF(first_row + rows > row_count(t) || dst.size() != rows * rb,
                     "{}: tensor '{}': bad row range [{}, {})", path_.string(), t.name, first_row, first_row + rows);
    shards_[loc.shard].pread_exact(loc.offset + first_row * rb, dst);
  }

  std::string location(const TensorInfo& t) const override {
    const auto& loc = locations_.at(index_of(t));
    return fmt::format("{}@{}", shards_[loc.shard].path().string(), loc.offset);
  }

  std::vector<AuxFileInfo> aux_files() const override {
    std::vector<AuxFileInfo> files;
    if (!directory_) return files;
    for (const auto& entry : fs::directory_iterator(path_)) {
      const auto name = entry.path().filename().string();
      if (!entry.is_regular_file() || name.starts_with(".") || is_weight_file_name(name)) continue;
      check_aux_file_name(name, path_.string());
      check_link_stays_inside(path_, entry.path());
      files.push_back({name, static_cast<std::uint64_t>(entry.file_size())});
    }
    std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    return files;
  }

  void read_aux_block(const std::string& name, std::uint64_t offset, std::span<std::byte> dst) const override {
    SOUPKIT_ERROR_IF(!directory_, "{}: a safetensors file carries no files", path_.string());
    check_aux_file_name(name, path_.string());  // never a path out of the directory
    File::open_read(path_ / name).pread_exact(offset, dst);
  }

 private:
  struct Location {
    std::size_t shard;
    std::uint64_t offset;
  };
  bool directory_;
  std::vector<File> shards_;
  std::vector<Location> locations_;  // parallel to tensors_
};

}  // namespace

std::unique_ptr<CheckpointReader> open_safetensors_file(const fs::path& path) {
  auto reader = std::make_unique<SafetensorsReader>(path, false);
  reader->add_shard(path, nullptr);
  return reader;
}

std::unique_ptr<CheckpointReader> open_model_directory(const fs::path& dir) {
  auto reader = std::make_unique<SafetensorsReader>(dir, true);
  const fs::path index_path = dir / kIndexFile;
  if (fs::exists(index_path)) {
    check_link_stays_inside(dir, index_path);
    const json index = parse_untrusted_json(read_text_file(index_path), index_path.string());
    const auto map_it = index.find("weight_map");
    SOUPKIT_INPUT_ERROR_IF(!index.is_object() || map_it == index.end() || !map_it->is_object(),
                           "{}: no \"weight_map\" object", index_path.string());
    // Shards in the order they are first named, each with the tensors it must hold.
    std::vector<std::string> shard_order;
    std::map<std::string, std::set<std::string>> expected;
    for (const auto& [tensor, shard] : map_it->items()) {
      SOUPKIT_INPUT_ERROR_IF(!shard.is_string(), "{}: weight_map entry for '{}' is not a file name", index_path.string(),
                             excerpt(tensor));
      const auto& file = shard.get_ref<const std::string&>();
      SOUPKIT_INPUT_ERROR_IF(!is_plain_file_name(file), "{}: weight_map entry for '{}' names {}, not a file in the directory",
                             index_path.string(), excerpt(tensor), json_excerpt(shard));
      if (!expected.count(file)) shard_order.push_back(file);
      expected[file].insert(tensor);
    }
    std::sort(shard_order.begin(), shard_order.end());
    for (const auto& file : shard_order) {
      const fs::path shard_path = dir / file;
      SOUPKIT_INPUT_ERROR_IF(!fs::is_regular_file(shard_path), "{}: index {} names shard {}, which is missing (or not a file)",
                             dir.string(), kIndexFile, excerpt(file));
      check_link_stays_inside(dir, shard_path);
      reader->add_shard(shard_path, &expected[file]);
    }
    return reader;
  }
  const fs::path single = dir / kSingleFile;
  SOUPKIT_INPUT_ERROR_IF(!fs::exists(single), "{}: not a model directory (no {} and no {})", dir.string(), kSingleFile,
                         kIndexFile);
  check_link_stays_inside(dir, single);
  reader->add_shard(single, nullptr);
  return reader;
}

}  // namespace soupkit::detail
