#pragma once
// A restricted unpickler for PyTorch state dicts (torch.save's data.pkl and
// the legacy format's pickles). It runs the pickle machine over the
// opcodes a state dict needs (protocols 2 to 5) and knows a fixed list of
// globals by name; any other global is refused naming it, so nothing named
// by a file is ever imported or called: the "calls" of the allowed globals
// (an OrderedDict, torch._utils._rebuild_tensor_v2, _rebuild_parameter) are
// this file's own code building plain descriptions. Objects live in one
// arena and refer to each other by index: no recursion over the object
// graph anywhere (a hostile nest 10^5 deep is never walked, and cycles made
// through the memo cost nothing).
#include "soupkit/io/dtype.hpp"
#include "soupkit/io/file.hpp"
#include "soupkit/io/tensor.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace soupkit::detail {

// Limits, each checked before anything is allocated for it.
inline constexpr std::uint64_t kMaxPickleBytes = 256ull << 20;  // a whole pickle
inline constexpr std::uint64_t kMaxPickleString = 16ull << 20;  // one string or bytes object
inline constexpr std::size_t kMaxPickleObjects = 8u << 20;      // strings, containers, tensors
inline constexpr std::size_t kMaxPickleMemo = 8u << 20;         // memo entries
inline constexpr std::size_t kMaxPickleStack = 1u << 16;        // values on the stack (a nest built
                                                                // bottom-up needs one per level)
inline constexpr std::size_t kMaxPickleMarks = 1000;            // open MARKs (nested tuples, lists)
inline constexpr std::size_t kMaxTensorDims = 64;

// Where a pickle's bytes come from: a buffer, or a file from an offset on
// (the legacy format's pickles come one after the other, each of unknown
// length, before the storages), read forward in blocks.
class PickleInput {
 public:
  explicit PickleInput(std::span<const std::byte> bytes);
  PickleInput(const File& file, std::uint64_t offset);

  std::uint64_t position() const { return consumed_; }  // bytes read so far
  std::uint64_t remaining() const { return total_ - consumed_; }
  // Throws InputError (naming `where`) if fewer than dst.size() bytes remain.
  void read(std::span<std::byte> dst, const std::string& where);
  std::uint8_t byte(const std::string& where);

 private:
  void refill();
  const File* file_ = nullptr;
  std::uint64_t file_offset_ = 0;
  std::span<const std::byte> memory_;
  std::vector<std::byte> buffer_;
  std::span<const std::byte> window_;  // unread bytes of memory_ or buffer_
  std::uint64_t consumed_ = 0, total_ = 0;
};

enum class PickleKind : std::uint8_t {
  None, Bool, Int, BigInt, Float, String, Bytes, Tuple, List, Dict, Global, Storage, Tensor,
};

// The globals a state dict may name; anything else is refused.
enum class TorchGlobal : std::uint8_t {
  OrderedDict, RebuildTensorV2, RebuildParameter, RebuildParameterWithState, StorageType,
};

// A value: scalars inline, everything else an index into the arena's list
// of its kind (strings for String/Bytes/BigInt, sequences for Tuple/List,
// dicts, storages, tensors). A Global holds its TorchGlobal in `index` and,
// for a storage type, its element type in `integer`.
struct PickleValue {
  PickleKind kind = PickleKind::None;
  std::uint32_t index = 0;
  std::int64_t integer = 0;  // Int, Bool (0/1)
  double real = 0;           // Float
};

// One storage named by a persistent id ('storage', torch.FloatStorage, key,
// location, numel); tensors sharing it refer to the same entry.
struct TorchStorageRef {
  std::string key;
  DType dtype = DType::U8;
  std::uint64_t numel = 0;
  std::string location;
};

// A tensor as _rebuild_tensor_v2 describes it: a strided view of a storage
// (offsets and strides in elements).
struct TorchTensorRef {
  std::uint32_t storage = 0;
  std::uint64_t offset = 0;
  Shape shape;
  std::vector<std::uint64_t> strides;
};

struct PickleObjects {
  std::vector<std::string> strings;  // String and Bytes contents; BigInt: little-endian two's complement
  std::vector<std::vector<PickleValue>> sequences;
  std::vector<std::vector<std::pair<PickleValue, PickleValue>>> dicts;  // in insertion order
  std::vector<TorchStorageRef> storages;
  std::vector<TorchTensorRef> tensors;
};

struct TorchPickle {
  PickleObjects objects;
  PickleValue root;
};

// Runs the pickle at `in` up to its STOP. `where` names the source in every
// message ("FILE: ARCHIVE/data.pkl"), which also gives the byte offset of
// the problem. Throws InputError on anything outside the restricted set.
TorchPickle unpickle_torch(PickleInput& in, const std::string& where);

// "collections.OrderedDict", for messages.
std::string_view torch_global_name(TorchGlobal g, DType storage_dtype = DType::U8);

}  // namespace soupkit::detail
