// The restricted unpickler (see torch_pickle.hpp). Opcodes follow
// CPython's Lib/pickle.py and pickletools' descriptions; the "calls" are
// this file's own constructors of plain descriptions.
#include "torch_pickle.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>

namespace soupkit::detail {

namespace {

constexpr std::size_t kInputBlockBytes = 64u << 10;
constexpr std::size_t kMaxGlobalLine = 256;  // "module\n" or "name\n" of a GLOBAL
constexpr std::size_t kMaxStorageKey = 64;

// Storage types torch.save names (the legacy typed storages, which torch
// still pickles for every tensor), with their element types.
struct StorageType {
  std::string_view name;
  DType dtype;
};
constexpr std::array<StorageType, 10> kStorageTypes{{
    {"torch.BFloat16Storage", DType::BF16}, {"torch.HalfStorage", DType::F16}, {"torch.FloatStorage", DType::F32},
    {"torch.DoubleStorage", DType::F64},    {"torch.LongStorage", DType::I64}, {"torch.IntStorage", DType::I32},
    {"torch.ShortStorage", DType::I16},     {"torch.CharStorage", DType::I8},  {"torch.ByteStorage", DType::U8},
    {"torch.BoolStorage", DType::BOOL},
}};

// The other allowed globals, by their qualified names.
constexpr std::array<std::pair<std::string_view, TorchGlobal>, 4> kCallables{{
    {"collections.OrderedDict", TorchGlobal::OrderedDict},
    {"torch._utils._rebuild_tensor_v2", TorchGlobal::RebuildTensorV2},
    {"torch._utils._rebuild_parameter", TorchGlobal::RebuildParameter},
    {"torch._utils._rebuild_parameter_with_state", TorchGlobal::RebuildParameterWithState},
}};

constexpr std::string_view kAllowedGlobals =
    "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
    "torch._utils._rebuild_parameter_with_state, torch.{BFloat16,Half,Float,Double,Long,Int,Short,Char,Byte,Bool}Storage";

// Opcodes that exist but a state dict never needs, named in the refusal.
std::string_view unsupported_opcode_name(std::uint8_t op) {
  switch (op) {
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'P': return "PERSID";
    case 'p': return "PUT";
    case 'g': return "GET";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return {};
  }
}

std::string_view kind_name(PickleKind k) {
  switch (k) {
    case PickleKind::None: return "None";
    case PickleKind::Bool: return "a bool";
    case PickleKind::Int: return "an int";
    case PickleKind::BigInt: return "a big int";
    case PickleKind::Float: return "a float";
    case PickleKind::String: return "a string";
    case PickleKind::Bytes: return "bytes";
    case PickleKind::Tuple: return "a tuple";
    case PickleKind::List: return "a list";
    case PickleKind::Dict: return "a dict";
    case PickleKind::Global: return "a global";
    case PickleKind::Storage: return "a storage";
    case PickleKind::Tensor: return "a tensor";
  }
  return "?";
}

class Unpickler {
 public:
  Unpickler(PickleInput& in, const std::string& where) : in_(in), where_(where) {}

  TorchPickle run() {
    for (;;) {
      op_pos_ = in_.position();
      if (op_pos_ >= kMaxPickleBytes) fail(fmt::format("pickle is larger than the {} MiB limit", kMaxPickleBytes >> 20));
      if (in_.remaining() == 0) fail("pickle ends without STOP (truncated)");
      const std::uint8_t op = in_.byte(where_);
      if (op == '.') {
        TorchPickle result{std::move(objects_), pop("STOP")};
        return result;
      }
      step(op);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw InputError(fmt::format("{}, byte {}: {}", where_, op_pos_, problem));
  }

  // --- input ---
  template <std::size_t N>
  std::array<std::uint8_t, N> bytes() {
    std::array<std::uint8_t, N> b{};
    read(std::as_writable_bytes(std::span(b)));
    return b;
  }
  void read(std::span<std::byte> dst) {
    if (dst.size() > in_.remaining())
      fail(fmt::format("pickle is truncated ({} bytes needed, {} left)", dst.size(), in_.remaining()));
    in_.read(dst, where_);
  }
  std::uint64_t little_endian(std::span<const std::uint8_t> b) {
    std::uint64_t v = 0;
    for (std::size_t i = b.size(); i-- > 0;) v = (v << 8) | b[i];
    return v;
  }
  std::uint8_t u8() { return bytes<1>()[0]; }
  std::uint64_t u16() { return little_endian(bytes<2>()); }
  std::uint64_t u32() { return little_endian(bytes<4>()); }
  std::uint64_t u64() { return little_endian(bytes<8>()); }

  // A text line of GLOBAL ("module\n").
  std::string line() {
    std::string text;
    for (;;) {
      if (in_.remaining() == 0) fail("pickle is truncated inside a GLOBAL");
      const char c = static_cast<char>(in_.byte(where_));
      if (c == '\n') return text;
      if (text.size() >= kMaxGlobalLine) fail(fmt::format("GLOBAL name longer than {} bytes", kMaxGlobalLine));
      text += c;
    }
  }

  // --- stack, marks, memo, arena ---
  void charge(std::size_t n = 1) {
    if (n > kMaxPickleObjects - used_) fail(fmt::format("more than {} objects", kMaxPickleObjects));
    used_ += n;
  }
  void push(PickleValue v) {
    if (stack_.size() >= kMaxPickleStack) fail(fmt::format("more than {} values on the pickle stack (nested too deep)", kMaxPickleStack));
    stack_.push_back(v);
  }
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  PickleValue pop(std::string_view op) {
    if (stack_.size() <= floor()) fail(fmt::format("{} finds no value on the stack", op));
    const PickleValue v = stack_.back();
    stack_.pop_back();
    return v;
  }
  PickleValue& top(std::string_view op) {
    if (stack_.size() <= floor()) fail(fmt::format("{} finds no value on the stack", op));
    return stack_.back();
  }
  std::vector<PickleValue> pop_mark(std::string_view op) {
    if (marks_.empty()) fail(fmt::format("{} without a MARK", op));
    std::vector<PickleValue> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  void memo_put(std::uint64_t index, std::string_view op) {
    const PickleValue v = top(op);
    if (memo_.size() >= kMaxPickleMemo && !memo_.count(static_cast<std::uint32_t>(index)))
      fail(fmt::format("more than {} memo entries", kMaxPickleMemo));
    memo_[static_cast<std::uint32_t>(index)] = v;
  }
  void memo_get(std::uint64_t index) {
    const auto it = memo_.find(static_cast<std::uint32_t>(index));
    if (it == memo_.end()) fail(fmt::format("memo entry {} is read before it is written", index));
    push(it->second);
  }

  PickleValue new_value(PickleKind kind, std::size_t index) { return {kind, static_cast<std::uint32_t>(index), 0, 0}; }
  PickleValue new_string(PickleKind kind, std::uint64_t length) {
    if (length > kMaxPickleString)
      fail(fmt::format("a string of {} bytes, more than the {} MiB limit", length, kMaxPickleString >> 20));
    if (length > in_.remaining())
      fail(fmt::format("declares a string of {} bytes, but only {} bytes are left", length, in_.remaining()));
    charge();
    std::string text(length, '\0');
    read(std::as_writable_bytes(std::span(text)));
    objects_.strings.push_back(std::move(text));
    return new_value(kind, objects_.strings.size() - 1);
  }
  PickleValue new_sequence(PickleKind kind, std::vector<PickleValue> items) {
    charge(1 + items.size());
    objects_.sequences.push_back(std::move(items));
    return new_value(kind, objects_.sequences.size() - 1);
  }
  PickleValue new_dict() {
    charge();
    objects_.dicts.emplace_back();
    return new_value(PickleKind::Dict, objects_.dicts.size() - 1);
  }
  static PickleValue integer(std::int64_t v) { return {PickleKind::Int, 0, v, 0}; }

  PickleValue long_integer(std::uint64_t length) {
    if (length > 8) {
      // Only torch's legacy magic number is this long; keep its bytes.
      PickleValue v = new_string(PickleKind::BigInt, length);
      return v;
    }
    std::array<std::uint8_t, 8> b{};
    read(std::as_writable_bytes(std::span(b.data(), length)));
    std::uint64_t u = little_endian(std::span(b.data(), length));
    if (length > 0 && length < 8 && (b[length - 1] & 0x80)) u |= ~std::uint64_t{0} << (8 * length);  // sign-extend
    return integer(static_cast<std::int64_t>(u));
  }

  const std::string& string_of(const PickleValue& v, std::string_view what) {
    if (v.kind != PickleKind::String) fail(fmt::format("{} is {}, not a string", what, kind_name(v.kind)));
    return objects_.strings[v.index];
  }
  std::uint64_t non_negative(const PickleValue& v, std::string_view what) {
    if (v.kind != PickleKind::Int || v.integer < 0)
      fail(fmt::format("{} is {}, not a non-negative int", what, v.kind == PickleKind::Int ? "negative" : kind_name(v.kind)));
    return static_cast<std::uint64_t>(v.integer);
  }
  std::vector<std::uint64_t> int_tuple(const PickleValue& v, std::string_view what) {
    if (v.kind != PickleKind::Tuple) fail(fmt::format("{} is {}, not a tuple", what, kind_name(v.kind)));
    const auto& items = objects_.sequences[v.index];
    if (items.size() > kMaxTensorDims) fail(fmt::format("{} has {} dimensions, more than {}", what, items.size(), kMaxTensorDims));
    std::vector<std::uint64_t> values;
    for (const auto& item : items) values.push_back(non_negative(item, what));
    return values;
  }

  // --- globals and their calls ---
  PickleValue global(const std::string& module, const std::string& name) {
    const std::string qualified = module + "." + name;
    for (const auto& [allowed, which] : kCallables)
      if (qualified == allowed) return {PickleKind::Global, static_cast<std::uint32_t>(which), 0, 0};
    for (const auto& s : kStorageTypes)
      if (qualified == s.name)
        return {PickleKind::Global, static_cast<std::uint32_t>(TorchGlobal::StorageType), static_cast<std::int64_t>(s.dtype), 0};
    fail(fmt::format("global '{}' is not allowed: soupkit reads state dicts of tensors and never imports or calls "
                     "what a file names (allowed: {})",
                     excerpt(qualified), kAllowedGlobals));
  }

  PickleValue reduce() {
    const PickleValue args_value = pop("REDUCE");
    const PickleValue callable = pop("REDUCE");
    if (callable.kind != PickleKind::Global) fail(fmt::format("REDUCE calls {}, not a global", kind_name(callable.kind)));
    const auto which = static_cast<TorchGlobal>(callable.index);
    const auto name = torch_global_name(which, static_cast<DType>(callable.integer));
    if (args_value.kind != PickleKind::Tuple) fail(fmt::format("the arguments of {} are {}, not a tuple", name, kind_name(args_value.kind)));
    const std::vector<PickleValue> args = objects_.sequences[args_value.index];
    const auto need = [&](std::size_t low, std::size_t high) {
      if (args.size() < low || args.size() > high)
        fail(fmt::format("{} takes {} arguments, the pickle gives {}", name,
                         low == high ? fmt::format("{}", low) : fmt::format("{} to {}", low, high), args.size()));
    };
    switch (which) {
      case TorchGlobal::OrderedDict:
        need(0, 0);  // items come by SETITEMS, as Python pickles an OrderedDict
        return new_dict();
      case TorchGlobal::RebuildTensorV2: return rebuild_tensor(args);
      case TorchGlobal::RebuildParameter:
      case TorchGlobal::RebuildParameterWithState:
        // (data, requires_grad, backward_hooks[, state]): the data is the
        // tensor; the state holds Python attributes, which carry no values.
        need(which == TorchGlobal::RebuildParameter ? 3 : 4, which == TorchGlobal::RebuildParameter ? 3 : 4);
        if (args[0].kind != PickleKind::Tensor) fail(fmt::format("the data of {} is {}, not a tensor", name, kind_name(args[0].kind)));
        return args[0];
      case TorchGlobal::StorageType: break;
    }
    fail(fmt::format("{} is only allowed in a storage's persistent id, not called", name));
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  // backward_hooks[, metadata]).
  PickleValue rebuild_tensor(const std::vector<PickleValue>& args) {
    if (args.size() != 6 && args.size() != 7)
      fail(fmt::format("torch._utils._rebuild_tensor_v2 takes 6 or 7 arguments, the pickle gives {}", args.size()));
    if (args[0].kind != PickleKind::Storage) fail(fmt::format("a tensor's storage is {}, not a storage", kind_name(args[0].kind)));
    TorchTensorRef t;
    t.storage = args[0].index;
    t.offset = non_negative(args[1], "a tensor's storage offset");
    t.shape = int_tuple(args[2], "a tensor's size");
    t.strides = int_tuple(args[3], "a tensor's stride");
    if (t.shape.size() != t.strides.size())
      fail(fmt::format("a tensor's size has {} dimensions and its stride {}", t.shape.size(), t.strides.size()));
    if (args[4].kind != PickleKind::Bool) fail(fmt::format("a tensor's requires_grad is {}, not a bool", kind_name(args[4].kind)));
    if (args[5].kind != PickleKind::Dict) fail(fmt::format("a tensor's backward hooks are {}, not a dict", kind_name(args[5].kind)));
    if (args.size() == 7) {
      // Newer torch adds {"conj": bool, "neg": bit, ...} when a bit is set:
      // the values would then differ from the stored ones.
      if (args[6].kind != PickleKind::Dict) fail(fmt::format("a tensor's metadata is {}, not a dict", kind_name(args[6].kind)));
      for (const auto& [key, value] : objects_.dicts[args[6].index])
        if (!(value.kind == PickleKind::Bool && value.integer == 0))
          fail(fmt::format("a tensor has metadata '{}' set (a conjugate or negative view); not supported",
                           key.kind == PickleKind::String ? excerpt(objects_.strings[key.index]) : "?"));
    }
    charge(1 + 2 * t.shape.size());
    objects_.tensors.push_back(std::move(t));
    return new_value(PickleKind::Tensor, objects_.tensors.size() - 1);
  }

  // ('storage', torch.FloatStorage, key, location, numel[, view_metadata]).
  PickleValue persistent_load(const PickleValue& pid) {
    if (pid.kind != PickleKind::Tuple) fail(fmt::format("a persistent id is {}, not a tuple", kind_name(pid.kind)));
    const std::vector<PickleValue> items = objects_.sequences[pid.index];
    if (items.empty()) fail("an empty persistent id");
    const std::string tag = string_of(items[0], "a persistent id's tag");
    if (tag == "module")
      fail("the file holds a whole model object, not a state dict (save model.state_dict() instead)");
    if (tag != "storage") fail(fmt::format("persistent id '{}' is not a storage", excerpt(tag)));
    if (items.size() != 5 && items.size() != 6)
      fail(fmt::format("a storage's persistent id has {} items, not 5 (or 6 in the legacy format)", items.size()));
    if (items[1].kind != PickleKind::Global || static_cast<TorchGlobal>(items[1].index) != TorchGlobal::StorageType)
      fail("a storage's type is not one of torch's storage types");
    TorchStorageRef s;
    s.dtype = static_cast<DType>(items[1].integer);
    s.key = string_of(items[2], "a storage's key");
    s.location = string_of(items[3], "a storage's location");
    s.numel = non_negative(items[4], "a storage's size");
    if (items.size() == 6 && items[5].kind != PickleKind::None)
      fail(fmt::format("storage '{}' is a view of another storage (pre-1.0 legacy format); not supported", excerpt(s.key)));
    const bool plain_key = !s.key.empty() && s.key.size() <= kMaxStorageKey && s.key != "." && s.key != ".." &&
                           std::all_of(s.key.begin(), s.key.end(), [](char c) {
                             return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                    c == '_' || c == '-' || c == '.';
                           });
    if (!plain_key) fail(fmt::format("storage key '{}' is not a plain name (letters, digits, '_', '-', '.')", excerpt(s.key)));
    if (s.numel > std::numeric_limits<std::uint64_t>::max() / dtype_size(s.dtype))
      fail(fmt::format("storage '{}' declares {} elements, more bytes than 64 bits count", s.key, s.numel));
    const auto [it, inserted] = storage_by_key_.emplace(s.key, static_cast<std::uint32_t>(objects_.storages.size()));
    if (!inserted) {
      const auto& earlier = objects_.storages[it->second];
      if (earlier.dtype != s.dtype || earlier.numel != s.numel)
        fail(fmt::format("storage '{}' is named as {} x {} and as {} x {}", s.key, earlier.numel,
                         dtype_name(earlier.dtype), s.numel, dtype_name(s.dtype)));
      return new_value(PickleKind::Storage, it->second);
    }
    charge();
    objects_.storages.push_back(std::move(s));
    return new_value(PickleKind::Storage, objects_.storages.size() - 1);
  }

  void append(PickleValue& list, std::span<const PickleValue> items, std::string_view op) {
    if (list.kind != PickleKind::List) fail(fmt::format("{} on {}, not a list", op, kind_name(list.kind)));
    charge(items.size());
    auto& target = objects_.sequences[list.index];
    target.insert(target.end(), items.begin(), items.end());
  }
  void set_items(PickleValue& dict, std::span<const PickleValue> items, std::string_view op) {
    if (dict.kind != PickleKind::Dict) fail(fmt::format("{} on {}, not a dict", op, kind_name(dict.kind)));
    if (items.size() % 2) fail(fmt::format("{} with an odd number of values", op));
    charge(items.size());
    auto& target = objects_.dicts[dict.index];
    for (std::size_t i = 0; i < items.size(); i += 2) target.emplace_back(items[i], items[i + 1]);
  }

  void step(std::uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const auto version = u8();
        if (version < 2 || version > 5) fail(fmt::format("pickle protocol {} is not supported (2 to 5 are)", version));
        return;
      }
      case 0x95: {  // FRAME: a length hint, checked and ignored
        const auto length = u64();
        if (length > in_.remaining()) fail(fmt::format("a frame of {} bytes, but only {} bytes are left", length, in_.remaining()));
        return;
      }
      case '(':  // MARK
        if (marks_.size() >= kMaxPickleMarks) fail(fmt::format("more than {} nested MARKs (nested too deep)", kMaxPickleMarks));
        marks_.push_back(stack_.size());
        return;
      case '0':  // POP
        if (stack_.size() > floor()) stack_.pop_back();
        else pop_mark("POP");
        return;
      case '1': pop_mark("POP_MARK"); return;
      case '2': push(top("DUP")); return;
      case 'N': push({}); return;
      case 0x88: push({PickleKind::Bool, 0, 1, 0}); return;
      case 0x89: push({PickleKind::Bool, 0, 0, 0}); return;
      case 'J': push(integer(static_cast<std::int32_t>(static_cast<std::uint32_t>(u32())))); return;
      case 'K': push(integer(u8())); return;
      case 'M': push(integer(static_cast<std::int64_t>(u16()))); return;
      case 0x8a: push(long_integer(u8())); return;  // LONG1
      case 0x8b: {  // LONG4
        const auto length = u32();
        if (length > 8) fail(fmt::format("a LONG4 integer of {} bytes (more than 64 bits)", length));
        push(long_integer(length));
        return;
      }
      case 'G': {  // BINFLOAT, big-endian
        const auto b = bytes<8>();
        std::uint64_t u = 0;
        for (const auto x : b) u = (u << 8) | x;
        push({PickleKind::Float, 0, 0, std::bit_cast<double>(u)});
        return;
      }
      case 0x8c: push(new_string(PickleKind::String, u8())); return;   // SHORT_BINUNICODE
      case 'X': push(new_string(PickleKind::String, u32())); return;   // BINUNICODE
      case 0x8d: push(new_string(PickleKind::String, u64())); return;  // BINUNICODE8
      case 'C': push(new_string(PickleKind::Bytes, u8())); return;     // SHORT_BINBYTES
      case 'B': push(new_string(PickleKind::Bytes, u32())); return;    // BINBYTES
      case 0x8e: push(new_string(PickleKind::Bytes, u64())); return;   // BINBYTES8
      case '}': push(new_dict()); return;
      case ']': push(new_sequence(PickleKind::List, {})); return;
      case ')': push(new_sequence(PickleKind::Tuple, {})); return;
      case 'l': push(new_sequence(PickleKind::List, pop_mark("LIST"))); return;
      case 't': push(new_sequence(PickleKind::Tuple, pop_mark("TUPLE"))); return;
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        std::vector<PickleValue> items(op - 0x84);
        for (std::size_t i = items.size(); i-- > 0;) items[i] = pop("TUPLE1/2/3");
        push(new_sequence(PickleKind::Tuple, std::move(items)));
        return;
      }
      case 'd': {  // DICT
        const auto items = pop_mark("DICT");
        PickleValue dict = new_dict();
        set_items(dict, items, "DICT");
        push(dict);
        return;
      }
      case 'a': {  // APPEND
        const PickleValue v = pop("APPEND");
        append(top("APPEND"), std::span(&v, 1), "APPEND");
        return;
      }
      case 'e': {  // APPENDS
        const auto items = pop_mark("APPENDS");
        append(top("APPENDS"), items, "APPENDS");
        return;
      }
      case 's': {  // SETITEM
        const PickleValue value = pop("SETITEM");
        const PickleValue key = pop("SETITEM");
        const PickleValue pair[2] = {key, value};
        set_items(top("SETITEM"), pair, "SETITEM");
        return;
      }
      case 'u': {  // SETITEMS
        const auto items = pop_mark("SETITEMS");
        set_items(top("SETITEMS"), items, "SETITEMS");
        return;
      }
      case 'q': memo_put(u8(), "BINPUT"); return;
      case 'r': memo_put(u32(), "LONG_BINPUT"); return;
      case 0x94: memo_put(memo_.size(), "MEMOIZE"); return;
      case 'h': memo_get(u8()); return;
      case 'j': memo_get(u32()); return;
      case 'c': {  // GLOBAL
        const std::string module = line();
        const std::string name = line();
        push(global(module, name));
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        const PickleValue name = pop("STACK_GLOBAL");
        const PickleValue module = pop("STACK_GLOBAL");
        push(global(string_of(module, "STACK_GLOBAL's module"), string_of(name, "STACK_GLOBAL's name")));
        return;
      }
      case 'R': push(reduce()); return;
      case 'b': {  // BUILD: an OrderedDict's attributes (state_dict()'s _metadata) carry no tensors
        pop("BUILD");
        const PickleValue& target = top("BUILD");
        if (target.kind != PickleKind::Dict) fail(fmt::format("BUILD on {} is not supported", kind_name(target.kind)));
        return;
      }
      case 'Q': push(persistent_load(pop("BINPERSID"))); return;
      default: break;
    }
    const auto name = unsupported_opcode_name(op);
    if (!name.empty()) fail(fmt::format("opcode {} (0x{:02x}) is not supported in a state dict", name, op));
    fail(fmt::format("byte 0x{:02x} is not a pickle opcode", op));
  }

  PickleInput& in_;
  const std::string& where_;
  std::uint64_t op_pos_ = 0;
  std::vector<PickleValue> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint32_t, PickleValue> memo_;
  std::unordered_map<std::string, std::uint32_t> storage_by_key_;
  PickleObjects objects_;
  std::size_t used_ = 0;
};

}  // namespace

PickleInput::PickleInput(std::span<const std::byte> bytes) : memory_(bytes), window_(bytes), total_(bytes.size()) {}

PickleInput::PickleInput(const File& file, std::uint64_t offset) : file_(&file), file_offset_(offset) {
  const std::uint64_t size = file.size();
  total_ = offset <= size ? size - offset : 0;
}

void PickleInput::refill() {
  buffer_.resize(static_cast<std::size_t>(std::min<std::uint64_t>(kInputBlockBytes, remaining())));
  file_->pread_exact(file_offset_ + consumed_, buffer_);
  window_ = buffer_;
}

void PickleInput::read(std::span<std::byte> dst, const std::string& where) {
  SOUPKIT_INPUT_ERROR_IF(dst.size() > remaining(), "{}: pickle is truncated at byte {} ({} bytes needed, {} left)",
                         where, consumed_, dst.size(), remaining());
  std::size_t done = 0;
  while (done < dst.size()) {
    if (window_.empty()) refill();
    const std::size_t n = std::min(window_.size(), dst.size() - done);
    std::memcpy(dst.data() + done, window_.data(), n);
    window_ = window_.subspan(n);
    consumed_ += n;
    done += n;
  }
}

std::uint8_t PickleInput::byte(const std::string& where) {
  std::byte b{};
  read(std::span(&b, 1), where);
  return static_cast<std::uint8_t>(b);
}

TorchPickle unpickle_torch(PickleInput& in, const std::string& where) { return Unpickler(in, where).run(); }

std::string_view torch_global_name(TorchGlobal g, DType storage_dtype) {
  for (const auto& [name, which] : kCallables)
    if (which == g) return name;
  for (const auto& s : kStorageTypes)
    if (s.dtype == storage_dtype) return s.name;
  return "a torch storage type";
}

}  // namespace soupkit::detail
