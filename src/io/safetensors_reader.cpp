// Reads a .safetensors file or a Hugging Face model directory (one
// model.safetensors, or shards listed by model.safetensors.index.json).
// Tensor data is read with pread, tensor by tensor, row range by row range.
#include "checkpoint_formats.hpp"
#include "model_directory.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>
#include <set>

namespace soupkit::detail {
namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

class SafetensorsReader final : public ShardedReader {
 public:
  SafetensorsReader(fs::path path, bool directory) : ShardedReader(std::move(path), directory) {}

  std::string_view format_name() const override { return directory_ ? "model directory (safetensors)" : "safetensors"; }

  // Adds a shard; `indexed` (from an index) lists the tensors it must hold.
  void add_shard(const fs::path& file_path, const IndexedShard* indexed) override {
    shards_.push_back(File::open_read(file_path));
    const File& file = shards_.back();
    SafetensorsHeader header = read_safetensors_header(file);
    if (indexed) {
      std::set<std::string> present;
      for (const auto& e : header.entries) present.insert(e.info.name);
      check_shard_holds(path_, kIndexFile, *indexed, present);
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

 private:
  struct Location {
    std::size_t shard;
    std::uint64_t offset;
  };
  std::vector<File> shards_;
  std::vector<Location> locations_;  // parallel to tensors_
};

}  // namespace

std::unique_ptr<CheckpointReader> open_safetensors_file(const fs::path& path) {
  return add_weight_files(std::make_unique<SafetensorsReader>(path, false), kSingleFile, kIndexFile);
}

std::unique_ptr<CheckpointReader> open_safetensors_directory(const fs::path& dir) {
  return add_weight_files(std::make_unique<SafetensorsReader>(dir, true), kSingleFile, kIndexFile);
}

}  // namespace soupkit::detail
