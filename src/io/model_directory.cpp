#include "model_directory.hpp"

#include "checkpoint_formats.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>
#include <map>

namespace soupkit::detail {

bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find_first_of(std::string("/\0", 2)) == std::string::npos;
}

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

std::vector<IndexedShard> read_shard_index(const fs::path& dir, const std::string& index_name) {
  using nlohmann::json;
  const fs::path index_path = dir / index_name;
  check_link_stays_inside(dir, index_path);
  const json index = parse_untrusted_json(read_text_file(index_path), index_path.string());
  const auto map_it = index.find("weight_map");
  SOUPKIT_INPUT_ERROR_IF(!index.is_object() || map_it == index.end() || !map_it->is_object(),
                         "{}: no \"weight_map\" object", index_path.string());
  std::map<std::string, std::set<std::string>> expected;  // shard file -> tensors, in name order
  for (const auto& [tensor, shard] : map_it->items()) {
    SOUPKIT_INPUT_ERROR_IF(!shard.is_string(), "{}: weight_map entry for '{}' is not a file name", index_path.string(),
                           excerpt(tensor));
    const auto& file = shard.get_ref<const std::string&>();
    SOUPKIT_INPUT_ERROR_IF(!is_plain_file_name(file), "{}: weight_map entry for '{}' names {}, not a file in the directory",
                           index_path.string(), excerpt(tensor), json_excerpt(shard));
    expected[file].insert(tensor);
  }
  std::vector<IndexedShard> shards;
  for (auto& [file, tensors] : expected) {
    const fs::path shard_path = dir / file;
    SOUPKIT_INPUT_ERROR_IF(!fs::is_regular_file(shard_path), "{}: index {} names shard {}, which is missing (or not a file)",
                           dir.string(), index_name, excerpt(file));
    check_link_stays_inside(dir, shard_path);
    shards.push_back({shard_path, file, std::move(tensors)});
  }
  return shards;
}

void check_shard_holds(const fs::path& dir, const std::string& index_name, const IndexedShard& shard,
                       const std::set<std::string>& present) {
  for (const auto& name : shard.tensors)
    SOUPKIT_INPUT_ERROR_IF(!present.count(name), "{}: index {} maps tensor '{}' to {}, which does not contain it",
                           dir.string(), index_name, excerpt(name), excerpt(shard.file));
}

std::unique_ptr<CheckpointReader> add_weight_files(std::unique_ptr<ShardedReader> reader, const std::string& single_name,
                                                   const std::string& index_name) {
  const fs::path dir = reader->path();
  if (!fs::is_directory(dir)) {
    reader->add_shard(dir, nullptr);
  } else if (fs::exists(dir / index_name)) {
    for (const auto& shard : read_shard_index(dir, index_name)) reader->add_shard(shard.path, &shard);
  } else {
    check_link_stays_inside(dir, dir / single_name);
    reader->add_shard(dir / single_name, nullptr);
  }
  return reader;
}

std::vector<AuxFileInfo> list_carried_files(const fs::path& dir) {
  std::vector<AuxFileInfo> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.starts_with(".") || is_weight_file_name(name)) continue;
    check_aux_file_name(name, dir.string());
    check_link_stays_inside(dir, entry.path());
    files.push_back({name, static_cast<std::uint64_t>(entry.file_size())});
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return files;
}

std::vector<AuxFileInfo> ShardedReader::aux_files() const {
  return directory_ ? list_carried_files(path_) : std::vector<AuxFileInfo>{};
}

void ShardedReader::read_aux_block(const std::string& name, std::uint64_t offset, std::span<std::byte> dst) const {
  SOUPKIT_ERROR_IF(!directory_, "{}: a single weight file carries no files", path_.string());
  check_aux_file_name(name, path_.string());  // never a path out of the directory
  File::open_read(path_ / name).pread_exact(offset, dst);
}

// safetensors first, as transformers prefers it when a directory has both.
std::unique_ptr<CheckpointReader> open_model_directory(const fs::path& dir) {
  const auto has = [&](const char* name) { return fs::exists(dir / name); };
  if (has("model.safetensors.index.json") || has("model.safetensors")) return open_safetensors_directory(dir);
  if (has("pytorch_model.bin.index.json") || has("pytorch_model.bin")) return open_torch_directory(dir);
  throw InputError(fmt::format("{}: not a model directory (no model.safetensors, model.safetensors.index.json, "
                               "pytorch_model.bin or pytorch_model.bin.index.json)",
                               dir.string()));
}

}  // namespace soupkit::detail
