// Fuzzes the restricted unpickler and the state-dict rules: the input is a
// torch.save data.pkl. A pickle that is accepted must describe tensors that
// fit their storages, and each small one must gather, through its strides,
// exactly the elements its definition names (storage bytes are a pattern of
// their offsets, so nothing is allocated for a storage's declared size).
#include "fuzz_support.hpp"
#include "io/strided_read.hpp"
#include "io/torch_pickle.hpp"
#include "io/torch_state_dict.hpp"

#include <cstring>

namespace {

using namespace soupkit;
using namespace soupkit::detail;

constexpr std::uint64_t kMaxGatheredBytes = 1 << 16;

std::byte pattern(std::uint64_t offset) { return static_cast<std::byte>((offset * 0x9E3779B97F4A7C15ull) >> 56); }

void check_tensor(const TorchTensor& t, const TorchStorageRef& storage) {
  const std::uint64_t es = dtype_size(t.info.dtype);
  const std::uint64_t nbytes = t.info.nbytes();
  if (nbytes > kMaxGatheredBytes) return;
  const auto extent = strided_extent(t.layout);
  if (t.info.numel() > 0 && (!extent || *extent > storage.numel))
    fuzz::finding("accepted a view past its storage", t.info.name);
  const std::uint64_t rows = t.info.shape.empty() ? 1 : t.info.shape[0];
  std::vector<std::byte> got(nbytes);
  const StorageRead read = [&](std::uint64_t offset, std::span<std::byte> dst) {
    if (offset + dst.size() > storage.numel * es) fuzz::finding("read past the storage", t.info.name);
    for (std::size_t i = 0; i < dst.size(); ++i) dst[i] = pattern(offset + i);
  };
  read_strided_rows(t.layout, es, storage.numel, 0, rows, got, read, 3 * es);
  // The definition: element i (row-major) is storage element offset + sum_k i_k * stride_k.
  const std::uint64_t numel = t.info.numel();
  for (std::uint64_t flat = 0; flat < numel; ++flat) {
    std::uint64_t rest = flat, at = t.layout.offset;
    for (std::size_t k = t.info.shape.size(); k-- > 0;) {
      at += (rest % t.info.shape[k]) * t.layout.strides[k];
      rest /= t.info.shape[k];
    }
    for (std::uint64_t b = 0; b < es; ++b)
      if (got[flat * es + b] != pattern(at * es + b)) fuzz::finding("gathered the wrong element", t.info.name);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_clean_outcome("fuzz.pkl", [&] {
    PickleInput in(std::as_bytes(std::span(data, size)));
    const TorchPickle pickle = unpickle_torch(in, "fuzz.pkl");
    const TorchStateDict contents = torch_state_dict(pickle, "fuzz.pkl");
    for (const auto& t : contents.tensors) check_tensor(t, contents.storages.at(t.storage));
  });
  return 0;
}
