#pragma once
// One way to read checkpoints and one way to write them, whatever the format:
// a .safetensors file, a Hugging Face model directory (single or sharded
// safetensors, or PyTorch's pytorch_model.bin, plus config/tokenizer files),
// soupkit's HDF5 layout (.h5), or a file torch.save wrote (.pt, .pth, .bin;
// read only).
#include "soupkit/parallel/communicator.hpp"
#include "soupkit/io/file.hpp"
#include "soupkit/io/safetensors.hpp"
#include "soupkit/io/tensor.hpp"

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <functional>
#include <unordered_map>
#include <vector>

namespace soupkit {

// A non-weight file carried with a model (config.json, tokenizer.json, ...).
struct AuxFileInfo {
  std::string name;
  std::uint64_t size = 0;
  bool operator==(const AuxFileInfo&) const = default;
};

// Carried files a method parses whole (config.json, tokenizer.json, ...) are
// read into memory; anything larger is refused before allocating. Files that
// are only copied are streamed and have no limit.
inline constexpr std::uint64_t kMaxParsedAuxBytes = 256ull << 20;
// Carried files are copied from reader to writer in blocks of this size.
inline constexpr std::uint64_t kAuxCopyBlockBytes = 4ull << 20;

// Throws InputError ("<where>: ...") unless `name` may be a carried file of
// an output: a single plain file name inside the model directory (not empty,
// no '/', not "." or "..", no NUL or control character, at most 255 bytes)
// that is not a weight file or index a writer produces or a reader skips.
void check_aux_file_name(std::string_view name, const std::string& where);
// Checks every name and that no name appears twice; `where` names the source.
void check_aux_files(const std::vector<AuxFileInfo>& files, const std::string& where);
// Weight files and indexes (*.safetensors, *.bin, *.h5, ...,
// model.safetensors.index.json): never carried, never overwritten by one.
bool is_weight_file_name(std::string_view name);

// W1 = W0 + scale * left @ right for one tensor viewed as a matrix [m, n]:
// a LoRA adapter's update (left [m, r], right [r, n], row-major, the
// adapter's values widened exactly to float64; B and A, or A^T and B^T for
// fan_in_fan_out). scale is alpha / r, or alpha / sqrt(r) for rsLoRA.
struct LowRankUpdate {
  std::uint64_t m = 0, n = 0, r = 0;
  double scale = 0;
  std::vector<double> left, right;
};

// A name as it may appear in a one-line message: control characters (NUL,
// newline, ...) are escaped (\0, \n, \x1b), nothing else.
std::string printable(std::string_view name);


class CheckpointReader {
 public:
  virtual ~CheckpointReader() = default;

  const fs::path& path() const { return path_; }
  virtual std::string_view format_name() const = 0;
  // Tensors in the checkpoint's own order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr if absent.
  const TensorInfo* find(std::string_view name) const;
  // A tensor planning found here: Error naming the file if it is absent
  // (the checkpoint changed since, or a plan and its readers disagree).
  const TensorInfo& planned(std::string_view name) const;
  std::size_t index_of(const TensorInfo& t) const { return static_cast<std::size_t>(&t - tensors_.data()); }
  const StringMap& metadata() const { return metadata_; }

  // Reads rows [first_row, first_row + rows) of a tensor viewed as a matrix
  // [shape[0], product of the other dims] (a 0-d scalar has one row) into
  // dst, whose size must be exactly those rows' bytes. Only these bytes are
  // read from disk.
  virtual void read_rows(const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                         std::span<std::byte> dst) const = 0;
  // Reads the whole tensor.
  void read(const TensorInfo& t, std::span<std::byte> dst) const;
  std::vector<std::byte> read(const TensorInfo& t) const;

  // For a base with a LoRA adapter (BASE+ADAPTER): the base's reader, and
  // the adapter's update of tensor t (nullopt for a tensor it does not
  // adapt). Other readers: nullptr and nullopt.
  virtual const CheckpointReader* low_rank_base() const { return nullptr; }
  virtual std::optional<LowRankUpdate> low_rank_update(const TensorInfo&) const { return std::nullopt; }
  // The rank of that update without reading it (0: none).
  virtual std::uint64_t low_rank_rank(const TensorInfo&) const { return 0; }
  // True when tensor t reads as low_rank_base()'s bytes, unchanged (a
  // tensor the adapter neither adapts nor saves whole): its update is zero.
  virtual bool reads_low_rank_base_unchanged(const TensorInfo&) const { return false; }

  // Where a tensor's bytes are, for plans and messages: "FILE@OFFSET" for
  // safetensors, "FILE:/tensors/NAME" for HDF5, "FILE:ARCHIVE/data/KEY+OFFSET"
  // for torch.save's zip format and "FILE@OFFSET+OFFSET" for its legacy one.
  virtual std::string location(const TensorInfo& t) const = 0;

  // Carried files (config, tokenizer, ...), each name checked by
  // check_aux_file_name.
  virtual std::vector<AuxFileInfo> aux_files() const = 0;
  // Reads bytes [offset, offset + dst.size()) of carried file `name`.
  virtual void read_aux_block(const std::string& name, std::uint64_t offset, std::span<std::byte> dst) const = 0;
  // The whole file, for files that are parsed; throws InputError naming the
  // file if it is larger than kMaxParsedAuxBytes (before allocating).
  std::string read_aux(const std::string& name) const;

 protected:
  explicit CheckpointReader(fs::path path) : path_(std::move(path)) {}
  // Registers a tensor; throws InputError on a duplicate name, naming both
  // places (`where` and the earlier one), and on a name holding a NUL byte
  // (other formats and tools would cut it there: names are never changed).
  void add_tensor(TensorInfo info, const std::string& where);
  fs::path path_;
  std::vector<TensorInfo> tensors_;
  StringMap metadata_;

 private:
  std::unordered_map<std::string, std::size_t> by_name_;
  std::vector<std::string> where_;
};

// An input for an output's provenance: the path as given and as resolved
// (symlinks followed), its format, tensor count and tensor bytes.
nlohmann::json describe_input(const fs::path& given, const CheckpointReader& reader);

// Opens any supported checkpoint, reading only headers. Throws InputError
// naming the path and the problem. "BASE+ADAPTER" (as mergekit writes it)
// is the base with a PEFT LoRA adapter directory merged in
// (docs/formats.md, "LoRA adapters"), unless a file of that very name
// exists; an adapter directory alone is refused, asking for BASE+ADAPTER.
std::unique_ptr<CheckpointReader> open_checkpoint(const fs::path& path);

// Every path open_checkpoint was given in this process, made absolute with
// symbolic links resolved (fs::weakly_canonical), in the order opened: the
// engine refuses an output that would replace one or land inside one.
std::vector<fs::path> opened_checkpoint_paths();
// A directory holding adapter_config.json (a PEFT adapter, not a model).
bool is_adapter_directory(const fs::path& path);

// Rows of a tensor seen as a matrix: shape[0], or 1 for a 0-d scalar.
std::uint64_t row_count(const TensorInfo& t);
// Bytes of one such row.
std::uint64_t row_bytes(const TensorInfo& t);

enum class OutputKind { SafetensorsFile, ModelDirectory, Hdf5File };
// ".safetensors" -> one file, ".h5"/".hdf5" -> HDF5, anything else -> a
// Hugging Face style model directory, except a name ending in the extension
// of a format soupkit does not write (.bin, .pt, .gguf, .onnx, .json, ...):
// InputError naming the formats it writes.
OutputKind output_kind(const fs::path& path);

// Everything a writer needs to lay out its output before any data exists.
// Must be identical on all ranks.
struct OutputSpec {
  std::vector<TensorInfo> tensors;       // output order
  StringMap metadata;                    // safetensors "__metadata__" (kept in HDF5 too)
  nlohmann::json provenance = nlohmann::json::object();  // source, method, parameters
  std::vector<AuxFileInfo> aux_files;    // written by write_aux (model directories and HDF5)
  std::uint64_t shard_size = 5'000'000'000ull;
  bool overwrite = false;

  nlohmann::json to_json() const;
  static OutputSpec from_json(const nlohmann::json& j);
};

// Writes an output checkpoint from all ranks of a communicator. Construction
// and commit()/discard() are collective; write() is called only by the rank
// that owns the tensor. Data goes to a ".partial" name beside the output and
// is renamed into place by commit(); a writer destroyed without commit()
// leaves nothing at the final path.
class CheckpointWriter {
 public:
  virtual ~CheckpointWriter() = default;
  // Writes rows [first_row, first_row + rows) of tensor `index` (of
  // spec.tensors), and shows them to the row observer, if any.
  void write_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows, std::span<const std::byte> data);
  void write(std::size_t index, std::span<const std::byte> data);
  // Writes bytes [offset, offset + data.size()) of aux file `index` (of
  // spec.aux_files). Blocks come in order, the first at offset 0, and
  // together cover the file (a file of size 0 takes one empty block); one
  // rank (any) writes all of a file's blocks.
  void write_aux_block(std::size_t index, std::uint64_t offset, std::span<const std::byte> data);
  // The whole aux file at once.
  void write_aux(std::size_t index, std::string_view contents);
  virtual void commit() = 0;
  virtual void discard() = 0;
  const OutputSpec& spec() const { return spec_; }
  const fs::path& path() const { return path_; }

  // Called after every write_rows with what was written (the engine keeps
  // its resume checksums with it); one observer, replaced by the next call.
  using RowObserver = std::function<void(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                                         std::span<const std::byte> data)>;
  void observe_rows(RowObserver observer) { observer_ = std::move(observer); }
  // Reads rows of tensor `index` back from the partial output (--resume
  // verifies what a killed run wrote).
  void read_written_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows, std::span<std::byte> dst) {
    read_back_rows(index, first_row, rows, dst);
  }

 protected:
  CheckpointWriter(const Communicator& comm, fs::path path, OutputSpec spec)
      : comm_(comm), path_(std::move(path)), spec_(std::move(spec)) {}
  virtual void write_rows_impl(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                               std::span<const std::byte> data) = 0;
  virtual void read_back_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                              std::span<std::byte> dst) = 0;
  // Called with a block already checked to lie within the file.
  virtual void write_aux_block_impl(std::size_t index, std::uint64_t offset, std::span<const std::byte> data) = 0;
  const Communicator& comm_;
  fs::path path_;
  OutputSpec spec_;

 private:
  RowObserver observer_;
};

// Create: a new partial output (replacing a stale one). Resume: reopen the
// partial output a killed run left, keeping what it wrote.
enum class WriterMode { Create, Resume };

std::unique_ptr<CheckpointWriter> create_checkpoint_writer(const Communicator& comm, const fs::path& path,
                                                           OutputSpec spec, WriterMode mode = WriterMode::Create);

// "<out>.partial", where an output is written until it is complete.
fs::path partial_output_path(const fs::path& out);

}  // namespace soupkit
