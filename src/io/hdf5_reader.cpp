// Reads soupkit's HDF5 checkpoint layout: /tensors/<escaped name> datasets
// (attributes "name" and "dtype"), /files/<name> byte datasets, and file
// attributes for format, metadata and provenance. Each rank reads on its own
// (no collective calls), so reading never needs the MPI-IO driver.
#include "checkpoint_formats.hpp"
#include "hdf5_layout.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/io/hdf5.hpp"
#include "soupkit/util/message_text.hpp"
#include "soupkit/util/json_input.hpp"

#include <algorithm>

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

// Soft links could make one dataset count as several (its storage checked
// once, read many times) and external links would read other files: only
// hard links are followed.
void require_hard_link(hid_t location, const std::string& link, const std::string& where) {
  H5L_info_t info{};
  h5::check(H5Lget_info(location, link.c_str(), &info, H5P_DEFAULT), where + ": look up link");
  SOUPKIT_INPUT_ERROR_IF(info.type != H5L_TYPE_HARD,
                         "{}: is a soft or external link; soupkit reads only objects stored in this file", where);
}

// Which byte order a type has, for messages.
const char* order_name(hid_t type) {
  switch (H5Tget_order(type)) {
    case H5T_ORDER_LE: return "little-endian";
    case H5T_ORDER_BE: return "big-endian";
    default: return "mixed-endian";
  }
}

// "big-endian 4-byte float (sign 31, exponent 23..30, mantissa 0..22, bias 127)" etc., for messages.
std::string describe_type(hid_t type) {
  const std::size_t size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_FLOAT: {
      size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
      H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
      return fmt::format("{} {}-byte float (sign {}, exponent {}..{}, mantissa {}..{}, bias {})", order_name(type), size,
                         spos, epos, epos + esize - 1, mpos, mpos + msize - 1, H5Tget_ebias(type));
    }
    case H5T_INTEGER:
      return fmt::format("{} {}-byte {} integer", order_name(type), size,
                         H5Tget_sign(type) == H5T_SGN_NONE ? "unsigned" : "signed");
    case H5T_ENUM: return fmt::format("{}-byte enum", size);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length sequence";
    case H5T_REFERENCE: return "reference";
    case H5T_OPAQUE: return "opaque";
    case H5T_BITFIELD: return "bitfield";
    default: return "unknown type";
  }
}

// Same number format as `want` in every respect but, possibly, byte order:
// then HDF5's conversion to `want` only reorders bytes, which is exact.
bool same_format_any_order(hid_t stored, hid_t want) {
  const H5T_class_t cls = H5Tget_class(want);
  if (H5Tget_class(stored) != cls || H5Tget_size(stored) != H5Tget_size(want)) return false;
  const H5T_order_t order = H5Tget_order(stored);
  if (order != H5T_ORDER_LE && order != H5T_ORDER_BE) return false;
  if (H5Tget_precision(stored) != H5Tget_precision(want) || H5Tget_offset(stored) != H5Tget_offset(want)) return false;
  if (cls == H5T_INTEGER) return H5Tget_sign(stored) == H5Tget_sign(want);
  size_t s[5] = {}, w[5] = {};
  H5Tget_fields(stored, &s[0], &s[1], &s[2], &s[3], &s[4]);
  H5Tget_fields(want, &w[0], &w[1], &w[2], &w[3], &w[4]);
  return std::equal(s, s + 5, w) && H5Tget_ebias(stored) == H5Tget_ebias(want) &&
         H5Tget_norm(stored) == H5Tget_norm(want);
}

// The memory type a tensor of `dtype` stored as `stored` is read through, or
// an empty handle if that conversion would not be exact. Tensors are read
// through soupkit's own (little-endian) types, so HDF5 converts byte order;
// BOOL (one byte, an enum or an integer) is copied as stored.
h5::Handle memory_type_for(hid_t stored, DType dtype) {
  if (dtype == DType::BOOL) {
    const H5T_class_t cls = H5Tget_class(stored);
    if (H5Tget_size(stored) != 1 || (cls != H5T_ENUM && cls != H5T_INTEGER)) return {};
    return h5::datatype(H5Tcopy(stored), "copy type");
  }
  h5::Handle want = h5::file_type(dtype);
  if (!same_format_any_order(stored, want.get())) return {};
  return want;
}

// Refuses data soupkit would not read as stored bytes of this file:
// filtered (compressed) data, data in external files, virtual datasets
// (data in other files).
void refuse_filtered_or_foreign_storage(hid_t dset, const std::string& where) {
  h5::Handle dcpl = h5::plist(H5Dget_create_plist(dset), where + ": creation properties");
  const int filters = H5Pget_nfilters(dcpl.get());
  h5::check(static_cast<herr_t>(filters), where + ": filters");
  if (filters > 0) {
    char filter_name[64] = {};
    unsigned flags = 0, config = 0;
    std::size_t nvalues = 0;
    H5Pget_filter2(dcpl.get(), 0, &flags, &nvalues, nullptr, sizeof filter_name, filter_name, &config);
    throw InputError(fmt::format("{}: dataset is filtered (HDF5 filter '{}'); soupkit reads only unfiltered, "
                                 "uncompressed datasets",
                                 where, printable(filter_name)));
  }
  SOUPKIT_INPUT_ERROR_IF(H5Pget_external_count(dcpl.get()) != 0,
                         "{}: dataset keeps its data in external files; not supported", where);
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  SOUPKIT_INPUT_ERROR_IF(layout != H5D_CONTIGUOUS && layout != H5D_CHUNKED && layout != H5D_COMPACT,
                         "{}: dataset has an unsupported storage layout (virtual or unknown)", where);
}

// Refuses a dataset whose declared bytes are not all stored (chunks never
// written, contiguous space never allocated), so nothing is ever sized by
// what a file only claims. Returns the bytes of storage it uses.
std::uint64_t checked_storage(hid_t dset, std::uint64_t declared_bytes, const std::string& where) {
  refuse_filtered_or_foreign_storage(dset, where);
  const std::uint64_t stored = H5Dget_storage_size(dset);
  SOUPKIT_INPUT_ERROR_IF(stored < declared_bytes,
                         "{}: dataset declares {} bytes but only {} bytes of it are stored (unwritten or truncated)",
                         where, declared_bytes, stored);
  return stored;
}

class Hdf5Reader final : public CheckpointReader {
 public:
  explicit Hdf5Reader(const fs::path& path) : CheckpointReader(path) {
    h5::silence_library_errors();
    const std::string name = path.string();
    file_size_ = File::open_read(path).size();
    // Readers take no file lock: locks fail on some shared filesystems and
    // soupkit never reads a file that is still being written.
    h5::Handle fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS), name);
    h5::check(H5Pset_file_locking(fapl.get(), false, true), name);
    const hid_t fid = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
    if (fid < 0) throw InputError(fmt::format("{}: cannot open as HDF5: {}", name, h5::take_error_stack()));
    file_ = h5::Handle(fid, H5Fclose);
    try {
      SOUPKIT_INPUT_ERROR_IF(!h5::has_attribute(fid, kFormatAttr) || string_attribute(fid, kFormatAttr, name) != kFormatName,
                             "{}: not a soupkit checkpoint (HDF5 file without {}=\"{}\")", name, kFormatAttr, kFormatName);
      const long long version = int_attribute(fid, kFormatVersionAttr, name);
      SOUPKIT_INPUT_ERROR_IF(version > kFormatVersion,
                             "{}: soupkit checkpoint format version {} is newer than this soupkit understands ({})", name,
                             version, kFormatVersion);
      if (h5::has_attribute(fid, kMetadataAttr)) {
        const std::string what = fmt::format("{}: attribute {}", name, kMetadataAttr);
        const auto metadata = parse_untrusted_json(string_attribute(fid, kMetadataAttr, name), what);
        SOUPKIT_INPUT_ERROR_IF(!metadata.is_object(), "{}: not a JSON object", what);
        for (const auto& [key, value] : metadata.items()) {
          SOUPKIT_INPUT_ERROR_IF(!value.is_string(), "{}: the value of '{}' is not a string", what, excerpt(key));
          metadata_[key] = value.get<std::string>();
        }
      }
      SOUPKIT_INPUT_ERROR_IF(h5::check_tri(H5Lexists(fid, kTensorsGroup, H5P_DEFAULT), "look up /tensors") <= 0,
                             "{}: not a soupkit checkpoint (no /{} group)", name, kTensorsGroup);
      require_hard_link(fid, kTensorsGroup, name + ": /tensors");
      tensors_group_ = h5::group(H5Gopen2(fid, kTensorsGroup, H5P_DEFAULT), name + ": open /tensors");
      for (const auto& link : link_names(tensors_group_.get(), name + ": list /tensors")) load_tensor(link);
      if (h5::check_tri(H5Lexists(fid, kFilesGroup, H5P_DEFAULT), "look up /files") > 0) {
        require_hard_link(fid, kFilesGroup, name + ": /files");
        files_group_ = h5::group(H5Gopen2(fid, kFilesGroup, H5P_DEFAULT), name + ": open /files");
        for (const auto& link : link_names(files_group_.get(), name + ": list /files")) load_aux_file(link);
        check_aux_files(aux_, name + ": /files");
      }
    } catch (const Hdf5Error& e) {
      throw InputError(fmt::format("{}: unreadable soupkit checkpoint: {}", name, e.what()));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("{}: bad {} attribute: {}", name, kMetadataAttr, json_error_text(e)));
    }
  }

  std::string_view format_name() const override { return "soupkit HDF5"; }

  void read_rows(const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                 std::span<std::byte> dst) const override {
    const std::uint64_t rb = row_bytes(t);
    SOUPKIT_ERROR_IF(first_row + rows > row_count(t) || dst.size() != rows * rb, "{}: tensor '{}': bad row range [{}, {})",
                     path_.string(), printable(t.name), first_row, first_row + rows);
    if (dst.empty()) return;
    const std::size_t i = index_of(t);
    const std::string what = fmt::format("{}: tensor '{}': read", locations_[i], printable(t.name));
    const hid_t dset = datasets_[i].get();
    const hid_t mem_type = memory_types_[i].get();
    if (t.shape.empty()) {
      h5::check(H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst.data()), what);
      return;
    }
    std::vector<hsize_t> start(t.shape.size(), 0), count(t.shape.begin(), t.shape.end());
    start[0] = first_row;
    count[0] = rows;
    read_hyperslab(dset, mem_type, start, count, dst.data(), what);
  }

  std::vector<AuxFileInfo> aux_files() const override { return aux_; }

  void read_aux_block(const std::string& name, std::uint64_t offset, std::span<std::byte> dst) const override {
    const auto it = std::find_if(aux_.begin(), aux_.end(), [&](const AuxFileInfo& f) { return f.name == name; });
    SOUPKIT_INPUT_ERROR_IF(it == aux_.end(), "{}: no file '{}' stored", path_.string(), printable(name));
    const std::size_t i = static_cast<std::size_t>(it - aux_.begin());
    const std::string what = fmt::format("{}: /files/{}: read", path_.string(), printable(aux_links_[i]));
    SOUPKIT_ERROR_IF(offset > it->size || dst.size() > it->size - offset, "{}: bytes [{}, {}) are past its size {}", what,
                     offset, offset + dst.size(), it->size);
    if (dst.empty()) return;
    h5::Handle type = h5::datatype(H5Dget_type(aux_datasets_[i].get()), what);  // one byte: copied as stored
    read_hyperslab(aux_datasets_[i].get(), type.get(), {offset}, {dst.size()}, dst.data(), what);
  }

  std::string location(const TensorInfo& t) const override { return locations_.at(index_of(t)); }

 private:
  // Runs `read`; any failure names `where` (the file and object).
  template <class F>
  static auto named(const std::string& where, F read) {
    try {
      return read();
    } catch (const Error& e) {
      throw InputError(fmt::format("{}: {}", where, e.what()));
    }
  }
  static std::string string_attribute(hid_t object, const char* attr, const std::string& where) {
    return named(where, [&] { return h5::read_string_attribute(object, attr); });
  }
  static long long int_attribute(hid_t object, const char* attr, const std::string& where) {
    return named(where, [&] { return h5::read_int_attribute(object, attr); });
  }

  static void read_hyperslab(hid_t dset, hid_t mem_type, const std::vector<hsize_t>& start,
                             const std::vector<hsize_t>& count, std::byte* dst, const std::string& what) {
    h5::Handle file_space = h5::dataspace(H5Dget_space(dset), what);
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), what);
    h5::Handle mem_space = h5::dataspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), what);
    h5::check(H5Dread(dset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, dst), what);
  }

  // Checks a dataset's storage and adds it to the file's total, which no
  // more than the file itself can hold.
  void account_storage(hid_t dset, std::uint64_t declared_bytes, const std::string& where) {
    storage_total_ += checked_storage(dset, declared_bytes, where);
    SOUPKIT_INPUT_ERROR_IF(storage_total_ > file_size_,
                           "{}: datasets up to this one claim {} bytes of storage in a file of {} bytes", where,
                           storage_total_, file_size_);
  }

  static std::vector<hsize_t> simple_dims(hid_t dset, const std::string& where) {
    h5::Handle space = h5::dataspace(H5Dget_space(dset), where);
    const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
    SOUPKIT_INPUT_ERROR_IF(cls != H5S_SIMPLE && cls != H5S_SCALAR, "{}: dataset has a null or unknown dataspace", where);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    h5::check(static_cast<herr_t>(rank), where);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    return dims;
  }

  void load_tensor(const std::string& link) {
    const std::string where = fmt::format("{}: /tensors/{}", path_.string(), printable(link));
    require_hard_link(tensors_group_.get(), link, where);
    h5::Handle d = h5::dataset(H5Dopen2(tensors_group_.get(), link.c_str(), H5P_DEFAULT), where + ": open");
    SOUPKIT_INPUT_ERROR_IF(!h5::has_attribute(d.get(), kNameAttr) || !h5::has_attribute(d.get(), kDTypeAttr),
                           "{}: dataset lacks the \"name\"/\"dtype\" attributes", where);
    TensorInfo info;
    info.name = string_attribute(d.get(), kNameAttr, where);
    const std::string dtype_text = string_attribute(d.get(), kDTypeAttr, where);
    const auto dtype = parse_dtype(dtype_text);
    SOUPKIT_INPUT_ERROR_IF(!dtype, "{}: tensor '{}': unknown dtype \"{}\"", where, printable(info.name),
                           printable(dtype_text));
    info.dtype = *dtype;
    h5::Handle type = h5::datatype(H5Dget_type(d.get()), where);
    h5::Handle mem_type = memory_type_for(type.get(), info.dtype);
    SOUPKIT_INPUT_ERROR_IF(!mem_type, "{}: tensor '{}': stored HDF5 type ({}) does not hold {} exactly", where,
                           printable(info.name), describe_type(type.get()), dtype_text);
    const auto dims = simple_dims(d.get(), where);
    info.shape.assign(dims.begin(), dims.end());
    const auto numel = checked_numel(info.shape);
    SOUPKIT_INPUT_ERROR_IF(!numel || *numel > UINT64_MAX / dtype_size(info.dtype), "{}: tensor '{}': shape {} too large",
                           where, printable(info.name), shape_string(info.shape));
    account_storage(d.get(), info.nbytes(), where);
    datasets_.push_back(std::move(d));
    memory_types_.push_back(std::move(mem_type));
    locations_.push_back(path_.string() + ":/tensors/" + printable(link));
    add_tensor(std::move(info), where);
  }

  // A carried file: a dataset of bytes (any 1-byte integer type, one
  // dimension) with its file name in the "name" attribute.
  void load_aux_file(const std::string& link) {
    const std::string where = fmt::format("{}: /files/{}", path_.string(), printable(link));
    require_hard_link(files_group_.get(), link, where);
    h5::Handle d = h5::dataset(H5Dopen2(files_group_.get(), link.c_str(), H5P_DEFAULT), where + ": open");
    SOUPKIT_INPUT_ERROR_IF(!h5::has_attribute(d.get(), kNameAttr), "{}: dataset lacks the \"name\" attribute", where);
    const std::string file_name = string_attribute(d.get(), kNameAttr, where);
    check_aux_file_name(file_name, where);
    h5::Handle type = h5::datatype(H5Dget_type(d.get()), where);
    SOUPKIT_INPUT_ERROR_IF(H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1,
                           "{}: carried file '{}' is stored as {}, not as bytes", where, printable(file_name),
                           describe_type(type.get()));
    const auto dims = simple_dims(d.get(), where);
    SOUPKIT_INPUT_ERROR_IF(dims.size() != 1, "{}: carried file '{}' is not a one-dimensional dataset", where,
                           printable(file_name));
    account_storage(d.get(), dims[0], where);
    aux_.push_back({file_name, dims[0]});
    aux_links_.push_back(link);
    aux_datasets_.push_back(std::move(d));
  }

  std::uint64_t file_size_ = 0;
  std::uint64_t storage_total_ = 0;  // storage of every dataset checked so far
  h5::Handle file_, tensors_group_, files_group_;
  std::vector<h5::Handle> datasets_, memory_types_;  // parallel to tensors_
  std::vector<std::string> locations_;               // parallel to tensors_
  std::vector<AuxFileInfo> aux_;
  std::vector<std::string> aux_links_;     // parallel to aux_
  std::vector<h5::Handle> aux_datasets_;   // parallel to aux_
};

}  // namespace

std::unique_ptr<CheckpointReader> open_hdf5_checkpoint(const fs::path& path) {
  return std::make_unique<Hdf5Reader>(path);
}

}  // namespace soupkit::detail
