#include "soupkit/io/hdf5.hpp"

#include "soupkit/util/error.hpp"

#include <vector>

namespace soupkit::h5 {

void silence_library_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::string take_error_stack() {
  std::vector<std::string> messages;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* err, void* data) -> herr_t {
        auto* out = static_cast<std::vector<std::string>*>(data);
        if (err->desc && *err->desc && out->size() < 3) out->emplace_back(err->desc);
        return 0;
      },
      &messages);
  H5Eclear2(H5E_DEFAULT);
  std::string text;
  for (const auto& m : messages) text += (text.empty() ? "" : "; ") + m;
  return text.empty() ? "HDF5 call failed" : text;
}

hid_t check(hid_t id, std::string_view what) {
  if (id < 0) throw Hdf5Error(fmt::format("{}: {}", what, take_error_stack()));
  return id;
}

herr_t check(herr_t status, std::string_view what) {
  if (status < 0) throw Hdf5Error(fmt::format("{}: {}", what, take_error_stack()));
  return status;
}

htri_t check_tri(htri_t status, std::string_view what) {
  if (status < 0) throw Hdf5Error(fmt::format("{}: {}", what, take_error_stack()));
  return status;
}

void Handle::close(std::string_view what) {
  if (id_ < 0) return;
  const hid_t id = std::exchange(id_, H5I_INVALID_HID);
  if (closer_) check(closer_(id), what);
}

namespace {

Handle ieee_half_type(std::size_t exponent_bits, std::size_t mantissa_bits, std::size_t bias) {
  Handle t = datatype(H5Tcopy(H5T_IEEE_F32LE), "copy float type");
  // Sign at bit 15, exponent just below it, mantissa in the low bits.
  check(H5Tset_fields(t.get(), 15, mantissa_bits, exponent_bits, 0, mantissa_bits), "set float fields");
  check(H5Tset_size(t.get(), 2), "set float size");
  check(H5Tset_precision(t.get(), 16), "set float precision");
  check(H5Tset_ebias(t.get(), bias), "set float exponent bias");
  return t;
}

}  // namespace

Handle file_type(DType t) {
  switch (t) {
    case DType::F64: return datatype(H5Tcopy(H5T_IEEE_F64LE), "type");
    case DType::F32: return datatype(H5Tcopy(H5T_IEEE_F32LE), "type");
    case DType::F16: return ieee_half_type(5, 10, 15);
    case DType::BF16: return ieee_half_type(8, 7, 127);
    case DType::I64: return datatype(H5Tcopy(H5T_STD_I64LE), "type");
    case DType::I32: return datatype(H5Tcopy(H5T_STD_I32LE), "type");
    case DType::I16: return datatype(H5Tcopy(H5T_STD_I16LE), "type");
    case DType::I8: return datatype(H5Tcopy(H5T_STD_I8LE), "type");
    case DType::U64: return datatype(H5Tcopy(H5T_STD_U64LE), "type");
    case DType::U32: return datatype(H5Tcopy(H5T_STD_U32LE), "type");
    case DType::U16: return datatype(H5Tcopy(H5T_STD_U16LE), "type");
    case DType::U8:
    case DType::F8_E4M3:
    case DType::F8_E5M2: return datatype(H5Tcopy(H5T_STD_U8LE), "type");
    case DType::BOOL: {
      Handle e = datatype(H5Tenum_create(H5T_STD_I8LE), "create bool enum");
      const signed char f = 0, tr = 1;
      check(H5Tenum_insert(e.get(), "FALSE", &f), "bool enum");
      check(H5Tenum_insert(e.get(), "TRUE", &tr), "bool enum");
      return e;
    }
  }
  throw Error("unknown dtype");
}

void write_string_attribute(hid_t object, const char* name, std::string_view value) {
  Handle type = datatype(H5Tcopy(H5T_C_S1), "string type");
  check(H5Tset_size(type.get(), std::max<std::size_t>(value.size(), 1)), "string size");
  check(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), "string padding");
  Handle space = dataspace(H5Screate(H5S_SCALAR), "scalar space");
  Handle attr = attribute(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                          fmt::format("create attribute '{}'", name));
  std::string padded(value);
  if (padded.empty()) padded.push_back('\0');
  check(H5Awrite(attr.get(), type.get(), padded.data()), fmt::format("write attribute '{}'", name));
}

void write_int_attribute(hid_t object, const char* name, long long value) {
  Handle space = dataspace(H5Screate(H5S_SCALAR), "scalar space");
  Handle attr = attribute(H5Acreate2(object, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                          fmt::format("create attribute '{}'", name));
  check(H5Awrite(attr.get(), H5T_NATIVE_LLONG, &value), fmt::format("write attribute '{}'", name));
}

bool has_attribute(hid_t object, const char* name) {
  return check_tri(H5Aexists(object, name), fmt::format("look up attribute '{}'", name)) > 0;
}

namespace {

// Opens an attribute that must hold a single value (H5Aread fills one
// element per point of its dataspace: more would overrun our buffer).
Handle open_single_value_attribute(hid_t object, const char* name) {
  Handle attr = attribute(H5Aopen(object, name, H5P_DEFAULT), fmt::format("open attribute '{}'", name));
  Handle space = dataspace(H5Aget_space(attr.get()), fmt::format("attribute '{}' space", name));
  const hssize_t points = H5Sget_simple_extent_npoints(space.get());
  if (points != 1)
    throw InputError(fmt::format("attribute '{}' holds {} values, not one", name, static_cast<long long>(points)));
  return attr;
}

}  // namespace

std::string read_string_attribute(hid_t object, const char* name) {
  Handle attr = open_single_value_attribute(object, name);
  Handle type = datatype(H5Aget_type(attr.get()), "attribute type");
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw InputError(fmt::format("attribute '{}' is not a string (HDF5 type class {})", name,
                                 static_cast<int>(H5Tget_class(type.get()))));
  if (check_tri(H5Tis_variable_str(type.get()), "string kind") > 0) {
    Handle mem = datatype(H5Tcopy(H5T_C_S1), "string type");
    check(H5Tset_size(mem.get(), H5T_VARIABLE), "string size");
    // HDF5 converts no string between character sets (h5py writes UTF-8):
    // read the bytes in the attribute's own.
    check(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), "string character set");
    char* value = nullptr;
    check(H5Aread(attr.get(), mem.get(), &value), fmt::format("read attribute '{}'", name));
    std::string result = value ? value : "";
    H5free_memory(value);
    return result;
  }
  const std::size_t size = H5Tget_size(type.get());
  std::string value(size, '\0');
  check(H5Aread(attr.get(), type.get(), value.data()), fmt::format("read attribute '{}'", name));
  while (!value.empty() && value.back() == '\0') value.pop_back();
  // A NUL before the end: the stored string is longer than its C string,
  // so any reader (and our own writer) would see another value.
  if (const auto nul = value.find('\0'); nul != std::string::npos)
    throw InputError(fmt::format("attribute '{}' holds a NUL byte at position {} of its {} bytes", name, nul,
                                 value.size()));
  return value;
}

long long read_int_attribute(hid_t object, const char* name) {
  Handle attr = open_single_value_attribute(object, name);
  long long value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_LLONG, &value), fmt::format("read attribute '{}'", name));
  return value;
}

std::string escape_link_name(std::string_view name) {
  if (name.empty()) return "%";
  if (name == ".") return "%2E";
  std::string out;
  for (char c : name) {
    if (c == '%') out += "%25";
    else if (c == '/') out += "%2F";
    else out += c;
  }
  return out;
}

}  // namespace soupkit::h5
