#pragma once
// What every model-directory reader shares (safetensors and PyTorch
// shards): which weights a directory holds, the shard index
// (*.index.json's weight_map), symbolic links that must stay inside the
// directory, and the carried files (config, tokenizer, ...).
#include "soupkit/io/checkpoint.hpp"

#include <functional>
#include <set>
#include <string>
#include <vector>

namespace soupkit::detail {

// A shard named by an index must be a file in the model directory itself:
// no separator, not "." or "..", no NUL (which would cut the name short).
bool is_plain_file_name(const std::string& name);

// A model directory's files may be symbolic links, as in Hugging Face's
// cache (models--ORG--NAME/snapshots/REV/FILE -> ../../blobs/HASH), but
// only to files inside the directory (or that cache repository): a crafted
// directory must not carry, say, ~/.ssh/id_rsa into a merged model that is
// then published. Throws InputError naming the file otherwise.
void check_link_stays_inside(const fs::path& dir, const fs::path& file);

// One shard an index names, with the tensors the index maps to it.
struct IndexedShard {
  fs::path path;
  std::string file;
  std::set<std::string> tensors;
};
// Reads DIR/INDEX_NAME's weight_map: the shards in name order, each a
// plain file name that exists in the directory (links checked).
std::vector<IndexedShard> read_shard_index(const fs::path& dir, const std::string& index_name);
// Throws unless every tensor the index maps to `shard` is in `present`.
void check_shard_holds(const fs::path& dir, const std::string& index_name, const IndexedShard& shard,
                       const std::set<std::string>& present);

// The directory's carried files: regular top-level files that are not
// hidden and not weights, each name checked, sorted by name.
std::vector<AuxFileInfo> list_carried_files(const fs::path& dir);

// A reader of one weight file, or of the shards of a model directory, whose
// other files it carries.
class ShardedReader : public CheckpointReader {
 public:
  // Adds a weight file; `indexed` (from an index) lists the tensors it must
  // hold.
  virtual void add_shard(const fs::path& file, const IndexedShard* indexed) = 0;
  std::vector<AuxFileInfo> aux_files() const override;
  void read_aux_block(const std::string& name, std::uint64_t offset, std::span<std::byte> dst) const override;

 protected:
  ShardedReader(fs::path path, bool directory) : CheckpointReader(std::move(path)), directory_(directory) {}
  bool directory_;
};

// Adds the weights at `reader`'s path: the file itself or, for a
// directory, the shards DIR/INDEX_NAME lists (if it exists), else
// DIR/SINGLE_NAME.
std::unique_ptr<CheckpointReader> add_weight_files(std::unique_ptr<ShardedReader> reader, const std::string& single_name,
                                                   const std::string& index_name);

// The weights of a directory, one reader each (model_directory.cpp picks).
std::unique_ptr<CheckpointReader> open_safetensors_directory(const fs::path& dir);
std::unique_ptr<CheckpointReader> open_torch_directory(const fs::path& dir);

}  // namespace soupkit::detail
