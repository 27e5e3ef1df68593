#include "torch_state_dict.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"
#include "soupkit/util/message_text.hpp"

#include <fmt/ranges.h>

#include <array>
#include <map>

namespace soupkit::detail {
namespace {

using Dict = std::vector<std::pair<PickleValue, PickleValue>>;

constexpr std::array<std::string_view, 3> kNestedKeys = {"state_dict", "model", "module"};
constexpr std::size_t kMaxListedKeys = 20;

std::size_t tensor_count(const Dict& dict) {
  std::size_t n = 0;
  for (const auto& [key, value] : dict) n += value.kind == PickleKind::Tensor;
  return n;
}

std::string key_text(const PickleObjects& objects, const PickleValue& key) {
  switch (key.kind) {
    case PickleKind::String: return "'" + excerpt(objects.strings[key.index]) + "'";
    case PickleKind::Int: return fmt::format("{}", key.integer);
    default: return "(a key that is not a string)";
  }
}

// "'a', 'b', ... (N keys)".
std::string listed_keys(const PickleObjects& objects, const Dict& dict) {
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < dict.size() && i < kMaxListedKeys; ++i) keys.push_back(key_text(objects, dict[i].first));
  std::string text = dict.empty() ? "none" : fmt::format("{}", fmt::join(keys, ", "));
  if (dict.size() > kMaxListedKeys) text += fmt::format(", ... ({} keys)", dict.size());
  return text;
}

// The dict holding the tensors, by the rule in the header.
const Dict& choose_state_dict(const TorchPickle& pickle, const std::string& where) {
  const PickleObjects& objects = pickle.objects;
  const PickleValue& root = pickle.root;
  SOUPKIT_INPUT_ERROR_IF(root.kind == PickleKind::Tensor, "{}: the file holds one tensor, not a state dict (a dict of "
                         "tensors); save {{'name': tensor}} instead", where);
  SOUPKIT_INPUT_ERROR_IF(root.kind != PickleKind::Dict, "{}: the file does not hold a dict (a state dict of tensors)",
                         where);
  const Dict& top = objects.dicts[root.index];
  if (tensor_count(top) > 0) return top;
  std::vector<const std::pair<PickleValue, PickleValue>*> candidates;
  for (const auto& item : top) {
    const auto& [key, value] = item;
    if (key.kind != PickleKind::String || value.kind != PickleKind::Dict) continue;
    const std::string& name = objects.strings[key.index];
    if (std::find(kNestedKeys.begin(), kNestedKeys.end(), name) != kNestedKeys.end() &&
        tensor_count(objects.dicts[value.index]) > 0)
      candidates.push_back(&item);
  }
  SOUPKIT_INPUT_ERROR_IF(candidates.size() != 1,
                         "{}: no tensors at the top level, and {} of 'state_dict', 'model', 'module' is a dict of "
                         "tensors, so soupkit cannot tell which is the state dict (top-level keys: {})",
                         where, candidates.empty() ? "none" : "more than one", listed_keys(objects, top));
  log::debug("{}: reading the state dict under {}", where, key_text(objects, candidates[0]->first));
  return objects.dicts[candidates[0]->second.index];
}

std::string printable_name(const TorchTensor& t) { return excerpt(t.info.name); }

// Checks a tensor's view against its storage; throws naming the tensor.
void check_view(const TorchTensor& t, const TorchStorageRef& storage, const std::string& where) {
  const auto numel = checked_numel(t.info.shape);
  std::uint64_t nbytes = 0;
  SOUPKIT_INPUT_ERROR_IF(!numel || __builtin_mul_overflow(*numel, dtype_size(t.info.dtype), &nbytes),
                         "{}: tensor '{}': shape {} has more bytes than 64 bits count", where, printable_name(t),
                         shape_string(t.info.shape));
  if (*numel == 0) return;
  const auto extent = strided_extent(t.layout);
  SOUPKIT_INPUT_ERROR_IF(!extent || *extent > storage.numel,
                         "{}: tensor '{}': its view (storage offset {}, size {}, stride {}) reaches past the end of "
                         "storage '{}', which holds {} elements",
                         where, printable_name(t), t.layout.offset, shape_string(t.info.shape),
                         shape_string(t.layout.strides), storage.key, storage.numel);
  // An overlapping view (an expand) larger than its storage would let a
  // small file declare a tensor of any size.
  SOUPKIT_INPUT_ERROR_IF(*numel > storage.numel,
                         "{}: tensor '{}' shows {} elements of a storage of {} (an expanded view); not supported: "
                         "save tensor.contiguous() instead",
                         where, printable_name(t), *numel, storage.numel);
}

}  // namespace

TorchStateDict torch_state_dict(const TorchPickle& pickle, const std::string& where) {
  const PickleObjects& objects = pickle.objects;
  const Dict& dict = choose_state_dict(pickle, where);
  TorchStateDict result;
  std::map<std::uint32_t, std::size_t> storage_slot;  // pickle's storage -> result.storages
  std::vector<std::string> skipped;
  for (const auto& [key, value] : dict) {
    if (value.kind != PickleKind::Tensor) {
      skipped.push_back(key_text(objects, key));
      continue;
    }
    SOUPKIT_INPUT_ERROR_IF(key.kind != PickleKind::String, "{}: a tensor under the key {}, not a string name", where,
                           key_text(objects, key));
    const TorchTensorRef& ref = objects.tensors[value.index];
    const auto [slot, inserted] = storage_slot.emplace(ref.storage, result.storages.size());
    if (inserted) result.storages.push_back(objects.storages[ref.storage]);
    TorchTensor t;
    t.storage = slot->second;
    t.info = {objects.strings[key.index], result.storages[t.storage].dtype, ref.shape};
    t.layout = {ref.offset, ref.shape, ref.strides};
    check_view(t, result.storages[t.storage], where);
    result.tensors.push_back(std::move(t));
  }
  if (!skipped.empty()) {
    const std::size_t count = skipped.size();
    if (count > kMaxListedKeys) {
      skipped.resize(kMaxListedKeys);
      skipped.push_back("...");
    }
    log::debug("{}: skipped {} value{} of the state dict that {} not tensors: {}", where, count, count == 1 ? "" : "s",
               count == 1 ? "is" : "are", fmt::join(skipped, ", "));
  }
  return result;
}

}  // namespace soupkit::detail
