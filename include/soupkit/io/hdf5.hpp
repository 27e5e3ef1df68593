#pragma once
// Thin RAII wrappers over the HDF5 C API: each Handle owns one hid_t, and
// every failing call becomes an Hdf5Error carrying HDF5's own error text.
#include "soupkit/io/dtype.hpp"

#include <hdf5.h>

#include <string>
#include <string_view>
#include <utility>

namespace soupkit::h5 {

// Turns off HDF5's automatic error printing (we report errors ourselves).
void silence_library_errors();
// The innermost messages of the current HDF5 error stack, then clears it.
std::string take_error_stack();

// Throws Hdf5Error("<what>: <hdf5 error>") if the call failed.
hid_t check(hid_t id, std::string_view what);
herr_t check(herr_t status, std::string_view what);
htri_t check_tri(htri_t status, std::string_view what);

class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  // Closes now, reporting failure (the destructor cannot).
  void close(std::string_view what);
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

inline Handle file(hid_t id, std::string_view what) { return Handle(check(id, what), H5Fclose); }
inline Handle group(hid_t id, std::string_view what) { return Handle(check(id, what), H5Gclose); }
inline Handle dataset(hid_t id, std::string_view what) { return Handle(check(id, what), H5Dclose); }
inline Handle dataspace(hid_t id, std::string_view what) { return Handle(check(id, what), H5Sclose); }
inline Handle datatype(hid_t id, std::string_view what) { return Handle(check(id, what), H5Tclose); }
inline Handle attribute(hid_t id, std::string_view what) { return Handle(check(id, what), H5Aclose); }
inline Handle plist(hid_t id, std::string_view what) { return Handle(check(id, what), H5Pclose); }

// The HDF5 file type that stores a soupkit dtype. BF16 and F16 are IEEE-style
// float types with their own bit fields (HDF5 1.10 has neither predefined),
// so any HDF5 reader converts them to float32 exactly; BOOL is an int8 enum
// {FALSE, TRUE} (h5py reads it as numpy bool); FP8 is stored as raw uint8.
Handle file_type(DType t);

// Fixed-length string attributes (identical on all ranks, so they can be
// written collectively in parallel HDF5).
void write_string_attribute(hid_t object, const char* name, std::string_view value);
void write_int_attribute(hid_t object, const char* name, long long value);
bool has_attribute(hid_t object, const char* name);
std::string read_string_attribute(hid_t object, const char* name);
long long read_int_attribute(hid_t object, const char* name);

// Link names cannot contain '/' (nor be "."); escape as %2F etc. The exact
// tensor name is stored in the dataset's "name" attribute as well.
std::string escape_link_name(std::string_view name);

}  // namespace soupkit::h5
