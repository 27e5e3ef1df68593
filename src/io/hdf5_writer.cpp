// Writes soupkit's HDF5 checkpoint layout with parallel HDF5: every rank
// creates every dataset collectively (identical arguments, from the
// OutputSpec), then each tensor's owner writes its data independently.
#include "checkpoint_formats.hpp"
#include "hdf5_layout.hpp"
#include "partial_output.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/io/hdf5.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace soupkit::detail {
namespace {

using namespace h5layout;

// Chunks of about this many bytes: large enough for fast sequential I/O,
// small enough that reading a slice of a large tensor stays cheap.
constexpr std::uint64_t kChunkTargetBytes = 4ull << 20;
// Upper bound on one H5Dwrite, below MPI-IO's 2 GiB per-call limit.
constexpr std::uint64_t kMaxWriteBytes = 1ull << 30;

class Hdf5Writer final : public CheckpointWriter {
 public:
  Hdf5Writer(const Communicator& comm, const fs::path& path, OutputSpec spec, WriterMode mode)
      : CheckpointWriter(comm, path, std::move(spec)), partial_(path, false, spec_.overwrite) {
    h5::silence_library_errors();
    try {
      if (mode == WriterMode::Resume) {
        on_root(comm_, [&] { partial_.prepare_resume(); });
        collectively(comm_, [&] { open_layout(); });
        return;
      }
      on_root(comm_, [&] { partial_.prepare(); });
      created_partial_ = true;
      collectively(comm_, [&] { create_layout(); });
      // Put every dataset's metadata on disk now: raw data writes never touch
      // it again, so a run killed later leaves a file --resume can reopen.
      collectively(comm_, [&] {
        h5::check(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL), partial_.partial_path().string() + ": flush");
      });
    } catch (...) {
      // No destructor runs for a constructor that throws: remove the partial
      // file it created (every rank has the same exception, from
      // collectively/on_root, so all of them get here). A partial output kept
      // for --resume stays.
      if (created_partial_) discard();
      finished_ = true;
      throw;
    }
  }

  ~Hdf5Writer() override {
    if (!finished_ && comm_.is_root()) partial_.discard();
  }

  void write_rows_impl(std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                       std::span<const std::byte> data) override {
    transfer_rows(index, first_row, rows, const_cast<std::byte*>(data.data()), data.size(), true);
  }

  void read_back_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows, std::span<std::byte> dst) override {
    transfer_rows(index, first_row, rows, dst.data(), dst.size(), false);
  }

  void write_aux_block_impl(std::size_t index, std::uint64_t offset, std::span<const std::byte> data) override {
    if (data.empty()) return;
    const std::string what = fmt::format("{}: write file '{}'", path_.string(), printable(spec_.aux_files[index].name));
    const hid_t dset = aux_datasets_.at(index).get();
    const hsize_t start = offset, count = data.size();
    h5::Handle file_space = h5::dataspace(H5Dget_space(dset), what);
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr), what);
    h5::Handle mem_space = h5::dataspace(H5Screate_simple(1, &count, nullptr), what);
    check_write(H5Dwrite(dset, H5T_NATIVE_UCHAR, mem_space.get(), file_space.get(), H5P_DEFAULT, data.data()), what);
  }

  void commit() override {
    collectively(comm_, [&] { close_all(); });
    on_root(comm_, [&] { partial_.commit(); });
    finished_ = true;
  }

  void discard() override {
    try {
      close_all();
    } catch (...) {
    }
    comm_.barrier();  // every rank has stopped writing
    if (comm_.is_root()) partial_.discard();
    comm_.barrier();  // nobody returns before the partial output is gone
    finished_ = true;
  }

 private:
  // Writes (or reads back) rows of a tensor, independently, in pieces below
  // MPI-IO's per-call limit.
  void transfer_rows(std::size_t index, std::uint64_t first_row, std::uint64_t rows, std::byte* data, std::size_t bytes,
                     bool write) {
    const TensorInfo& t = spec_.tensors.at(index);
    checked_row_range(path_, t, first_row, rows, bytes);
    if (bytes == 0) return;
    const std::string what =
        fmt::format("{}: tensor '{}': {}", path_.string(), printable(t.name), write ? "write" : "read back");
    const hid_t dset = datasets_[index].get();
    const hid_t type = types_[index].get();
    auto transfer = [&](hid_t mem_space, hid_t file_space, std::byte* p) {
      if (write) check_write(H5Dwrite(dset, type, mem_space, file_space, H5P_DEFAULT, p), what);
      else h5::check(H5Dread(dset, type, mem_space, file_space, H5P_DEFAULT, p), what);
    };
    if (t.shape.empty()) {
      transfer(H5S_ALL, H5S_ALL, data);
      return;
    }
    const std::uint64_t rb = row_bytes(t);
    const std::uint64_t rows_per_call = std::max<std::uint64_t>(1, kMaxWriteBytes / rb);
    h5::Handle file_space = h5::dataspace(H5Dget_space(dset), what);
    for (std::uint64_t done = 0; done < rows; done += rows_per_call) {
      std::vector<hsize_t> start(t.shape.size(), 0), count(t.shape.begin(), t.shape.end());
      start[0] = first_row + done;
      count[0] = std::min(rows_per_call, rows - done);
      h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), what);
      h5::Handle mem_space = h5::dataspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), what);
      transfer(mem_space.get(), file_space.get(), data + done * rb);
    }
  }

  // Like h5::check for a write. HDF5's MPI-IO driver reports a failed write
  // without its errno ("file write failed"), so a full filesystem is
  // recognised by its free space, and said so.
  void check_write(herr_t status, const std::string& what) const {
    if (status >= 0) return;
    const std::string hdf5_error = h5::take_error_stack();
    const fs::path dir = fs::absolute(partial_.partial_path()).parent_path();
    struct statvfs fs_stats {};
    const bool full = ::statvfs(dir.c_str(), &fs_stats) == 0 && fs_stats.f_bavail == 0;
    if (full) throw SystemError(fmt::format("{}: {} ({})", what, std::strerror(ENOSPC), hdf5_error));
    throw Hdf5Error(fmt::format("{}: {}", what, hdf5_error));
  }

  h5::Handle mpio_access(const std::string& name) const {
    h5::Handle fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS), name);
    h5::check(H5Pset_fapl_mpio(fapl.get(), comm_.get(), MPI_INFO_NULL), name + ": use MPI-IO");
    h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), name);
    h5::check(H5Pset_all_coll_metadata_ops(fapl.get(), true), name);
    h5::check(H5Pset_coll_metadata_write(fapl.get(), true), name);
    return fapl;
  }

  // --resume: reopens the partial file and its datasets as created.
  void open_layout() {
    const std::string name = partial_.partial_path().string();
    h5::Handle fapl = mpio_access(name);
    file_ = h5::file(H5Fopen(name.c_str(), H5F_ACC_RDWR, fapl.get()), name + ": cannot reopen to resume");
    tensors_group_ = h5::group(H5Gopen2(file_.get(), kTensorsGroup, H5P_DEFAULT), name + ": /tensors");
    files_group_ = h5::group(H5Gopen2(file_.get(), kFilesGroup, H5P_DEFAULT), name + ": /files");
    for (const auto& t : spec_.tensors) {
      types_.push_back(h5::file_type(t.dtype));
      datasets_.push_back(h5::dataset(H5Dopen2(tensors_group_.get(), h5::escape_link_name(t.name).c_str(), H5P_DEFAULT),
                                      fmt::format("{}: tensor '{}': cannot reopen to resume", name, printable(t.name))));
    }
    for (const auto& a : spec_.aux_files)
      aux_datasets_.push_back(h5::dataset(H5Dopen2(files_group_.get(), h5::escape_link_name(a.name).c_str(), H5P_DEFAULT),
                                          fmt::format("{}: file '{}': cannot reopen to resume", name, printable(a.name))));
  }

  static std::vector<hsize_t> chunk_dims(const TensorInfo& t) {
    // Whole trailing dims, as many leading rows as fit the target; split
    // further dims only when a single row is already too large.
    std::vector<hsize_t> chunk(t.shape.begin(), t.shape.end());
    std::uint64_t bytes = t.nbytes();
    for (std::size_t d = 0; d < chunk.size() && bytes > kChunkTargetBytes; ++d) {
      const std::uint64_t inner = bytes / chunk[d];
      chunk[d] = std::max<std::uint64_t>(1, kChunkTargetBytes / std::max<std::uint64_t>(inner, 1));
      bytes = inner * chunk[d];
    }
    return chunk;
  }

  void create_layout() {
    const std::string name = path_.string();
    h5::Handle fapl = mpio_access(name);
    // No object timestamps anywhere: the same plan gives the same bytes,
    // whatever the rank count or the day (and a resumed file matches).
    h5::Handle fcpl = h5::plist(H5Pcreate(H5P_FILE_CREATE), name);
    h5::check(H5Pset_obj_track_times(fcpl.get(), false), name);
    file_ = h5::file(H5Fcreate(partial_.partial_path().c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()),
                     fmt::format("{}: cannot create HDF5 file", partial_.partial_path().string()));
    const hid_t f = file_.get();
    h5::write_string_attribute(f, kFormatAttr, kFormatName);
    h5::write_int_attribute(f, kFormatVersionAttr, kFormatVersion);
    h5::write_string_attribute(f, kVersionAttr, SOUPKIT_VERSION);
    h5::write_string_attribute(f, kMetadataAttr, nlohmann::json(spec_.metadata).dump());
    h5::write_string_attribute(f, kProvenanceAttr, spec_.provenance.dump());

    h5::Handle gcpl = h5::plist(H5Pcreate(H5P_GROUP_CREATE), name);
    h5::check(H5Pset_link_creation_order(gcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED), name);
    h5::check(H5Pset_obj_track_times(gcpl.get(), false), name);
    tensors_group_ = h5::group(H5Gcreate2(f, kTensorsGroup, H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), name + ": /tensors");
    files_group_ = h5::group(H5Gcreate2(f, kFilesGroup, H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), name + ": /files");

    for (const auto& t : spec_.tensors) {
      const std::string what = fmt::format("{}: tensor '{}': create dataset", name, printable(t.name));
      types_.push_back(h5::file_type(t.dtype));
      const std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
      h5::Handle space = t.shape.empty() ? h5::dataspace(H5Screate(H5S_SCALAR), what)
                                         : h5::dataspace(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what);
      h5::Handle dcpl = h5::plist(H5Pcreate(H5P_DATASET_CREATE), what);
      // Every byte is written by its owner: skip HDF5's fill pass.
      h5::check(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), what);
      h5::check(H5Pset_obj_track_times(dcpl.get(), false), what);
      if (!t.shape.empty() && t.numel() > 0) {
        const auto chunk = chunk_dims(t);
        h5::check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what);
      }
      datasets_.push_back(h5::dataset(H5Dcreate2(tensors_group_.get(), h5::escape_link_name(t.name).c_str(),
                                                 types_.back().get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                                      what));
      h5::write_string_attribute(datasets_.back().get(), kNameAttr, t.name);
      h5::write_string_attribute(datasets_.back().get(), kDTypeAttr, dtype_name(t.dtype));
    }
    for (const auto& a : spec_.aux_files) {
      const std::string what = fmt::format("{}: file '{}': create dataset", name, printable(a.name));
      const hsize_t n = a.size;
      h5::Handle space = h5::dataspace(H5Screate_simple(1, &n, nullptr), what);
      h5::Handle dcpl = h5::plist(H5Pcreate(H5P_DATASET_CREATE), what);
      h5::check(H5Pset_obj_track_times(dcpl.get(), false), what);
      aux_datasets_.push_back(h5::dataset(H5Dcreate2(files_group_.get(), h5::escape_link_name(a.name).c_str(),
                                                     H5T_STD_U8LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                                          what));
      h5::write_string_attribute(aux_datasets_.back().get(), kNameAttr, a.name);
    }
  }

  void close_all() {
    const std::string name = partial_.partial_path().string();
    for (std::size_t i = 0; i < datasets_.size(); ++i)
      datasets_[i].close(fmt::format("{}: tensor '{}': close", name, printable(spec_.tensors[i].name)));
    for (std::size_t i = 0; i < aux_datasets_.size(); ++i)
      aux_datasets_[i].close(fmt::format("{}: file '{}': close", name, printable(spec_.aux_files[i].name)));
    types_.clear();
    tensors_group_.close(name + ": close /tensors");
    files_group_.close(name + ": close /files");
    file_.close(name + ": close");
  }

  PartialOutput partial_;
  h5::Handle file_, tensors_group_, files_group_;
  std::vector<h5::Handle> types_, datasets_, aux_datasets_;
  bool created_partial_ = false;  // this writer made the partial file (not a resume)
  bool finished_ = false;
};

}  // namespace

std::unique_ptr<CheckpointWriter> create_hdf5_writer(const Communicator& comm, const fs::path& path, OutputSpec spec,
                                                     WriterMode mode) {
  return std::make_unique<Hdf5Writer>(comm, path, std::move(spec), mode);
}

}  // namespace soupkit::detail
