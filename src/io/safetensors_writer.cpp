// Writes a .safetensors file or a Hugging Face model directory from many
// ranks at once. The layout (shards, headers, every tensor's offset) follows
// from the OutputSpec alone, so each rank computes it identically and writes
// its tensors' bytes at their offsets with pwrite: nothing is gathered.
#include "checkpoint_formats.hpp"
#include "partial_output.hpp"
#include "soupkit/util/error.hpp"

#include <algorithm>
#include <numeric>
#include <optional>

namespace soupkit::detail {
namespace {

struct Shard {
  std::string file_name;
  std::vector<std::size_t> tensors;  // indices into spec.tensors, in file order
};

// Hugging Face's rule: fill shards in order up to shard_size; a tensor larger
// than shard_size gets a shard of its own.
// The header's metadata: the output's, and its provenance under
// "soupkit_provenance" (replacing one an input carried).
StringMap header_metadata(const OutputSpec& spec) {
  StringMap metadata = spec.metadata;
  if (!spec.provenance.empty()) metadata["soupkit_provenance"] = spec.provenance.dump();
  return metadata;
}

std::vector<Shard> plan_shards(const OutputSpec& spec, bool directory) {
  std::vector<Shard> shards;
  std::uint64_t filled = 0;
  for (std::size_t i = 0; i < spec.tensors.size(); ++i) {
    const std::uint64_t bytes = spec.tensors[i].nbytes();
    if (shards.empty() || (directory && filled > 0 && filled + bytes > spec.shard_size)) {
      shards.emplace_back();
      filled = 0;
    }
    shards.back().tensors.push_back(i);
    filled += bytes;
  }
  if (shards.empty()) shards.emplace_back();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    shards[s].file_name = shards.size() == 1
                              ? "model.safetensors"
                              : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    // Widest element first, so every tensor's data stays aligned to its element size.
    std::stable_sort(shards[s].tensors.begin(), shards[s].tensors.end(), [&](std::size_t a, std::size_t b) {
      return dtype_size(spec.tensors[a].dtype) > dtype_size(spec.tensors[b].dtype);
    });
  }
  return shards;
}

class SafetensorsWriter final : public CheckpointWriter {
 public:
  SafetensorsWriter(const Communicator& comm, const fs::path& path, OutputSpec spec, bool directory, WriterMode mode)
      : CheckpointWriter(comm, path, std::move(spec)),
        directory_(directory),
        partial_(path, directory, spec_.overwrite),
        shards_(plan_shards(spec_, directory)),
        location_(spec_.tensors.size()) {
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      std::vector<TensorInfo> infos;
      for (auto i : shards_[s].tensors) infos.push_back(spec_.tensors[i]);
      layouts_.push_back(layout_safetensors(infos, header_metadata(spec_)));
      for (std::size_t k = 0; k < shards_[s].tensors.size(); ++k)
        location_[shards_[s].tensors[k]] = {s, layouts_[s].offsets[k]};
    }
    files_ = std::vector<std::optional<File>>(shards_.size());
    on_root(comm_, [&] {
      if (mode == WriterMode::Resume) {
        partial_.prepare_resume();
        for (std::size_t s = 0; s < shards_.size(); ++s) {
          std::error_code ec;
          const auto size = fs::file_size(shard_path(s), ec);
          SOUPKIT_INPUT_ERROR_IF(ec || size != layouts_[s].file_size,
                                 "{}: cannot resume: {} is missing or has another size than this job's layout",
                                 path_.string(), shard_path(s).string());
        }
        return;
      }
      partial_.prepare();
      // A constructor that throws runs no destructor: what prepare() made
      // must go here (a full disk while writing the headers).
      try {
        for (std::size_t s = 0; s < shards_.size(); ++s) {
          File f = File::open_write(shard_path(s), true);
          f.pwrite_all(0, std::as_bytes(std::span(layouts_[s].header)));
          f.truncate(layouts_[s].file_size);
        }
      } catch (...) {
        partial_.discard();
        throw;
      }
    });
  }

  ~SafetensorsWriter() override {
    if (!finished_ && comm_.is_root()) partial_.discard();
  }

  void write_rows_impl(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                       std::span<const std::byte> data) override {
    const TensorInfo& t = spec_.tensors.at(index);
    const std::uint64_t offset = checked_row_range(path_, t, first_row, rows, data.size());
    const auto [shard, base] = location_[index];
    if (!files_[shard]) files_[shard] = File::open_write(shard_path(shard), false);
    files_[shard]->pwrite_all(base + offset, data);
  }

  void read_back_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows, std::span<std::byte> dst) override {
    const TensorInfo& t = spec_.tensors.at(index);
    const std::uint64_t offset = checked_row_range(path_, t, first_row, rows, dst.size());
    const auto [shard, base] = location_[index];
    File::open_read(shard_path(shard)).pread_exact(base + offset, dst);
  }

  void write_aux_block_impl(std::size_t index, std::uint64_t offset, std::span<const std::byte> data) override {
    if (!directory_) return;  // a single .safetensors file has nowhere to keep them
    const AuxFileInfo& info = spec_.aux_files.at(index);
    // The first block creates the file; the one that completes it syncs it.
    File f = File::open_write(partial_.partial_path() / info.name, offset == 0);
    f.pwrite_all(offset, data);
    if (offset + data.size() == info.size) f.sync();
    f.close();
  }

  void commit() override {
    collectively(comm_, [&] {
      for (auto& f : files_)
        if (f) {
          f->sync();
          f->close();
        }
    });
    on_root(comm_, [&] {
      if (directory_ && shards_.size() > 1) write_text_file(partial_.partial_path() / "model.safetensors.index.json", index_json());
      if (directory_) sync_directory(partial_.partial_path());
      partial_.commit();
    });
    finished_ = true;
  }

  void discard() override {
    for (auto& f : files_) f.reset();
    comm_.barrier();  // every rank has stopped writing
    if (comm_.is_root()) partial_.discard();
    comm_.barrier();  // nobody returns before the partial output is gone
    finished_ = true;
  }

 private:
  fs::path shard_path(std::size_t s) const {
    return directory_ ? partial_.partial_path() / shards_[s].file_name : partial_.partial_path();
  }

  std::string index_json() const {
    nlohmann::json map = nlohmann::json::object();
    std::uint64_t total = 0;
    for (const auto& shard : shards_)
      for (auto i : shard.tensors) {
        map[spec_.tensors[i].name] = shard.file_name;
        total += spec_.tensors[i].nbytes();
      }
    return nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", map}}.dump(2) + "\n";
  }

  struct Location {
    std::size_t shard = 0;
    std::uint64_t offset = 0;
  };
  bool directory_;
  PartialOutput partial_;
  std::vector<Shard> shards_;
  std::vector<SafetensorsLayout> layouts_;
  std::vector<Location> location_;  // per tensor
  std::vector<std::optional<File>> files_;  // per shard, opened on first write
  bool finished_ = false;
};

}  // namespace

std::unique_ptr<CheckpointWriter> create_safetensors_writer(const Communicator& comm, const fs::path& path,
                                                            OutputSpec spec, bool directory, WriterMode mode) {
  return std::make_unique<SafetensorsWriter>(comm, path, std::move(spec), directory, mode);
}

}  // namespace soupkit::detail
