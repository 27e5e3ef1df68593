// Reads soupkit's HDF5 checkpoint layout: /tensors/<escaped name> datasets
// (attributes "name" and "dtype"), /files/<name> byte datasets, and file
// attributes for format, metadata and provenance. Each rank reads on its own
// (no collective calls), so reading never needs the MPI-IO driver.
#include "checkpoint_formats.hpp"
#include "hdf5_layout.hpp"
#include "soupkit/error.hpp"
#include "soupkit/hdf5.hpp"

namespace soupkit::detail {
namespace {

using namespace h5layout;

// Names of a group's links in creation order (name order if not tracked).
std::vector<std::string> link_names(hid_t group, const std::string& what) {
  H5G_info_t info{};
  h5::check(H5Gget_info(group, &info), what);
  H5_index_t index = H5_INDEX_CRT_ORDER;
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t len = H5Lget_name_by_idx(group, ".", index, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (len < 0 && i == 0 && index == H5_INDEX_CRT_ORDER) {
      h5::take_error_stack();
      index = H5_INDEX_NAME;
      len = H5Lget_name_by_idx(group, ".", index, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    }
    h5::check(static_cast<herr_t>(len < 0 ? -1 : 0), what);
    std::string name(static_cast<std::size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(group, ".", index, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(static_cast<std::size_t>(len));
    names.push_back(std::move(name));
  }
  return names;
}

// Does the stored HDF5 type agree with the dtype the attribute claims?
bool type_matches(hid_t type, DType dtype) {
  const H5T_class_t cls = H5Tget_class(type);
  if (H5Tget_size(type) != dtype_size(dtype)) return false;
  switch (dtype) {
    case DType::F64: case DType::F32: case DType::F16: case DType::BF16: {
      if (cls != H5T_FLOAT) return false;
      size_t spos, epos, esize, mpos, msize;
      H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
      const size_t want_m = dtype == DType::F64 ? 52 : dtype == DType::F32 ? 23 : dtype == DType::F16 ? 10 : 7;
      return msize == want_m;
    }
    case DType::BOOL: return cls == H5T_ENUM || cls == H5T_INTEGER;
    default: return cls == H5T_INTEGER;
  }
}

class Hdf5Reader final : public CheckpointReader {
 public:
  explicit Hdf5Reader(const fs::path& path) : CheckpointReader(path) {
    h5::silence_library_errors();
    const std::string name = path.string();
    // Readers take no file lock: locks fail on some shared filesystems and
    // soupkit never reads a file that is still being written.
    h5::Handle fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS), name);
    h5::check(H5Pset_file_locking(fapl.get(), false, true), name);
    const hid_t fid = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
    if (fid < 0) throw InputError(fmt::format("{}: cannot open as HDF5: {}", name, h5::take_error_stack()));
    file_ = h5::Handle(fid, H5Fclose);
    try {
      SOUPKIT_INPUT_ERROR_IF(!h5::has_attribute(fid, kFormatAttr) || h5::read_string_attribute(fid, kFormatAttr) != kFormatName,
                             "{}: not a soupkit checkpoint (HDF5 file without {}=\"{}\")", name, kFormatAttr, kFormatName);
      const long long version = h5::read_int_attribute(fid, kFormatVersionAttr);
      SOUPKIT_INPUT_ERROR_IF(version > kFormatVersion,
                             "{}: soupkit checkpoint format version {} is newer than this soupkit understands ({})", name,
                             version, kFormatVersion);
      if (h5::has_attribute(fid, kMetadataAttr))
        metadata_ = nlohmann::json::parse(h5::read_string_attribute(fid, kMetadataAttr)).get<StringMap>();
      SOUPKIT_INPUT_ERROR_IF(h5::check_tri(H5Lexists(fid, kTensorsGroup, H5P_DEFAULT), "look up /tensors") <= 0,
                             "{}: not a soupkit checkpoint (no /{} group)", name, kTensorsGroup);
      tensors_group_ = h5::group(H5Gopen2(fid, kTensorsGroup, H5P_DEFAULT), name + ": open /tensors");
      for (const auto& link : link_names(tensors_group_.get(), name + ": list /tensors")) load_tensor(link);
      if (h5::check_tri(H5Lexists(fid, kFilesGroup, H5P_DEFAULT), "look up /files") > 0) {
        files_group_ = h5::group(H5Gopen2(fid, kFilesGroup, H5P_DEFAULT), name + ": open /files");
        for (const auto& link : link_names(files_group_.get(), name + ": list /files")) {
          h5::Handle d = h5::dataset(H5Dopen2(files_group_.get(), link.c_str(), H5P_DEFAULT), name + ": open /files/" + link);
          const std::string file_name = h5::read_string_attribute(d.get(), kNameAttr);
          const hssize_t n = H5Sget_simple_extent_npoints(h5::dataspace(H5Dget_space(d.get()), "space").get());
          aux_.push_back({file_name, static_cast<std::uint64_t>(n)});
          aux_links_.push_back(link);
        }
      }
    } catch (const Hdf5Error& e) {
      throw InputError(fmt::format("{}: unreadable soupkit checkpoint: {}", name, e.what()));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("{}: bad {} attribute: {}", name, kMetadataAttr, e.what()));
    }
  }

  std::string_view format_name() const override { return "soupkit HDF5"; }

  void read_rows(const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                 std::span<std::byte> dst) const override {
    const std::uint64_t rb = row_bytes(t);
    SOUPKIT_ERROR_IF(first_row + rows > row_count(t) || dst.size() != rows * rb,
                     "{}: tensor '{}': bad row range [{}, {})", path_.string(), t.name, first_row, first_row + rows);
    if (dst.empty()) return;
    const std::string what = fmt::format("{}: tensor '{}': read", path_.string(), t.name);
    const hid_t dset = datasets_[index_of(t)].get();
    h5::Handle type = h5::datatype(H5Dget_type(dset), what);
    if (t.shape.empty()) {
      h5::check(H5Dread(dset, type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, dst.data()), what);
      return;
    }
    h5::Handle file_space = h5::dataspace(H5Dget_space(dset), what);
    std::vector<hsize_t> start(t.shape.size(), 0), count(t.shape.begin(), t.shape.end());
    start[0] = first_row;
    count[0] = rows;
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), what);
    h5::Handle mem_space = h5::dataspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), what);
    h5::check(H5Dread(dset, type.get(), mem_space.get(), file_space.get(), H5P_DEFAULT, dst.data()), what);
  }

  std::vector<AuxFileInfo> aux_files() const override { return aux_; }

  std::string read_aux(const std::string& name) const override {
    for (std::size_t i = 0; i < aux_.size(); ++i) {
      if (aux_[i].name != name) continue;
      std::string contents(aux_[i].size, '\0');
      if (!contents.empty()) {
        h5::Handle d = h5::dataset(H5Dopen2(files_group_.get(), aux_links_[i].c_str(), H5P_DEFAULT), "open file");
        h5::check(H5Dread(d.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, contents.data()),
                  fmt::format("{}: read /files/{}", path_.string(), name));
      }
      return contents;
    }
    throw InputError(fmt::format("{}: no file '{}' stored", path_.string(), name));
  }

  std::string location(const TensorInfo& t) const override { return locations_.at(index_of(t)); }

 private:
  void load_tensor(const std::string& link) {
    const std::string where = fmt::format("{}: /tensors/{}", path_.string(), link);
    h5::Handle d = h5::dataset(H5Dopen2(tensors_group_.get(), link.c_str(), H5P_DEFAULT), where + ": open");
    SOUPKIT_INPUT_ERROR_IF(!h5::has_attribute(d.get(), kNameAttr) || !h5::has_attribute(d.get(), kDTypeAttr),
                           "{}: dataset lacks the \"name\"/\"dtype\" attributes", where);
    TensorInfo info;
    info.name = h5::read_string_attribute(d.get(), kNameAttr);
    const std::string dtype_text = h5::read_string_attribute(d.get(), kDTypeAttr);
    const auto dtype = parse_dtype(dtype_text);
    SOUPKIT_INPUT_ERROR_IF(!dtype, "{}: tensor '{}': unknown dtype \"{}\"", where, info.name, dtype_text);
    info.dtype = *dtype;
    h5::Handle type = h5::datatype(H5Dget_type(d.get()), where);
    SOUPKIT_INPUT_ERROR_IF(!type_matches(type.get(), info.dtype), "{}: tensor '{}': stored HDF5 type does not hold {}",
                           where, info.name, dtype_text);
    h5::Handle space = h5::dataspace(H5Dget_space(d.get()), where);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    h5::check(static_cast<herr_t>(rank), where);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    info.shape.assign(dims.begin(), dims.end());
    SOUPKIT_INPUT_ERROR_IF(!checked_numel(info.shape), "{}: tensor '{}': shape too large", where, info.name);
    datasets_.push_back(std::move(d));
    add_tensor(std::move(info), where);
    locations_.push_back(path_.string() + ":/tensors/" + link);
  }

  h5::Handle file_, tensors_group_, files_group_;
  std::vector<h5::Handle> datasets_;  // parallel to tensors_
  std::vector<std::string> locations_;  // parallel to tensors_
  std::vector<AuxFileInfo> aux_;
  std::vector<std::string> aux_links_;
};

}  // namespace

std::unique_ptr<CheckpointReader> open_hdf5_checkpoint(const fs::path& path) {
  return std::make_unique<Hdf5Reader>(path);
}

}  // namespace soupkit::detail
