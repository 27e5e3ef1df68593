// Reads PyTorch checkpoints: a file torch.save wrote (.pt, .pth, .bin), or a
// model directory with pytorch_model.bin or shards listed by
// pytorch_model.bin.index.json. Each tensor is read on request, only its
// bytes, through its strides (torch_file.hpp, strided_read.hpp).
#include "checkpoint_formats.hpp"
#include "model_directory.hpp"
#include "torch_file.hpp"

#include "soupkit/util/error.hpp"

#include <algorithm>
#include <set>

namespace soupkit::detail {
namespace {

constexpr const char* kSingleFile = "pytorch_model.bin";
constexpr const char* kIndexFile = "pytorch_model.bin.index.json";

// Reverses the bytes of each element (a big-endian archive).
void swap_bytes(std::span<std::byte> data, std::size_t element_size) {
  for (std::size_t i = 0; i + element_size <= data.size(); i += element_size)
    std::reverse(data.begin() + static_cast<std::ptrdiff_t>(i), data.begin() + static_cast<std::ptrdiff_t>(i + element_size));
}

class TorchReader final : public ShardedReader {
 public:
  TorchReader(fs::path path, bool directory) : ShardedReader(std::move(path), directory) {}

  std::string_view format_name() const override { return directory_ ? "model directory (pytorch)" : "pytorch"; }

  void add_shard(const fs::path& file_path, const IndexedShard* indexed) override {
    shards_.push_back(open_torch_file(file_path));
    const TorchFile& shard = *shards_.back();
    if (indexed) {
      std::set<std::string> present;
      for (const auto& t : shard.contents().tensors) present.insert(t.info.name);
      check_shard_holds(path_, kIndexFile, *indexed, present);
    }
    for (std::size_t i = 0; i < shard.contents().tensors.size(); ++i) {
      locations_.push_back({shards_.size() - 1, i});
      add_tensor(shard.contents().tensors[i].info, file_path.string());
    }
  }

  void read_rows(const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                 std::span<std::byte> dst) const override {
    const Location& loc = locations_.at(index_of(t));
    const TorchFile& shard = *shards_[loc.shard];
    const TorchTensor& tensor = shard.contents().tensors[loc.tensor];
    const std::uint64_t rb = row_bytes(t);
    SOUPKIT_ERROR_IF(first_row + rows > row_count(t) || dst.size() != rows * rb,
                     "{}: tensor '{}': bad row range [{}, {})", path_.string(), t.name, first_row, first_row + rows);
    const TorchStorageRef& storage = shard.contents().storages[tensor.storage];
    const std::size_t element_size = dtype_size(t.dtype);
    read_strided_rows(tensor.layout, element_size, storage.numel, first_row, rows, dst,
                      [&](std::uint64_t offset, std::span<std::byte> bytes) {
                        shard.read_storage(tensor.storage, offset, bytes);
                      });
    if (shard.big_endian() && element_size > 1) swap_bytes(dst, element_size);
  }

  std::string location(const TensorInfo& t) const override {
    const Location& loc = locations_.at(index_of(t));
    const TorchFile& shard = *shards_[loc.shard];
    const TorchTensor& tensor = shard.contents().tensors[loc.tensor];
    return fmt::format("{}+{}", shard.storage_location(tensor.storage),
                       tensor.layout.offset * dtype_size(tensor.info.dtype));
  }

 private:
  struct Location {
    std::size_t shard;
    std::size_t tensor;  // in the shard's contents
  };
  std::vector<std::unique_ptr<TorchFile>> shards_;
  std::vector<Location> locations_;  // parallel to tensors_
};

}  // namespace

std::unique_ptr<CheckpointReader> open_torch_checkpoint(const fs::path& path) {
  return add_weight_files(std::make_unique<TorchReader>(path, false), kSingleFile, kIndexFile);
}

std::unique_ptr<CheckpointReader> open_torch_directory(const fs::path& dir) {
  return add_weight_files(std::make_unique<TorchReader>(dir, true), kSingleFile, kIndexFile);
}

}  // namespace soupkit::detail
