#include "soupkit/checkpoint.hpp"

#include "checkpoint_formats.hpp"
#include "partial_output.hpp"
#include "soupkit/checksum.hpp"
#include "soupkit/error.hpp"

#include <algorithm>
#include <cstring>

namespace soupkit {

const TensorInfo* CheckpointReader::find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void CheckpointReader::add_tensor(TensorInfo info, const std::string& where) {
  const auto [it, inserted] = by_name_.emplace(info.name, tensors_.size());
  SOUPKIT_INPUT_ERROR_IF(!inserted, "{}: tensor '{}' appears twice: in {} and in {}", path_.string(), info.name,
                         where_[it->second], where);
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

std::unique_ptr<CheckpointReader> open_checkpoint(const fs::path& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  SOUPKIT_INPUT_ERROR_IF(!fs::exists(status), "{}: no such file or directory", path.string());
  if (fs::is_directory(status)) return detail::open_model_directory(path);
  File file = File::open_read(path);
  static constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  std::byte head[8] = {};
  const bool long_enough = file.size() >= 8;
  if (long_enough) file.pread_exact(0, head);
  if (long_enough && std::memcmp(head, kHdf5Signature, 8) == 0) return detail::open_hdf5_checkpoint(path);
  const auto ext = path.extension();
  SOUPKIT_INPUT_ERROR_IF(ext == ".h5" || ext == ".hdf5", "{}: not an HDF5 file (no HDF5 signature)", path.string());
  return detail::open_safetensors_file(path);
}

OutputKind output_kind(const fs::path& path) {
  const auto ext = path.extension();
  if (ext == ".safetensors") return OutputKind::SafetensorsFile;
  if (ext == ".h5" || ext == ".hdf5") return OutputKind::Hdf5File;
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

void CheckpointWriter::write(std::size_t index, std::span<const std::byte> data) {
  write_rows(index, 0, row_count(spec_.tensors.at(index)), data);
}

void CheckpointWriter::write_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                                  std::span<const std::byte> data) {
  write_rows_impl(index, first_row, rows, data);
  checksums_[index] += checksum_rows(first_row, rows, row_bytes(spec_.tensors.at(index)), data);
}

std::uint64_t CheckpointWriter::take_checksum(std::size_t index) {
  const auto it = checksums_.find(index);
  if (it == checksums_.end()) return 0;
  const std::uint64_t sum = it->second;
  checksums_.erase(it);
  return sum;
}

std::uint64_t CheckpointWriter::checksum_written(std::size_t index) {
  // Blocks of rows of about 64 MiB, so verifying a large tensor stays cheap in memory.
  constexpr std::uint64_t kBlockBytes = 64ull << 20;
  const TensorInfo& t = spec_.tensors.at(index);
  const std::uint64_t rows = row_count(t), rb = row_bytes(t);
  if (rb == 0) return 0;
  const std::uint64_t step = std::max<std::uint64_t>(1, kBlockBytes / rb);
  std::vector<std::byte> buffer;
  std::uint64_t sum = 0;
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    buffer.resize(count * rb);
    read_back_rows(index, first, count, buffer);
    sum += checksum_rows(first, count, rb, buffer);
  }
  return sum;
}

fs::path partial_output_path(const fs::path& out) { return PartialOutput(out, false, false).partial_path(); }

std::unique_ptr<CheckpointWriter> create_checkpoint_writer(const Communicator& comm, const fs::path& path,
                                                           OutputSpec spec, WriterMode mode) {
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
