#include "strided_read.hpp"

#include <algorithm>
#include <cstring>

namespace soupkit::detail {
namespace {

struct Dim {
  std::uint64_t size, stride, out_stride;  // elements; out_stride in the row-major output
};

// Copies `count` elements `stride` apart in src to `out_stride` apart in dst.
template <std::size_t N>
void copy_elements(std::byte* dst, std::uint64_t out_stride, const std::byte* src, std::uint64_t stride,
                   std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) std::memcpy(dst + i * out_stride * N, src + i * stride * N, N);
}

void copy_run(std::size_t element_size, std::byte* dst, std::uint64_t out_stride, const std::byte* src,
              std::uint64_t stride, std::uint64_t count) {
  if (stride == 1 && out_stride == 1) {
    std::memcpy(dst, src, count * element_size);
    return;
  }
  switch (element_size) {
    case 1: return copy_elements<1>(dst, out_stride, src, stride, count);
    case 2: return copy_elements<2>(dst, out_stride, src, stride, count);
    case 4: return copy_elements<4>(dst, out_stride, src, stride, count);
    default:
      for (std::uint64_t i = 0; i < count; ++i)
        std::memcpy(dst + i * out_stride * element_size, src + i * stride * element_size, element_size);
  }
}

// A window [low, high) of storage elements held in memory.
class StorageWindow {
 public:
  StorageWindow(std::size_t element_size, std::uint64_t storage_numel, std::uint64_t capacity, const StorageRead& read)
      : element_size_(element_size), storage_numel_(storage_numel), capacity_(capacity), read_(read) {}

  // Elements [low, high) (high - low <= capacity), loading a window that
  // starts at `low` if they are not all held.
  const std::byte* elements(std::uint64_t low, std::uint64_t high) {
    if (low < low_ || high > high_) {
      low_ = low;
      high_ = std::min(storage_numel_, low + capacity_);
      bytes_.resize(static_cast<std::size_t>((high_ - low_) * element_size_));
      read_(low_ * element_size_, bytes_);
    }
    return bytes_.data() + (low - low_) * element_size_;
  }

 private:
  std::size_t element_size_;
  std::uint64_t storage_numel_, capacity_;
  const StorageRead& read_;
  std::vector<std::byte> bytes_;
  std::uint64_t low_ = 0, high_ = 0;
};

}  // namespace

std::optional<std::uint64_t> strided_extent(const StridedLayout& layout) {
  std::uint64_t last = layout.offset;
  for (std::size_t k = 0; k < layout.shape.size(); ++k) {
    if (layout.shape[k] == 0) return 0;
    std::uint64_t reach = 0;
    if (__builtin_mul_overflow(layout.shape[k] - 1, layout.strides[k], &reach) ||
        __builtin_add_overflow(last, reach, &last))
      return std::nullopt;
  }
  std::uint64_t end = 0;
  if (__builtin_add_overflow(last, 1, &end)) return std::nullopt;
  return end;
}

void read_strided_rows(const StridedLayout& layout, std::size_t element_size, std::uint64_t storage_numel,
                       std::uint64_t first_row, std::uint64_t rows, std::span<std::byte> dst, const StorageRead& read,
                       std::size_t window_bytes) {
  if (dst.empty()) return;
  std::uint64_t base = layout.offset;
  Shape shape = layout.shape;
  if (!shape.empty()) {
    base += first_row * layout.strides[0];
    shape[0] = rows;
  }
  // The dimensions that matter (size > 1), with their strides in the output.
  std::vector<Dim> dims;
  std::uint64_t out_stride = 1;
  for (std::size_t k = shape.size(); k-- > 0;) {
    if (shape[k] > 1) dims.push_back({shape[k], layout.strides[k], out_stride});
    out_stride *= shape[k];
  }
  std::reverse(dims.begin(), dims.end());
  if (std::all_of(dims.begin(), dims.end(), [](const Dim& d) { return d.stride == d.out_stride; })) {
    read(base * element_size, dst);  // row-major already: one read
    return;
  }
  // Walk the storage forward: outer dimensions by decreasing stride, the
  // one of smallest stride innermost, in pieces that fit in the window.
  std::stable_sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) { return a.stride > b.stride; });
  const Dim inner = dims.back();
  dims.pop_back();
  const std::uint64_t capacity = std::max<std::uint64_t>(1, window_bytes / element_size);
  StorageWindow window(element_size, storage_numel, capacity, read);
  std::vector<std::uint64_t> index(dims.size(), 0);
  for (;;) {
    std::uint64_t storage_at = base, out_at = 0;
    for (std::size_t k = 0; k < dims.size(); ++k) {
      storage_at += index[k] * dims[k].stride;
      out_at += index[k] * dims[k].out_stride;
    }
    for (std::uint64_t j = 0; j < inner.size;) {
      const std::uint64_t count =
          inner.stride == 0 ? inner.size - j : std::min(inner.size - j, (capacity - 1) / inner.stride + 1);
      const std::uint64_t low = storage_at + j * inner.stride;
      const std::byte* src = window.elements(low, low + (count - 1) * inner.stride + 1);
      copy_run(element_size, dst.data() + (out_at + j * inner.out_stride) * element_size, inner.out_stride, src,
               inner.stride, count);
      j += count;
    }
    std::size_t k = dims.size();
    while (k > 0 && ++index[k - 1] == dims[k - 1].size) index[--k] = 0;
    if (k == 0) return;
  }
}

}  // namespace soupkit::detail
