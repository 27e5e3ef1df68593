#include "soupkit/io/checkpoint.hpp"

#include "adapter_config.hpp"
#include "checkpoint_formats.hpp"
#include "partial_output.hpp"
#include "torch_file.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <cctype>
#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <set>

namespace soupkit {

std::string printable(std::string_view name) { return excerpt(name, std::string_view::npos); }

nlohmann::json describe_input(const fs::path& given, const CheckpointReader& reader) {
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(given, ec);
  if (ec) resolved = fs::absolute(given, ec);
  std::uint64_t bytes = 0;
  for (const auto& t : reader.tensors()) bytes += t.nbytes();
  return {{"path", given.string()},
          {"resolved", resolved.string()},
          {"format", std::string(reader.format_name())},
          {"tensors", reader.tensors().size()},
          {"tensor_bytes", bytes}};
}

bool is_weight_file_name(std::string_view name) {
  static const std::set<std::string, std::less<>> weight_exts = {
      ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".hdf5", ".msgpack", ".gguf", ".partial"};
  const fs::path p{std::string(name)};
  if (weight_exts.count(p.extension().string()) > 0) return true;
  // Shard indexes: model.safetensors.index.json, pytorch_model.bin.index.json, ...
  constexpr std::string_view kIndexSuffix = ".index.json";
  return name.size() > kIndexSuffix.size() && name.ends_with(kIndexSuffix) &&
         weight_exts.count(fs::path(std::string(name.substr(0, name.size() - kIndexSuffix.size()))).extension().string()) > 0;
}

void check_aux_file_name(std::string_view name, const std::string& where) {
  const auto bad = [&](std::string_view why) {
    throw InputError(fmt::format("{}: carried file name '{}' {}", where, printable(name), why));
  };
  if (name.empty()) bad("is empty");
  if (name == "." || name == "..") bad("is not a file name");
  if (name.find('/') != std::string_view::npos) bad("is not a plain file name (it holds '/')");
  if (std::any_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
    bad("holds a NUL or control character");
  if (name.size() > 255) bad("is longer than 255 bytes");
  if (!is_valid_utf8(name)) bad("is not valid UTF-8");
  // The writer's own files (model.safetensors, model-0000i-of-0000N.safetensors,
  // the index) and files readers skip as weights could be replaced by it.
  if (is_weight_file_name(name)) bad("is a weight file name (it would collide with the output's weights)");
}

void check_aux_files(const std::vector<AuxFileInfo>& files, const std::string& where) {
  std::set<std::string_view> seen;
  for (const auto& f : files) {
    check_aux_file_name(f.name, where);
    SOUPKIT_INPUT_ERROR_IF(!seen.insert(f.name).second, "{}: carried file '{}' appears twice", where, printable(f.name));
  }
}

std::string CheckpointReader::read_aux(const std::string& name) const {
  const auto files = aux_files();
  const auto it = std::find_if(files.begin(), files.end(), [&](const AuxFileInfo& f) { return f.name == name; });
  SOUPKIT_INPUT_ERROR_IF(it == files.end(), "{}: no carried file '{}'", path_.string(), printable(name));
  SOUPKIT_INPUT_ERROR_IF(it->size > kMaxParsedAuxBytes, "{}: carried file '{}' is {} bytes, more than the {} MiB "
                         "soupkit reads into memory to parse", path_.string(), printable(name), it->size,
                         kMaxParsedAuxBytes >> 20);
  std::string contents(it->size, '\0');
  read_aux_block(name, 0, std::as_writable_bytes(std::span(contents)));
  return contents;
}

const TensorInfo& CheckpointReader::planned(std::string_view name) const {
  const TensorInfo* t = find(name);
  SOUPKIT_ERROR_IF(!t, "{}: tensor '{}' disappeared since planning", path_.string(), printable(name));
  return *t;
}

const TensorInfo* CheckpointReader::find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void CheckpointReader::add_tensor(TensorInfo info, const std::string& where) {
  SOUPKIT_INPUT_ERROR_IF(info.name.find('\0') != std::string::npos,
                         "{}: tensor '{}' has a NUL byte in its name (not supported: other tools would cut it)", where,
                         printable(info.name));
  SOUPKIT_INPUT_ERROR_IF(!is_valid_utf8(info.name), "{}: tensor name '{}' is not valid UTF-8", where,
                         printable(info.name));
  const auto [it, inserted] = by_name_.emplace(info.name, tensors_.size());
  SOUPKIT_INPUT_ERROR_IF(!inserted, "{}: tensor '{}' appears twice: in {} and in {}", path_.string(),
                         printable(info.name), where_[it->second], where);
  tensors_.push_back(std::move(info));
  where_.push_back(where);
}

void CheckpointReader::read(const TensorInfo& t, std::span<std::byte> dst) const {
  read_rows(t, 0, row_count(t), dst);
}

std::vector<std::byte> CheckpointReader::read(const TensorInfo& t) const {
  std::vector<std::byte> data(t.nbytes());
  read(t, data);
  return data;
}

std::uint64_t row_count(const TensorInfo& t) { return t.shape.empty() ? 1 : t.shape[0]; }

std::uint64_t row_bytes(const TensorInfo& t) {
  const std::uint64_t rows = row_count(t);
  return rows == 0 ? 0 : t.nbytes() / rows;
}

namespace {
std::mutex opened_mutex;
std::vector<fs::path> opened_paths;

void note_opened(const fs::path& path) {
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) resolved = path.lexically_normal();
  const std::lock_guard lock(opened_mutex);
  if (std::find(opened_paths.begin(), opened_paths.end(), resolved) == opened_paths.end())
    opened_paths.push_back(std::move(resolved));
}
}  // namespace

std::vector<fs::path> opened_checkpoint_paths() {
  const std::lock_guard lock(opened_mutex);
  return opened_paths;
}

bool is_adapter_directory(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::exists(path / "adapter_config.json", ec);
}

namespace {

// "BASE+ADAPTER" (mergekit's LoRA sum) when no file has that very name: the
// first '+' whose left side exists and whose right side is an adapter.
std::unique_ptr<CheckpointReader> open_lora_sum(const fs::path& path) {
  const std::string text = path.string();
  std::error_code ec;
  for (auto plus = text.find('+'); plus != std::string::npos; plus = text.find('+', plus + 1)) {
    const fs::path base = text.substr(0, plus), adapter = text.substr(plus + 1);
    if (!base.empty() && fs::exists(base, ec) && is_adapter_directory(adapter)) {
      note_opened(adapter);  // the base is noted when it is opened
      return detail::open_adapter_checkpoint(path, base, adapter);
    }
  }
  const auto plus = text.find('+');
  const fs::path base = text.substr(0, plus), adapter = text.substr(plus + 1);
  if (!fs::exists(base, ec))
    throw InputError(fmt::format("{}: no such file or directory (nor, read as BASE+ADAPTER, the base {})", text,
                                 base.string()));
  throw InputError(fmt::format("{}: no such file or directory (read as BASE+ADAPTER, {} is not a LoRA adapter "
                               "directory with adapter_config.json)", text, adapter.string()));
}

}  // namespace

std::unique_ptr<CheckpointReader> open_checkpoint(const fs::path& path) {
  note_opened(path);
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status) && path.string().find('+') != std::string::npos) return open_lora_sum(path);
  SOUPKIT_INPUT_ERROR_IF(!fs::exists(status), "{}: no such file or directory", path.string());
  const bool has_model = fs::exists(path / "model.safetensors", ec) || fs::exists(path / "model.safetensors.index.json", ec) ||
                         fs::exists(path / "pytorch_model.bin", ec) || fs::exists(path / "pytorch_model.bin.index.json", ec);
  SOUPKIT_INPUT_ERROR_IF(is_adapter_directory(path) && !has_model,
                         "{}: a LoRA adapter (adapter_config.json), not a whole model: give it with the model it "
                         "adapts as BASE+ADAPTER", path.string());
  if (fs::is_directory(status)) return detail::open_model_directory(path);
  File file = File::open_read(path);
  static constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  std::array<std::byte, 16> head{};
  const std::size_t head_size = static_cast<std::size_t>(std::min<std::uint64_t>(head.size(), file.size()));
  file.pread_exact(0, std::span(head.data(), head_size));
  if (head_size >= 8 && std::memcmp(head.data(), kHdf5Signature, 8) == 0) return detail::open_hdf5_checkpoint(path);
  const auto ext = path.extension();
  // A torch file is known by its first bytes; one named like it that is
  // neither format nor safetensors (whose JSON header starts at byte 8) is
  // refused as not a PyTorch checkpoint, not as a broken safetensors file.
  const bool torch_name = ext == ".pt" || ext == ".pth" || ext == ".bin" || ext == ".ckpt";
  const bool safetensors_like = head_size > 8 && head[8] == std::byte{'{'};
  if ((torch_name && !safetensors_like) ||
      detail::torch_format(std::span(head.data(), head_size)) != detail::TorchFormat::Other)
    return detail::open_torch_checkpoint(path);
  SOUPKIT_INPUT_ERROR_IF(ext == ".h5" || ext == ".hdf5", "{}: not an HDF5 file (no HDF5 signature)", path.string());
  return detail::open_safetensors_file(path);
}

OutputKind output_kind(const fs::path& path) {
  const auto ext = path.extension();
  if (ext == ".safetensors") return OutputKind::SafetensorsFile;
  if (ext == ".h5" || ext == ".hdf5") return OutputKind::Hdf5File;
  // A name with the extension of a format soupkit does not write would
  // silently become a directory of that name ("merged.bin/"): refused.
  std::string lower = ext.string();
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::set<std::string> foreign = {
      ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".onnx", ".npz", ".npy", ".pkl", ".pickle", ".msgpack",
      ".tflite", ".zip", ".tar", ".gz", ".json", ".yaml", ".yml", ".txt", ".safetensor", ".hdf", ".he5", ".nc"};
  SOUPKIT_INPUT_ERROR_IF(foreign.count(lower), "{}: soupkit does not write {} files; it writes a .safetensors file, an "
                         ".h5/.hdf5 file, or a model directory (a name without such an extension)",
                         path.string(), ext.string());
  return OutputKind::ModelDirectory;
}

nlohmann::json OutputSpec::to_json() const {
  nlohmann::json tensors_json = nlohmann::json::array();
  for (const auto& t : tensors) tensors_json.push_back({t.name, std::string(dtype_name(t.dtype)), t.shape});
  nlohmann::json aux_json = nlohmann::json::array();
  for (const auto& a : aux_files) aux_json.push_back({a.name, a.size});
  return {{"tensors", tensors_json}, {"metadata", metadata}, {"provenance", provenance},
          {"aux_files", aux_json}, {"shard_size", shard_size}, {"overwrite", overwrite}};
}

OutputSpec OutputSpec::from_json(const nlohmann::json& j) {
  OutputSpec spec;
  for (const auto& t : j.at("tensors"))
    spec.tensors.push_back({t[0].get<std::string>(), *parse_dtype(t[1].get<std::string>()), t[2].get<Shape>()});
  spec.metadata = j.at("metadata").get<StringMap>();
  spec.provenance = j.at("provenance");
  for (const auto& a : j.at("aux_files")) spec.aux_files.push_back({a[0].get<std::string>(), a[1].get<std::uint64_t>()});
  spec.shard_size = j.at("shard_size").get<std::uint64_t>();
  spec.overwrite = j.at("overwrite").get<bool>();
  return spec;
}

void CheckpointWriter::write_aux_block(std::size_t index, std::uint64_t offset, std::span<const std::byte> data) {
  const AuxFileInfo& info = spec_.aux_files.at(index);
  SOUPKIT_ERROR_IF(offset > info.size || data.size() > info.size - offset,
                   "{}: file '{}': block of {} bytes at offset {} is past its size {}", path_.string(),
                   printable(info.name), data.size(), offset, info.size);
  write_aux_block_impl(index, offset, data);
}

void CheckpointWriter::write_aux(std::size_t index, std::string_view contents) {
  write_aux_block(index, 0, std::as_bytes(std::span(contents.data(), contents.size())));
}

void CheckpointWriter::write(std::size_t index, std::span<const std::byte> data) {
  write_rows(index, 0, row_count(spec_.tensors.at(index)), data);
}

void CheckpointWriter::write_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                                  std::span<const std::byte> data) {
  write_rows_impl(index, first_row, rows, data);
  if (observer_) observer_(index, first_row, rows, data);
}

fs::path partial_output_path(const fs::path& out) { return PartialOutput(out, false, false).partial_path(); }

std::unique_ptr<CheckpointWriter> create_checkpoint_writer(const Communicator& comm, const fs::path& path,
                                                           OutputSpec spec, WriterMode mode) {
  check_aux_files(spec.aux_files, path.string() + ": output");
  for (const auto& t : spec.tensors)
    SOUPKIT_INPUT_ERROR_IF(t.name.find('\0') != std::string::npos, "{}: tensor '{}' has a NUL byte in its name",
                           path.string(), printable(t.name));
  switch (output_kind(path)) {
    case OutputKind::SafetensorsFile: return detail::create_safetensors_writer(comm, path, std::move(spec), false, mode);
    case OutputKind::ModelDirectory: return detail::create_safetensors_writer(comm, path, std::move(spec), true, mode);
    case OutputKind::Hdf5File: return detail::create_hdf5_writer(comm, path, std::move(spec), mode);
  }
  throw Error("unknown output kind");
}

namespace detail {

std::uint64_t checked_row_range(const fs::path& out, const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                                std::size_t bytes) {
  const std::uint64_t rb = row_bytes(t);
  SOUPKIT_ERROR_IF(first_row + rows > row_count(t) || bytes != rows * rb,
                   "{}: tensor '{}': write of rows [{}, {}) with {} bytes does not fit shape {} x {}", out.string(),
                   t.name, first_row, first_row + rows, bytes, shape_string(t.shape), dtype_name(t.dtype));
  return first_row * rb;
}

}  // namespace detail
}  // namespace soupkit
